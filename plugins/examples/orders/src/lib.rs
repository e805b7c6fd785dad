//! `orders`: the demo's plugin. Enriches an order and marks large ones.
//!
//! Input: `{"id": 1, "amount": 250, "customer": {"name": "ada"}}`.
//! Output: `{"id": 1, "amount": 250, "customer": "ADA", "large": true}`,
//! with `large` meaning `amount >= min` (config key `min`, default 100).
//!
//! It has a bug on purpose: an order without a customer makes it call
//! `unwrap()` on `None`, the Rust analogue of the nil-pointer dereference of
//! incident 1. In Sandpiper that costs the one record (dead-lettered with
//! kind `trap`) and nothing else. Payloads that are not JSON are rejected.

use sandpiper_sdk::{Failure, Handler, Message, Output, config};
use serde_json::{Value, json};

struct Orders;

impl Handler for Orders {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        let order: Value = serde_json::from_slice(msg.value.as_deref().unwrap_or_default())
            .map_err(|e| Failure::reject(format!("invalid JSON: {e}")))?;
        let min = config::get("min")
            .and_then(|m| m.parse::<f64>().ok())
            .unwrap_or(100.0);
        // The deliberate bug: no customer, no name, and unwrap() panics.
        let name = order["customer"]["name"].as_str().unwrap();
        let amount = order["amount"].as_f64().unwrap_or(0.0);
        sandpiper_sdk::debug!("order {} for {name}", order["id"]);
        let enriched = json!({
            "id": order["id"],
            "amount": order["amount"],
            "customer": name.to_uppercase(),
            "large": amount >= min,
        });
        Ok(vec![
            Output::from_message(msg).with_value(enriched.to_string()),
        ])
    }
}

sandpiper_sdk::export!(Orders);
