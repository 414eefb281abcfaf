use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use ollama_mesh_consul::ConsulSettings;
use ollama_mesh_daemon::{init_logging, Notifier};
use ollama_mesh_router::config::{Args, Command, RouterConfig};
use ollama_mesh_router::keygen::NewKey;
use ollama_mesh_router::tls::ServerTls;
use ollama_mesh_router::Router;
use tokio::signal::unix::{signal, SignalKind};

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

    // Discovery, the ops endpoints, self-registration and signals run on a small runtime of
    // their own; Pingora runs the proxy on its own threads.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ollama-mesh-control")
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    let router = control.block_on(Router::build(config, Notifier::from_env()))?;
    let stop = control.block_on(async { stop_signal() })?;
    if let Some(tls) = router.tls() {
        let _control_context = control.enter();
        control.spawn(reload_on_hangup(tls)?);
    }
    router.run(stop);
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM (systemd) or SIGINT (Nomad's default) with the signal's name.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = String>> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM".to_owned(),
            _ = interrupt.recv() => "SIGINT".to_owned(),
        }
    })
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
