//! `versioned`: passthrough that appends the header `x-version`, whose value
//! is the config key `version` (default `v1`). Used in hot-swap tests: build
//! it, or run it with different `version` settings, to tell which plugin
//! produced a record.

use sandpiper_sdk::{Failure, Handler, Message, Output, config};

struct Versioned;

impl Handler for Versioned {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        let version = config::get("version").unwrap_or_else(|| "v1".to_string());
        Ok(vec![
            Output::from_message(msg).with_header("x-version", version),
        ])
    }
}

sandpiper_sdk::export!(Versioned);
