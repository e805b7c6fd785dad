//! `uppercase`: one output per record, value ASCII-uppercased (non-ASCII and
//! non-UTF-8 bytes are kept as they are), same key and headers, default
//! topic. A null value gives one output with a null value.

use sandpiper_sdk::{Failure, Handler, Message, Output};

struct Uppercase;

impl Handler for Uppercase {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        let mut out = Output::from_message(msg);
        if let Some(value) = out.value.as_mut() {
            value.make_ascii_uppercase();
        }
        Ok(vec![out])
    }
}

sandpiper_sdk::export!(Uppercase);
