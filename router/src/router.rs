//! The router as `ollama-mesh-router` runs it: [`Router::build`] turns a validated
//! [`RouterConfig`] into the fleet source (Consul discovery or static backends), the key
//! sources, the ops endpoints, the self-registration and the proxy; [`Router::run`] serves until
//! told to stop, then leaves Consul first and lets running requests finish. The binary and the
//! integration tests both start routers this way, so the tests run what users run.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_consul::Client;
use ollama_mesh_daemon::{AbortOnDrop, Notifier};
use tokio::net::TcpListener;
use tokio::runtime::Handle;

use crate::active::ActiveRequests;
use crate::config::RouterConfig;
use crate::keys::{ConsulKeys, FileKeys, FileKeysError, KeyStore};
use crate::mesh::MeshClient;
use crate::metrics::Metrics;
use crate::proxy::{MeshProxy, ProxySettings};
use crate::registration::{RouterService, SelfRegistration};
use crate::server::{self, ServeOptions, Shutdown};
use crate::static_fleet::{PollConfig, StaticFleet};
use crate::tls::{ServerTls, TlsError};
use crate::{ops, Discovery, Fleet, Scheduler};

/// How often readiness is checked before `READY=1` is sent to systemd.
const READY_POLL: Duration = Duration::from_millis(100);

