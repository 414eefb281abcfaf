//! Loads ahead of need, as the scheduler orders them (see [`crate::schedule::preload`]):
//! Ollama's request with a model and no prompt, which loads the model and answers once it is
//! loaded, with the time it took as `load_duration`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use super::fanout::FanOut;
use crate::schedule::{Preload, Preloader, Scheduler};

/// Longest a load may take before it counts as failed: a large model from a slow disk.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Sends the scheduler's load orders to the nodes.
pub struct NodePreloader {
    fanout: FanOut,
}

impl NodePreloader {
    /// A preloader sending through `fanout`'s connections.
    pub fn new(fanout: FanOut) -> Self {
        Self { fanout }
    }
}

impl Preloader for NodePreloader {
    fn preload(&self, scheduler: Arc<Scheduler>, order: Preload) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Orders come from requests, which run on a runtime; without one nothing is sent.
            scheduler.preloaded(order.backend.id(), &order.model, None);
            return;
        };
        let fanout = self.fanout.clone();
        runtime.spawn(async move {
            let body = Bytes::from(serde_json::json!({ "model": order.model }).to_string());
            let answer = fanout
                .send_all(
                    &[&order.backend],
                    &Method::POST,
                    "/api/generate",
                    &body,
                    LOAD_TIMEOUT,
                )
                .await
                .into_iter()
                .next();
            let loaded = match answer {
                Some(Ok((status, body))) if status.is_success() => load_duration(&body),
                Some(Ok((status, body))) => {
                    tracing::warn!(node = %order.backend.id(), model = %order.model, %status,
                        answer = %String::from_utf8_lossy(&body), "loading ahead of need failed");
                    None
                }
                Some(Err(error)) => {
                    tracing::warn!(node = %order.backend.id(), model = %order.model, %error,
                        "loading ahead of need failed");
                    None
                }
                None => None,
            };
            scheduler.preloaded(order.backend.id(), &order.model, loaded);
        });
    }
}

/// The `load_duration` (nanoseconds) of Ollama's answer to a load; zero when it has none (a
/// model that was loaded already).
fn load_duration(body: &[u8]) -> Option<Duration> {
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(Duration::from_nanos(
        answer
            .get("load_duration")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_time_is_read_from_ollamas_answer() {
        let answer = br#"{"model":"m","created_at":"2026-12-08T00:00:00Z","response":"","done":true,"done_reason":"load","load_duration":2500000000}"#;
        assert_eq!(load_duration(answer), Some(Duration::from_millis(2_500)));
        assert_eq!(load_duration(br#"{"done":true}"#), Some(Duration::ZERO));
        assert_eq!(load_duration(b"not json"), None);
    }
}
