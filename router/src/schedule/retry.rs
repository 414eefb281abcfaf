//! When a failed attempt is tried again on another node: the one retry rule.
//!
//! A request is retried only before anything reached its client (the hooks check that), at
//! most `--retries` times, and only while the router's retries stay within a budget: at most
//! [`BUDGET_SHARE`] of the requests started over the last [`WINDOW`], plus
//! [`MIN_RETRIES_PER_WINDOW`] so a quiet router can still retry. A fleet-wide failure therefore
//! adds a fifth to the load instead of multiplying it by the retry count.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How far back the budget looks.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Retries allowed as a share of requests.
pub const BUDGET_SHARE: f64 = 0.2;
/// Retries allowed in any window, however few requests came.
pub const MIN_RETRIES_PER_WINDOW: u64 = 10;
/// The window is kept in this many buckets.
const BUCKETS: usize = 10;

/// The router-wide retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    per_request: usize,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// Per bucket: (bucket number since `start`, requests, retries).
    buckets: [(u64, u64, u64); BUCKETS],
}

impl Window {
    fn bucket(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let width = WINDOW.as_nanos() / BUCKETS as u128;
        let number = (now.saturating_duration_since(self.start).as_nanos() / width) as u64;
        let slot = &mut self.buckets[(number % BUCKETS as u64) as usize];
        if slot.0 != number {
            *slot = (number, 0, 0);
        }
        slot
    }

    fn totals(&mut self, now: Instant) -> (u64, u64) {
        let current = self.bucket(now).0;
        self.buckets
            .iter()
            .filter(|(number, _, _)| current.saturating_sub(*number) < BUCKETS as u64)
            .fold((0, 0), |(requests, retries), (_, q, r)| {
                (requests + q, retries + r)
            })
    }
}

/// The retries one request has left.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    left: usize,
}

impl Retries {
    /// Retries the request has left, the budget permitting.
    pub fn left(&self) -> usize {
        self.left
    }
}

impl RetryBudget {
    /// A budget allowing each request `per_request` retries.
    pub fn new(per_request: usize) -> Self {
        Self {
            per_request,
            window: Mutex::new(Window {
                start: Instant::now(),
                buckets: [(u64::MAX, 0, 0); BUCKETS],
            }),
        }
    }

    /// Counts a new request and gives it its retries.
    pub fn start(&self) -> Retries {
        self.lock().bucket(Instant::now()).1 += 1;
        Retries {
            left: self.per_request,
        }
    }

    /// Whether `retries`' request may be tried again now; counts the retry when it may.
    pub fn allow(&self, retries: &mut Retries) -> bool {
        if retries.left == 0 {
            return false;
        }
        let now = Instant::now();
        let mut window = self.lock();
        let (requests, spent) = window.totals(now);
        let budget = MIN_RETRIES_PER_WINDOW.max((requests as f64 * BUDGET_SHARE) as u64);
        if spent >= budget {
            return false;
        }
        window.bucket(now).2 += 1;
        retries.left -= 1;
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_request_gets_its_own_retries() {
        let budget = RetryBudget::new(2);
        let mut retries = budget.start();
        assert!(budget.allow(&mut retries));
        assert!(budget.allow(&mut retries));
        assert!(!budget.allow(&mut retries));
        assert!(!RetryBudget::new(0).allow(&mut RetryBudget::new(0).start()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fleet_wide_failure_is_retried_within_a_fifth_of_the_load() {
        let budget = RetryBudget::new(2);
        let mut allowed = 0;
        for _ in 0..1_000 {
            let mut retries = budget.start();
            while budget.allow(&mut retries) {
                allowed += 1;
            }
        }
        assert!(
            (190..=210).contains(&allowed),
            "{allowed} retries for 1000 requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_router_may_still_retry_and_the_budget_refills() {
        let budget = RetryBudget::new(1);
        let allowed = (0..20)
            .filter(|_| budget.allow(&mut budget.start()))
            .count() as u64;
        assert_eq!(allowed, MIN_RETRIES_PER_WINDOW);
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        assert!(budget.allow(&mut budget.start()));
    }
}
