//! How Pingora reaches one node: plain HTTP, HTTPS verified against `--backend-ca`, or Consul
//! Connect mutual TLS in the mesh.

use std::sync::Arc;
use std::time::Duration;

use ollama_mesh_connect::metrics::{self as connect_metrics, Side};
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::{Error, ErrorType, Result};

use super::watchdog::NodeConnector;
use super::ProxySettings;
use crate::backend::Reach;
use crate::backend_tls;
use crate::Backend;

/// How long an idle pooled connection to a node is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The peer for `backend`, with the router's time limits, connected through `connector`.
pub(super) fn node_peer(
    backend: &Backend,
    settings: &ProxySettings,
    connector: Arc<NodeConnector>,
) -> Result<HttpPeer> {
    let unreachable = |reason: &str| {
        Error::explain(
            ErrorType::HTTPStatus(502),
            format!("instance {} cannot be reached: {reason}", backend.id()),
        )
    };
    let (Some(address), reach) = (backend.socket_address(), backend.reach()) else {
        return Err(unreachable("its address does not resolve"));
    };
    let mut peer = match (reach, &settings.mesh) {
        (Reach::Mesh, Some(mesh)) => mesh
            .peer(address)
            .map_err(|e| Error::explain(ErrorType::ConnectError, e.to_string()))?,
        (Reach::Skipped(reason), _) => return Err(unreachable(reason)),
        (Reach::Direct | Reach::Mesh, _) => {
            let tls = settings.backend_tls.is_some();
            // With TLS the node's host is the name its certificate is verified against (an IP
            // matches an IP SAN); Pingora skips verification altogether on an empty SNI.
            let sni = if tls {
                backend_tls::server_name(backend.address()).to_owned()
            } else {
                String::new()
            };
            HttpPeer::new(address, tls, sni)
        }
    };
    peer.options.connection_timeout = Some(settings.connect_timeout);
    peer.options.read_timeout = Some(settings.read_timeout);
    peer.options.idle_timeout = Some(IDLE_TIMEOUT);
    peer.options.custom_l4 = Some(connector);
    Ok(peer)
}

/// Before a request goes out on a connection to a mesh node (new or pooled): the node must have
/// proved the nodes' service identity.
pub(super) async fn check_connected(
    backend: &Backend,
    settings: &ProxySettings,
    reused: bool,
    digest: Option<&Digest>,
) -> Result<()> {
    let (Reach::Mesh, Some(mesh)) = (backend.reach(), &settings.mesh) else {
        return Ok(());
    };
    if !reused {
        connect_metrics::handshake(Side::Client, true);
    }
    mesh.check_server(backend.address(), digest)
        .await
        .map_err(|e| Error::explain(ErrorType::InvalidCert, e.to_string()))
}

/// Whether a connect error is the TLS handshake failing (as opposed to the TCP connect).
pub(super) fn is_tls_failure(error: &Error) -> bool {
    matches!(
        error.etype(),
        ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
    )
}
