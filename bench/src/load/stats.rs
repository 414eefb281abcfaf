//! Percentiles and per-run summaries.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::{LoadResult, Outcome};

/// The distribution of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Number of values.
    pub count: u64,
    /// Exact mean.
    pub mean: Duration,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Exact maximum.
    pub max: Duration,
}

/// The largest value the histogram resolves; longer durations count as this. No request of a
/// run lasts an hour.
const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;

/// Percentiles of `values` at microsecond resolution with three significant digits (an
/// HdrHistogram, so that millions of outcomes take constant memory); all zero for no values.
pub fn percentiles(values: impl IntoIterator<Item = Duration>) -> Percentiles {
    let mut histogram = Histogram::<u64>::new_with_max(HISTOGRAM_MAX_MICROS, 3)
        .expect("constant histogram bounds are valid");
    let mut sum = Duration::ZERO;
    let mut max = Duration::ZERO;
    for value in values {
        histogram.saturating_record(u64::try_from(value.as_micros()).unwrap_or(u64::MAX));
        sum = sum.saturating_add(value);
        max = max.max(value);
    }
    let count = histogram.len();
    if count == 0 {
        return Percentiles::default();
    }
    let at = |quantile: f64| Duration::from_micros(histogram.value_at_quantile(quantile));
    Percentiles {
        count,
        mean: sum / u32::try_from(count).unwrap_or(u32::MAX),
        // HdrHistogram reports the highest value of a bucket: never above the true maximum.
        p50: at(0.50).min(max),
        p90: at(0.90).min(max),
        p99: at(0.99).min(max),
        p999: at(0.999).min(max),
        max,
    }
}

/// A run (or part of one) in a few numbers: what the report's tables show.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Requests that succeeded ([`Outcome::ok`]).
    pub ok: u64,
    /// Requests that did not.
    pub failed: u64,
    /// Open-loop arrivals never sent (see [`LoadSpec::max_in_flight`](super::LoadSpec)); they
    /// have no label, so this is the whole run's count even in [`LoadResult::summary_where`].
    pub dropped: u64,
    /// Successful requests per second over the run's elapsed time (goodput).
    pub throughput: f64,
    /// End-to-end latency of the successful requests.
    pub latency: Percentiles,
    /// Time to first body chunk (first token) of the successful requests.
    pub first_byte: Percentiles,
    /// Longest inter-chunk gap of the successful requests with at least two chunks: a
    /// non-streamed response has no gaps and would only dilute the streams' numbers.
    pub max_gap: Percentiles,
    /// Requests, successful or not, with a gap over the run's `stall_after`.
    pub stalled: u64,
}

impl LoadResult {
    /// The summary of every outcome.
    pub fn summary(&self) -> Summary {
        self.summary_where(|_| true)
    }

    /// The summary of the outcomes `keep` selects, e.g. one label of a mixed workload, or the
    /// requests scheduled after a warm-up.
    pub fn summary_where(&self, keep: impl Fn(&Outcome) -> bool) -> Summary {
        let kept: Vec<&Outcome> = self
            .outcomes
            .iter()
            .filter(|outcome| keep(outcome))
            .collect();
        let ok: Vec<&Outcome> = kept
            .iter()
            .copied()
            .filter(|outcome| outcome.ok())
            .collect();
        let seconds = self.elapsed.as_secs_f64();
        Summary {
            ok: ok.len() as u64,
            failed: (kept.len() - ok.len()) as u64,
            dropped: self.dropped,
            throughput: if seconds > 0.0 {
                ok.len() as f64 / seconds
            } else {
                0.0
            },
            latency: percentiles(ok.iter().map(|outcome| outcome.latency)),
            first_byte: percentiles(ok.iter().filter_map(|outcome| outcome.first_byte)),
            max_gap: percentiles(
                ok.iter()
                    .filter(|outcome| outcome.chunks >= 2)
                    .map(|outcome| outcome.max_gap),
            ),
            stalled: kept.iter().filter(|outcome| outcome.stalled).count() as u64,
        }
    }

    /// Why requests failed, most common first: each distinct reason (the client's error, else
    /// the HTTP status) with how many requests it ended.
    pub fn failure_reasons(&self) -> Vec<(String, u64)> {
        let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        for outcome in self.outcomes.iter().filter(|outcome| !outcome.ok()) {
            let reason = match (&outcome.error, outcome.status) {
                (Some(error), _) => error.clone(),
                (None, Some(status)) => format!("HTTP {status}"),
                (None, None) => "no response".to_owned(),
            };
            *counts.entry(reason).or_default() += 1;
        }
        let mut reasons: Vec<(String, u64)> = counts.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        reasons
    }
}
