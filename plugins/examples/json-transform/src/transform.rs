//! The transform itself, free of the SDK so the benchmark's native baseline
//! runs exactly this code outside Wasm (`host/examples/bench`).

use serde_json::{Map, Value};

/// Parses an order (a JSON object with `customer` and `items`, each item
/// with `qty` and `price`), adds `total` and `item_count`, upper-cases
/// `customer`, drops `note`, and serialises it again. Anything else is an
/// error message for a reject.
pub fn transform(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut order: Map<String, Value> = match serde_json::from_slice(bytes) {
        Ok(Value::Object(order)) => order,
        Ok(_) => return Err("invalid order: not a JSON object".to_owned()),
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    let (mut total, mut count) = (0.0, 0u64);
    if let Some(Value::Array(items)) = order.get("items") {
        for item in items {
            let qty = item.get("qty").and_then(Value::as_f64).unwrap_or(0.0);
            let price = item.get("price").and_then(Value::as_f64).unwrap_or(0.0);
            total += qty * price;
            count += 1;
        }
    }
    if let Some(Value::String(customer)) = order.get_mut("customer") {
        customer.make_ascii_uppercase();
    }
    order.remove("note");
    order.insert("item_count".to_owned(), Value::from(count));
    order.insert(
        "total".to_owned(),
        Value::from((total * 100.0).round() / 100.0),
    );
    serde_json::to_vec(&order).map_err(|e| format!("serialising: {e}"))
}
