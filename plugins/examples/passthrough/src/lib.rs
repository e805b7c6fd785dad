//! `passthrough`: exactly one output with the record's key, value and
//! headers, to the default topic. Used in throughput benchmarks.

use sandpiper_sdk::{Failure, Handler, Message, Output};

struct Passthrough;

impl Handler for Passthrough {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        Ok(vec![Output::from_message(msg)])
    }
}

sandpiper_sdk::export!(Passthrough);
