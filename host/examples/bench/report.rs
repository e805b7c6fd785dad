//! The benchmark's report: a Markdown table (with each figure's ratio to
//! the native loop), the targets met or missed, and PNG plots.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::matrix::{Row, median_by};
use crate::scenario::{Latency, Mode, Throughput};

fn rate(r: &Row) -> f64 {
    r.throughput.rate()
}

/// The median records/s, with the range of the rounds when there were
/// several.
fn rate_cell(r: &Row) -> String {
    let mut cell = format!("{:.0}", rate(r));
    if r.throughputs.len() > 1 {
        let (lo, hi) = range(r.throughputs.iter().map(Throughput::rate));
        let _ = write!(cell, " ({:.0}k-{:.0}k)", lo / 1e3, hi / 1e3);
    }
    cell
}

/// The lowest and the highest of `values`.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

fn cpu_us(r: &Row) -> f64 {
    r.throughput.cpu_us()
}

/// The median of `values` (the lower one of an even count, as for rounds).
fn median(values: &[f64]) -> f64 {
    median_by(values, |v| *v).unwrap_or(f64::NAN)
}

/// `f` of `r` against `f` of `base`: the median of the rounds' own ratios
/// when both ran the same rounds. The rounds interleave the modes, so the
/// two runs of one round are next to each other in time and a slow spell
/// of the machine falls on both sides of its ratio; across rounds it
/// moves every mode by a third. With one round, the ratio of the two.
fn paired_ratio(r: &Row, base: &Row, f: fn(&Throughput) -> f64) -> f64 {
    if r.throughputs.len() > 1 && r.throughputs.len() == base.throughputs.len() {
        median(
            &r.throughputs
                .iter()
                .zip(&base.throughputs)
                .map(|(a, b)| f(a) / f(b))
                .collect::<Vec<_>>(),
        )
    } else {
        f(&r.throughput) / f(&base.throughput)
    }
}

/// Whether `f` is positive in every round of `r`: a baseline of zero (a
/// quick run's window too short to tick the CPU clock) has no ratio.
fn all_positive(r: &Row, f: fn(&Throughput) -> f64) -> bool {
    r.throughputs
        .iter()
        .chain([&r.throughput])
        .all(|t| f(t) > 0.0)
}

/// `f` of `r`'s fixed-rate run against `base`'s at the same rate: the
/// median of the rounds' own values when both ran the same rounds (as for
/// [`paired_ratio`]). `None` when they did not run at the same rate.
fn paired_latency(r: &Row, base: &Row, f: fn(&Latency, &Latency) -> f64) -> Option<f64> {
    let (l, b) = (r.latency.as_ref()?, base.latency.as_ref()?);
    if l.rate != b.rate {
        return None;
    }
    Some(
        if r.latencies.len() > 1 && r.latencies.len() == base.latencies.len() {
            median(
                &r.latencies
                    .iter()
                    .zip(&base.latencies)
                    .map(|(a, b)| f(a, b))
                    .collect::<Vec<_>>(),
            )
        } else {
            f(l, b)
        },
    )
}

/// Milliseconds `r`'s p99 adds to `base`'s at the same rate.
fn added_p99_ms(r: &Row, base: &Row) -> Option<f64> {
    paired_latency(r, base, |a, b| (a.p99_us - b.p99_us) / 1000.0)
}

/// The row of `mode` at (`size`, `workers`).
pub fn find(rows: &[Row], size: usize, workers: usize, mode: Mode) -> Option<&Row> {
    rows.iter()
        .find(|r| r.size == size && r.workers == workers && r.mode == mode)
}

fn configs(rows: &[Row]) -> Vec<(usize, usize)> {
    let mut c: Vec<(usize, usize)> = rows.iter().map(|r| (r.size, r.workers)).collect();
    c.dedup();
    c
}

