//! The one HTTP operation the sidecar needs from non-Consul servers: a bounded GET.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// Largest answer accepted (a node with thousands of models stays far below).
const MAX_BODY: usize = 8 << 20;

/// A pooled HTTP/1.1 client for GETs with a time limit.
#[derive(Clone)]
pub struct HttpGet {
    http: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl HttpGet {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
            timeout,
        }
    }

    /// GETs `url`; `Err` carries why no complete answer came.
    pub async fn get(&self, url: &str) -> Result<(StatusCode, Bytes), String> {
        let request = Request::get(url)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}
