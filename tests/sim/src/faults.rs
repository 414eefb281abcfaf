//! Fault injection: the ways a real node misbehaves that a router must survive.
//!
//! Faults are set at start (flags or the `[faults]` table) and changed at run time through
//! `POST /sim/faults`. They live in atomics because every inference request consults them.
//! Durations here are wall-clock milliseconds, not simulated time: they exist to exercise the
//! caller's timeouts, which run on the wall clock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How `/` and `/api/version` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthMode {
    /// At once, like Ollama.
    #[default]
    Normal,
    /// After `health_delay_ms`.
    Slow,
    /// Never: the request hangs until the client gives up.
    Hang,
}

/// A set of faults. In `POST /sim/faults` every field is optional and only the given ones change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// The next N inference requests answer 500 `{"error":…}` before doing any work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_next: Option<u64>,
    /// Every inference request waits this long before its first response byte (0 = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_ms: Option<u64>,
    /// Generation fails after this many tokens: streams get Ollama's mid-stream `{"error":…}`
    /// line, unstreamed requests a 500. `null` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub cut_after_tokens: Option<Option<u64>>,
    /// Generation hangs after this many tokens, the connection open and nothing more sent, as a
    /// wedged GPU does mid-answer. `null` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub stall_after_tokens: Option<Option<u64>>,
    /// How health checks answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthMode>,
    /// The delay of [`HealthMode::Slow`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_delay_ms: Option<u64>,
    /// Every inference request answers 503 "server busy", as Ollama does when its pending queue
    /// is full: a node that is up but refuses work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy: Option<bool>,
    /// The process dies abruptly on the arrival of the Nth inference request from now
    /// (0 = off). In-process, `serve` returns [`crate::ServeExit::Killed`] instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_after_requests: Option<u64>,
}

/// Distinguishes an absent field (keep) from `null` (turn off) for `cut_after_tokens` and
/// `stall_after_tokens`.
mod nullable {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<u64>>, s: S) -> Result<S::Ok, S::Error> {
        v.flatten().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
        Option::<u64>::deserialize(d).map(Some)
    }
}

const OFF: u64 = u64::MAX;

/// The live fault state of one simulator.
#[derive(Debug)]
pub struct Faults {
    fail_next: AtomicU64,
    stall_ms: AtomicU64,
    cut_after_tokens: AtomicU64,
    stall_after_tokens: AtomicU64,
    health: AtomicU8,
    health_delay_ms: AtomicU64,
    exit_countdown: AtomicU64,
    busy: AtomicBool,
    kill: watch::Sender<bool>,
}

/// What an arriving inference request must do first.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Proceed, after stalling this long if non-zero.
    Proceed(Duration),
    /// Answer 500 without doing anything.
    Fail,
    /// Answer 503 "server busy" without doing anything.
    Busy,
    /// The node dies now.
    Die,
}

impl Faults {
    /// Fault state starting from `spec`.
    pub fn new(spec: &FaultSpec) -> Self {
        let faults = Self {
            fail_next: AtomicU64::new(0),
            stall_ms: AtomicU64::new(0),
            cut_after_tokens: AtomicU64::new(OFF),
            stall_after_tokens: AtomicU64::new(OFF),
            health: AtomicU8::new(HealthMode::Normal as u8),
            health_delay_ms: AtomicU64::new(1000),
            exit_countdown: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            kill: watch::Sender::new(false),
        };
        faults.apply(spec);
        faults
    }

    /// Changes the faults that `spec` names.
    pub fn apply(&self, spec: &FaultSpec) {
        let set = |cell: &AtomicU64, v: Option<u64>| {
            if let Some(v) = v {
                cell.store(v, Ordering::Relaxed);
            }
        };
        set(&self.fail_next, spec.fail_next);
        set(&self.stall_ms, spec.stall_ms);
        set(
            &self.cut_after_tokens,
            spec.cut_after_tokens.map(|v| v.unwrap_or(OFF)),
        );
        set(
            &self.stall_after_tokens,
            spec.stall_after_tokens.map(|v| v.unwrap_or(OFF)),
        );
        set(&self.health_delay_ms, spec.health_delay_ms);
        set(&self.exit_countdown, spec.exit_after_requests);
        if let Some(mode) = spec.health {
            self.health.store(mode as u8, Ordering::Relaxed);
        }
        if let Some(busy) = spec.busy {
            self.busy.store(busy, Ordering::Relaxed);
        }
    }

    /// Turns every fault off.
    pub fn clear(&self) {
        self.apply(&FaultSpec {
            fail_next: Some(0),
            stall_ms: Some(0),
            cut_after_tokens: Some(None),
            stall_after_tokens: Some(None),
            health: Some(HealthMode::Normal),
            health_delay_ms: Some(1000),
            exit_after_requests: Some(0),
            busy: Some(false),
        });
    }

