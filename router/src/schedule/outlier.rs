//! Passive outlier detection: the one rule for taking a failing node out of rotation, from
//! what its requests do (Envoy's and linkerd's idea), faster than Consul's checks can.
//!
//! A node *fails* a request when it refuses or resets the connection, answers Ollama's 503
//! "server busy" or another server error before its answer, or sends nothing before the
//! attempt's first-byte deadline. A failure ejects the node:
//!
//! * at once, since each failed attempt costs its caller a retry and a busy node answers fast,
//!   so least-outstanding would otherwise see it as the idlest node and send it everything;
//! * for a backoff of [`FIRST_BACKOFF`], doubling with each ejection while the node keeps
//!   failing, up to [`MAX_BACKOFF`]. "Keeps failing" is a failure in a row or a failure rate of
//!   at least [`FAILING_RATE`] over the last [`RATE_WINDOW`], so a node that flaps (one answer
//!   among failures) does not start again from a second each time;
//! * then probed: once the backoff is over, one request goes to it; the node stays ejected for
//!   everyone else until that request ends. An answer brings it back; a failure ejects it again
//!   for twice as long.
//!
//! At most [`MAX_EJECTED_SHARE`] of the candidates for a request are ejected at once (those
//! ejected longest are let back first): when half the fleet fails, the fault is more likely
//! the router's or the network's than the nodes', and a failing node still beats no node.
//!
//! Ejections show in `/v1/mesh/nodes` (each node's `ejection`), the metrics
//! `ollama_mesh_node_ejected` and `ollama_mesh_node_ejections_total`, and the log.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::candidates::candidates;
use super::learned::Outcome;
use super::Scheduler;
use crate::backend::Backend;
use crate::backend_set::BackendSet;

/// The first ejection's length.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest ejection.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A failure rate at which a node counts as still failing despite an answer now and then.
pub const FAILING_RATE: f64 = 0.5;
/// How far back the failure rate looks.
pub const RATE_WINDOW: Duration = Duration::from_secs(30);
/// Requests the failure rate needs before it counts.
const MIN_RATE_SAMPLES: usize = 4;
/// Outcomes kept per node for the rate.
const MAX_SAMPLES: usize = 64;
/// The largest share of a request's candidates ejected at once.
pub const MAX_EJECTED_SHARE: f64 = 0.5;

/// One node's record.
#[derive(Debug, Default)]
struct NodeHealth {
    /// Recent outcomes: when, and whether the node failed.
    samples: VecDeque<(Instant, bool)>,
    /// Ejections since the node last recovered; the next backoff is `FIRST_BACKOFF << level`.
    level: u32,
    /// Until when it is ejected; after that it is probed.
    ejected_until: Option<Instant>,
    /// A probe request is on its way there.
    probing: bool,
    /// Times ejected, ever.
    ejections: u64,
}

impl NodeHealth {
    fn failure_rate(&self, now: Instant) -> Option<f64> {
        let recent = self
            .samples
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) < RATE_WINDOW);
        let (total, failed) = recent.fold((0usize, 0usize), |(total, failed), (_, f)| {
            (total + 1, failed + usize::from(*f))
        });
        (total >= MIN_RATE_SAMPLES).then(|| failed as f64 / total as f64)
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.probing || self.ejected_until.is_some_and(|until| now < until)
    }
}

/// What changed for a node, for the metrics and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Ejected for this long.
    Ejected(Duration),
    /// Its probe was answered: back in rotation.
    Returned,
}

/// Every node's record.
#[derive(Debug, Default)]
pub struct Outliers {
    nodes: HashMap<Arc<str>, NodeHealth>,
}

