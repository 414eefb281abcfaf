//! Running the proxy on Pingora's server: listener, worker threads, and a shutdown that lets
//! running requests finish without waiting longer than they need.
//!
//! Pingora's own graceful shutdown sleeps a fixed grace period whatever is running. Here the
//! shutdown signal is held back until the router has nothing in flight (or the grace period
//! ends), and only then handed to Pingora with no further grace: an idle router stops at once,
//! a busy one lets its streams finish. Requests that arrive meanwhile are still served, so a
//! router that is being replaced drops nothing.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::v2::server::default_h2_options;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::active::ActiveRequests;
use crate::proxy::MeshProxy;
use crate::tls::ServerTls;

/// HTTP/2's header list limit is never set below Pingora's default.
const H2_MIN_HEADER_LIST: usize = 64 << 10;
/// How often a draining router checks whether its requests have finished.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How often [`until_accepting`] tries the proxy's listener.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// How long [`until_accepting`] waits before it warns that the listener is not up.
const ACCEPT_WARN_AFTER: Duration = Duration::from_secs(5);

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Listen address, `host:port`.
    pub listen: String,
    /// TLS on the listener; `None` serves plain HTTP.
    pub tls: Option<Arc<ServerTls>>,
    /// Pingora worker threads.
    pub threads: usize,
    /// Longest time running requests may take to finish after shutdown is requested.
    pub grace_period: Duration,
    /// Upper bound on attempts per request (first try plus retries).
    pub max_attempts: usize,
    /// The router's limit on a request head (`--max-header-size`): HTTP/2's own limit is set
    /// above it, so the router's 431, with its explanation, is what clients get.
    pub max_header_size: usize,
    /// The PEM CA bundle Pingora trusts for the nodes' certificates, with TLS to the nodes
    /// (`--backend-ca`); `None` leaves Pingora's default, the system's roots. Must be valid
    /// UTF-8 and loadable (the configuration checks both): Pingora panics on a bad file.
    pub backend_ca: Option<PathBuf>,
}

/// Asks a running server to shut down (gracefully). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl Shutdown {
    /// Requests the shutdown.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once the shutdown is requested.
    pub async fn requested(&self) {
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = self.subscribe().wait_for(|requested| *requested).await;
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// Runs `proxy` until `shutdown` is triggered and its requests have drained. Blocks the
/// calling thread (Pingora runs its own runtimes); call it from `main` or a dedicated thread.
pub fn serve(
    proxy: MeshProxy,
    active: ActiveRequests,
    options: &ServeOptions,
    shutdown: &Shutdown,
) {
    let conf = ServerConf {
        threads: options.threads,
        // The draining happens before Pingora hears of the shutdown (see the module docs).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        max_retries: options.max_attempts.max(1),
        // Pingora's upstream TLS connector loads this bundle instead of the system's roots.
        ca_file: options
            .backend_ca
            .as_ref()
            .map(|path| path.to_string_lossy().into_owned()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    if let Some(app) = service.app_logic_mut() {
        // HTTP/2 counts 32 bytes more per header than the router does; with the same limit,
        // h2's own 431 (no body) would answer before the router's.
        let mut h2 = default_h2_options();
        let limit = options
            .max_header_size
            .saturating_mul(2)
            .max(H2_MIN_HEADER_LIST);
        h2.max_header_list_size(u32::try_from(limit).unwrap_or(u32::MAX));
        app.h2_options = Some(h2);
    }
    match &options.tls {
        Some(tls) => service.add_tls_with_settings(&options.listen, None, tls.settings()),
        // Pingora's 64 KiB read buffer per client connection earns its keep under TLS (small
        // record reads); over plain HTTP reads go straight into Pingora's own request buffers,
        // and a held stream costs that much less memory.
        None => service.add_listener(ListenerConfig::tcp(options.listen.as_str()).l4_buffer(
            L4BufferSettings {
                read: Some(0),
                write: None,
            },
        )),
    }
    server.add_service(service);
    server.bootstrap();
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainThenStop {
            requested: shutdown.subscribe(),
            active,
            grace_period: options.grace_period,
        }),
    });
}

/// Waits until `listen`, the proxy's address, accepts TCP connections (an unspecified address is
/// tried on loopback). Pingora binds it on its own threads once [`serve`] runs, so anything that
/// tells the world the router is ready (`/readyz`, systemd's `READY=1`) waits for this first:
/// a load balancer must never be told to send clients to a port that refuses them.
pub async fn until_accepting(listen: SocketAddr) {
    let mut target = listen;
    if target.ip().is_unspecified() {
        target.set_ip(match listen {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let started = Instant::now();
    let mut warned = false;
    while TcpStream::connect(target).await.is_err() {
        if !warned && started.elapsed() >= ACCEPT_WARN_AFTER {
            tracing::warn!(%listen, waited = ?ACCEPT_WARN_AFTER, "the proxy does not accept connections on --listen yet");
            warned = true;
        }
        tokio::time::sleep(ACCEPT_POLL).await;
    }
}

struct DrainThenStop {
    requested: watch::Receiver<bool>,
    active: ActiveRequests,
    grace_period: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainThenStop {
    async fn recv(&self) -> ShutdownSignal {
        let mut requested = self.requested.clone();
        // A dropped trigger cannot fire any more: treat it as a request to stop.
        let _ = requested.wait_for(|stop| *stop).await;
        let deadline = Instant::now() + self.grace_period;
        tracing::info!(in_flight = self.active.count(), grace_period = ?self.grace_period, "shutting down: letting running requests finish");
        while self.active.count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let left = self.active.count();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "grace period over; stopping with requests still running"
            );
        }
        ShutdownSignal::GracefulTerminate
    }
}

#[cfg(test)]
mod tests;
