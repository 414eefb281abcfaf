//! One request sent to many backends at once, for answers the router assembles itself: the
//! fleet-wide views and model management broadcast to every node.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use ollama_mesh_ollama_client::{Answer, AskError, NodeClient};

use crate::backend::Reach;
use crate::backend_tls::{self, BackendTls};
use crate::mesh::MeshClient;
use crate::Backend;

/// A pooled client for requests to every node.
#[derive(Clone)]
pub struct FanOut {
    http: NodeClient<HttpsConnector<HttpConnector>>,
    /// `https` with TLS to the nodes: the same nodes Pingora reaches over TLS (mesh nodes are
    /// always `https`).
    scheme: &'static str,
}

/// One node's answer, or why there is none.
pub type NodeAnswer = Result<(StatusCode, Bytes), AskError>;

impl FanOut {
    /// A client with its own connection pool, over HTTPS with `tls`, or with Connect mTLS to
    /// mesh nodes with `mesh` (the two exclude each other).
    pub fn new(tls: Option<&BackendTls>, mesh: Option<&MeshClient>) -> Self {
        let connector = match mesh {
            Some(mesh) => backend_tls::connector_with(mesh.client_config(), HttpConnector::new()),
            None => backend_tls::connector(tls, HttpConnector::new()),
        };
        Self {
            http: NodeClient::with_connector(connector),
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
        let url = format!("{scheme}://{}{path}", node.address());
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::HOST, node.host_header())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|source| AskError::Request { url, source })?;
        let Answer { status, body } = self.http.send(request, timeout).await?;
        Ok((status, body))
    }
}
