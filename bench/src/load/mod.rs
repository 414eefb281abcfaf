//! The load generator: one [`Outcome`] per request, measured the same way against every system
//! under test, so that the report can compare them.
//!
//! Two arrival models, because they answer different questions:
//!
//! * [`Arrivals::Closed`]: `connections` workers each send request after request (like `wrk`).
//!   It finds a system's maximum throughput, but a slow server also slows the arrivals, so its
//!   latencies flatter slow systems.
//! * [`Arrivals::Open`]: Poisson arrivals at a fixed mean rate, independent of the server (as
//!   real users behave). Latency counts from the *intended* send time, so a server pause shows up
//!   in the latency of every request that should have been sent during it (no coordinated
//!   omission). Arrivals beyond [`LoadSpec::max_in_flight`] are counted as dropped, never queued
//!   silently.
//!
//! Bodies are read frame by frame as they arrive, so the time to the first chunk (time to first
//! token for a stream) and the gaps between chunks are what the client really saw.

mod client;
mod connector;
mod outcome;
mod stats;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use client::Client;
pub use outcome::Outcome;
pub use stats::{percentiles, Percentiles, Summary};

/// One request to send; built by the caller of [`run`] for each sequence number, so that a
/// workload can vary models, prompts and streaming from request to request.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// HTTP method, e.g. `POST` for `/api/generate`.
    pub method: http::Method,
    /// Path and query, appended to [`LoadSpec::base_url`].
    pub path: String,
    /// Request body, sent as `application/json` when not empty.
    pub body: Bytes,
    /// Whether the response is a stream (NDJSON or SSE): its lines are then checked for an
    /// `{"error": ...}` object, which Ollama sends mid-stream with a `200` status.
    pub stream: bool,
    /// Copied to the [`Outcome`], to split a mixed workload in the summaries.
    pub label: String,
}

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// `connections` workers, each sending its next request as soon as the previous one ends.
    Closed {
        /// Number of concurrent workers (and of pooled connections).
        connections: usize,
    },
    /// Poisson arrivals (exponentially distributed gaps) at this mean rate.
    Open {
        /// Mean arrivals per second.
        per_second: f64,
    },
}

/// A load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Where to send requests, e.g. `http://127.0.0.1:11434` (plain HTTP).
    pub base_url: String,
    /// How requests arrive.
    pub arrivals: Arrivals,
    /// How long requests keep being issued; in-flight ones then get up to `request_timeout`.
    pub duration: Duration,
    /// Closed loop: connections are opened evenly over this, so that 10 000 streams do not all
    /// connect in the same millisecond (which measures the accept queue, not the proxy).
    pub ramp: Duration,
    /// A request not finished this long after it was sent is an error outcome.
    pub request_timeout: Duration,
    /// An inter-chunk gap longer than this marks a stream stalled.
    pub stall_after: Duration,
    /// Open loop: arrivals while this many requests are in flight are dropped (and counted),
    /// which bounds the generator's memory when the server cannot keep up. It also caps the
    /// open loop's connections (the closed loop's are capped at `connections`).
    pub max_in_flight: usize,
    /// Sent as `Authorization: Bearer …` with every request (LiteLLM's master key).
    pub bearer: Option<String>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// One per request sent, in no particular order.
    pub outcomes: Vec<Outcome>,
    /// From the start of the run to the end of its last request.
    pub elapsed: Duration,
    /// Open-loop arrivals not sent because `max_in_flight` requests were in flight.
    pub dropped: u64,
}

/// Runs `spec`, asking `next` for the request with each sequence number (0, 1, 2, ...), and
/// returns when every request sent has finished or timed out.
///
/// Runs on the caller's tokio runtime; give it a multi-threaded one so that the generator is not
/// starved by whatever else shares the runtime.
pub async fn run(
    spec: &LoadSpec,
    next: impl FnMut(u64) -> RequestSpec + Send + 'static,
) -> LoadResult {
    let next = Arc::new(Mutex::new(Sequence { next, seq: 0 }));
    match spec.arrivals {
        Arrivals::Closed { connections } => closed_loop(spec, connections.max(1), next).await,
        Arrivals::Open { per_second } => open_loop(spec, per_second, next).await,
    }
}

