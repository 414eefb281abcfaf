use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_consul::{Client, ConsulSettings};
use ollama_mesh_daemon::{init_logging, Notifier};
use ollama_mesh_router::active::ActiveRequests;
use ollama_mesh_router::config::{Args, Command, RouterConfig};
use ollama_mesh_router::keygen::NewKey;
use ollama_mesh_router::keys::{ConsulKeys, FileKeys, KeyStore};
use ollama_mesh_router::mesh::MeshClient;
use ollama_mesh_router::metrics::Metrics;
use ollama_mesh_router::proxy::{MeshProxy, ProxySettings};
use ollama_mesh_router::registration::{RouterService, SelfRegistration};
use ollama_mesh_router::server::{self, ServeOptions, Shutdown};
use ollama_mesh_router::static_fleet::{PollConfig, StaticFleet};
use ollama_mesh_router::tls::ServerTls;
use ollama_mesh_router::{ops, Discovery, Fleet, Scheduler};
use tokio::signal::unix::{signal, SignalKind};

/// How often readiness is checked before `READY=1` is sent to systemd.
const READY_POLL: Duration = Duration::from_millis(100);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Keygen(keygen)) = &args.command {
        print!("{}", NewKey::generate(keygen)?.instructions());
        return Ok(());
    }
    let config = RouterConfig::from_args(&args, ConsulSettings::from_env())
        .context("invalid configuration")?;
    init_logging(config.log_format);
    tracing::info!(config = %config.summary(), "starting ollama-mesh-router {}", env!("CARGO_PKG_VERSION"));

    // Checked before anything starts (and before Pingora, which panics on files it cannot
    // load), so a bad file stops the router before it registers anywhere.
    let tls = config
        .tls
        .clone()
        .map(ServerTls::load)
        .transpose()?
        .map(Arc::new);

    // Discovery, the ops endpoints, self-registration and signals run on a small runtime of
    // their own; Pingora runs the proxy on its own threads.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ollama-mesh-control")
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    let _control_context = control.enter();
    let consul = Client::new(&config.consul).context("invalid Consul configuration")?;
    let notifier = Notifier::from_env();
    let shutdown = Shutdown::default();

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
    // Kept alive until the router stops: dropping a source stops following it.
    let keys = KeyStore::default();
    let _consul_keys = config
        .keys
        .consul
        .then(|| ConsulKeys::start(consul.clone(), keys.clone(), WatchConfig::default()));
    let _file_keys = config
        .keys
        .file
        .clone()
        .map(|path| FileKeys::start(path, keys.clone()))
        .transpose()?;

    let ops_listener = control
        .block_on(tokio::net::TcpListener::bind(config.ops_listen))
        .with_context(|| format!("cannot listen on --ops-listen {}", config.ops_listen))?;
    let ops_addr = ops_listener.local_addr()?;
    // On loopback the ops endpoints serve the local host's agents; beyond it they need keys.
    let ops_keys =
        (config.keys.required() && !config.ops_listen.ip().is_loopback()).then(|| keys.clone());
    // The ops endpoints and systemd's READY=1 wait until the proxy accepts connections.
    let listen = config.listen;
    let ops_fleet = fleet.clone();
    // One scheduler places every request and shows what it knows on the ops endpoints.
    let scheduler = Scheduler::new(fleet.clone(), config.schedule.clone());
    let ops_scheduler = scheduler.clone();
    let ready_fleet = fleet.clone();
    let ready_notifier = notifier.clone();
    control.spawn(async move {
        server::until_accepting(listen).await;
        tracing::info!(%listen, %ops_addr, "accepting; ops endpoints: /metrics /healthz /readyz /v1/mesh/nodes");
        tokio::join!(
            ops::serve(
                ops_listener,
                ops_fleet,
                ops_scheduler,
                Metrics::new(),
                ops_keys,
                std::future::pending(),
            ),
            notify_when_ready(ready_fleet, ready_notifier),
        );
    });

    let registration = config
        .register
        .then(|| RouterService::new(config.listen, ops_addr))
        .transpose()
        .context("cannot build the router's Consul registration")?
        .map(|service| SelfRegistration::start(consul.clone(), service));
    control.spawn(stop_on_signal(shutdown.clone(), registration, notifier)?);

    let _follow_tls_files = tls.as_ref().map(|tls| tls.follow_files());
    if let Some(tls) = &tls {
        control.spawn(reload_on_hangup(tls.clone())?);
    }

    let active = ActiveRequests::default();
    let settings = ProxySettings {
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
    };
    let options = ServeOptions {
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
    };
    let proxy = MeshProxy::with_scheduler(fleet, scheduler, settings, active.clone());
    let proxy = if config.keys.required() {
        proxy.with_keys(keys)
    } else {
        proxy
    };
    server::serve(proxy, active, &options, &shutdown);
    tracing::info!("stopped");
    Ok(())
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

/// On SIGHUP, loads the TLS certificate and key again (they are also reloaded when they
/// change on disk; the signal is for tools that rotate them and then signal, like certbot hooks).
fn reload_on_hangup(tls: Arc<ServerTls>) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            tls.reload();
        }
    })
}

/// On SIGTERM or SIGINT (Nomad's default): leave Consul first so no new clients are sent here,
/// then let running requests finish.
fn stop_on_signal(
    shutdown: Shutdown,
    registration: Option<SelfRegistration>,
    notifier: Notifier,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        notifier.stopping();
        if let Some(registration) = registration {
            registration.stop().await;
        }
        shutdown.trigger();
    })
}
