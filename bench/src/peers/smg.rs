//! The SGLang Model Gateway (`smg` from PyPI, a Rust router in a wheel) with `power_of_two`, or
//! the policy the scenario asks for (`cache_aware` in the fleet workload). It
//! speaks only the OpenAI API (`/v1/chat/completions`…), which it forwards to Ollama's own
//! OpenAI-compatible routes with `--backend openai`; it has no native `/api/*` routes.

use std::time::Duration;

use super::{Launch, PeerError, PeerKind, PeerSetup};

pub(super) fn launch(setup: &PeerSetup, port: u16) -> Result<Launch, PeerError> {
    let program = super::python_binary("smg")?;
    // Its metrics listener defaults to a fixed port (29000), which parallel runs would share.
    let metrics_port = super::free_port(PeerKind::Smg)?;
    let mut args: Vec<String> = [
        "launch",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        &metrics_port.to_string(),
        "--backend",
        "openai",
        // power_of_two needs at least two workers; with one node it still routes.
        "--policy",
        setup.policy.unwrap_or("power_of_two"),
        // Ollama has no /health; its cheapest always-200 route.
        "--health-check-endpoint",
        "/api/version",
        "--log-level",
        "warn",
        // Its default admission bound (1024 per core, at least 4096) would queue and then
        // refuse the largest scenario's streams.
        "--max-concurrent-requests",
        &super::max_client_connections().to_string(),
        // SIGTERM otherwise keeps even an idle gateway up for its 180 s default grace period.
        "--shutdown-grace-period-secs",
        "1",
        "--worker-urls",
    ]
    .map(str::to_owned)
    .into();
    args.extend(super::backend_urls(setup));
    Ok(Launch {
        version_command: vec![program.display().to_string(), "--version".into()],
        program,
        args,
        // It has no thread setting of its own; its Tokio runtime reads this.
        env: vec![("TOKIO_WORKER_THREADS", setup.workers.to_string())],
        files: Vec::new(),
        port,
        // 200 once at least one worker passed its health check.
        ready_path: "/readiness",
        bearer: None,
        ready_within: Duration::from_secs(30),
    })
}