fn config_label((size, workers): (usize, usize)) -> String {
    let size = if size >= 1024 {
        format!("{} KB", size / 1024)
    } else {
        format!("{size} B")
    };
    format!(
        "{size}, {workers} worker{}",
        if workers == 1 { "" } else { "s" }
    )
}

/// The results table, in Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| records | workers | scenario | records/s (range) | MB/s | × native | CPU µs/record | × native | peak RSS | × native | fixed rate (records/s) | p50 | × native | p99 (range) | × native | p99 added |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let base = find(rows, r.size, r.workers, r.mode.baseline());
        let ratio = |f: fn(&Throughput) -> f64| match base {
            Some(b) if all_positive(b, f) => format!("{:.2}", paired_ratio(r, b, f)),
            Some(_) => "n/a".to_owned(),
            None => String::new(),
        };
        // Latency against the native loop at the same rate.
        let latency_ratio = |f: fn(&Latency, &Latency) -> f64| {
            base.and_then(|b| paired_latency(r, b, f))
                .map_or_else(|| "n/a".to_owned(), |x| format!("{x:.2}"))
        };
        let (rate_at, p50, p99) = r.latency.as_ref().map_or_else(Default::default, |l| {
            let mut p99 = format!("{:.1} ms", l.p99_us / 1000.0);
            if r.latencies.len() > 1 {
                let (lo, hi) = range(r.latencies.iter().map(|l| l.p99_us));
                let _ = write!(p99, " ({:.0}-{:.0})", lo / 1000.0, hi / 1000.0);
            }
            (
                l.rate.to_string(),
                format!("{:.1} ms", l.p50_us / 1000.0),
                p99,
            )
        });
        let _ = writeln!(
            t,
            "| {} B | {} | {} | {} | {:.1} | {} | {:.1} | {} | {} MiB | {} | {rate_at} | {p50} | {} | {p99} | {} | {} |",
            r.size,
            r.workers,
            r.mode.label(),
            rate_cell(r),
            rate(r) * r.size as f64 / 1e6,
            ratio(Throughput::rate),
            cpu_us(r),
            ratio(Throughput::cpu_us),
            r.throughput.peak_rss_kib / 1024,
            ratio(|t| t.peak_rss_kib as f64),
            latency_ratio(|a, b| a.p50_us / b.p50_us),
            latency_ratio(|a, b| a.p99_us / b.p99_us),
            base.and_then(|b| added_p99_ms(r, b))
                .map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:+.1} ms")),
        );
    }
    t
}

/// The targets, one line each: the figure and whether it is met.
pub fn targets(rows: &[Row]) -> String {
    let mut t = String::new();
    for (size, workers) in configs(rows) {
        let get = |m| find(rows, size, workers, m);
        let label = config_label((size, workers));
        if let (Some(n), Some(r), Some(f), Some(x)) = (
            get(Mode::Native),
            get(Mode::Reuse),
            get(Mode::PerRecord),
            get(Mode::Traps),
        ) {
            let mark = |ok: bool| if ok { "met" } else { "**missed**" };
            let reuse = paired_ratio(r, n, Throughput::rate);
            let fresh = paired_ratio(f, n, Throughput::rate);
            let drop = 1.0 - paired_ratio(x, r, Throughput::rate);
            let _ = writeln!(
                t,
                "- {label}: reuse {reuse:.2}× native (≥ 0.85: {}); fresh instance per record {fresh:.2}× (≥ 0.5: {}); 1% traps {:+.1}% throughput against reuse (at most 10% lower: {})",
                mark(reuse >= 0.85),
                mark(fresh >= 0.5),
                -drop * 100.0,
                mark(drop <= 0.10),
            );
            if let (Some(ln), Some(added)) = (&n.latency, added_p99_ms(r, n)) {
                let _ = writeln!(
                    t,
                    "  - at {} records/s (half the lower live maximum: reuse mode's {:.0} records/s, the native loop's {}; reuse's drain maximum {:.0}): reuse adds {added:+.1} ms to the native loop's p99, {} (≤ 1 ms: {})",
                    ln.rate,
                    r.live_max.unwrap_or(f64::NAN),
                    n.live_max
                        .map_or_else(|| "none found".to_owned(), |m| format!("{m:.0}")),
                    rate(r),
                    match r.latencies.len() {
                        n @ 2.. => format!("the median of {n} rounds"),
                        _ => "one round".to_owned(),
                    },
                    mark(added <= 1.0),
                );
            }
        }
        if let Some(line) = cores_line(rows, size, workers) {
            let _ = writeln!(t, "- {label}: {line}");
        }
    }
    t
}

