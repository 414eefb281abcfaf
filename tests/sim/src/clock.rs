//! Simulated time.
//!
//! Every duration the simulator models (a load, a prefill, a token, a keep-alive) is simulated
//! time; the time scale says how many real seconds one simulated second takes. Sleeps use
//! `tokio::time`, so tests run the scheduler on tokio's paused clock. Reported durations
//! (`load_duration`, `eval_duration`, `expires_at`…) are always simulated values, so a client
//! sees the numbers a real GPU would produce whatever the scale.

use std::time::Duration;

use tokio::time::Instant;

/// Converts between simulated and real time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    scale: f64,
}

impl Clock {
    /// A clock where one simulated second takes `scale` real seconds.
    pub fn new(scale: f64) -> Self {
        Self { scale }
    }

    /// Whether the clock never sleeps (`--time-scale 0`).
    pub fn is_instant(self) -> bool {
        self.scale == 0.0
    }

    /// The real duration of `sim`, or `None` when the clock never sleeps.
    pub fn real(self, sim: Duration) -> Option<Duration> {
        (!self.is_instant()).then(|| sim.mul_f64(self.scale))
    }

    /// Waits for `sim` of simulated time.
    pub async fn sleep(self, sim: Duration) {
        if let Some(real) = self.real(sim) {
            if !real.is_zero() {
                tokio::time::sleep(real).await;
            }
        }
    }

    /// Waits until `start` plus the real equivalent of `sim`; skips the timer when that moment
    /// has passed, which keeps token pacing free of drift and cheap at small scales. When the
    /// clock never sleeps it still spends task budget, so a long generation yields to others.
    pub async fn sleep_until(self, start: Instant, sim: Duration) {
        match self.real(sim) {
            Some(real) if start + real > Instant::now() => {
                tokio::time::sleep_until(start + real).await
            }
            Some(_) => {}
            None => tokio::task::consume_budget().await,
        }
    }

    /// The simulated duration of a real wait; zero when the clock never sleeps.
    pub fn sim_elapsed(self, since: Instant) -> Duration {
        if self.is_instant() {
            Duration::ZERO
        } else {
            since.elapsed().div_f64(self.scale)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleeps_scaled_time() {
        let clock = Clock::new(0.5);
        let start = Instant::now();
        clock.sleep(Duration::from_secs(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(clock.sim_elapsed(start), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn scale_zero_never_sleeps() {
        let clock = Clock::new(0.0);
        let start = Instant::now();
        clock.sleep(Duration::from_secs(3600)).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(clock.real(Duration::from_secs(1)), None);
    }
}
