//! One generation on a claimed slot: prefill with the prompt cache, then paced tokens.
//!
//! The per-token time is taken when the token is produced, from the number of slots of the
//! same runner decoding at that moment, so concurrent streams slow each other down along the
//! configured curve. Pacing is against a running deadline so timer granularity never
//! accumulates into drift. Dropping a `Generation` (the client went away) frees its slot and
//! releases the runner at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::scheduler::slots::Slot;
use crate::scheduler::Lease;
use crate::stats::{self, ModelCounters};
use crate::textgen::TextGen;
use crate::tokenizer::Token;

/// Why generation ended, as `done_reason` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneReason {
    /// The model finished on its own.
    Stop,
    /// `num_predict` / `max_tokens` was reached.
    Length,
}

impl DoneReason {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            DoneReason::Stop => "stop",
            DoneReason::Length => "length",
        }
    }
}

/// One step of generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A token's text.
    Token(&'static str),
    /// Generation finished.
    Done(DoneReason),
    /// Generation failed (fault injection: `cut_after_tokens`).
    Failed,
}

/// Ollama's timing fields, in simulated time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Everything from arrival to the last token.
    pub total_duration: Duration,
    /// Arrival until the runner was handed over (queueing and loading).
    pub load_duration: Duration,
    /// The whole prompt, cached tokens included.
    pub prompt_eval_count: usize,
    /// Prefill of the uncached part of the prompt only.
    pub prompt_eval_duration: Duration,
    /// Generated tokens.
    pub eval_count: usize,
    /// Time spent generating them.
    pub eval_duration: Duration,
}

/// What a generation should produce.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// How many tokens, and whether reaching that is a `length` stop.
    pub tokens: u32,
    /// `true` when `tokens` came from the request's limit.
    pub limited: bool,
    /// Seed of the text.
    pub seed: u64,
    /// Fail after this many tokens.
    pub cut_after: Option<u64>,
    /// Hang after this many tokens.
    pub stall_after: Option<u64>,
}

/// A generation in progress. Field order matters: the slot is freed before the runner.
pub struct Generation {
    slot: Slot,
    lease: Lease,
    counters: Arc<ModelCounters>,
    clock: Clock,
    curve: Arc<[f64]>,
    text: TextGen,
    plan: Plan,
    produced: u32,
    decode_start: Instant,
    decode_sim: Duration,
    metrics: Metrics,
}

impl Generation {
    /// Waits for a slot of the leased runner and prefills `prompt`.
    pub async fn start(
        lease: Lease,
        prompt: &[Token],
        plan: Plan,
        clock: Clock,
        curve: Arc<[f64]>,
        counters: Arc<ModelCounters>,
    ) -> Self {
        let wait_start = Instant::now();
        let slot = lease.slot(prompt).await;
        let slot_wait = clock.sim_elapsed(wait_start);
        let cached = slot.cached();
        let prefill = if prompt.is_empty() {
            Duration::ZERO
        } else {
            lease.runner().speed.prefill(prompt.len() - cached)
        };
        clock.sleep(prefill).await;
        stats::add(&counters.prompt_tokens, prompt.len() as u64);
        stats::add(&counters.cached_prompt_tokens, cached as u64);
        stats::add(&counters.cache_hits, u64::from(cached > 0));
        let metrics = Metrics {
            total_duration: lease.load_duration() + slot_wait + prefill,
            load_duration: lease.load_duration(),
            prompt_eval_count: prompt.len(),
            prompt_eval_duration: prefill,
            ..Metrics::default()
        };
        Self {
            slot,
            lease,
            counters,
            clock,
            curve,
            text: TextGen::new(plan.seed),
            plan,
            produced: 0,
            decode_start: Instant::now(),
            decode_sim: Duration::ZERO,
            metrics,
        }
    }

    /// Produces the next token once its time has come, or the end.
    pub async fn next(&mut self) -> Step {
        if self.plan.cut_after == Some(u64::from(self.produced)) {
            return Step::Failed;
        }
        if self.plan.stall_after == Some(u64::from(self.produced)) {
            // Until the caller hangs up, which drops the generation.
            std::future::pending::<()>().await;
        }
        if self.produced >= self.plan.tokens {
            return Step::Done(if self.plan.limited {
                DoneReason::Length
            } else {
                DoneReason::Stop
            });
        }
        let token_time = self
            .lease
            .runner()
            .speed
            .token(&self.curve, self.slot.busy_in_runner());
        self.decode_sim += token_time;
        self.clock
            .sleep_until(self.decode_start, self.decode_sim)
            .await;
        let token = self.text.next_token();
        self.slot.push_generated(token);
        self.produced += 1;
        stats::add(&self.counters.generated_tokens, 1);
        Step::Token(token)
    }