/// How many of a configuration's runs had the cores far apart (a probe
/// before or after the run above `probe::FAR_NS`), when they were probed.
fn cores_line(rows: &[Row], size: usize, workers: usize) -> Option<String> {
    let rows = || {
        rows.iter()
            .filter(|r| (r.size, r.workers) == (size, workers))
    };
    let (far_t, of_t) = count_far(rows().flat_map(|r| r.throughputs.iter().map(|t| t.cores_ns)));
    let (far_l, of_l) = count_far(rows().flat_map(|r| r.latencies.iter().map(|l| l.cores_ns)));
    (of_t + of_l > 0).then(|| {
        format!(
            "cores far apart (a probe above {} ns before or after the run): {far_t} of {of_t} throughput runs, {far_l} of {of_l} fixed-rate runs",
            crate::probe::FAR_NS
        )
    })
}

/// Probed runs with the cores far apart, and probed runs.
fn count_far(probes: impl Iterator<Item = Option<[f64; 2]>>) -> (usize, usize) {
    probes.flatten().fold((0, 0), |(far, of), probe| {
        let is_far = probe.iter().any(|&ns| ns > crate::probe::FAR_NS);
        (far + usize::from(is_far), of + 1)
    })
}

const COLORS: [RGBColor; 6] = [
    RGBColor(90, 90, 90),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(150, 150, 150),
    RGBColor(44, 160, 44),
];

/// Debian's DejaVu Sans (package `fonts-dejavu-core`, which `cargo xtask
/// bench` installs), for the plots' text.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes.leak())
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    Ok(())
}

/// Grouped bars: one group per (size, workers), one bar per mode.
fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    rows: &[Row],
    value: impl Fn(&Row) -> Option<f64>,
) -> anyhow::Result<()> {
    let groups = configs(rows);
    let modes = Mode::ALL.len();
    let slots = groups.len() * (modes + 1);
    let top = rows.iter().filter_map(&value).fold(0.0f64, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d((0..slots).into_segmented(), 0.0..top.max(1e-9))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(slots)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(slot) if slot % (modes + 1) == modes / 2 => groups
                .get(slot / (modes + 1))
                .map(|&g| config_label(g))
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc(y_label)
        .label_style(("sans-serif", 15))
        .draw()?;
    for (m, mode) in Mode::ALL.into_iter().enumerate() {
        let color = COLORS[m];
        let bars: Vec<_> = groups
            .iter()
            .enumerate()
            .filter_map(|(g, &(size, workers))| {
                let v = find(rows, size, workers, mode).and_then(&value)?;
                let slot = g * (modes + 1) + m;
                Some(Rectangle::new(
                    [
                        (SegmentValue::Exact(slot), 0.0),
                        (SegmentValue::Exact(slot + 1), v),
                    ],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(mode.short())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `throughput.png` and `latency.png` into `dir`.
pub fn plots(rows: &[Row], dir: &Path) -> anyhow::Result<()> {
    register_font()?;
    bars(
        &dir.join("bench-throughput.png"),
        "Throughput (records/s, higher is better)",
        "records/s",
        rows,
        |r| Some(rate(r)),
    )?;
    bars(
        &dir.join("bench-latency.png"),
        "p99 end-to-end latency at a fixed rate (ms, lower is better)",
        "p99 latency (ms)",
        rows,
        |r| r.latency.as_ref().map(|l| l.p99_us / 1000.0),
    )?;
    Ok(())
}
