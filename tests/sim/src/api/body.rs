//! Response bodies and the small constructors every handler uses.
//!
//! One enum instead of boxed bodies keeps the hot path allocation-free: a whole body is one
//! `Bytes`, a stream is a channel the generation task fills. Framing follows Go's `net/http`:
//! streams and bodies over 2 KiB go out chunked, smaller bodies with a Content-Length. When the
//! client goes away hyper drops the body, the channel closes, and the generation task stops.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body::{Frame, SizeHint};
use serde::Serialize;
use tokio::sync::mpsc;

/// Go buffers this much of a response before switching to chunked encoding
/// (`bufferBeforeChunkingSize`); handlers that set no Content-Length get one only below it.
const GO_CHUNKING_THRESHOLD: usize = 2048;

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// A complete body (taken when sent).
    Full(Option<Bytes>),
    /// Chunks produced while the client reads.
    Stream(mpsc::Receiver<Bytes>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) if b.len() > GO_CHUNKING_THRESHOLD => SizeHint::default(),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

/// A response.
pub type Response = http::Response<Body>;

/// Content types, exactly as Ollama sends them.
pub mod content_type {
    /// gin's `c.JSON`.
    pub const JSON: &str = "application/json; charset=utf-8";
    /// The OpenAI compatibility layer's JSON.
    pub const OPENAI_JSON: &str = "application/json";
    /// NDJSON streams.
    pub const NDJSON: &str = "application/x-ndjson";
    /// OpenAI streams.
    pub const SSE: &str = "text/event-stream";
    /// gin's `c.String`.
    pub const TEXT: &str = "text/plain; charset=utf-8";
    /// gin's 404 / 405 bodies.
    pub const PLAIN: &str = "text/plain";
}

/// A response with a complete body.
pub fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut resp = http::Response::new(Body::Full(Some(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, content_type: &'static str, value: &impl Serialize) -> Response {
    full(
        status,
        content_type,
        serde_json::to_vec(value).expect("responses serialize"),
    )
}

/// A response with no body and no Content-Type (Ollama's copy/delete answers).
pub fn empty(status: StatusCode) -> Response {
    let mut resp = http::Response::new(Body::Full(None));
    *resp.status_mut() = status;
    resp
}

/// A streamed response whose chunks come from the returned sender.
pub fn stream(content_type: &'static str) -> (Response, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(16);
    let mut resp = http::Response::new(Body::Stream(rx));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (resp, tx)
}
