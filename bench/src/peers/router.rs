//! ollama-mesh's router (the release build) with static `--backend` nodes, so the comparison
//! needs no Consul: the same routing code, fed by its own polling of the nodes.

use std::time::Duration;

use super::{Launch, PeerError, PeerSetup, READ_TIMEOUT_SECS};
use crate::procs;

/// The router's default interval for reading static backends.
const ROUTER_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) fn launch(setup: &PeerSetup, port: u16) -> Result<Launch, PeerError> {
    let program = setup.router_bin.clone();
    if !procs::is_executable(&program) {
        return Err(PeerError::Unavailable(format!(
            "ollama-mesh-router is not built at {}: cargo build --release -p ollama-mesh-router",
            program.display()
        )));
    }
    let ops_port = super::free_port(super::PeerKind::Router)?;
    let mut args = Vec::new();
    for url in super::backend_urls(setup) {
        args.extend(["--backend".to_owned(), url]);
    }
    args.extend([
        "--threads".to_owned(),
        setup.workers.to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--ops-listen".to_owned(),
        format!("127.0.0.1:{ops_port}"),
        // Its default (10 000) would turn the largest scenario's last connections away; the
        // same cap as HAProxy's maxconn.
        "--max-connections".to_owned(),
        super::max_client_connections().to_string(),
        "--read-timeout".to_owned(),
        format!("{READ_TIMEOUT_SECS}s"),
    ]);
    if !setup.slots.is_empty() {
        let slots: Vec<String> = setup.slots.iter().map(u32::to_string).collect();
        args.extend(["--slots".to_owned(), slots.join(",")]);
    }
    if let Some(policy) = setup.policy {
        args.extend(["--schedule".to_owned(), policy.to_owned()]);
    }
    if setup.time_scale < 1.0 {
        let interval = ROUTER_POLL_INTERVAL.mul_f64(setup.time_scale.max(0.01));
        args.extend([
            "--backend-poll-interval".to_owned(),
            format!("{}ms", interval.as_millis()),
        ]);
    }
    Ok(Launch {
        version_command: vec![program.display().to_string(), "--version".into()],
        program,
        args,
        // Warnings and errors only, like the other peers' logs (no per-request lines).
        env: vec![("RUST_LOG", "warn".to_owned())],
        files: Vec::new(),
        port,
        // Answered by the router from its view of the nodes: 200 once it has polled them.
        ready_path: "/api/version",
        bearer: None,
        ready_within: Duration::from_secs(20),
    })
}
