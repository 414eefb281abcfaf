use anyhow::Context as _;
use clap::Parser as _;
use ollama_mesh_consul::ConsulSettings;
use ollama_mesh_daemon::{init_logging, Notifier};
use ollama_mesh_sidecar::config::{Args, SidecarConfig};
use ollama_mesh_sidecar::Sidecar;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let config = SidecarConfig::from_args(&args, ConsulSettings::from_env())
        .context("invalid configuration")?;
    tracing::info!(config = %config.summary(), "starting ollama-mesh-sidecar {}", env!("CARGO_PKG_VERSION"));
    let sidecar = Sidecar::new(config, Notifier::from_env())?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    // Nomad stops tasks with SIGINT by default, systemd with SIGTERM: both drain.
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM".to_owned(),
            _ = interrupt.recv() => "SIGINT".to_owned(),
        }
    };
    sidecar.run(shutdown).await?;
    Ok(())
}
