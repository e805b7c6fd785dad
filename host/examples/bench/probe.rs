//! `probe [SECONDS]`: how far apart the machine's two cores are, over time.
//!
//! Two threads, pinned one to each of the first two cores, bounce one
//! cache line back and forth; every 0.2 s the mean round trip is one
//! sample. On this virtual machine the round trip is about 130 ns at some
//! times and about 400 ns at others, in spells of seconds (the hypervisor
//! placing the two virtual cores near or far apart). The pipeline's host
//! code hands every record between threads on the two cores, so its
//! throughput and latency follow those spells (BENCHMARKS.md counts the
//! runs with the cores far apart). Run it alone: it keeps both cores busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// One sample's length.
const SAMPLE: Duration = Duration::from_millis(200);

pub fn probe(seconds: f64) -> anyhow::Result<()> {
    let samples = bounce(Duration::from_secs_f64(seconds), SAMPLE)?;
    println!("{}", summary(&samples));
    Ok(())
}

/// The mean round trip over `window`, in ns; `None` without two cores to
/// pin to. The benchmark takes one before and one after each run, so that
/// a round in a far spell can be told from one in a near spell.
pub fn round_trip_ns(window: Duration) -> Option<f64> {
    let samples = bounce(window, window / 4).ok()?;
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
}

/// Bounces a cache line between the first two cores for `total`; one mean
/// round trip (ns) per `sample`.
fn bounce(total: Duration, sample: Duration) -> anyhow::Result<Vec<f64>> {
    let cores = core_affinity::get_core_ids().context("listing the cores")?;
    let (Some(&near), Some(&far)) = (cores.first(), cores.get(1)) else {
        bail!("the probe needs two cores");
    };
    let line = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let (line, stop) = (line.clone(), stop.clone());
        std::thread::spawn(move || {
            let pinned = core_affinity::set_for_current(far);
            // Answers every odd value with the next even one.
            let mut expect = 1;
            while !stop.load(Ordering::Relaxed) {
                if line.load(Ordering::Acquire) == expect {
                    line.store(expect + 1, Ordering::Release);
                    expect += 2;
                }
            }
            pinned
        })
    };
    // Measured from a thread of its own: a pinned caller would pass its
    // one-core mask on to the processes it starts (the benchmark's runs).
    let measure = {
        let (line, stop) = (line.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut samples: Vec<f64> = Vec::new();
            if !core_affinity::set_for_current(near) {
                stop.store(true, Ordering::Relaxed);
                return None;
            }
            let (start, mut since, mut trips) = (Instant::now(), Instant::now(), 0u64);
            let mut value = 0;
            while start.elapsed() < total {
                line.store(value + 1, Ordering::Release);
                while line.load(Ordering::Acquire) != value + 2 {
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                }
                value += 2;
                trips += 1;
                if trips % 256 == 0 && since.elapsed() >= sample {
                    samples.push(since.elapsed().as_secs_f64() * 1e9 / trips as f64);
                    (since, trips) = (Instant::now(), 0);
                }
            }
            stop.store(true, Ordering::Relaxed);
            Some(samples)
        })
    };
    let samples = measure.join().ok().flatten();
    stop.store(true, Ordering::Relaxed);
    match (samples, echo.join()) {
        (Some(samples), Ok(true)) => Ok(samples),
        _ => bail!("cannot pin the probe's threads to two cores"),
    }
}

/// Round trips above this are the far placement. On this machine the two
/// placements measure about 130 and 400 ns; elsewhere, read the histogram.
pub const FAR_NS: f64 = 250.0;

/// Percentiles, a histogram by 50 ns, and the spells above [`FAR_NS`].
fn summary(samples: &[f64]) -> String {
    if samples.is_empty() {
        return "no samples (run for at least a second)".to_owned();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let mut histogram = std::collections::BTreeMap::new();
    for &s in samples {
        *histogram.entry((s / 50.0) as u64 * 50).or_insert(0usize) += 1;
    }
    let histogram: Vec<String> = histogram
        .iter()
        .map(|(low, n)| format!("{low}-{} ns {:.0}%", low + 50, percent(*n, samples.len())))
        .collect();
    let mut spells: Vec<usize> = Vec::new();
    let mut run = 0;
    for &s in samples.iter().chain([&0.0]) {
        if s > FAR_NS {
            run += 1;
        } else if run > 0 {
            spells.push(run);
            run = 0;
        }
    }
    let far: usize = spells.iter().sum();
    let secs = |n: usize| n as f64 * SAMPLE.as_secs_f64();
    let mut line = format!(
        "cross-core round trip, {} samples of {:?}: median {:.0} ns (10th percentile {:.0}, 90th {:.0})\n\
         by 50 ns: {}\nabove {FAR_NS} ns: {:.0}% of the time",
        samples.len(),
        SAMPLE,
        at(0.5),
        at(0.1),
        at(0.9),
        histogram.join(", "),
        percent(far, samples.len()),
    );
    if let (Some(shortest), Some(longest)) = (spells.iter().min(), spells.iter().max()) {
        line += &format!(
            ", in {} spells of {:.1} to {:.1} s",
            spells.len(),
            secs(*shortest),
            secs(*longest)
        );
    }
    line
}

fn percent(n: usize, of: usize) -> f64 {
    100.0 * n as f64 / of as f64
}