/// Why a router cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The listener's certificate, key or client CA cannot be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The Consul client cannot be set up.
    #[error("invalid Consul configuration: {0}")]
    Consul(#[from] ollama_mesh_consul::Error),
    /// The `--keys-file` cannot be loaded.
    #[error(transparent)]
    Keys(#[from] FileKeysError),
    /// The ops listener cannot bind its address.
    #[error("cannot listen on --ops-listen {addr}: {source}")]
    OpsListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The router's own Consul registration cannot be named.
    #[error("cannot build the router's Consul registration: {0}")]
    Registration(#[from] ollama_mesh_consul::contract::InvalidInstanceId),
}

/// A router built from its configuration, its background tasks running on the Tokio runtime
/// [`Router::build`] ran on; [`Router::run`] serves.
pub struct Router {
    proxy: MeshProxy,
    active: ActiveRequests,
    options: ServeOptions,
    shutdown: Shutdown,
    notifier: Notifier,
    registration: Option<SelfRegistration>,
    ops_addr: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    runtime: Handle,
    /// Kept until the router stops: dropping a key source, the ops endpoints or the TLS file
    /// watch stops it.
    _background: Vec<AbortOnDrop<()>>,
    _consul_keys: Option<ConsulKeys>,
    _file_keys: Option<FileKeys>,
}

impl Router {
    /// Builds the router `config` describes, reporting to systemd through `notifier`. Files are
    /// checked first (Pingora panics on files it cannot load), so a bad one stops the router
    /// before it registers anywhere.
    pub async fn build(config: RouterConfig, notifier: Notifier) -> Result<Self, RouterError> {
        let tls = config
            .tls
            .clone()
            .map(ServerTls::load)
            .transpose()?
            .map(Arc::new);
        let consul = Client::new(&config.consul)?;
        let mesh = config.mesh.as_ref().map(|mesh| {
            Arc::new(MeshClient::start(
                consul.clone(),
                mesh,
                &config.service_name,
                config.timeouts.connect,
            ))
        });
        let fleet: Arc<dyn Fleet> = if config.static_backends.is_empty() {
            Arc::new(Discovery::start(
                consul.clone(),
                config.service_name.clone(),
                WatchConfig::default(),
                mesh.clone(),
            ))
        } else {
            Arc::new(StaticFleet::start(
                config.static_backends.clone(),
                PollConfig {
                    interval: config.backend_poll_interval,
                    ..PollConfig::default()
                },
                config.backend_tls.as_ref(),
            ))
        };
        let keys = KeyStore::default();
        let consul_keys = config
            .keys
            .consul
            .then(|| ConsulKeys::start(consul.clone(), keys.clone(), WatchConfig::default()));
        let file_keys = config
            .keys
            .file
            .clone()
            .map(|path| FileKeys::start(path, keys.clone()))
            .transpose()?;

        let ops_listener = TcpListener::bind(config.ops_listen)
            .await
            .map_err(|source| RouterError::OpsListen {
                addr: config.ops_listen,
                source,
            })?;
        let ops_addr = ops_listener
            .local_addr()
            .map_err(|source| RouterError::OpsListen {
                addr: config.ops_listen,
                source,
            })?;
        // One scheduler places every request and shows what it knows on the ops endpoints.
        let scheduler = Scheduler::new(fleet.clone(), config.schedule.clone());
        // On loopback the ops endpoints serve the local host's agents; beyond it they need keys.
        let ops_keys =
            (config.keys.required() && !config.ops_listen.ip().is_loopback()).then(|| keys.clone());
        let mut background = vec![AbortOnDrop::spawn(serve_ops(
            config.listen,
            ops_listener,
            fleet.clone(),
            scheduler.clone(),
            ops_keys,
            notifier.clone(),
        ))];
        if let Some(tls) = &tls {
            background.push(tls.follow_files());
        }
        let registration = if config.register {
            let service = RouterService::new(config.listen, ops_addr)?;
            Some(SelfRegistration::start(consul, service))
        } else {
            None
        };

        let active = ActiveRequests::default();
        let proxy = MeshProxy::with_scheduler(
            fleet,
            scheduler,
            proxy_settings(&config, mesh),
            active.clone(),
        );
        let proxy = if config.keys.required() {
            proxy.with_keys(keys)
        } else {
            proxy
        };
        Ok(Self {
            proxy,
            active,
            options: serve_options(&config, tls.clone()),
            shutdown: Shutdown::default(),
            notifier,
            registration,
            ops_addr,
            tls,
            runtime: Handle::current(),
            _background: background,
            _consul_keys: consul_keys,
            _file_keys: file_keys,
        })
    }

    /// Where the ops endpoints listen (the port the OS picked for `--ops-listen …:0`).
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// The listener's TLS, for reloading its files on demand (SIGHUP).
    pub fn tls(&self) -> Option<Arc<ServerTls>> {
        self.tls.clone()
    }

    /// Serves on the calling thread (Pingora runs the proxy on threads of its own) until `stop`
    /// resolves with a reason, then leaves Consul first, so no new clients are sent here, and
    /// lets running requests finish within the grace period.
    pub fn run(self, stop: impl Future<Output = String> + Send + 'static) {
        let Self {
            proxy,
            active,
            options,
            shutdown,
            notifier,
            registration,
            runtime,
            ..
        } = self;
        let trigger = shutdown.clone();
        let _stopping = AbortOnDrop::from(runtime.spawn(async move {
            let reason = stop.await;
            tracing::info!(%reason, "shutting down");
            notifier.stopping();
            if let Some(registration) = registration {
                registration.stop().await;
            }
            trigger.trigger();
        }));
        server::serve(proxy, active, &options, &shutdown);
    }
}

/// The ops endpoints, once the proxy accepts connections, and systemd's `READY=1` once the
/// fleet is known.
async fn serve_ops(
    listen: SocketAddr,
    listener: TcpListener,
    fleet: Arc<dyn Fleet>,
    scheduler: Arc<Scheduler>,
    keys: Option<KeyStore>,
    notifier: Notifier,
) {
    server::until_accepting(listen).await;
    let ops_addr = listener.local_addr().ok();
    tracing::info!(%listen, ?ops_addr, "accepting; ops endpoints: /metrics /healthz /readyz /v1/mesh/nodes");
    tokio::join!(
        ops::serve(
            listener,
            fleet.clone(),
            scheduler,
            Metrics::new(),
            keys,
            std::future::pending(),
        ),
        notify_when_ready(fleet, notifier),
    );
}

/// `READY=1` once the first backend set is published (and `WATCHDOG=1` from then on, when
/// systemd asks for it).
async fn notify_when_ready(fleet: Arc<dyn Fleet>, notifier: Notifier) {
    while !fleet.is_ready() {
        tokio::time::sleep(READY_POLL).await;
    }
    notifier.ready();
    if let Some(interval) = notifier.watchdog_interval() {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            notifier.watchdog();
        }
    }
}

/// The proxy's settings from the configuration; `mesh` is the router's Connect client, if any.
pub fn proxy_settings(config: &RouterConfig, mesh: Option<Arc<MeshClient>>) -> ProxySettings {
    ProxySettings {
        connect_timeout: config.timeouts.connect,
        read_timeout: config.timeouts.read,
        first_byte_timeout: config.timeouts.first_byte,
        stream_idle_timeout: config.timeouts.stream_idle,
        schedule: config.schedule.clone(),
        max_body_size: usize::try_from(config.max_body_size).unwrap_or(usize::MAX),
        enable_management: config.enable_management,
        client_timeout: config.client_timeout,
        max_header_size: usize::try_from(config.max_header_size).unwrap_or(usize::MAX),
        max_connections: config.max_connections,
        backend_tls: config.backend_tls.clone(),
        mesh,
    }
}

/// Where and how Pingora serves, from the configuration.
pub fn serve_options(config: &RouterConfig, tls: Option<Arc<ServerTls>>) -> ServeOptions {
    ServeOptions {
        listen: config.listen.to_string(),
        tls,
        threads: config.threads.get(),
        grace_period: config.grace_period,
        max_attempts: config.schedule.retries + 1,
        max_header_size: usize::try_from(config.max_header_size).unwrap_or(usize::MAX),
        backend_ca: config
            .backend_tls
            .as_ref()
            .and_then(|tls| tls.ca_file())
            .map(Into::into),
    }
}
