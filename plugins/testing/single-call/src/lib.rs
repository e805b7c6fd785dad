//! Uppercases each record's value, one `handle` call per record.

#[allow(clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "processor",
        pub_export_macro: true,
    });
}

use bindings::Guest;
use bindings::sandpiper::plugin::types::{Failure, Message, Output};

struct SingleCall;

impl Guest for SingleCall {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        let value = msg.value.as_deref().map(<[u8]>::to_ascii_uppercase);
        if value.as_deref() == Some(b"PANIC") {
            panic!("single-call: panic on demand");
        }
        Ok(vec![Output {
            topic: None,
            key: msg.key,
            value,
            headers: msg.headers,
        }])
    }
}

bindings::export!(SingleCall with_types_in bindings);
