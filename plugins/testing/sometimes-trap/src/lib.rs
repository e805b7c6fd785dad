//! `sometimes-trap`: `passthrough`, except that a record whose value starts
//! with `TRAP` unwraps a `None` (trap `panic`). The benchmark's
//! "1% trapping records" scenario, compared with `passthrough`, so it
//! lends the record as `passthrough` does; its `handle` goes through
//! `handle_lent`, which the tests thereby cover.

use sandpiper_sdk::{Failure, Handler, Message, MessageRef, Output, OutputRef, Outputs};

struct SometimesTrap;

impl Handler for SometimesTrap {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        sandpiper_sdk::handle_lent::<Self>(msg)
    }

    fn handle_borrowed(msg: &MessageRef<'_>, out: &mut Outputs) -> Result<(), Failure> {
        if msg.value.is_some_and(|v| v.starts_with(b"TRAP")) {
            let missing: Option<u8> = std::hint::black_box(None);
            let _ = missing.unwrap();
        }
        out.push_ref(OutputRef::from_message(msg));
        Ok(())
    }
}

sandpiper_sdk::export!(SometimesTrap);