    /// The metrics so far (final once [`Step::Done`] was returned).
    pub fn metrics(&self) -> Metrics {
        Metrics {
            total_duration: self.metrics.total_duration + self.decode_sim,
            eval_count: self.produced as usize,
            eval_duration: self.decode_sim,
            ..self.metrics
        }
    }

    /// Prompt and generated tokens: Ollama's `context`.
    pub fn context(&self) -> &[Token] {
        self.slot.tokens()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue;
    use crate::config::NodeSpec;
    use crate::scheduler::{ModelRequest, Scheduler};
    use crate::stats::Stats;
    use crate::tokenizer;

    #[derive(Clone)]
    struct Fixture {
        scheduler: Scheduler,
        stats: Arc<Stats>,
        curve: Arc<[f64]>,
    }

    impl Fixture {
        fn new(parallel: usize) -> Self {
            let cfg = NodeSpec::default().num_parallel(parallel).build().unwrap();
            let stats = Arc::new(Stats::default());
            Self {
                scheduler: Scheduler::new(
                    cfg.scheduler.clone(),
                    Clock::new(1.0),
                    Arc::clone(&stats),
                ),
                stats,
                curve: cfg.scheduler.decode_slowdown.into(),
            }
        }

        async fn start(&self, prompt: &str, tokens: u32) -> Generation {
            let model = "llama3.1:8b";
            let req = ModelRequest {
                model: model.to_owned(),
                spec: Arc::new(catalogue::lookup(model)),
                num_ctx: Some(4096),
                keep_alive: None,
            };
            let lease = self.scheduler.acquire(req).await.unwrap();
            let plan = Plan {
                tokens,
                limited: true,
                seed: 1,
                cut_after: None,
                stall_after: None,
            };
            let counters = self.stats.model(model);
            Generation::start(
                lease,
                &tokenizer::tokenize(prompt),
                plan,
                Clock::new(1.0),
                Arc::clone(&self.curve),
                counters,
            )
            .await
        }
    }

    async fn run(mut g: Generation) -> (String, Metrics, DoneReason) {
        let mut text = String::new();
        loop {
            match g.next().await {
                Step::Token(t) => text.push_str(t),
                Step::Done(r) => return (text, g.metrics(), r),
                Step::Failed => unreachable!(),
            }
        }
    }

    fn assert_close(d: Duration, secs: f64) {
        assert!(
            (d.as_secs_f64() - secs).abs() < 1e-6,
            "{d:?} is not {secs}s"
        );
    }

    fn words(n: usize) -> String {
        (0..n).map(|i| format!("w{i} ")).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn prefix_cache_hit_skips_the_shared_prefill() {
        let f = Fixture::new(1);
        let history = words(1000);
        let (reply, cold, _) = run(f.start(&history, 10).await).await;
        // 1000 tokens at 5000 tok/s.
        assert_close(cold.prompt_eval_duration, 0.2);
        assert_eq!(cold.prompt_eval_count, 1000);
        let follow_up = format!("{history}{reply} and then");
        let (_, warm, _) = run(f.start(&follow_up, 10).await).await;
        assert_eq!(warm.prompt_eval_count, 1012);
        // Only the two new words are prefilled.
        assert_close(warm.prompt_eval_duration, 0.0004);
        let counters = f.stats.model("llama3.1:8b");
        assert_eq!(
            counters
                .cache_hits
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            counters
                .cached_prompt_tokens
                .load(std::sync::atomic::Ordering::Relaxed),
            1010
        );
    }

    #[tokio::test(start_paused = true)]
    async fn decode_paces_tokens_and_respects_the_limit() {
        let f = Fixture::new(1);
        let start = Instant::now();
        let (text, m, reason) = run(f.start("hi", 13).await).await;
        assert_eq!(reason, DoneReason::Length);
        assert_eq!(m.eval_count, 13);
        assert_eq!(tokenizer::tokenize(&text).len(), 13);
        // 13 tokens at 130 tok/s = 100 ms.
        assert_close(m.eval_duration, 0.1);
        assert!(start.elapsed() >= m.eval_duration + m.load_duration);
        assert_eq!(
            m.total_duration,
            m.load_duration + m.prompt_eval_duration + m.eval_duration
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_streams_of_one_model_decode_slower() {
        let f = Fixture::new(4);
        let (_, alone, _) = run(f.start("a", 50).await).await;
        let (a, b) = tokio::join!(f.start("b", 50), f.start("c", 50));
        let ((_, ma, _), (_, mb, _)) = tokio::join!(run(a), run(b));
        assert!(ma.eval_duration > alone.eval_duration.mul_f64(1.05));
        assert_eq!(ma.eval_duration, mb.eval_duration);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_generation_frees_its_slot() {
        let f = Fixture::new(1);
        let g = f.start("hello", 1000).await;
        let waiting = tokio::spawn({
            let f = f.clone();
            async move { run(f.start("other", 1).await).await.2 }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        drop(g);
        assert_eq!(waiting.await.unwrap(), DoneReason::Length);
    }
}
