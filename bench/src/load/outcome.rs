//! What happened to one request.

use std::time::Duration;

/// One request as the client saw it. Every time is counted from the request's *intended* send
/// time, so that in an open-loop run a request delayed by the generator or by a stalled server
/// is charged for the delay (no coordinated omission).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The [`RequestSpec::label`](super::RequestSpec::label) of the request.
    pub label: String,
    /// When the request was meant to be sent, since the run started.
    pub scheduled_at: Duration,
    /// From the intended send time to the last byte of the body (or to the failure). An
    /// open-loop request is sent up to a timer tick (1 ms) early rather than late, and is then
    /// timed from when it was actually sent.
    pub latency: Duration,
    /// From the intended send time to the first body chunk: the time to first token for a
    /// stream. `None` if no body byte arrived.
    pub first_byte: Option<Duration>,
    /// The HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// Why the request failed: connection refused or reset, timeout, an error object in a
    /// stream. `None` if the exchange completed (whatever the status).
    pub error: Option<String>,
    /// Body chunks received (HTTP/1.1 chunks as read by the client; tokens for Ollama streams).
    pub chunks: u32,
    /// The longest gap between two body chunks; for a stream cut off by the request timeout,
    /// this includes its silence up to the timeout.
    pub max_gap: Duration,
    /// `max_gap` exceeded the run's `stall_after`.
    pub stalled: bool,
    /// Body bytes received.
    pub bytes: u64,
}

impl Outcome {
    /// A `2xx` response that completed without error, which for an Ollama NDJSON (or SSE)
    /// stream also means no `{"error": ...}` line: Ollama reports failures midway through a
    /// stream that way, after a `200`.
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && self
                .status
                .is_some_and(|status| (200..300).contains(&status))
    }
}
