//! Which dead letters a replay re-drives: the operator's filters, then the
//! loop guard that stops a record from going round forever.

use super::letter::DeadLetter;

/// `--offsets P:FROM-TO`: DLQ offsets `FROM..=TO` of partition `P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRange {
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

impl std::str::FromStr for OffsetRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected PARTITION:FROM-TO, e.g. 0:100-199");
        let (partition, range) = s.split_once(':').ok_or_else(bad)?;
        let (from, to) = range.split_once('-').ok_or_else(bad)?;
        let range = Self {
            partition: partition.trim().parse().map_err(|_| bad())?,
            from: from.trim().parse().map_err(|_| bad())?,
            to: to.trim().parse().map_err(|_| bad())?,
        };
        if range.partition < 0 || range.from < 0 || range.to < range.from {
            return Err(format!(
                "`{s}`: partition and offsets must be non-negative, FROM <= TO"
            ));
        }
        Ok(range)
    }
}

/// The operator's filters; an empty one matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Failure kinds (`trap`, `rejected`...); any of them matches.
    pub kinds: Vec<String>,
    /// A prefix of the `sandpiper.plugin` value (`chaos`, `chaos@sha256:12ab`).
    pub plugin: Option<String>,
    /// On the original record's timestamp, epoch ms, inclusive.
    pub since: Option<i64>,
    /// On the original record's timestamp, epoch ms, exclusive.
    pub until: Option<i64>,
    /// DLQ offsets; any of them matches.
    pub offsets: Vec<OffsetRange>,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let kind = self.kinds.is_empty() || self.kinds.contains(&letter.kind);
        let plugin = self
            .plugin
            .as_ref()
            .is_none_or(|p| letter.plugin.starts_with(p.as_str()));
        // A record without a timestamp cannot be said to be in a window.
        let since = self
            .since
            .is_none_or(|s| letter.timestamp.is_some_and(|t| t >= s));
        let until = self
            .until
            .is_none_or(|u| letter.timestamp.is_some_and(|t| t < u));
        let offsets = self.offsets.is_empty()
            || self.offsets.iter().any(|r| {
                r.partition == letter.dlq_partition && (r.from..=r.to).contains(&letter.dlq_offset)
            });
        kind && plugin && since && until && offsets
    }
}

/// What a replay does with one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Re-drive it to its original topic, with this replay count.
    Replay { topic: &'a str, replays: u32 },
    /// The filters leave it out.
    SkipFilter,
    /// Replayed `max_replays` times already (or its count is unreadable).
    SkipLoopGuard,
    /// No `sandpiper.original.topic`: not a Sandpiper dead letter.
    SkipInvalid,
}

/// The filters first, then the loop guard: a record already replayed
/// `max_replays` times is never replayed again. An unreadable count is
/// treated as exhausted: replaying it could loop without end.
pub fn decide<'a>(filter: &Filter, max_replays: u32, letter: &'a DeadLetter) -> Decision<'a> {
    if !filter.matches(letter) {
        return Decision::SkipFilter;
    }
    let Some(topic) = letter.topic.as_deref() else {
        return Decision::SkipInvalid;
    };
    match letter.replays {
        Some(done) if done < max_replays => Decision::Replay {
            topic,
            replays: done + 1,
        },
        _ => Decision::SkipLoopGuard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> DeadLetter {
        DeadLetter {
            dlq_partition: 1,
            dlq_offset: 10,
            timestamp: Some(1_000),
            topic: Some("in".into()),
            partition: Some(0),
            offset: Some(3),
            kind: "trap".into(),
            message: "boom".into(),
            plugin: "chaos@sha256:0123456789ab".into(),
            replays: Some(0),
        }
    }

    #[test]
    fn parses_offset_ranges() {
        assert_eq!(
            "2:10-20".parse(),
            Ok(OffsetRange {
                partition: 2,
                from: 10,
                to: 20
            })
        );
        for bad in ["2", "2:10", "x:1-2", "1:5-4", "-1:1-2", "1:1-2-3"] {
            assert!(bad.parse::<OffsetRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(Filter::default().matches(&letter()));
    }

    #[test]
    fn each_filter_narrows() {
        let l = letter();
        let f = |f: Filter| f.matches(&l);
        assert!(f(Filter {
            kinds: vec!["rejected".into(), "trap".into()],
            ..Filter::default()
        }));
        assert!(!f(Filter {
            kinds: vec!["rejected".into()],
            ..Filter::default()
        }));
        assert!(f(Filter {
            plugin: Some("chaos@sha256:0123".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            plugin: Some("uppercase".into()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            since: Some(1_000),
            until: Some(1_001),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            since: Some(1_001),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            until: Some(1_000),
            ..Filter::default()
        }));
        let range = |partition, from, to| OffsetRange {
            partition,
            from,
            to,
        };
        assert!(f(Filter {
            offsets: vec![range(0, 0, 100), range(1, 10, 10)],
            ..Filter::default()
        }));
        assert!(!f(Filter {
            offsets: vec![range(0, 0, 100), range(1, 11, 20)],
            ..Filter::default()
        }));
    }

    #[test]
    fn a_record_without_timestamp_is_outside_any_window() {
        let l = DeadLetter {
            timestamp: None,
            ..letter()
        };
        assert!(Filter::default().matches(&l));
        let window = Filter {
            since: Some(0),
            ..Filter::default()
        };
        assert!(!window.matches(&l));
    }

    #[test]
    fn the_loop_guard_stops_at_max_replays() {
        let with = |replays| DeadLetter {
            replays,
            ..letter()
        };
        let all = Filter::default();
        assert_eq!(
            decide(&all, 3, &with(Some(0))),
            Decision::Replay {
                topic: "in",
                replays: 1
            }
        );
        assert_eq!(
            decide(&all, 3, &with(Some(2))),
            Decision::Replay {
                topic: "in",
                replays: 3
            }
        );
        assert_eq!(decide(&all, 3, &with(Some(3))), Decision::SkipLoopGuard);
        assert_eq!(decide(&all, 3, &with(Some(9))), Decision::SkipLoopGuard);
        assert_eq!(decide(&all, 0, &with(Some(0))), Decision::SkipLoopGuard);
        assert_eq!(
            decide(&all, 3, &with(None)),
            Decision::SkipLoopGuard,
            "unreadable count"
        );
    }

    #[test]
    fn filters_come_before_the_guard() {
        let l = DeadLetter {
            replays: Some(5),
            ..letter()
        };
        let only_rejected = Filter {
            kinds: vec!["rejected".into()],
            ..Filter::default()
        };
        assert_eq!(decide(&only_rejected, 3, &l), Decision::SkipFilter);
        let no_topic = DeadLetter {
            topic: None,
            ..letter()
        };
        assert_eq!(
            decide(&Filter::default(), 3, &no_topic),
            Decision::SkipInvalid
        );
    }
}
