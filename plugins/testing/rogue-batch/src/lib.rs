//! Reports an echo of each record's value, except that the record whose
//! value is
//!
//! - `skip` makes `handle-batch` return without reporting it;
//! - `twice` is reported twice, then `handle-batch` returns (when it is the
//!   batch's last record, the second report comes after the host said stop);
//! - `garbled` is reported through `finished-encoded` with bytes that are
//!   not outputs in its layout;
//! - `many` is reported through `finished-encoded` with 100,000 empty
//!   outputs.
//!
//! The others are reported through `finished`, the typed form (the SDK's
//! plugins use `finished-encoded`).
//!
//! It reads only the values, skipping the other fields of the layout by
//! their sizes.

#[allow(clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "batch-processor",
        pub_export_macro: true,
    });
}

use bindings::Guest;
use bindings::sandpiper::plugin::batch::{finished, finished_encoded};
use bindings::sandpiper::plugin::types::{Failure, Message, Output};

struct Rogue;

fn echo(msg: Message) -> Result<Vec<Output>, Failure> {
    Ok(vec![Output {
        topic: None,
        key: msg.key,
        value: msg.value,
        headers: msg.headers,
    }])
}

impl Guest for Rogue {
    fn handle(msg: Message) -> Result<Vec<Output>, Failure> {
        echo(msg)
    }

    fn handle_batch(records: Vec<u8>) {
        for value in values(&records) {
            let outcome: Result<Vec<Output>, Failure> = Ok(vec![Output {
                topic: None,
                key: None,
                value: Some(value.to_vec()),
                headers: Vec::new(),
            }]);
            let report = || finished(outcome.as_ref().map(Vec::as_slice));
            match value {
                b"skip" => return,
                b"many" => {
                    // No topic, key or value, no headers: 7 bytes each.
                    let empty = [0u8; 7];
                    let outputs: Vec<u8> =
                        empty.iter().copied().cycle().take(7 * 100_000).collect();
                    if !finished_encoded(Ok(&outputs)) {
                        return;
                    }
                    continue;
                }
                // An option tag of 7: no output starts so.
                b"garbled" => {
                    if !finished_encoded(Ok(&[7, 0, 0, 0])) {
                        return;
                    }
                    continue;
                }
                b"twice" => {
                    report();
                    report();
                    return;
                }
                _ => {}
            }
            if !report() {
                return;
            }
        }
    }
}

/// The records' values, read by skipping the other fields of the layout
/// by their sizes (the tests' records have a value).
fn values(mut rest: &[u8]) -> Vec<&[u8]> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        head
    }
    fn bytes<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
        let len = u32::from_le_bytes(take(rest, 4).try_into().expect("4 bytes"));
        take(rest, len as usize)
    }
    let mut values = Vec::new();
    while !rest.is_empty() {
        bytes(&mut rest); // topic
        take(&mut rest, 4 + 8); // partition, offset
        if take(&mut rest, 1) == [1] {
            take(&mut rest, 8); // timestamp
        }
        if take(&mut rest, 1) == [1] {
            bytes(&mut rest); // key
        }
        assert_eq!(
            take(&mut rest, 1),
            [1],
            "rogue-batch: records with a value only"
        );
        values.push(bytes(&mut rest));
        let headers = u32::from_le_bytes(take(&mut rest, 4).try_into().expect("4 bytes"));
        for _ in 0..headers * 2 {
            bytes(&mut rest);
        }
    }
    values
}

bindings::export!(Rogue with_types_in bindings);
