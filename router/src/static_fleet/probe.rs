//! Reading one Ollama's version, models on disk and loaded models: the three GETs a sidecar
//! would make, done by the router for static backends.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::backend_tls::{self, BackendTls};

/// Largest answer accepted; a node with thousands of models stays far below it.
const MAX_BODY: usize = 8 << 20;

/// What one backend said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reading {
    /// `/api/version`.
    pub version: String,
    /// `/api/tags` names.
    pub models_on_disk: Vec<String>,
    /// `/api/ps` names.
    pub models_loaded: Vec<String>,
}

/// Why a backend could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeError {
    /// No connection, or no complete answer in time.
    #[error("{url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// Answered with an error status.
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
    /// Answered something that is not Ollama's API.
    #[error("{url} did not answer like Ollama: {reason}")]
    Garbage { url: String, reason: String },
}

#[derive(Deserialize)]
struct Version {
    version: String,
}

#[derive(Deserialize)]
struct ModelsAnswer {
    models: Vec<Model>,
}

#[derive(Deserialize)]
struct Model {
    name: String,
}

/// A pooled HTTP/1.1 client whose reads give up after a time limit.
#[derive(Clone)]
pub(super) struct Probe {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl Probe {
    /// A client that reaches https:// backends with `tls`'s trust.
    pub(super) fn new(timeout: Duration, tls: Option<&BackendTls>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Self {
            http: Client::builder(TokioExecutor::new())
                .build(backend_tls::connector(tls, connector)),
            timeout,
        }
    }

    /// Reads the backend at `base_url`, all three answers within the time limit.
    pub(super) async fn read(&self, base_url: &str) -> Result<Reading, ProbeError> {
        let reads = async {
            tokio::try_join!(
                self.get::<Version>(base_url, "/api/version"),
                self.get::<ModelsAnswer>(base_url, "/api/tags"),
                self.get::<ModelsAnswer>(base_url, "/api/ps"),
            )
        };
        let (version, tags, ps) =
            tokio::time::timeout(self.timeout, reads)
                .await
                .map_err(|_| ProbeError::Unreachable {
                    url: base_url.to_owned(),
                    reason: format!("no answer within {:?}", self.timeout),
                })??;
        let names = |answer: ModelsAnswer| answer.models.into_iter().map(|m| m.name).collect();
        Ok(Reading {
            version: version.version,
            models_on_disk: names(tags),
            models_loaded: names(ps),
        })
    }

    async fn get<T: DeserializeOwned>(&self, base_url: &str, path: &str) -> Result<T, ProbeError> {
        let url = format!("{base_url}{path}");
        let unreachable = |reason: String| ProbeError::Unreachable {
            url: url.clone(),
            reason,
        };
        let request = Request::get(&url)
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ProbeError::Status { url, status });
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| ProbeError::Garbage {
            url,
            reason: e.to_string(),
        })
    }
}
