//! One request sent to many backends at once, for answers the router assembles itself: the
//! fleet-wide views and model management broadcast to every node.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::backend::Reach;
use crate::backend_tls::{self, BackendTls};
use crate::mesh::MeshClient;
use crate::Backend;

/// Largest answer read from one node.
const MAX_ANSWER: usize = 16 << 20;

/// A pooled client for requests to every node.
#[derive(Clone)]
pub struct FanOut {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `https` with TLS to the nodes: the same nodes Pingora reaches over TLS (mesh nodes are
    /// always `https`).
    scheme: &'static str,
}

/// One node's answer, or why there is none.
pub type NodeAnswer = Result<(StatusCode, Bytes), String>;

impl FanOut {
    /// A client with its own connection pool, over HTTPS with `tls`, or with Connect mTLS to
    /// mesh nodes with `mesh` (the two exclude each other).
    pub fn new(tls: Option<&BackendTls>, mesh: Option<&MeshClient>) -> Self {
        let connector = match mesh {
            Some(mesh) => backend_tls::connector_with(mesh.client_config(), HttpConnector::new()),
            None => backend_tls::connector(tls, HttpConnector::new()),
        };
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            scheme: backend_tls::scheme(tls),
        }
    }

    /// Sends `method path` with `body` to every backend in `nodes` concurrently; the answers
    /// come back in the same order. Each node gets at most `timeout`.
    pub async fn send_all(
        &self,
        nodes: &[&std::sync::Arc<Backend>],
        method: &Method,
        path: &str,
        body: &Bytes,
        timeout: Duration,
    ) -> Vec<NodeAnswer> {
        join_all(
            nodes
                .iter()
                .map(|node| self.send(node, method.clone(), path, body.clone(), timeout)),
        )
        .await
    }

    async fn send(
        &self,
        node: &Backend,
        method: Method,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> NodeAnswer {
        let scheme = match node.reach() {
            Reach::Mesh => "https",
            Reach::Direct | Reach::Skipped(_) => self.scheme,
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("{scheme}://{}{path}", node.address()))
            .header(http::header::HOST, node.host_header())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}
