use std::time::Duration;

/// Exponential backoff with full jitter: each failure doubles the ceiling (up to `max`), and the
/// actual delay is drawn between half the ceiling and the ceiling, so many watchers that lost
/// Consul at the same moment do not come back in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    ceiling: Duration,
}

/// The least a watcher waits after Consul said 429: it is shedding load, so retrying at the
/// first-error pace would add to it.
const RATE_LIMITED_FLOOR: Duration = Duration::from_secs(1);

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            ceiling: initial,
        }
    }

    /// The delay before the next attempt after a failure.
    pub(crate) fn next_delay(&mut self, rate_limited: bool) -> Duration {
        if rate_limited {
            self.ceiling = self.ceiling.max(RATE_LIMITED_FLOOR.min(self.max));
        }
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Forgets past failures.
    pub(crate) fn reset(&mut self) {
        self.ceiling = self.initial;
    }
}
