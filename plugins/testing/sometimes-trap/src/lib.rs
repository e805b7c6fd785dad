//! `sometimes-trap`: `passthrough`, except that a record whose value starts
//! with `TRAP` unwraps a `None` (trap `panic`). The benchmark's
//! "1% trapping records" scenario.

use sandpiper_sdk::{Failure, Handler, Message, Output};

struct SometimesTrap;

impl Handler for SometimesTrap {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        if msg.value.as_deref().is_some_and(|v| v.starts_with(b"TRAP")) {
            let missing: Option<u8> = std::hint::black_box(None);
            let _ = missing.unwrap();
        }
        Ok(vec![Output::from_message(msg)])
    }
}

sandpiper_sdk::export!(SometimesTrap);
