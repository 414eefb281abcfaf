//! The HTTP client all endpoint modules share: authentication, timeouts sized for blocking
//! queries, and the `X-Consul-*` response headers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::ClientConfig;
use crate::transport::Connector;
use crate::Error;

/// How much of an error body to keep in [`Error::Status`].
const MAX_ERROR_BODY: usize = 512;

/// Extra time allowed past a blocking query's `wait` (on top of Consul's own jitter of
/// `wait / 16`) before the client gives up on the response.
const BLOCKING_SLACK: Duration = Duration::from_secs(5);

/// A Consul HTTP API client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: HyperClient<Connector, Full<Bytes>>,
    /// Scheme and authority for request URIs; the connector decides where they really go.
    base: String,
    address: String,
    token: Option<String>,
    request_timeout: Duration,
}

/// Read consistency, from fastest to strongest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Answered by the leader (Consul's default).
    #[default]
    Default,
    /// Answered by any server, even without a leader: scales reads, may lag slightly.
    Stale,
    /// Answered by the leader after confirming it still leads.
    Consistent,
}

/// Options for read endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Block until the result changes past this index; 0 answers at once.
    pub index: u64,
    /// Longest time to block (Consul's default is 5 minutes, its maximum 10).
    pub wait: Option<Duration>,
    /// Read consistency.
    pub consistency: Consistency,
}

/// A read's result with Consul's response metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResponse<T> {
    /// The data.
    pub value: T,
    /// `X-Consul-Index`: pass it back to block for the next change.
    pub index: u64,
    /// `X-Consul-KnownLeader`, when sent.
    pub known_leader: Option<bool>,
    /// `X-Consul-LastContact`: how stale a `stale` read may be, when sent.
    pub last_contact: Option<Duration>,
}

impl<T> QueryResponse<T> {
    /// The same metadata around a transformed value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> QueryResponse<U> {
        QueryResponse {
            value: f(self.value),
            index: self.index,
            known_leader: self.known_leader,
            last_contact: self.last_contact,
        }
    }
}

