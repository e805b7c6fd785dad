//! `router`: fan-out by event type.
//!
//! For a JSON object value with a string field `"type"`, emits two outputs:
//! the record to topic `<prefix><type>` (config `prefix`, default `events-`)
//! and an unchanged copy to the default output topic. A JSON object without
//! a string `"type"` only gets the default-topic copy. A value that is not a
//! JSON object → `Failure::reject("invalid JSON: ...")`.

use sandpiper_sdk::{Failure, Handler, Message, Output, config};
use serde_json::Value;

struct Router;

impl Handler for Router {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        let bytes = msg.value.as_deref().unwrap_or_default();
        let object = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err(Failure::reject("invalid JSON: expected an object")),
            Err(e) => return Err(Failure::reject(format!("invalid JSON: {e}"))),
        };

        let copy = Output::from_message(msg);
        let mut outputs = Vec::with_capacity(2);
        if let Some(kind) = object.get("type").and_then(Value::as_str) {
            let prefix = config::get("prefix").unwrap_or_else(|| "events-".to_string());
            outputs.push(copy.clone().to_topic(format!("{prefix}{kind}")));
        }
        outputs.push(copy);
        Ok(outputs)
    }
}

sandpiper_sdk::export!(Router);
