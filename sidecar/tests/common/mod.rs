//! Helpers shared by the sidecar's integration tests: a sidecar run in-process against a real
//! `consul agent -dev`, and polling Consul for the instance's entry.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser as _;
use ollama_mesh_consul::health::{CheckStatus, ServiceEntry};
use ollama_mesh_consul::{Client, ConsulSettings, QueryOptions};
use ollama_mesh_daemon::{AbortOnDrop, Notifier};
use ollama_mesh_sidecar::config::{Args, SidecarConfig};
use ollama_mesh_sidecar::{Sidecar, SidecarError};
use ollama_mesh_test_support::ConsulDev;
use tokio::sync::oneshot;

pub const ID: &str = "ollama-test-node-1";

/// A script standing in for nvidia-smi.
pub fn fake_nvidia_smi(name: &str, body: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ollama-mesh-nvidia-smi-{}-{name}",
        std::process::id()
    ));
    // Written beside it and renamed over it: tests running at once write the same script, and
    // writing a file another test is executing fails (ETXTBSY).
    static WRITTEN: AtomicUsize = AtomicUsize::new(0);
    let partial = path.with_extension(format!("{}", WRITTEN.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&partial, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}

pub fn two_rtx_4090() -> PathBuf {
    fake_nvidia_smi(
        "2x4090",
        "echo 'NVIDIA GeForce RTX 4090, 24564, 0, 0'; echo 'NVIDIA GeForce RTX 4090, 24564, 0, 0'",
    )
}

pub fn args(consul: &str, ollama: &str, nvidia_smi: &Path, extra: &[&str]) -> Args {
    let mut argv = vec![
        "ollama-mesh-sidecar".to_owned(),
        format!("--consul-addr={consul}"),
        format!("--ollama-url={ollama}"),
        format!("--instance-id={ID}"),
        format!("--nvidia-smi={}", nvidia_smi.display()),
        "--parallel-slots=4".into(),
        "--poll-interval=200ms".into(),
        "--meta-min-interval=0s".into(),
        "--check-interval=1s".into(),
        "--heartbeat-ttl=5s".into(),
        "--drain-timeout=1s".into(),
        "--gpu-probe-interval=200ms".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Args::try_parse_from(argv).expect("valid flags")
}

/// A running sidecar; `shutdown` drains it.
pub struct Running {
    shutdown: Option<oneshot::Sender<String>>,
    pub task: AbortOnDrop<Result<(), SidecarError>>,
}

impl Running {
    pub fn start(args: &Args) -> Self {
        let config =
            SidecarConfig::from_args(args, ConsulSettings::default()).expect("valid config");
        let sidecar = Sidecar::new(config, Notifier::default()).unwrap();
        let (shutdown, signal) = oneshot::channel::<String>();
        let task = AbortOnDrop::spawn(sidecar.run(async move { signal.await.unwrap_or_default() }));
        Self {
            shutdown: Some(shutdown),
            task,
        }
    }

    pub async fn shutdown(mut self) -> Result<(), SidecarError> {
        self.shutdown
            .take()
            .unwrap()
            .send("test shutdown".into())
            .unwrap();
        (&mut self.task).await.unwrap()
    }

    /// Waits for the sidecar to stop by itself.
    pub async fn finished(mut self) -> Result<(), SidecarError> {
        (&mut self.task).await.unwrap()
    }
}

pub fn client(consul: &ConsulDev) -> Client {
    let settings = ConsulSettings {
        http_addr: Some(consul.http_url()),
        ..ConsulSettings::default()
    };
    Client::new(&settings.validate().unwrap()).unwrap()
}

pub async fn entry(client: &Client) -> Option<ServiceEntry> {
    let entries = client
        .health_service("ollama", &QueryOptions::default())
        .await
        .ok()?
        .value;
    entries.into_iter().find(|e| e.service.id == ID)
}

/// Polls Consul until `ready` holds for the instance's entry (or its absence); returns the time taken.
pub async fn until(
    client: &Client,
    limit: Duration,
    ready: impl Fn(Option<&ServiceEntry>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let current = entry(client).await;
        if ready(current.as_ref()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not reached within {limit:?}; entry: {current:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn all_passing(entry: Option<&ServiceEntry>) -> bool {
    entry.is_some_and(|e| e.checks.iter().all(|c| c.status == CheckStatus::Passing))
}
