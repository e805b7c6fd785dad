//! Building the records a pipeline produces: outputs marked with the plugin
//! version, and dead letters carrying the original record and the reason.

use crate::kafka::{Mark, Outgoing};
use crate::record::{Failure, Headers, Output, Record};
use crate::runtime::PluginId;

pub const H_PLUGIN: &str = "sandpiper.plugin";
pub const H_KIND: &str = "sandpiper.error.kind";
pub const H_MESSAGE: &str = "sandpiper.error.message";
pub const H_TRAP: &str = "sandpiper.error.trap";
pub const H_BACKTRACE: &str = "sandpiper.error.backtrace";
pub const H_STDERR: &str = "sandpiper.error.stderr";
pub const H_TOPIC: &str = "sandpiper.original.topic";
pub const H_PARTITION: &str = "sandpiper.original.partition";
pub const H_OFFSET: &str = "sandpiper.original.offset";
pub const H_TIMESTAMP: &str = "sandpiper.original.timestamp";
pub const H_GROUP: &str = "sandpiper.group";
pub const H_PIPELINE: &str = "sandpiper.pipeline";
pub const H_ATTEMPTS: &str = "sandpiper.attempts";

/// Caps on diagnostic headers: a dead letter must never be too large to
/// produce because of its diagnostics (the original payload is never cut).
const MAX_MESSAGE: usize = 2048;
const MAX_BACKTRACE: usize = 4096;
const MAX_STDERR: usize = 4096;

/// Headers this host sets on a dead letter; older copies are replaced.
fn is_ours(name: &str) -> bool {
    name.starts_with("sandpiper.error.")
        || name.starts_with("sandpiper.original.")
        || matches!(name, H_GROUP | H_PIPELINE | H_PLUGIN | H_ATTEMPTS)
}

/// Keeps the head of `s` within `max` bytes, on a char boundary.
fn cap_head(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Keeps the tail of `s` within `max` bytes (the end of stderr matters most).
fn cap_tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = s.len() - max;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    &s[cut..]
}

/// Removes the diagnostic headers (message, trap, backtrace, stderr) of a
/// dead letter, keeping the original record, the kind and where it came
/// from: the last try for a dead letter its topic refuses for good.
pub fn strip_diagnostics(letter: &mut Outgoing) {
    letter
        .headers
        .retain(|(k, _)| !matches!(k.as_str(), H_MESSAGE | H_TRAP | H_BACKTRACE | H_STDERR));
}

/// Where the pipeline's records go and how they are labelled.
#[derive(Debug, Clone)]
pub struct Labels {
    pub pipeline: String,
    pub group: String,
    pub output: String,
    pub dead_letter: String,
    /// Mark outputs with `sandpiper.plugin`.
    pub plugin_header: bool,
}

