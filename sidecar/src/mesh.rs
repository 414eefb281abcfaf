//! Mesh mode: Ollama behind Consul Connect mutual TLS.
//!
//! Ollama has no authentication of its own, so in mesh mode it listens on loopback and the
//! only way in from the network is this listener. Each connection must complete a TLS handshake
//! with a client certificate issued by the mesh's CA (a service's SPIFFE ID), and the local
//! agent must allow that service by the intentions. Allowed connections are forwarded to Ollama
//! byte for byte (L4), so streamed responses flow unbuffered and a client hanging up reaches
//! Ollama, which then stops generating. Every open connection is judged again whenever the
//! intentions change: an operator's deny also ends a router's pooled keep-alive connections.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ollama_mesh_connect::metrics::{self, OpenConnection, Side};
use ollama_mesh_connect::{Authorizer, CertificateError, Decision, IdentitySource, PeerIdentity};
use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_consul::Client;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{is_loopback, MeshConfig};
use crate::listener::{self, Server};
use crate::SidecarError;

/// Longest a client may take to complete the handshake; a peer that connects and stays silent
/// would otherwise hold a socket and a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the start-up probe for an exposed Ollama waits for an answer.
const EXPOSURE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The running mesh: this node's Connect identity, and the listener that enforces it.
/// Dropping it closes the listener and every connection through it.
pub(crate) struct Mesh {
    identity: IdentitySource,
    _server: Server,
}

impl Mesh {
    /// Binds the listener, then starts following this node's leaf certificate and the
    /// intentions of `service` through the local agent. `advertise_host` is the address
    /// routers are told, where Ollama itself must not answer.
    pub(crate) async fn start(
        config: &MeshConfig,
        service: &str,
        advertise_host: &str,
        consul: Client,
    ) -> Result<Self, SidecarError> {
        let listener = listener::bind("mesh-listen", config.listen).await?;
        warn_if_exposed(advertise_host, config.ollama_port).await;
        let identity = IdentitySource::start(consul.clone(), service, WatchConfig::default());
        let gate = Arc::new(Gate {
            // Built once: it always presents the current leaf, so renewals and CA rotations
            // reach the next handshake without a rebuild.
            acceptor: TlsAcceptor::from(identity.tls().server_config()),
            authorizer: Authorizer::start(consul, service, WatchConfig::default()),
            ollama_host: config.ollama_host.clone(),
            ollama_port: config.ollama_port,
        });
        tracing::info!(
            listen = %config.listen,
            ollama = format!("{}:{}", config.ollama_host, config.ollama_port),
            "mesh mode: Ollama is reachable through Connect mTLS only, for services the intentions allow"
        );
        let server = Server::spawn(listener, "mesh", move |tcp, addr| {
            handle(gate.clone(), tcp, addr)
        });
        Ok(Self {
            identity,
            _server: server,
        })
    }

    /// Waits until the agent has issued this node's first certificate. Before that every
    /// handshake fails, so the node must not be registered yet.
    pub(crate) async fn ready(&self) {
        self.identity.ready().await;
    }
}

/// The configuration only proves the sidecar reaches Ollama on loopback; an Ollama started
/// with `OLLAMA_HOST=0.0.0.0` would still answer on the node's address, around the mesh. Worth
/// a loud warning rather than a refusal: a firewall may already close that port.
async fn warn_if_exposed(advertise_host: &str, ollama_port: u16) {
    if !is_loopback(advertise_host) && answers(advertise_host, ollama_port).await {
        tracing::warn!(
            address = format!("{advertise_host}:{ollama_port}"),
            "something answers at Ollama's port on the address routers are told; if it is \
             this Ollama, clients can bypass the mesh: start Ollama with \
             OLLAMA_HOST=127.0.0.1:{ollama_port}"
        );
    }
}

