//! nginx (Debian's nginx-light) as the seed deployment runs it in front of Ollama: an upstream of
//! the nodes with `least_conn`, kept-alive upstream connections, unbuffered responses so NDJSON
//! streams pass through, and 600 s read timeouts for long generations.

use std::path::Path;
use std::time::Duration;

use super::{max_client_connections, Launch, PeerError, PeerSetup, READ_TIMEOUT_SECS};
use crate::procs;

/// Idle upstream connections each worker keeps: enough for the closed-loop scenarios'
/// connection counts; beyond it nginx closes connections after use, as configured in the field.
const UPSTREAM_KEEPALIVE: usize = 1024;

pub(super) fn launch(setup: &PeerSetup, dir: &Path, port: u16) -> Result<Launch, PeerError> {
    let program = super::system_binary("nginx")?;
    let conf = dir.join("nginx.conf");
    let prefix = dir.display().to_string();
    Ok(Launch {
        args: vec![
            // Startup errors go to our log instead of /var/log/nginx before the config is read.
            "-e".into(),
            "stderr".into(),
            "-p".into(),
            prefix.clone(),
            "-c".into(),
            conf.display().to_string(),
        ],
        version_command: vec![program.display().to_string(), "-v".into()],
        program,
        env: Vec::new(),
        files: vec![(conf, config(setup, &prefix, port))],
        port,
        ready_path: "/api/version",
        bearer: None,
        ready_within: Duration::from_secs(20),
    })
}

fn config(setup: &PeerSetup, prefix: &str, port: u16) -> String {
    let servers: String = setup
        .backends
        .iter()
        .map(|addr| format!("        server {addr};\n"))
        .collect();
    // Each stream holds a client and an upstream connection in one worker, and workers may
    // accept unevenly: every worker may use every descriptor the limit allows.
    let nofile = procs::nofile_limit();
    let worker_connections = 2 * max_client_connections() + 64;
    let workers = setup.workers;
    format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections {worker_connections};
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    client_max_body_size 64m;
    client_body_buffer_size 1m;
    # Clients keep their connections as long as they like (nginx closes after 1000 by default).
    keepalive_requests 1000000;

    upstream ollama {{
        least_conn;
{servers}        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=65535;

        location / {{
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Ollama on loopback refuses Host names it does not know ("ollama" included).
            proxy_set_header Host localhost;
            proxy_buffering off;
            proxy_cache off;
            proxy_connect_timeout 5s;
            proxy_read_timeout {READ_TIMEOUT_SECS}s;
            proxy_send_timeout {READ_TIMEOUT_SECS}s;
        }}
    }}
}}
"#
    )
}
