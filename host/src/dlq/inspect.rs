//! `sandpiper dlq inspect`: a pipeline's dead letters as a table, with
//! counts by failure kind and by plugin version.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use super::letter::DeadLetter;
use super::{CONNECT_TIMEOUT, client_settings, pipeline, time};
use crate::config::Config;
use crate::kafka::replay::{Start, TopicReader};

/// The group inspect's reader joins; it never commits anything.
const INSPECT_GROUP: &str = "sandpiper-dlq-inspect";

/// What a dead-letter topic holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub topic: String,
    /// Dead letters read (every one, whatever `limit`).
    pub total: u64,
    /// Counts over every record read.
    pub by_kind: BTreeMap<String, u64>,
    pub by_plugin: BTreeMap<String, u64>,
    /// The newest `limit` records (all without a limit), oldest first.
    pub rows: Vec<DeadLetter>,
}

/// Reads the pipeline's dead-letter topic from the beginning to its current
/// end; keeps the last `limit` rows.
pub async fn collect(
    config: &Config,
    pipeline_name: &str,
    limit: Option<usize>,
) -> anyhow::Result<Report> {
    let pipeline = pipeline(config, Some(pipeline_name))?;
    let settings = client_settings(config, pipeline, INSPECT_GROUP)?;
    let topic = &pipeline.dead_letter.0;
    let mut reader = TopicReader::open(&settings, topic, Start::Beginning, CONNECT_TIMEOUT).await?;
    let mut report = Report {
        topic: topic.clone(),
        ..Report::default()
    };
    // Keyed by time then position, so the last `limit` are the newest
    // whichever partition they were read from.
    let mut rows = BTreeMap::new();
    let result = async {
        while let Some(record) = reader.next().await? {
            let letter = DeadLetter::read(&record);
            report.total += 1;
            *report.by_kind.entry(label(&letter.kind)).or_default() += 1;
            *report.by_plugin.entry(label(&letter.plugin)).or_default() += 1;
            let key = (letter.timestamp, letter.dlq_partition, letter.dlq_offset);
            rows.insert(key, letter);
            if limit.is_some_and(|n| rows.len() > n) {
                rows.pop_first();
            }
        }
        anyhow::Ok(())
    }
    .await;
    reader.close(CONNECT_TIMEOUT).await;
    result?;
    report.rows = rows.into_values().collect();
    Ok(report)
}

fn label(value: &str) -> String {
    if value.is_empty() {
        "(none)".to_owned()
    } else {
        value.to_owned()
    }
}

/// Cuts `text` to `width` characters, on one line.
fn fit(text: &str, width: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= width {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

impl Report {
    /// The table, then the counts; the message column gets what `width` leaves.
    pub fn print(&self, out: &mut impl Write, width: usize) -> std::io::Result<()> {
        let header = ["TIME", "DLQ", "ORIGINAL", "KIND", "REPLAYS", "PLUGIN"];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                let original = match (&r.topic, r.partition, r.offset) {
                    (Some(t), Some(p), Some(o)) => format!("{t}/{p}/{o}"),
                    (Some(t), _, _) => t.clone(),
                    _ => "?".to_owned(),
                };
                [
                    r.timestamp.map_or_else(|| "-".to_owned(), time::format_ms),
                    format!("{}:{}", r.dlq_partition, r.dlq_offset),
                    original,
                    label(&r.kind),
                    r.replays.map_or_else(|| "?".to_owned(), |n| n.to_string()),
                    label(&r.plugin),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let used: usize = widths.iter().map(|w| w + 2).sum();
        let message_width = width.saturating_sub(used).max(20);
        let line = |out: &mut dyn Write, cells: &[String], message: &str| {
            for (cell, w) in cells.iter().zip(widths) {
                write!(out, "{cell:<w$}  ")?;
            }
            writeln!(out, "{}", fit(message, message_width))
        };
        let header = header.map(str::to_owned);
        line(out, &header, "MESSAGE")?;
        for (row, letter) in cells.iter().zip(&self.rows) {
            line(out, row, &letter.message)?;
        }
        if self.rows.len() as u64 != self.total {
            writeln!(out, "(last {} of {} shown)", self.rows.len(), self.total)?;
        }
        writeln!(out)?;
        writeln!(out, "{} dead letters in {}", self.total, self.topic)?;
        writeln!(out, "by kind:")?;
        for (kind, n) in &self.by_kind {
            writeln!(out, "  {n:>8}  {kind}")?;
        }
        writeln!(out, "by plugin version:")?;
        for (plugin, n) in &self.by_plugin {
            writeln!(out, "  {n:>8}  {plugin}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_cuts_on_characters_and_flattens_lines() {
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("a\nb", 10), "a b");
        assert_eq!(fit("éééééé", 4), "ééé…");
    }

    #[test]
    fn the_table_fits_the_width_and_counts_everything() {
        let row = DeadLetter {
            dlq_partition: 0,
            dlq_offset: 7,
            timestamp: Some(1_700_000_000_000),
            topic: Some("in".into()),
            partition: Some(1),
            offset: Some(3),
            kind: "trap".into(),
            message: "x".repeat(500),
            plugin: "chaos@sha256:0123456789ab".into(),
            replays: Some(1),
        };
        let report = Report {
            topic: "dlq".into(),
            total: 5,
            by_kind: [("trap".to_owned(), 5)].into(),
            by_plugin: [("chaos@sha256:0123456789ab".to_owned(), 5)].into(),
            rows: vec![row],
        };
        let mut out = Vec::new();
        report.print(&mut out, 120).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME"), "{text}");
        assert!(
            lines[1].starts_with("2023-11-14T22:13:20.000Z  0:7"),
            "{text}"
        );
        assert!(
            lines[1].contains("in/1/3") && lines[1].ends_with('…'),
            "{text}"
        );
        assert_eq!(lines[1].chars().count(), 120, "{text}");
        assert!(text.contains("(last 1 of 5 shown)"), "{text}");
        assert!(text.contains("       5  trap"), "{text}");
    }
}
