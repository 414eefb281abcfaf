//! Costs learned online from each answer's final chunk, per (node, model) and per model across
//! the fleet: prefill and decode rates, model load time, and how long a request holds a slot.
//!
//! Each figure is a moving average whose memory is measured in time, not samples: a sample's
//! weight is `1 - 2^(-Δt / HALF_LIFE)` (Δt since the previous one), at least [`MIN_WEIGHT`].
//! A node that slows down (thermal throttling, a noisy neighbour) therefore shows in its figures
//! within a minute however busy it is, and a quiet node's next sample counts for nearly all.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// How long until an old figure counts for half.
const HALF_LIFE: Duration = Duration::from_secs(20);
/// The least weight of one sample, so a burst of samples converges in a few of them.
const MIN_WEIGHT: f64 = 1.0 / 8.0;

/// Before anything is learned: a GPU's prompt reading speed, tokens per second.
pub const DEFAULT_PREFILL_TPS: f64 = 1_000.0;
/// Before anything is learned: loading a model from disk into VRAM.
pub const DEFAULT_LOAD: Duration = Duration::from_secs(10);
/// Before anything is learned: how long a request holds a slot.
pub const DEFAULT_SERVICE: Duration = Duration::from_secs(5);
/// A `load_duration` above this was a real load, not the scheduler's bookkeeping.
const REAL_LOAD: Duration = Duration::from_millis(250);

/// One moving average.
#[derive(Debug, Clone, Copy, Default)]
pub struct Average {
    value: Option<f64>,
    updated: Option<Instant>,
}

impl Average {
    /// Takes in one sample observed at `now`.
    pub fn observe(&mut self, sample: f64, now: Instant) {
        if !sample.is_finite() || sample < 0.0 {
            return;
        }
        self.value = Some(match (self.value, self.updated) {
            (Some(old), Some(then)) => {
                let elapsed = now.saturating_duration_since(then).as_secs_f64();
                let weight = (1.0 - (-elapsed / HALF_LIFE.as_secs_f64()).exp2()).max(MIN_WEIGHT);
                old + (sample - old) * weight
            }
            _ => sample,
        });
        self.updated = Some(now);
    }

    /// The average, once there was a sample.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// What one finished request tells about its node, from Ollama's final chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// `load_duration`: the scheduler's wait plus any model load.
    pub load: Duration,
    /// `prompt_eval_count`: the whole prompt, cached tokens included.
    pub prompt_tokens: u64,
    /// `prompt_eval_duration`: reading the uncached part.
    pub prompt_duration: Duration,
    /// `eval_count`: tokens generated.
    pub eval_tokens: u64,
    /// `eval_duration`.
    pub eval_duration: Duration,
}

/// How a request that held a slot ended. The default says nothing (the client left, say).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome {
    /// The node answered it (any answer but a failure to connect, a 5xx or a broken stream).
    pub answered: bool,
    /// The node failed it: refused or reset the connection, said it was busy, broke off.
    pub node_failed: bool,
    /// Ollama's figures, when the answer had them (native API answers do; OpenAI's do not).
    pub timings: Option<Timings>,
}

/// Learned figures for one model on one node, or across the fleet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Learned {
    /// Prompt tokens read per second.
    pub prefill_tps: Average,
    /// Tokens generated per second.
    pub decode_tps: Average,
    /// Seconds to load the model.
    pub load_seconds: Average,
    /// Seconds a request holds a slot, end to end.
    pub service_seconds: Average,
}

impl Learned {
    /// Takes in one finished request that held its slot for `held`.
    pub fn observe(&mut self, outcome: &Outcome, held: Duration, now: Instant) {
        if !outcome.answered {
            return;
        }
        self.service_seconds.observe(held.as_secs_f64(), now);
        let Some(t) = outcome.timings else { return };
        if t.prompt_tokens > 0 && t.prompt_duration > Duration::ZERO {
            // Cached tokens are in the count but not the duration: long cached prompts read
            // "fast", which is what a request sent there will see too.
            let rate = t.prompt_tokens as f64 / t.prompt_duration.as_secs_f64();
            self.prefill_tps.observe(rate, now);
        }
        if t.eval_tokens > 0 && t.eval_duration > Duration::ZERO {
            let rate = t.eval_tokens as f64 / t.eval_duration.as_secs_f64();
            self.decode_tps.observe(rate, now);
        }
        if t.load > REAL_LOAD {
            self.load_seconds.observe(t.load.as_secs_f64(), now);
        }
    }
}

/// The figures a decision uses: this node's, else the fleet's for the model, else defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Costs {
    /// Prompt tokens read per second.
    pub prefill_tps: f64,
    /// Seconds to load the model.
    pub load_seconds: f64,
    /// Seconds a request holds a slot.
    pub service_seconds: f64,
}

