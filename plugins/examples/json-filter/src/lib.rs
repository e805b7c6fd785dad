//! `json-filter`: keeps records whose JSON object value has a numeric field
//! at or above a threshold.
//!
//! Config: `field` (default `amount`), `min` (default `100`, parsed as f64).
//!
//! - value not a JSON object (or null) → `Failure::reject("invalid JSON: ...")`
//! - `value[field]` is a number `>= min` → the record passed through unchanged
//! - otherwise (missing, not a number, or below `min`) → no outputs (filtered)

use sandpiper_sdk::{Failure, Handler, Message, Output, config};
use serde_json::Value;

struct JsonFilter;

const DEFAULT_FIELD: &str = "amount";
const DEFAULT_MIN: f64 = 100.0;

impl Handler for JsonFilter {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        let field = config::get("field").unwrap_or_else(|| DEFAULT_FIELD.to_string());
        let min = match config::get("min") {
            Some(raw) => raw
                .trim()
                .parse::<f64>()
                .map_err(|e| Failure::reject(format!("invalid config: min = {raw:?}: {e}")))?,
            None => DEFAULT_MIN,
        };

        let bytes = msg.value.as_deref().unwrap_or_default();
        let object = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(object)) => object,
            Ok(other) => {
                return Err(Failure::reject(format!(
                    "invalid JSON: expected an object, got {}",
                    kind(&other)
                )));
            }
            Err(e) => return Err(Failure::reject(format!("invalid JSON: {e}"))),
        };

        let keep = object
            .get(&field)
            .and_then(Value::as_f64)
            .is_some_and(|n| n >= min);
        if keep {
            Ok(vec![Output::from_message(msg)])
        } else {
            Ok(Vec::new())
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

sandpiper_sdk::export!(JsonFilter);
