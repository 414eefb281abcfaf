//! Asking an Ollama node, as the sidecar (its local Ollama), the router (static backends, and
//! the fleet-wide views and broadcasts) and the bench (its peers) do.
//!
//! * [`NodeClient`]: one exchange bounded in time (connecting, the head and the whole body) and
//!   in size, over plain HTTP or any connector (the router's TLS and mTLS ones).
//! * [`NodeClient::read_state`]: a node's version, models on disk and models loaded
//!   ([`NodeState`]), the three GETs a sidecar makes at every poll.
//! * [`AskError`]: why no usable answer came, naming the URL asked and the cause
//!   ([`error_chain`]).

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Largest answer read from a node; a node with thousands of models, or a fleet view of it,
/// stays far below.
const MAX_ANSWER: usize = 16 << 20;

/// Why a node gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The request could not be built (a malformed URL or header).
    #[error("cannot ask {url}: {source}")]
    Request {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: http::Error,
    },
    /// No connection, or the connection failed before the answer's head.
    #[error("{url} is unreachable: {}", error_chain(.source))]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body broke off or was larger than the client reads.
    #[error("{url}: the answer broke off: {}", error_chain(source.as_ref()))]
    Body {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// No complete answer (head and body) within the time limit.
    #[error("{url} gave no answer within {timeout:?}")]
    Timeout {
        /// The URL asked.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// Answered with an error status where a success was needed.
    #[error("{url} answered {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// Answered something that is not Ollama's API.
    #[error("{url} did not answer like Ollama's API: {source}")]
    Garbage {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// An error and its causes on one line: hyper's own text alone ("client error (Connect)") does
/// not say what went wrong.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// A node's whole answer: any status, with its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The body, read to its end.
    pub body: Bytes,
}

/// What a node says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    /// `/api/version`.
    pub version: String,
    /// `/api/tags` names.
    pub models_on_disk: Vec<String>,
    /// `/api/ps`: the models loaded in memory.
    pub models_loaded: Vec<LoadedModel>,
}

/// A model loaded in memory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LoadedModel {
    /// Model name, e.g. `llama3.2:3b`.
    pub name: String,
    /// Bytes in VRAM.
    #[serde(default)]
    pub size_vram: u64,
}

#[derive(Deserialize)]
struct Version {
    version: String,
}

/// `/api/tags`: the models on disk.
#[derive(Debug, Deserialize)]
pub struct Tags {
    /// One entry per model.
    pub models: Vec<Tag>,
}

/// One model of `/api/tags` (only what ollama-mesh reads of it).
#[derive(Debug, Deserialize)]
pub struct Tag {
    /// Its name, e.g. `llama3.2:3b`.
    pub name: String,
}

#[derive(Deserialize)]
struct Ps {
    models: Vec<LoadedModel>,
}

/// A client for Ollama nodes: a connection pool, where every exchange names its time limit.
/// Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct NodeClient<C = HttpConnector> {
    http: Client<C, Full<Bytes>>,
}

impl NodeClient {
    /// Plain HTTP with a connection pool.
    pub fn http() -> Self {
        Self::with_connector(HttpConnector::new())
    }

    /// Plain HTTP on a new connection for every exchange: for probing processes that restart on
    /// the same port, where a pooled connection would still reach the previous one.
    pub fn fresh_connections() -> Self {
        Self {
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(HttpConnector::new()),
        }
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> NodeClient<C> {
    /// A client over `connector` (e.g. one that speaks TLS to https:// nodes).
    pub fn with_connector(connector: C) -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `request` and reads the whole answer, all within `timeout`. Any status is an
    /// answer.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, AskError> {
        let url = request.uri().to_string();
        let exchange = async {
            let response =
                self.http
                    .request(request)
                    .await
                    .map_err(|source| AskError::Unreachable {
                        url: url.clone(),
                        source,
                    })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|source| AskError::Body {
                    url: url.clone(),
                    source,
                })?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AskError::Timeout {
                url: url.clone(),
                timeout,
            })?
    }

    /// GETs `url` within `timeout`; any status is an answer.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Answer, AskError> {
        let request =
            Request::get(url)
                .body(Full::default())
                .map_err(|source| AskError::Request {
                    url: url.to_owned(),
                    source,
                })?;
        self.send(request, timeout).await
    }

    /// GETs `url` within `timeout` and reads its JSON; an error status is an error.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<T, AskError> {
        let answer = self.get(url, timeout).await?;
        if !answer.status.is_success() {
            return Err(AskError::Status {
                url: url.to_owned(),
                status: answer.status,
            });
        }
        serde_json::from_slice(&answer.body).map_err(|source| AskError::Garbage {
            url: url.to_owned(),
            source,
        })
    }

    /// Reads the version, models on disk and loaded models of the node at `base_url`
    /// (`http://host:port`); the three GETs run at once, so the whole reading takes at most
    /// `timeout`.
    pub async fn read_state(
        &self,
        base_url: &str,
        timeout: Duration,
    ) -> Result<NodeState, AskError> {
        let url = |path: &str| format!("{}{path}", base_url.trim_end_matches('/'));
        let (version, tags, ps) = (url("/api/version"), url("/api/tags"), url("/api/ps"));
        let (version, tags, ps) = tokio::try_join!(
            self.get_json::<Version>(&version, timeout),
            self.get_json::<Tags>(&tags, timeout),
            self.get_json::<Ps>(&ps, timeout),
        )?;
        Ok(NodeState {
            version: version.version,
            models_on_disk: tags.models.into_iter().map(|m| m.name).collect(),
            models_loaded: ps.models,
        })
    }
}

#[cfg(test)]
mod tests;
