//! The oracle (see [`crate::oracle`]): models placed by hand, each request sent to a warm node
//! with a free slot. The limit a scheduler is compared with, run as this binary's `oracle`
//! subcommand so that it is pinned and measured like every other peer.

use std::path::Path;
use std::time::Duration;

use super::{Launch, PeerError, PeerKind, PeerSetup};
use crate::oracle::{OracleConfig, OracleNode};

pub(super) fn launch(setup: &PeerSetup, dir: &Path, port: u16) -> Result<Launch, PeerError> {
    let program = setup.bench_bin.clone();
    if !crate::procs::is_executable(&program) {
        return Err(PeerError::Unavailable(format!(
            "the oracle runs as ollama-mesh-bench, which is not built at {}",
            program.display()
        )));
    }
    if setup.placement.is_empty() {
        return Err(PeerError::Unavailable(
            "the oracle needs a placement, which this scenario does not give".into(),
        ));
    }
    let config = OracleConfig {
        nodes: setup
            .backends
            .iter()
            .enumerate()
            .map(|(index, addr)| OracleNode {
                addr: *addr,
                slots: setup.slots.get(index).map_or(1, |&s| s as usize),
            })
            .collect(),
        phases: setup.placement.clone(),
    };
    let path = dir.join("oracle.json");
    let contents = serde_json::to_string_pretty(&config).map_err(|e| {
        PeerError::Unavailable(format!(
            "{}: the placement does not serialize: {e}",
            PeerKind::Oracle
        ))
    })?;
    Ok(Launch {
        version_command: Vec::new(),
        program,
        args: vec![
            "oracle".into(),
            "--config".into(),
            path.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ],
        env: vec![("RUST_LOG", "warn".to_owned())],
        files: vec![(path, contents)],
        port,
        // Answered by the first node once the first placement has loaded.
        ready_path: "/api/version",
        bearer: None,
        // Loading the first placement takes a few seconds of simulated load time.
        ready_within: Duration::from_secs(30),
    })
}