impl Costs {
    /// The defaults, for policies that do not learn.
    pub fn defaults() -> Self {
        Self {
            prefill_tps: DEFAULT_PREFILL_TPS,
            load_seconds: DEFAULT_LOAD.as_secs_f64(),
            service_seconds: DEFAULT_SERVICE.as_secs_f64(),
        }
    }

    /// Each figure from the first of `sources` that has learned it (most specific first: the
    /// node's, the fleet's for the model, the fleet's for any model), else the default.
    pub fn learned(sources: &[Option<&Learned>]) -> Self {
        let pick = |field: fn(&Learned) -> Average, default: f64| {
            sources
                .iter()
                .flatten()
                .find_map(|l| field(l).get())
                .unwrap_or(default)
        };
        let defaults = Self::defaults();
        Self {
            prefill_tps: pick(|l| l.prefill_tps, defaults.prefill_tps).max(1.0),
            load_seconds: pick(|l| l.load_seconds, defaults.load_seconds),
            service_seconds: pick(|l| l.service_seconds, defaults.service_seconds).max(0.001),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, seconds: f64) -> Instant {
        start + Duration::from_secs_f64(seconds)
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_rate_is_learned_exactly() {
        let start = Instant::now();
        let mut average = Average::default();
        assert_eq!(average.get(), None);
        for i in 0..20 {
            average.observe(40.0, at(start, f64::from(i)));
        }
        assert_eq!(average.get(), Some(40.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_slows_down_is_noticed_within_a_minute() {
        let start = Instant::now();
        let mut average = Average::default();
        // A minute at 100 tokens/s, one sample a second.
        for i in 0..60 {
            average.observe(100.0, at(start, f64::from(i)));
        }
        // Then throttled to 20 tokens/s.
        let mut noticed_after = None;
        for i in 60..180 {
            average.observe(20.0, at(start, f64::from(i)));
            if average.get().unwrap() < 30.0 && noticed_after.is_none() {
                noticed_after = Some(i - 60);
            }
        }
        let noticed_after = noticed_after.expect("the slowdown was never noticed");
        assert!(noticed_after <= 60, "noticed after {noticed_after} s");
        assert!((average.get().unwrap() - 20.0).abs() < 0.5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_nodes_next_sample_counts_for_nearly_all() {
        let start = Instant::now();
        let mut average = Average::default();
        average.observe(100.0, start);
        average.observe(10.0, at(start, 600.0));
        assert!((average.get().unwrap() - 10.0).abs() < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_converges_in_a_few_samples() {
        let start = Instant::now();
        let mut average = Average::default();
        average.observe(100.0, start);
        for _ in 0..40 {
            average.observe(10.0, start);
        }
        assert!(average.get().unwrap() < 11.0, "{:?}", average.get());
    }

    #[tokio::test(start_paused = true)]
    async fn rates_and_loads_come_from_the_final_chunk() {
        let now = Instant::now();
        let mut learned = Learned::default();
        let outcome = Outcome {
            answered: true,
            node_failed: false,
            timings: Some(Timings {
                load: Duration::from_secs(4),
                prompt_tokens: 500,
                prompt_duration: Duration::from_millis(250),
                eval_tokens: 100,
                eval_duration: Duration::from_secs(2),
            }),
        };
        learned.observe(&outcome, Duration::from_secs(7), now);
        assert_eq!(learned.prefill_tps.get(), Some(2_000.0));
        assert_eq!(learned.decode_tps.get(), Some(50.0));
        assert_eq!(learned.load_seconds.get(), Some(4.0));
        assert_eq!(learned.service_seconds.get(), Some(7.0));
        let costs = Costs::learned(&[Some(&learned), None]);
        assert_eq!(costs.prefill_tps, 2_000.0);
        // A failed request teaches nothing; a warm answer's tiny load_duration is no load time.
        let mut warm = Learned::default();
        warm.observe(
            &Outcome {
                answered: false,
                ..outcome
            },
            Duration::from_secs(1),
            now,
        );
        assert_eq!(warm.service_seconds.get(), None);
        let quick = Timings {
            load: Duration::from_millis(3),
            ..outcome.timings.unwrap()
        };
        warm.observe(
            &Outcome {
                answered: true,
                node_failed: false,
                timings: Some(quick),
            },
            Duration::from_secs(1),
            now,
        );
        assert_eq!(warm.load_seconds.get(), None);
        // The fleet's figure stands in for a node that has none.
        assert_eq!(
            Costs::learned(&[Some(&warm), Some(&learned)]).load_seconds,
            4.0
        );
        assert_eq!(
            Costs::learned(&[None, None]).load_seconds,
            DEFAULT_LOAD.as_secs_f64()
        );
        // Any model's figure stands in for a model nothing is known of, before the default.
        assert_eq!(
            Costs::learned(&[None, None, Some(&learned)]).load_seconds,
            4.0
        );
    }
}