    /// The current faults, every field present.
    pub fn snapshot(&self) -> FaultSpec {
        let cut = self.cut_after_tokens.load(Ordering::Relaxed);
        let stall = self.stall_after_tokens.load(Ordering::Relaxed);
        FaultSpec {
            fail_next: Some(self.fail_next.load(Ordering::Relaxed)),
            stall_ms: Some(self.stall_ms.load(Ordering::Relaxed)),
            cut_after_tokens: Some((cut != OFF).then_some(cut)),
            stall_after_tokens: Some((stall != OFF).then_some(stall)),
            health: Some(self.health()),
            health_delay_ms: Some(self.health_delay_ms.load(Ordering::Relaxed)),
            exit_after_requests: Some(self.exit_countdown.load(Ordering::Relaxed)),
            busy: Some(self.busy.load(Ordering::Relaxed)),
        }
    }

    /// Consumes the faults that apply to one arriving inference request.
    pub fn on_inference_arrival(&self) -> Arrival {
        if take_one(&self.exit_countdown) == Some(0) {
            self.kill();
            return Arrival::Die;
        }
        if take_one(&self.fail_next).is_some() {
            return Arrival::Fail;
        }
        if self.busy.load(Ordering::Relaxed) {
            return Arrival::Busy;
        }
        Arrival::Proceed(Duration::from_millis(self.stall_ms.load(Ordering::Relaxed)))
    }

    /// After how many tokens generation fails, if it does.
    pub fn cut_after_tokens(&self) -> Option<u64> {
        let cut = self.cut_after_tokens.load(Ordering::Relaxed);
        (cut != OFF).then_some(cut)
    }

    /// After how many tokens generation hangs, if it does.
    pub fn stall_after_tokens(&self) -> Option<u64> {
        let stall = self.stall_after_tokens.load(Ordering::Relaxed);
        (stall != OFF).then_some(stall)
    }

    /// How health checks answer, and the delay of a slow one.
    pub fn health(&self) -> HealthMode {
        match self.health.load(Ordering::Relaxed) {
            x if x == HealthMode::Slow as u8 => HealthMode::Slow,
            x if x == HealthMode::Hang as u8 => HealthMode::Hang,
            _ => HealthMode::Normal,
        }
    }

    /// The delay of a slow health check.
    pub fn health_delay(&self) -> Duration {
        Duration::from_millis(self.health_delay_ms.load(Ordering::Relaxed))
    }

    /// Kills the node: `serve` drops every connection and returns.
    pub fn kill(&self) {
        self.kill.send_replace(true);
    }

    /// Whether the node has been killed.
    pub fn is_killed(&self) -> bool {
        *self.kill.borrow()
    }

    /// Resolves once the node has been killed.
    pub fn killed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.kill.subscribe();
        async move {
            // An error means the fault state is gone, and with it the node.
            let _ = rx.wait_for(|killed| *killed).await;
        }
    }
}

/// Decrements a non-zero counter, returning the new value; `None` when it was already zero.
fn take_one(cell: &AtomicU64) -> Option<u64> {
    cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
        .ok()
        .map(|previous| previous - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_node_refuses_every_request_until_cleared() {
        let faults = Faults::new(&FaultSpec {
            busy: Some(true),
            ..FaultSpec::default()
        });
        assert_eq!(faults.on_inference_arrival(), Arrival::Busy);
        assert_eq!(faults.on_inference_arrival(), Arrival::Busy);
        faults.clear();
        assert_eq!(
            faults.on_inference_arrival(),
            Arrival::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn fail_next_counts_down() {
        let faults = Faults::new(&FaultSpec {
            fail_next: Some(2),
            ..FaultSpec::default()
        });
        assert_eq!(faults.on_inference_arrival(), Arrival::Fail);
        assert_eq!(faults.on_inference_arrival(), Arrival::Fail);
        assert_eq!(
            faults.on_inference_arrival(),
            Arrival::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn exit_after_requests_fires_on_the_nth() {
        let faults = Faults::new(&FaultSpec {
            exit_after_requests: Some(2),
            ..FaultSpec::default()
        });
        assert_eq!(
            faults.on_inference_arrival(),
            Arrival::Proceed(Duration::ZERO)
        );
        assert!(!faults.is_killed());
        assert_eq!(faults.on_inference_arrival(), Arrival::Die);
        assert!(faults.is_killed());
    }

    #[test]
    fn partial_updates_and_null_cut() {
        let faults = Faults::new(&FaultSpec::default());
        let spec: FaultSpec = serde_json::from_str(r#"{"cut_after_tokens":3}"#).unwrap();
        faults.apply(&spec);
        assert_eq!(faults.cut_after_tokens(), Some(3));
        faults.apply(&serde_json::from_str(r#"{"stall_ms":5}"#).unwrap());
        assert_eq!(faults.cut_after_tokens(), Some(3));
        faults.apply(&serde_json::from_str(r#"{"cut_after_tokens":null}"#).unwrap());
        assert_eq!(faults.cut_after_tokens(), None);
        faults.apply(&serde_json::from_str(r#"{"health":"hang"}"#).unwrap());
        assert_eq!(faults.health(), HealthMode::Hang);
        faults.clear();
        assert_eq!(faults.health(), HealthMode::Normal);
    }
}