impl Labels {
    /// The records to produce for a plugin's outputs (an iterator, so that
    /// the pipeline stages them without a vector per record).
    pub fn outputs<'a>(
        &'a self,
        outputs: Vec<Output>,
        plugin: &'a PluginId,
    ) -> impl ExactSizeIterator<Item = Outgoing> + 'a {
        outputs.into_iter().map(move |o| {
            let mut headers = o.headers;
            let mark = self.plugin_header.then(|| {
                // The plugin cannot set ours.
                headers.retain(|(k, _)| k != H_PLUGIN);
                Mark {
                    key: H_PLUGIN,
                    value: plugin.label_shared(),
                }
            });
            Outgoing {
                topic: o.topic.unwrap_or_else(|| self.output.clone()),
                key: o.key,
                value: o.value,
                headers,
                mark,
                timestamp: None,
            }
        })
    }

    /// The dead letter of `record`: its key, value, headers and timestamp
    /// unchanged, plus the reason in `sandpiper.*` headers.
    pub fn dead_letter(&self, record: Record, failure: &Failure, attempts: u32) -> Outgoing {
        let mut headers: Headers = record.headers;
        headers.retain(|(k, _)| !is_ours(k));
        let mut add = |k: &str, v: String| headers.push((k.to_owned(), v.into_bytes()));
        add(H_KIND, failure.kind.to_string());
        add(
            H_MESSAGE,
            cap_head(&failure.message, MAX_MESSAGE).to_owned(),
        );
        if let Some(trap) = &failure.trap {
            add(H_TRAP, trap.clone());
        }
        if !failure.backtrace.is_empty() {
            add(
                H_BACKTRACE,
                cap_head(&failure.backtrace.join("\n"), MAX_BACKTRACE).to_owned(),
            );
        }
        if !failure.stderr.is_empty() {
            add(H_STDERR, cap_tail(&failure.stderr, MAX_STDERR).to_owned());
        }
        add(H_TOPIC, record.topic);
        add(H_PARTITION, record.partition.to_string());
        add(H_OFFSET, record.offset.to_string());
        if let Some(ts) = record.timestamp {
            add(H_TIMESTAMP, ts.to_string());
        }
        add(H_GROUP, self.group.clone());
        add(H_PIPELINE, self.pipeline.clone());
        add(H_PLUGIN, failure.plugin.to_string());
        add(H_ATTEMPTS, attempts.to_string());
        Outgoing {
            topic: self.dead_letter.clone(),
            key: record.key,
            value: record.value,
            headers,
            mark: None,
            timestamp: record.timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::FailureKind;

    fn labels() -> Labels {
        Labels {
            pipeline: "p".into(),
            group: "g".into(),
            output: "out".into(),
            dead_letter: "dlq".into(),
            plugin_header: true,
        }
    }

    #[test]
    fn dead_letter_keeps_the_original_and_replaces_our_headers() {
        let plugin = PluginId::new("chaos", b"bytes");
        let record = Record {
            topic: "in".into(),
            partition: 2,
            offset: 41,
            timestamp: Some(1_700_000_000_000),
            key: Some(vec![0, 255, 1]),
            value: None,
            headers: vec![
                ("x".into(), vec![0xff, 0xfe]),
                (H_KIND.into(), b"stale".to_vec()),
                ("sandpiper.replay.count".into(), b"1".to_vec()),
            ],
        };
        let mut failure = Failure::new(FailureKind::Trap, "boom".repeat(1000), plugin.clone());
        failure.trap = Some("unreachable".into());
        failure.stderr = "é".repeat(10_000);
        let dl = labels().dead_letter(record, &failure, 1);
        assert_eq!(dl.topic, "dlq");
        assert_eq!(dl.key, Some(vec![0, 255, 1]));
        assert_eq!(dl.value, None);
        assert_eq!(dl.timestamp, Some(1_700_000_000_000));
        let get = |k: &str| -> Vec<&[u8]> {
            dl.headers
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_slice())
                .collect()
        };
        assert_eq!(get("x"), vec![&[0xff, 0xfe][..]]);
        assert_eq!(get(H_KIND), vec![&b"trap"[..]], "replaced, not appended");
        assert_eq!(get("sandpiper.replay.count"), vec![&b"1"[..]]);
        assert_eq!(get(H_OFFSET), vec![&b"41"[..]]);
        assert_eq!(get(H_PARTITION), vec![&b"2"[..]]);
        assert_eq!(get(H_PLUGIN), vec![plugin.to_string().as_bytes()]);
        assert!(get(H_MESSAGE)[0].len() <= MAX_MESSAGE);
        assert!(get(H_STDERR)[0].len() <= MAX_STDERR);
        assert!(std::str::from_utf8(get(H_STDERR)[0]).is_ok());

        let mut stripped = dl.clone();
        strip_diagnostics(&mut stripped);
        let names: Vec<&str> = stripped.headers.iter().map(|(k, _)| k.as_str()).collect();
        for gone in [H_MESSAGE, H_TRAP, H_STDERR] {
            assert!(!names.contains(&gone), "{gone} dropped: {names:?}");
        }
        for kept in ["x", H_KIND, H_TOPIC, H_PARTITION, H_OFFSET, H_PLUGIN] {
            assert!(names.contains(&kept), "{kept} kept: {names:?}");
        }
        assert_eq!((stripped.key, stripped.value), (dl.key, dl.value));
    }

    #[test]
    fn outputs_default_topic_and_plugin_header() {
        let plugin = PluginId::new("up", b"v1");
        let labels = labels();
        let outs: Vec<Outgoing> = labels
            .outputs(
                vec![
                    Output {
                        value: Some(b"a".to_vec()),
                        headers: vec![(H_PLUGIN.into(), b"spoofed".to_vec())],
                        ..Output::default()
                    },
                    Output {
                        topic: Some("elsewhere".into()),
                        ..Output::default()
                    },
                ],
                &plugin,
            )
            .collect();
        assert_eq!(outs[0].topic, "out");
        assert_eq!(outs[1].topic, "elsewhere");
        assert_eq!(outs[0].headers, vec![], "the plugin's own mark is dropped");
        for out in &outs {
            let mark = out.mark.as_ref().expect("marked");
            assert_eq!((mark.key, &*mark.value), (H_PLUGIN, &*plugin.to_string()));
        }
        let unmarked = Labels {
            plugin_header: false,
            ..labels
        };
        let outs: Vec<Outgoing> = unmarked.outputs(vec![Output::default()], &plugin).collect();
        assert_eq!(outs[0].mark, None);
    }
}
