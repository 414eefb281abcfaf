//! Sending one request and timing its body frame by frame.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ollama_mesh_ollama_client::error_chain;
use tokio::time::Instant;

use super::connector::CappedConnector;
use super::{LoadSpec, Outcome, RequestSpec};

/// A keep-alive HTTP/1.1 client for one run, with its timing settings.
pub(super) struct Client {
    inner: hyper_util::client::legacy::Client<CappedConnector, Full<Bytes>>,
    base_url: String,
    /// The `Authorization` header value, when the system under test wants a key.
    authorization: Option<String>,
    request_timeout: Duration,
    stall_after: Duration,
}

impl Client {
    /// `pool` is the run's concurrency: every concurrent request keeps its connection between
    /// requests, so the run measures the system under test rather than TCP handshakes, and no
    /// more than `pool` connections are ever open.
    pub(super) fn new(spec: &LoadSpec, pool: usize) -> Self {
        let mut connector = HttpConnector::new();
        // Small requests and stream chunks must not wait for Nagle's algorithm.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(spec.request_timeout));
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(pool)
            .build(CappedConnector::new(connector, pool, spec.request_timeout));
        Self {
            inner,
            base_url: spec.base_url.trim_end_matches('/').to_owned(),
            authorization: spec.bearer.as_ref().map(|key| format!("Bearer {key}")),
            request_timeout: spec.request_timeout,
            stall_after: spec.stall_after,
        }
    }

    /// Sends `request`, timing it from `intended` (when it should have been sent; never later
    /// than now). Never fails: failures are outcomes. The request gets `request_timeout` from
    /// the moment it is actually sent.
    pub(super) async fn send(
        &self,
        request: RequestSpec,
        run_start: Instant,
        intended: Instant,
    ) -> Outcome {
        let mut timing = Timing::new(intended);
        let label = request.label.clone();
        let deadline = Instant::now() + self.request_timeout;
        let (error, timed_out) =
            match tokio::time::timeout_at(deadline, self.exchange(request, &mut timing)).await {
                Ok(Ok(())) => (None, false),
                Ok(Err(error)) => (Some(error), false),
                Err(_) => (
                    Some(format!("timed out after {:?}", self.request_timeout)),
                    true,
                ),
            };
        timing.finish(label, run_start, error, timed_out, self.stall_after)
    }

    /// The request itself; records into `timing` as it goes, so that a timeout keeps what was
    /// seen before it.
    async fn exchange(&self, request: RequestSpec, timing: &mut Timing) -> Result<(), String> {
        let uri: http::Uri = format!("{}{}", self.base_url, request.path)
            .parse()
            .map_err(|error| format!("invalid URL {}{}: {error}", self.base_url, request.path))?;
        let mut builder = http::Request::builder().method(request.method).uri(uri);
        if !request.body.is_empty() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = &self.authorization {
            builder = builder.header(http::header::AUTHORIZATION, authorization);
        }
        let http_request = builder
            .body(Full::new(request.body))
            .map_err(|error| format!("invalid request: {error}"))?;
        let response = self
            .inner
            .request(http_request)
            .await
            .map_err(|error| error_chain(&error))?;
        timing.status = Some(response.status().as_u16());
        let mut body = response.into_body();
        let mut error_lines = request.stream.then(ErrorLines::default);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| error_chain(&error))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if data.is_empty() {
                continue;
            }
            timing.chunk(data.len());
            if let Some(lines) = &mut error_lines {
                lines.feed(&data);
            }
        }
        match error_lines.and_then(ErrorLines::finish) {
            Some(message) => Err(format!("error in stream: {message}")),
            None => Ok(()),
        }
    }
}

/// What has been seen of one response so far.
struct Timing {
    intended: Instant,
    status: Option<u16>,
    first: Option<Instant>,
    last: Option<Instant>,
    chunks: u32,
    bytes: u64,
    max_gap: Duration,
}

impl Timing {
    fn new(intended: Instant) -> Self {
        Self {
            intended,
            status: None,
            first: None,
            last: None,
            chunks: 0,
            bytes: 0,
            max_gap: Duration::ZERO,
        }
    }

    fn chunk(&mut self, len: usize) {
        let now = Instant::now();
        match self.last {
            Some(last) => self.max_gap = self.max_gap.max(now - last),
            None => self.first = Some(now),
        }
        self.last = Some(now);
        self.chunks = self.chunks.saturating_add(1);
        self.bytes += len as u64;
    }

    fn finish(
        mut self,
        label: String,
        run_start: Instant,
        error: Option<String>,
        timed_out: bool,
        stall_after: Duration,
    ) -> Outcome {
        let ended = Instant::now();
        // A stream cut off by the timeout was silent from its last chunk until then: that
        // silence is its longest gap, and the reason it is stalled.
        if let (true, Some(last)) = (timed_out, self.last) {
            self.max_gap = self.max_gap.max(ended - last);
        }
        Outcome {
            label,
            scheduled_at: self.intended.saturating_duration_since(run_start),
            latency: ended.saturating_duration_since(self.intended),
            first_byte: self
                .first
                .map(|first| first.saturating_duration_since(self.intended)),
            status: self.status,
            error,
            chunks: self.chunks,
            max_gap: self.max_gap,
            stalled: self.max_gap > stall_after,
            bytes: self.bytes,
        }
    }
}

/// The longest partial line kept while looking for an error object: error lines are short, and
/// a stream of endless lines must not grow the generator's memory.
const MAX_LINE: usize = 64 * 1024;

/// Finds the first `{"error": ...}` line of an NDJSON stream (or `data: {"error": ...}` event
/// of an SSE one), which Ollama and OpenAI-compatible servers send after a `200` status when a
/// stream fails midway. Lines may be split across chunks.
#[derive(Default)]
struct ErrorLines {
    partial: Vec<u8>,
    /// The current line outgrew `MAX_LINE` and is skipped up to its end.
    skipping: bool,
    error: Option<String>,
}

impl ErrorLines {
    fn feed(&mut self, mut data: &[u8]) {
        while self.error.is_none() {
            let Some(end) = data.iter().position(|&byte| byte == b'\n') else {
                self.keep(data);
                return;
            };
            if self.partial.is_empty() && !self.skipping {
                self.error = error_message(&data[..end]);
            } else {
                self.keep(&data[..end]);
                if !self.skipping {
                    self.error = error_message(&self.partial);
                }
                self.partial.clear();
                self.skipping = false;
            }
            data = &data[end + 1..];
        }
    }

    fn keep(&mut self, data: &[u8]) {
        if self.skipping {
            return;
        }
        if self.partial.len() + data.len() > MAX_LINE {
            self.partial.clear();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(data);
        }
    }

    /// The error message, after checking a last line without a final newline.
    fn finish(mut self) -> Option<String> {
        if self.error.is_none() && !self.skipping {
            self.error = error_message(&self.partial);
        }
        self.error
    }
}

/// The message of an `{"error": ...}` line, if `line` is one.
fn error_message(line: &[u8]) -> Option<String> {
    let line = line.strip_prefix(b"data:").unwrap_or(line);
    // Only lines that mention the key are parsed: a token stream is mostly other lines.
    if !line.windows(7).any(|window| window == b"\"error\"") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    match value.get("error")? {
        serde_json::Value::Null => None,
        serde_json::Value::String(message) => Some(message.clone()),
        other => Some(other.to_string()),
    }
}