impl Outliers {
    /// Records how a request on `node` ended. Only failures and answers count: a request the
    /// caller gave up on says nothing about the node.
    pub fn observe(&mut self, node: &Arc<str>, outcome: &Outcome, now: Instant) -> Option<Change> {
        if !outcome.node_failed && !outcome.answered {
            self.nodes.get_mut(node)?.probing = false;
            return None;
        }
        let health = self.nodes.entry(node.clone()).or_default();
        let was_ejected = health.probing || health.ejected_until.is_some();
        health.probing = false;
        health.samples.push_back((now, outcome.node_failed));
        if health.samples.len() > MAX_SAMPLES {
            health.samples.pop_front();
        }
        if outcome.node_failed {
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << health.level.min(5))
                .min(MAX_BACKOFF);
            health.level = health.level.saturating_add(1);
            health.ejected_until = Some(now + backoff);
            health.ejections += 1;
            return Some(Change::Ejected(backoff));
        }
        if health
            .failure_rate(now)
            .is_none_or(|rate| rate < FAILING_RATE)
        {
            health.level = 0;
        }
        health.ejected_until = None;
        was_ejected.then_some(Change::Returned)
    }

    /// Notes that a request was sent to `node`: when its backoff is over, that request is its
    /// probe, and the node stays out for the others until it ends.
    pub fn dispatched(&mut self, node: &str, now: Instant) {
        if let Some(health) = self.nodes.get_mut(node) {
            if health.ejected_until.is_some() && !health.is_ejected(now) {
                health.probing = true;
            }
        }
    }

    /// `exclude` with the ejected candidates for `model` added, at most
    /// [`MAX_EJECTED_SHARE`] of them (those ejected longest return first); `None` when
    /// nothing is ejected or no candidate would be left.
    pub fn exclude(
        &self,
        set: &BackendSet,
        model: Option<&str>,
        exclude: &[Arc<str>],
        now: Instant,
    ) -> Option<Vec<Arc<str>>> {
        let mut ejected: Vec<(&Arc<str>, Option<Instant>)> = set
            .backends()
            .iter()
            .filter(|b| !exclude.contains(b.id()))
            .filter_map(|b| {
                let health = self.nodes.get(b.id())?;
                health
                    .is_ejected(now)
                    .then_some((b.id(), health.ejected_until))
            })
            .collect();
        if ejected.is_empty() {
            return None;
        }
        let eligible = candidates(set, model, exclude).ok()?.len();
        let most = (eligible as f64 * MAX_EJECTED_SHARE).floor() as usize;
        // Latest to return first, so those ejected longest are the ones let back.
        ejected.sort_by_key(|(_, until)| std::cmp::Reverse(*until));
        ejected.truncate(most);
        if ejected.is_empty() {
            return None;
        }
        let mut more = exclude.to_vec();
        more.extend(ejected.into_iter().map(|(id, _)| id.clone()));
        candidates(set, model, &more).is_ok().then_some(more)
    }

    /// Forgets nodes that left `set`.
    pub fn retain(&mut self, set: &BackendSet) {
        self.nodes.retain(|id, _| set.get(id).is_some());
    }

    /// What `/v1/mesh/nodes` shows of `node`.
    pub fn report(&self, node: &str, now: Instant) -> EjectionReport {
        let health = self.nodes.get(node);
        EjectionReport {
            ejected: health.is_some_and(|h| h.is_ejected(now)),
            probing: health.is_some_and(|h| h.probing),
            seconds_left: health
                .and_then(|h| h.ejected_until)
                .map(|until| until.saturating_duration_since(now).as_secs_f64())
                .filter(|left| *left > 0.0),
            ejections: health.map_or(0, |h| h.ejections),
            failure_rate: health.and_then(|h| h.failure_rate(now)),
        }
    }
}

/// A node's ejection state, as `/v1/mesh/nodes` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EjectionReport {
    /// Whether new requests avoid it (ejected, or its probe is still running).
    pub ejected: bool,
    /// Whether a probe request is on its way there.
    pub probing: bool,
    /// Seconds until its backoff ends, while it lasts.
    pub seconds_left: Option<f64>,
    /// Times ejected since the router started.
    pub ejections: u64,
    /// Share of its recent requests it failed, once it has had a few.
    pub failure_rate: Option<f64>,
}

impl Scheduler {
    /// `backend`'s ejection state.
    pub fn ejection(&self, backend: &Backend) -> EjectionReport {
        self.lock()
            .memory
            .outliers
            .report(backend.id(), Instant::now())
    }

    /// Logs and counts a change of a node's ejection.
    pub(super) fn ejection_changed(&self, node: &str, change: Change) {
        match change {
            Change::Ejected(backoff) => {
                tracing::warn!(
                    instance = node,
                    ?backoff,
                    "instance failed a request; ejected"
                );
                self.metrics.ejected(node, true);
            }
            Change::Returned => {
                tracing::info!(instance = node, "ejected instance answered its probe; back");
                self.metrics.ejected(node, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Outcome {
        Outcome {
            node_failed: true,
            ..Outcome::default()
        }
    }

    fn answered() -> Outcome {
        Outcome {
            answered: true,
            ..Outcome::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_keeps_failing_is_ejected_longer_each_time_until_the_cap() {
        let mut outliers = Outliers::default();
        let node: Arc<str> = "a".into();
        let mut backoffs = Vec::new();
        for _ in 0..8 {
            if let Some(Change::Ejected(backoff)) =
                outliers.observe(&node, &failed(), Instant::now())
            {
                backoffs.push(backoff.as_secs());
            }
        }
        assert_eq!(backoffs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_holds_the_node_out_until_it_is_answered() {
        let mut outliers = Outliers::default();
        let node: Arc<str> = "a".into();
        outliers.observe(&node, &failed(), Instant::now());
        assert!(outliers.report("a", Instant::now()).ejected);
        tokio::time::advance(FIRST_BACKOFF).await;
        assert!(
            !outliers.report("a", Instant::now()).ejected,
            "probe allowed"
        );
        outliers.dispatched("a", Instant::now());
        let report = outliers.report("a", Instant::now());
        assert!(report.ejected && report.probing, "{report:?}");
        assert_eq!(
            outliers.observe(&node, &answered(), Instant::now()),
            Some(Change::Returned)
        );
        assert!(!outliers.report("a", Instant::now()).ejected);
        // Recovered: the next failure starts from the first backoff again.
        assert_eq!(
            outliers.observe(&node, &failed(), Instant::now()),
            Some(Change::Ejected(FIRST_BACKOFF))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_node_does_not_start_from_a_second_each_time() {
        let mut outliers = Outliers::default();
        let node: Arc<str> = "a".into();
        let mut last = Duration::ZERO;
        for _ in 0..4 {
            if let Some(Change::Ejected(backoff)) =
                outliers.observe(&node, &failed(), Instant::now())
            {
                last = backoff;
            }
            outliers.observe(&node, &failed(), Instant::now());
            outliers.observe(&node, &answered(), Instant::now());
        }
        assert!(last >= Duration::from_secs(16), "last backoff {last:?}");
    }
}