/// Whether something accepts TCP connections on `host:port`.
async fn answers(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(EXPOSURE_PROBE_TIMEOUT, TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

/// Why a connection did not complete the mesh handshake.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    /// The client stayed silent or too slow.
    #[error("no TLS handshake within {0:?}")]
    Timeout(Duration),
    /// Not TLS, no or an untrusted client certificate, no certificate of ours yet, …
    #[error("TLS: {0}")]
    Tls(#[source] io::Error),
    /// The handshake completed without a client certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// The client certificate names no service.
    #[error("client certificate: {0}")]
    Identity(#[from] CertificateError),
}

/// What every connection through the mesh needs.
struct Gate {
    acceptor: TlsAcceptor,
    authorizer: Authorizer,
    ollama_host: String,
    ollama_port: u16,
}

/// One connection: handshake, authorize, then forward to Ollama while the intentions allow it.
async fn handle(gate: Arc<Gate>, tcp: TcpStream, addr: SocketAddr) {
    let (client, peer) = match gate.handshake(tcp).await {
        Ok(accepted) => {
            metrics::handshake(Side::Server, true);
            accepted
        }
        Err(error) => {
            metrics::handshake(Side::Server, false);
            tracing::warn!(peer = %addr, %error, "mesh handshake failed; connection closed");
            return;
        }
    };
    // Marked seen before deciding, so a change while the agent answers is judged again.
    let mut changes = gate.authorizer.changes();
    changes.borrow_and_update();
    match gate.authorizer.decide(&peer).await {
        Decision::Allowed => {}
        Decision::Denied(reason) => {
            refuse(&peer, addr, &reason, "connection refused by the intentions");
            return;
        }
        // Fail closed: without the agent's answer nobody new gets in.
        Decision::Unavailable(reason) => {
            tracing::warn!(source = peer.service.service(), peer = %addr, reason, "cannot authorize; connection refused");
            return;
        }
    }
    let _open = OpenConnection::new();
    let ollama = match TcpStream::connect((gate.ollama_host.as_str(), gate.ollama_port)).await {
        Ok(ollama) => ollama,
        Err(error) => {
            tracing::warn!(
                source = peer.service.service(),
                peer = %addr,
                %error,
                "cannot reach Ollama on loopback; connection closed"
            );
            return;
        }
    };
    set_nodelay(&ollama);
    tracing::debug!(source = peer.service.service(), peer = %addr, "mesh connection authorized");
    gate.forward(client, ollama, &peer, addr, changes).await;
}

impl Gate {
    /// The TLS handshake and the identity the client proved in it.
    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, PeerIdentity), HandshakeError> {
        set_nodelay(&tcp);
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
            .map_err(HandshakeError::Tls)?;
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or(HandshakeError::NoCertificate)?;
        let peer = PeerIdentity::from_certificate(certificate)?;
        Ok((stream, peer))
    }

    /// Copies bytes both ways until either side closes, or until the intentions, judged again
    /// at each change, deny the client; then both sides are closed.
    async fn forward(
        &self,
        mut client: TlsStream<TcpStream>,
        mut ollama: TcpStream,
        peer: &PeerIdentity,
        addr: SocketAddr,
        mut changes: watch::Receiver<u64>,
    ) {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut ollama);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                result = &mut copy => {
                    match result {
                        Ok((sent, received)) => tracing::debug!(
                            source = peer.service.service(), peer = %addr, sent, received,
                            "mesh connection closed"
                        ),
                        Err(error) => tracing::debug!(
                            source = peer.service.service(), peer = %addr, %error,
                            "mesh connection ended"
                        ),
                    }
                    return;
                }
                // The copy waits for the agent's answer, a loopback round trip.
                Ok(()) = changes.changed() => {
                    match self.authorizer.decide(peer).await {
                        Decision::Allowed => {}
                        Decision::Denied(reason) => {
                            refuse(peer, addr, &reason, "intentions changed; connection closed");
                            return;
                        }
                        // An agent's hiccup does not cut running streams; the next change or
                        // the agent's return decides.
                        Decision::Unavailable(reason) => tracing::warn!(
                            source = peer.service.service(),
                            peer = %addr,
                            reason,
                            "cannot authorize again after an intention change; connection kept"
                        ),
                    }
                }
            }
        }
    }
}

/// Logs and counts a client the intentions deny.
fn refuse(peer: &PeerIdentity, addr: SocketAddr, reason: &str, message: &str) {
    let source = peer.service.service();
    tracing::warn!(source, peer = %addr, reason, "{message}");
    metrics::denied(source);
}

/// Token-by-token streams are many small writes; Nagle's algorithm would hold them back.
fn set_nodelay(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}

#[cfg(test)]
mod tests;
