use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `burst` calls may go at once, after which calls are spaced to `per_second`.
///
/// Blocking queries return as soon as anything changes, so under churn a watch loop would
/// otherwise re-query as fast as Consul can answer.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    pub(crate) fn new(burst: u32, per_second: f64) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_second: per_second.max(f64::MIN_POSITIVE),
            tokens: capacity,
            refilled_at: Instant::now(),
        }
    }

    /// Waits until a call is allowed and takes its token.
    pub(crate) async fn acquire(&mut self) {
        self.refill();
        if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.per_second);
            tokio::time::sleep(wait).await;
            self.refill();
        }
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refilled_at = now;
    }
}
