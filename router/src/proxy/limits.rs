//! Per-key rate and concurrency limits, kept by this router replica alone.
//!
//! Replicas share nothing (that is what lets them scale and fail independently), so each
//! enforces a key's `rpm` and `concurrency` on its own: behind N replicas a key gets up to N×
//! its limits. The rate is a token bucket holding `rpm` tokens and refilled at `rpm` per
//! minute, so a burst of a minute's worth is allowed and then one request per `60/rpm` s.
//! State is per key *name*, so an edited entry keeps its history and a changed limit applies
//! from the next request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::keys::ApiKey;

/// The limits of every key seen by this replica.
#[derive(Debug, Default)]
pub struct Limits {
    keys: Mutex<HashMap<String, KeyUsage>>,
}

#[derive(Debug)]
struct KeyUsage {
    /// Requests left in the bucket (fractional between refills).
    tokens: f64,
    refilled: Instant,
    in_flight: Arc<AtomicU32>,
}

/// Why a request must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The key used its requests per minute.
    Rate {
        /// When the next request will be allowed.
        retry_after: Duration,
    },
    /// The key has `concurrency` requests running.
    Concurrency,
}

impl Limited {
    /// The `Retry-After` value in whole seconds (at least 1).
    pub fn retry_after_seconds(self) -> u64 {
        match self {
            Self::Rate { retry_after } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
            Self::Concurrency => 1,
        }
    }

    /// What the client is told.
    pub fn message(self, key: &ApiKey) -> String {
        match self {
            Self::Rate { .. } => format!(
                "rate limit of {} requests per minute reached for API key '{}'",
                key.rpm.unwrap_or_default(),
                key.name
            ),
            Self::Concurrency => format!(
                "{} requests are already running for API key '{}'",
                key.concurrency.unwrap_or_default(),
                key.name
            ),
        }
    }
}

/// One running request of a key; dropping it frees its concurrency slot.
#[derive(Debug)]
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limits {
    /// Admits one request of `key` at `now`, or says why it must wait. A request refused for
    /// concurrency uses none of the rate.
    pub fn acquire(&self, key: &ApiKey, now: Instant) -> Result<Option<Slot>, Limited> {
        if key.rpm.is_none() && key.concurrency.is_none() {
            return Ok(None);
        }
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let usage = keys.entry(key.name.clone()).or_insert_with(|| KeyUsage {
            tokens: f64::from(key.rpm.unwrap_or_default()),
            refilled: now,
            in_flight: Arc::default(),
        });
        if let Some(limit) = key.concurrency {
            if usage.in_flight.load(Ordering::Acquire) >= limit {
                return Err(Limited::Concurrency);
            }
        }
        if let Some(rpm) = key.rpm {
            let capacity = f64::from(rpm);
            let per_second = capacity / 60.0;
            let elapsed = now.saturating_duration_since(usage.refilled).as_secs_f64();
            usage.tokens = (usage.tokens + elapsed * per_second).min(capacity);
            usage.refilled = now;
            if usage.tokens < 1.0 {
                let retry_after = Duration::from_secs_f64((1.0 - usage.tokens) / per_second);
                return Err(Limited::Rate { retry_after });
            }
            usage.tokens -= 1.0;
        }
        usage.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Some(Slot(usage.in_flight.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::api_key;

    fn key(limits: &str) -> ApiKey {
        api_key("k", "om-k", limits)
    }

    #[test]
    fn a_minute_of_requests_then_one_per_interval() {
        let limits = Limits::default();
        let key = key(r#", "rpm": 2"#);
        let start = Instant::now();
        assert!(limits.acquire(&key, start).is_ok());
        assert!(limits.acquire(&key, start).is_ok());
        let refused = limits.acquire(&key, start).unwrap_err();
        assert_eq!(
            refused,
            Limited::Rate {
                retry_after: Duration::from_secs(30)
            }
        );
        assert_eq!(refused.retry_after_seconds(), 30);
        assert!(limits
            .acquire(&key, start + Duration::from_secs(29))
            .is_err());
        assert!(limits
            .acquire(&key, start + Duration::from_secs(30))
            .is_ok());
    }

    #[test]
    fn running_requests_are_counted_until_they_end() {
        let limits = Limits::default();
        let key = key(r#", "concurrency": 1, "rpm": 100"#);
        let now = Instant::now();
        let running = limits.acquire(&key, now).unwrap();
        assert_eq!(limits.acquire(&key, now).unwrap_err(), Limited::Concurrency);
        drop(running);
        assert!(limits.acquire(&key, now).is_ok());
    }

    #[test]
    fn keys_without_limits_are_not_tracked() {
        let limits = Limits::default();
        assert!(limits.acquire(&key(""), Instant::now()).unwrap().is_none());
        assert!(limits.keys.lock().unwrap().is_empty());
    }
}
