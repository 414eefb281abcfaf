//! What the sidecar reads from the local Ollama: its version, the models on disk and the models
//! loaded in memory. Three cheap GETs per poll.

use std::time::Duration;

use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::http_get::HttpGet;

/// Longest one Ollama request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why Ollama could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OllamaError {
    /// No connection or no answer in time.
    #[error("Ollama at {url} is unreachable: {reason}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// Answered with an error status.
    #[error("Ollama answered {status} to {url}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// Answered something that is not Ollama's API.
    #[error("Ollama's answer to {url} is not what its API returns: {reason}")]
    Garbage {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
}

/// One reading of Ollama's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OllamaState {
    /// `/api/version`.
    pub version: String,
    /// `/api/tags` names.
    pub models_on_disk: Vec<String>,
    /// `/api/ps`: loaded models.
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

#[derive(Deserialize)]
struct Tags {
    models: Vec<TagModel>,
}

#[derive(Deserialize)]
struct TagModel {
    name: String,
}

#[derive(Deserialize)]
struct Ps {
    models: Vec<LoadedModel>,
}

/// Reads the local Ollama.
#[derive(Clone)]
pub struct OllamaClient {
    base_url: String,
    http: HttpGet,
}

impl OllamaClient {
    /// A client for Ollama at `base_url` (`http://host:port`).
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http: HttpGet::new(REQUEST_TIMEOUT),
        }
    }

    /// Reads version, models on disk and loaded models.
    pub async fn read_state(&self) -> Result<OllamaState, OllamaError> {
        let (version, tags, ps) = tokio::try_join!(
            self.get::<Version>("/api/version"),
            self.get::<Tags>("/api/tags"),
            self.get::<Ps>("/api/ps"),
        )?;
        Ok(OllamaState {
            version: version.version,
            models_on_disk: tags.models.into_iter().map(|m| m.name).collect(),
            models_loaded: ps.models,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, OllamaError> {
        let url = format!("{}{path}", self.base_url);
        let (status, body) =
            self.http
                .get(&url)
                .await
                .map_err(|reason| OllamaError::Unreachable {
                    url: url.clone(),
                    reason,
                })?;
        if !status.is_success() {
            return Err(OllamaError::Status { url, status });
        }
        serde_json::from_slice(&body).map_err(|e| OllamaError::Garbage {
            url,
            reason: e.to_string(),
        })
    }
}
