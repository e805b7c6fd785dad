//! `json-transform`: a CPU-bound map. Parses each record's value as a JSON
//! order, adds `total` and `item_count`, upper-cases `customer`, drops
//! `note`, and writes it back as JSON (see `transform.rs`).
//!
//! - value not a JSON object → `Failure::reject("invalid ...")`
//! - otherwise → one output: the key and headers kept, the new value

use sandpiper_sdk::{Failure, Handler, Message, Output};

mod transform;

struct JsonTransform;

impl Handler for JsonTransform {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        let value = transform::transform(msg.value.as_deref().unwrap_or_default())
            .map_err(Failure::reject)?;
        let mut out = Output::from_message(msg);
        out.value = Some(value);
        Ok(vec![out])
    }
}

sandpiper_sdk::export!(JsonTransform);
