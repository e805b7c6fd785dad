//! Replay progress: a bar when a person watches a long replay, log lines
//! otherwise (a bar in a CI log or a pipe is noise).

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Below this many records a replay is over before a bar helps.
const BAR_FROM: u64 = 300;
/// How often a log line reports progress when there is no bar.
const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) enum Progress {
    Bar(ProgressBar),
    Log { total: u64, last: Instant },
}

impl Progress {
    /// `total`: records expected (from the watermarks); `allowed`: whether
    /// the caller wants a bar at all (library callers and tests do not).
    pub(super) fn new(total: u64, allowed: bool) -> Self {
        if allowed && total >= BAR_FROM && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, {eta}) {msg}",
            ) {
                bar.set_style(style);
            }
            Self::Bar(bar)
        } else {
            Self::Log {
                total,
                last: Instant::now(),
            }
        }
    }

    /// One more record read; `status` says what happened so far.
    pub(super) fn tick(&mut self, read: u64, status: impl FnOnce() -> String) {
        match self {
            Self::Bar(bar) => {
                bar.set_position(read);
                if read.is_multiple_of(100) {
                    bar.set_message(status());
                }
            }
            Self::Log { total, last } => {
                if last.elapsed() >= LOG_EVERY {
                    *last = Instant::now();
                    tracing::info!(read, total = *total, status = %status(), "Replaying.");
                }
            }
        }
    }

    pub(super) fn finish(self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
