//! `passthrough`: exactly one output with the record's key, value and
//! headers, to the default topic. Used in throughput benchmarks, so it
//! borrows the record in batches rather than copying it
//! (`Handler::handle_borrowed`); one record alone it takes over as it is,
//! which is cheaper still (the runtime benchmark's fixed cost of a call).

use sandpiper_sdk::{Failure, Handler, Message, MessageRef, Output, OutputRef, Outputs};

struct Passthrough;

impl Handler for Passthrough {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        Ok(vec![Output::from_message(msg)])
    }

    fn handle_borrowed(msg: &MessageRef<'_>, out: &mut Outputs) -> Result<(), Failure> {
        out.push_ref(OutputRef::from_message(msg));
        Ok(())
    }
}

sandpiper_sdk::export!(Passthrough);