/// Raises the soft limit on open files up to the hard limit and returns the new soft limit:
/// 10 000 concurrent streams need 10 000 sockets in the generator (and as many in each proxy),
/// far above the usual soft limit of 1024.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The caller's request factory and the next sequence number, shared by all workers.
struct Sequence<F> {
    next: F,
    seq: u64,
}

type Shared<F> = Arc<Mutex<Sequence<F>>>;

/// Takes the next request; a worker that panicked while holding the lock cannot leave the
/// sequence inconsistent (it is only ever incremented), so a poisoned lock is used as is.
fn take<F: FnMut(u64) -> RequestSpec>(shared: &Shared<F>) -> RequestSpec {
    let mut sequence = shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let seq = sequence.seq;
    sequence.seq += 1;
    (sequence.next)(seq)
}

async fn closed_loop<F>(spec: &LoadSpec, connections: usize, next: Shared<F>) -> LoadResult
where
    F: FnMut(u64) -> RequestSpec + Send + 'static,
{
    let client = Arc::new(Client::new(spec, connections));
    let start = Instant::now();
    let stop = start + spec.duration;
    let workers: Vec<_> = (0..connections)
        .map(|worker| {
            let client = client.clone();
            let next = next.clone();
            // Spread the workers' first requests evenly over the ramp.
            let first = start + spec.ramp.mul_f64(worker as f64 / connections as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(first).await;
                let mut outcomes = Vec::new();
                loop {
                    let now = Instant::now();
                    if now >= stop {
                        break;
                    }
                    let request = take(&next);
                    outcomes.push(client.send(request, start, now).await);
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for worker in workers {
        // A worker only panics if the caller's `next` does: pass that panic on.
        match worker.await {
            Ok(mut worker_outcomes) => outcomes.append(&mut worker_outcomes),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    LoadResult {
        outcomes,
        elapsed: start.elapsed(),
        dropped: 0,
    }
}

/// The resolution of tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);

async fn open_loop<F>(spec: &LoadSpec, per_second: f64, next: Shared<F>) -> LoadResult
where
    F: FnMut(u64) -> RequestSpec + Send + 'static,
{
    let max_in_flight = spec.max_in_flight.max(1);
    let client = Arc::new(Client::new(spec, max_in_flight));
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let start = Instant::now();
    let mut rng = fastrand::Rng::new();
    let mut dropped = 0;
    let mut offset = Duration::ZERO;
    loop {
        offset = offset.saturating_add(exponential_gap(&mut rng, per_second));
        if offset >= spec.duration {
            break;
        }
        let intended = start + offset;
        // tokio's timer wakes on the millisecond tick after a deadline: waking a tick early
        // and sending then keeps that lateness out of the latencies (an arrival process
        // shifted by less than a tick is still Poisson). Arrivals already due are sent at once,
        // back to back, without a trip through the timer that would make the generator fall
        // further behind.
        let wake = intended.checked_sub(TIMER_TICK).unwrap_or(intended);
        if wake > Instant::now() {
            tokio::time::sleep_until(wake).await;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        // Timed from the intended send time if late (no coordinated omission), from the
        // actual one if early.
        let timed_from = intended.min(Instant::now());
        let request = take(&next);
        let client = client.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let outcome = client.send(request, start, timed_from).await;
            drop(permit);
            // The receiver lives until every sender is gone: this cannot fail.
            let _ = sender.send(outcome);
        });
    }
    drop(sender);
    let mut outcomes = Vec::new();
    while let Some(outcome) = receiver.recv().await {
        outcomes.push(outcome);
    }
    LoadResult {
        outcomes,
        elapsed: start.elapsed(),
        dropped,
    }
}

/// The gap to the next Poisson arrival: exponentially distributed with mean `1 / per_second`. A
/// rate that is not positive means no arrival within any run.
fn exponential_gap(rng: &mut fastrand::Rng, per_second: f64) -> Duration {
    if !(per_second > 0.0 && per_second.is_finite()) {
        return Duration::MAX;
    }
    // `1 - f64()` is in (0, 1], so the logarithm is finite.
    let seconds = -(1.0 - rng.f64()).ln() / per_second;
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}
