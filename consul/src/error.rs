use std::time::Duration;

use http::StatusCode;

use crate::config::ConfigError;

/// Everything that can go wrong talking to Consul.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client configuration is unusable.
    #[error("invalid Consul configuration: {0}")]
    Config(#[from] ConfigError),
    /// No connection, or the connection broke before an answer.
    #[error("cannot reach Consul at {address}: {source}")]
    Unreachable {
        /// The configured address.
        address: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No complete answer within the time limit.
    #[error("Consul at {address} did not answer {path} within {timeout:?}")]
    Timeout {
        /// The configured address.
        address: String,
        /// The request path.
        path: String,
        /// The limit that ran out.
        timeout: Duration,
    },
    /// Consul answered with an error status.
    #[error("Consul answered {status} to {method} {path}: {body}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The request method.
        method: http::Method,
        /// The request path.
        path: String,
        /// The start of the response body (Consul's error text).
        body: String,
    },
    /// Consul's answer was not what the API documents.
    #[error("cannot decode Consul's answer to {path}: {source}")]
    Decode {
        /// The request path.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The HTTP status Consul answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Consul is shedding load (HTTP 429): back off harder than for other errors.
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(StatusCode::TOO_MANY_REQUESTS)
    }
}
