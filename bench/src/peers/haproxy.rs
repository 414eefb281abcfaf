//! HAProxy (Debian) with `balance leastconn`: threads instead of processes, connections to the
//! nodes reused across clients (`http-reuse always`), 600 s server timeouts. HAProxy forwards
//! responses as they arrive (it never buffers a whole body), so streams pass unbuffered as is.

use std::path::Path;
use std::time::Duration;

use super::{max_client_connections, Launch, PeerError, PeerSetup, READ_TIMEOUT_SECS};

pub(super) fn launch(setup: &PeerSetup, dir: &Path, port: u16) -> Result<Launch, PeerError> {
    let program = super::system_binary("haproxy")?;
    let conf = dir.join("haproxy.cfg");
    Ok(Launch {
        // -db: stay in the foreground, so the process we measure is the one that serves.
        args: vec!["-db".into(), "-f".into(), conf.display().to_string()],
        version_command: vec![program.display().to_string(), "-v".into()],
        program,
        env: Vec::new(),
        files: vec![(conf, config(setup, port))],
        port,
        ready_path: "/api/version",
        bearer: None,
        ready_within: Duration::from_secs(20),
    })
}

fn config(setup: &PeerSetup, port: u16) -> String {
    let servers: String = setup
        .backends
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("    server node{i} {addr}\n"))
        .collect();
    // Client connections; HAProxy sizes its file limit from this (twice, for the node side) and
    // refuses to start if the limit cannot be raised that far.
    let maxconn = max_client_connections();
    let threads = setup.workers;
    format!(
        r#"global
    nbthread {threads}
    maxconn {maxconn}
    # No "log" line: logging off, like the other peers.

defaults
    mode http
    maxconn {maxconn}
    timeout connect 5s
    timeout client {READ_TIMEOUT_SECS}s
    timeout server {READ_TIMEOUT_SECS}s
    timeout http-keep-alive 60s
    http-reuse always

frontend ollama
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance leastconn
{servers}"#
    )
}