/// A raw answer: status, headers and body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Client {
    /// A client for the validated configuration.
    pub fn new(config: &ClientConfig) -> Result<Self, Error> {
        let connector = Connector::new(&config.address, config.tls.as_ref())?;
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let scheme = match config.tls {
            Some(_) => "https",
            None => "http",
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base: format!("{scheme}://consul"),
                address: config.address.to_string(),
                token: config.token.clone(),
                request_timeout: config.request_timeout,
            }),
        })
    }

    /// The address this client talks to, for logs.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// GETs `path` and decodes the JSON answer.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<T>, Error> {
        let answer = self.query(path, options).await?;
        let answer = self.expect_success(Method::GET, path, answer)?;
        let value = decode(path, &answer.body)?;
        Ok(query_response(value, &answer.headers))
    }

    /// Like [`Client::get_json`], but a 404 is `None` (and still carries the index, so a
    /// blocking query on a missing key or service keeps blocking).
    pub(crate) async fn get_json_optional<T: DeserializeOwned>(
        &self,
        path: &str,
        options: &QueryOptions,
    ) -> Result<QueryResponse<Option<T>>, Error> {
        let answer = self.query(path, options).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(query_response(None, &answer.headers));
        }
        let answer = self.expect_success(Method::GET, path, answer)?;
        let value = decode(path, &answer.body)?;
        Ok(query_response(Some(value), &answer.headers))
    }

    /// PUTs `body` as JSON and ignores the answer's body.
    pub(crate) async fn put_json(&self, path: &str, body: &impl Serialize) -> Result<(), Error> {
        let body = serde_json::to_vec(body).map_err(|source| Error::Decode {
            path: path.to_owned(),
            source,
        })?;
        self.send_expecting_success(Method::PUT, path, Bytes::from(body))
            .await
            .map(drop)
    }

    /// POSTs `body` as JSON and decodes the JSON answer.
    pub(crate) async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, Error> {
        let body = serde_json::to_vec(body).map_err(|source| Error::Decode {
            path: path.to_owned(),
            source,
        })?;
        let answer = self
            .send_expecting_success(Method::POST, path, Bytes::from(body))
            .await?;
        decode(path, &answer.body)
    }

    /// PUTs nothing.
    pub(crate) async fn put_empty(&self, path: &str) -> Result<(), Error> {
        self.send_expecting_success(Method::PUT, path, Bytes::new())
            .await
            .map(drop)
    }

    /// PUTs raw bytes to an endpoint that answers `true` or `false` (KV writes).
    pub(crate) async fn put_bytes_for_bool(&self, path: &str, body: Bytes) -> Result<bool, Error> {
        let answer = self.send_expecting_success(Method::PUT, path, body).await?;
        decode(path, &answer.body)
    }

    /// DELETEs `path`.
    pub(crate) async fn delete(&self, path: &str) -> Result<(), Error> {
        self.send_expecting_success(Method::DELETE, path, Bytes::new())
            .await
            .map(drop)
    }

    async fn send_expecting_success(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Answer, Error> {
        let answer = self
            .send(method.clone(), path, body, self.inner.request_timeout)
            .await?;
        self.expect_success(method, path, answer)
    }

    /// A GET with the blocking-query and consistency parameters, and a time limit that outlasts
    /// the server's wait plus its jitter.
    async fn query(&self, path: &str, options: &QueryOptions) -> Result<Answer, Error> {
        let mut params = Vec::new();
        // Never block on index 0: Consul would answer at once, turning a watch into a busy loop.
        let blocking = options.index > 0;
        let mut timeout = self.inner.request_timeout;
        if blocking {
            params.push(format!("index={}", options.index));
            if let Some(wait) = options.wait {
                params.push(format!("wait={}", go_duration(wait)));
            }
            let wait = options.wait.unwrap_or(Duration::from_secs(300));
            timeout = wait + wait / 16 + BLOCKING_SLACK;
        }
        match options.consistency {
            Consistency::Default => {}
            Consistency::Stale => params.push("stale".to_owned()),
            Consistency::Consistent => params.push("consistent".to_owned()),
        }
        let path_and_query = if params.is_empty() {
            path.to_owned()
        } else {
            let separator = if path.contains('?') { '&' } else { '?' };
            format!("{path}{separator}{}", params.join("&"))
        };
        self.send(Method::GET, &path_and_query, Bytes::new(), timeout)
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.inner.base));
        if let Some(token) = &self.inner.token {
            request = request.header("X-Consul-Token", token);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| self.unreachable(e))?;
        let exchange = async {
            let response = self
                .inner
                .http
                .request(request)
                .await
                .map_err(|e| self.unreachable(e))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| self.unreachable(e))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                address: self.inner.address.clone(),
                path: path.to_owned(),
                timeout,
            })?
    }

    fn expect_success(&self, method: Method, path: &str, answer: Answer) -> Result<Answer, Error> {
        if answer.status.is_success() {
            return Ok(answer);
        }
        let end = answer.body.len().min(MAX_ERROR_BODY);
        Err(Error::Status {
            status: answer.status,
            method,
            path: path.to_owned(),
            body: String::from_utf8_lossy(&answer.body[..end])
                .trim()
                .to_owned(),
        })
    }

    fn unreachable(&self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Unreachable {
            address: self.inner.address.clone(),
            source: Box::new(source),
        }
    }
}

fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|source| Error::Decode {
        path: path.to_owned(),
        source,
    })
}

fn query_response<T>(value: T, headers: &HeaderMap) -> QueryResponse<T> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    QueryResponse {
        value,
        index: header("X-Consul-Index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        known_leader: header("X-Consul-KnownLeader").and_then(|v| v.parse().ok()),
        last_contact: header("X-Consul-LastContact")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis),
    }
}

/// Percent-encodes one path segment or query value.
pub(crate) fn encode_component(s: &str) -> String {
    percent_encode(s, false)
}

/// Percent-encodes a KV key, keeping its `/` separators.
pub(crate) fn encode_key_path(s: &str) -> String {
    percent_encode(s, true)
}

fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Formats a duration the way Go's `time.ParseDuration` reads it, in whole milliseconds (blocking
/// queries' `wait`, check intervals and TTLs).
pub(crate) fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
