//! Answers the router writes itself: complete responses, errors in the caller's dialect, and
//! the words for a request the scheduler could not place.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::dialect;
use super::route::{Dialect, Route};
use crate::schedule::ScheduleError;

/// Content type of the router's JSON answers.
pub const JSON: &str = "application/json; charset=utf-8";
/// The most of an unread request body the router reads and discards before it answers.
pub const DRAIN_LIMIT: u64 = 4 << 20;
/// The longest it spends doing so.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads and discards what is left of the request body, when the client declared at most
/// [`DRAIN_LIMIT`] bytes (or did not say), for at most [`DRAIN_TIMEOUT`].
///
/// An answer given before the body was read (a refusal, an error) would otherwise end the
/// request while the client is still sending: over HTTP/2 the stream is then ended with
/// `RST_STREAM(NO_ERROR)` after the answer, which RFC 9113 §8.1 allows but clients such as curl
/// 7.x take for a broken stream and discard the answer; over HTTP/1.1 the connection is closed
/// with unread data, which resets it and loses the answer. With the body read, both end as a
/// normal exchange (and an HTTP/1.1 connection stays reusable). A body larger than the limit is
/// not read: the answer then goes out as the protocol allows.
pub async fn drain_request_body(session: &mut Session) {
    if session.is_body_done() {
        return;
    }
    if declared_length(session).is_some_and(|length| length > DRAIN_LIMIT) {
        return;
    }
    let drain = async {
        let mut drained: u64 = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            drained += chunk.len() as u64;
            if drained > DRAIN_LIMIT {
                break;
            }
        }
    };
    // A client that stops sending gets its answer anyway when the time is up.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
}

/// The body length the request's `Content-Length` declares, if it declares one.
pub fn declared_length(session: &Session) -> Option<u64> {
    session
        .get_header(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Writes a complete response (headers only for `HEAD`).
pub async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
) -> Result<()> {
    respond_with(session, status, content_type, body, &[]).await
}

/// [`respond`] with extra headers. An empty `content_type` sends none, as Ollama does for its
/// empty 200s.
pub async fn respond_with(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    headers: &[(http::HeaderName, &str)],
) -> Result<()> {
    drain_request_body(session).await;
    let head_only = session.req_header().method == Method::HEAD;
    let mut header = ResponseHeader::build(status, Some(2 + headers.len()))?;
    for (name, value) in headers {
        header.insert_header(name.clone(), *value)?;
    }
    if !content_type.is_empty() {
        header.insert_header(http::header::CONTENT_TYPE, content_type)?;
    }
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// An error in the caller's dialect.
pub async fn respond_error(
    session: &mut Session,
    dialect: Dialect,
    status: u16,
    message: &str,
) -> Result<()> {
    respond_error_with(session, dialect, status, message, &[]).await
}

/// [`respond_error`] with extra headers.
pub async fn respond_error_with(
    session: &mut Session,
    dialect: Dialect,
    status: u16,
    message: &str,
    headers: &[(http::HeaderName, &str)],
) -> Result<()> {
    let body = dialect::error_body(dialect, status, message);
    respond_with(session, status, JSON, body, headers).await
}

/// Answers a request the scheduler could not place, with `Retry-After` when a retry may pass.
pub async fn respond_unscheduled(
    session: &mut Session,
    route: &Route,
    error: &ScheduleError,
) -> Result<()> {
    let message = describe(error, route);
    let retry_after = error.retry_after().map(|d| d.as_secs().max(1).to_string());
    let headers: Vec<(http::HeaderName, &str)> = retry_after
        .as_deref()
        .map(|seconds| (http::header::RETRY_AFTER, seconds))
        .into_iter()
        .collect();
    respond_error_with(session, route.dialect(), error.status(), &message, &headers).await
}

/// The message for a request the scheduler could not place.
///
/// A missing model gets Ollama's own text for the route (its embedding endpoints word it
/// differently), followed by the models the fleet does have.
pub fn describe(error: &ScheduleError, route: &Route) -> String {
    match error {
        ScheduleError::ModelNotFound { model, available } => {
            let ollama_text = match route.label() {
                "embed" | "embeddings" | "openai_embeddings" => {
                    format!("model \"{model}\" not found, try pulling it first")
                }
                _ => format!("model '{model}' not found"),
            };
            if available.is_empty() {
                ollama_text
            } else {
                format!("{ollama_text}; the fleet has: {}", available.join(", "))
            }
        }
        other => other.to_string(),
    }
}
