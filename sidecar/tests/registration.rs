//! The sidecar against a real `consul agent -dev` and simulated (or real) Ollama nodes.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{all_passing, args, client, entry, fake_nvidia_smi, two_rtx_4090, until, Running, ID};
use ollama_mesh_consul::contract::{routing_state, NodeMeta, RoutingState};
use ollama_mesh_consul::health::ServiceEntry;
use ollama_mesh_consul::kv::WriteCondition;
use ollama_mesh_consul::{Client, QueryOptions};
use ollama_mesh_sim::NodeSpec;
use ollama_mesh_test_support::{ConsulDev, SimNode};
use tokio::net::TcpListener;

fn state(entry: Option<&ServiceEntry>) -> Option<RoutingState> {
    entry.map(|e| routing_state(&e.checks, e.service.weights, None))
}

fn meta(entry: &ServiceEntry) -> NodeMeta {
    NodeMeta::from_consul_meta(&entry.service.meta).unwrap()
}

/// The heartbeat's status and output as the Consul UI shows them: from the catalog
/// (`/v1/health/service`, which the UI reads), not from the agent's own view.
fn heartbeat_output(entry: Option<&ServiceEntry>) -> String {
    entry
        .and_then(|e| {
            e.checks
                .iter()
                .find(|c| c.check_id == format!("{ID}:heartbeat"))
        })
        .map(|c| format!("{:?}: {}", c.status, c.output))
        .unwrap_or_default()
}

/// Waits until the Consul UI shows a heartbeat whose status and output contain `text`; returns
/// the time taken.
async fn until_summary(client: &Client, limit: Duration, text: &str) -> Duration {
    until(client, limit, |e| heartbeat_output(e).contains(text)).await
}

#[tokio::test]
async fn registers_with_gpu_meta_models_and_passing_checks() {
    let consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b", "qwen2.5:7b", "nomic-embed-text"]).await;
    let _sidecar = Running::start(&args(
        &consul.http_url(),
        &node.url(),
        &two_rtx_4090(),
        &["--preemptible"],
    ));
    let client = client(&consul);
    until(&client, Duration::from_secs(10), all_passing).await;

    let entry = entry(&client).await.unwrap();
    assert_eq!(entry.service.tags, ["ollama-mesh"]);
    assert_eq!(entry.service.port, node.addr().port());
    assert_eq!(entry.address(), "127.0.0.1");
    let meta = meta(&entry);
    assert_eq!(meta.gpu_name.as_deref(), Some("NVIDIA GeForce RTX 4090"));
    assert_eq!(
        (meta.gpu_count, meta.gpu_vram_mib, meta.parallel_slots),
        (2, 49_128, 4)
    );
    for model in ["llama3.2:3b", "qwen2.5:7b", "nomic-embed-text:latest"] {
        assert!(
            meta.models_on_disk.contains(model),
            "{model} missing from {:?}",
            meta.models_on_disk
        );
    }
    assert!(meta.models_loaded.names().is_empty());
    assert!(meta.preemptible);
    assert!(meta.ollama_version.is_some());
    // Capacity weight: 4 slots × 2 GPUs.
    assert_eq!(
        state(Some(&entry)),
        Some(RoutingState::Active {
            weight: 8,
            degraded: false
        })
    );
    until_summary(
        &client,
        Duration::from_secs(1),
        "Passing: ollama 0.17.4 · 2× NVIDIA GeForce RTX 4090 48 GiB · nothing loaded",
    )
    .await;
    assert!(
        entry
            .checks
            .iter()
            .all(|c| c.service_id.is_empty() || !c.notes.is_empty()),
        "every check says what it watches"
    );
}

#[tokio::test]
async fn loaded_models_reach_consul_within_a_poll_and_quiet_polls_write_nothing() {
    let consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b", "qwen2.5:7b"]).await;
    let _sidecar = Running::start(&args(&consul.http_url(), &node.url(), &two_rtx_4090(), &[]));
    let client = client(&consul);
    until(&client, Duration::from_secs(10), all_passing).await;

    // Nothing changes: a dozen polls must not touch the catalog.
    let before = client
        .health_service("ollama", &QueryOptions::default())
        .await
        .unwrap()
        .index;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let after = client
        .health_service("ollama", &QueryOptions::default())
        .await
        .unwrap()
        .index;
    assert_eq!(before, after, "unchanged polls caused a Consul write");

    // Preload a model, as a client's first request would.
    load(&node, "llama3.2:3b").await;
    let took = until(&client, Duration::from_secs(5), |e| {
        e.is_some_and(|e| meta(e).models_loaded.contains("llama3.2:3b"))
    })
    .await;
    assert!(
        took < Duration::from_secs(1),
        "loaded model took {took:?} to reach Consul"
    );
}

/// The Consul UI reads the catalog, which the agent updates at once only when a check's status
/// changes (a changed summary alone waits for `check_update_interval`, minutes). Each summary an
/// operator needs must get there within about a second anyway: a new node's, a model loaded,
/// the GPU probe failing, and a restarted sidecar's (the agent keeps the old summary).
#[tokio::test]
async fn the_consul_ui_shows_each_summary_that_matters_within_a_second() {
    let consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b", "qwen2.5:7b"]).await;
    let gpu_answer =
        std::env::temp_dir().join(format!("ollama-mesh-gpu-answer-{}", std::process::id()));
    let one_gpu = "NVIDIA GeForce RTX 4090, 24564, 0, 0";
    std::fs::write(&gpu_answer, one_gpu).unwrap();
    let nvidia_smi = fake_nvidia_smi("from-file", &format!("cat '{}'", gpu_answer.display()));
    // Meta is written at most every 2 s; a new node's first summary must not wait for that.
    let flags = args(
        &consul.http_url(),
        &node.url(),
        &nvidia_smi,
        &["--meta-min-interval=2s"],
    );
    let client = client(&consul);
    let sidecar = Running::start(&flags);

    until(&client, Duration::from_secs(10), |e| e.is_some()).await;
    let new_node = until_summary(
        &client,
        Duration::from_secs(5),
        "Passing: ollama 0.17.4 · 1× NVIDIA GeForce RTX 4090 24 GiB · nothing loaded",
    )
    .await;

    load(&node, "llama3.2:3b").await;
    let model_loaded =
        until_summary(&client, Duration::from_secs(5), "loaded: llama3.2:3b ·").await;

    std::fs::write(&gpu_answer, "this is not csv").unwrap();
    let gpu_failing = until_summary(
        &client,
        Duration::from_secs(5),
        "Warning: GPU probe failing (unexpected nvidia-smi output line",
    )
    .await;
    std::fs::write(&gpu_answer, one_gpu).unwrap();
    let gpu_back = until_summary(
        &client,
        Duration::from_secs(5),
        "Passing: ollama 0.17.4 · 1×",
    )
    .await;

    // The sidecar dies without deregistering; the agent keeps its last summary. Another model
    // loads meanwhile: the next sidecar's summary has the same status and a new text.
    drop(sidecar);
    load(&node, "qwen2.5:7b").await;
    let _sidecar = Running::start(&flags);
    let restarted = until_summary(&client, Duration::from_secs(5), "qwen2.5:7b").await;
    let _ = std::fs::remove_file(&gpu_answer);

    eprintln!(
        "summary in the catalog after: a new node's entry {new_node:?}, a model load \
         {model_loaded:?}, a GPU probe failing {gpu_failing:?} and back {gpu_back:?}, a \
         sidecar restart {restarted:?}"
    );
    // The model's summary waits out --meta-min-interval (2 s) since the first registration.
    assert!(new_node < Duration::from_secs(1), "new node: {new_node:?}");
    assert!(
        model_loaded < Duration::from_secs(3),
        "model: {model_loaded:?}"
    );
    assert!(gpu_failing < Duration::from_secs(1), "GPU: {gpu_failing:?}");
    assert!(gpu_back < Duration::from_secs(1), "GPU back: {gpu_back:?}");
    assert!(restarted < Duration::from_secs(2), "restart: {restarted:?}");
}

/// Loads `model` on `node`, as a client's first request would.
async fn load(node: &SimNode, model: &str) {
    let body = format!(r#"{{"model":"{model}","stream":false}}"#);
    let status = reqwest_free_post(node.addr(), "/api/generate", &body).await;
    assert_eq!(status, 200, "loading {model}");
}

/// A minimal POST with a JSON body; returns the status.
async fn reqwest_free_post(addr: SocketAddr, path: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn ollama_going_away_takes_the_node_out_and_its_return_brings_it_back() {
    let consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b"]).await;
    let url = node.url();
    let _sidecar = Running::start(&args(&consul.http_url(), &url, &two_rtx_4090(), &[]));
    let client = client(&consul);
    until(&client, Duration::from_secs(10), all_passing).await;

    let addr = node.stop().await;
    until(&client, Duration::from_secs(5), |e| {
        matches!(state(e), Some(RoutingState::Out { .. }))
    })
    .await;
    // The agent's HTTP check may notice first; the heartbeat follows within a poll.
    until_summary(
        &client,
        Duration::from_secs(2),
        "Critical: Ollama unreachable",
    )
    .await;

    let _node = SimNode::start_on(
        addr,
        NodeSpec::default().models(["llama3.2:3b"]).time_scale(0.0),
    )
    .await;
    until(&client, Duration::from_secs(10), all_passing).await;
}

#[tokio::test]
async fn re_registers_after_the_agent_forgets_it() {
    let mut consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b"]).await;
    let _sidecar = Running::start(&args(&consul.http_url(), &node.url(), &two_rtx_4090(), &[]));
    let client = client(&consul);
    until(&client, Duration::from_secs(10), |e| e.is_some()).await;

    consul.restart().await;
    let took = until(&client, Duration::from_secs(15), |e| e.is_some()).await;
    assert!(
        took < Duration::from_secs(5),
        "re-registration took {took:?}"
    );
}

#[tokio::test]
async fn starts_without_consul_and_registers_when_it_appears() {
    let mut consul = ConsulDev::start().await;
    consul.kill();
    let node = SimNode::with_models(&["llama3.2:3b"]).await;
    let sidecar = Running::start(&args(&consul.http_url(), &node.url(), &two_rtx_4090(), &[]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !sidecar.task.is_finished(),
        "the sidecar must keep trying, not exit"
    );

    consul.restart().await;
    until(&client(&consul), Duration::from_secs(15), |e| e.is_some()).await;
}

#[tokio::test]
async fn the_drain_key_toggles_maintenance_within_a_second() {
    let consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b"]).await;
    let _sidecar = Running::start(&args(&consul.http_url(), &node.url(), &two_rtx_4090(), &[]));
    let client = client(&consul);
    until(&client, Duration::from_secs(10), all_passing).await;

    let key = format!("ollama-mesh/drain/{ID}");
    client
        .kv_put(&key, "replacing a fan", WriteCondition::Always)
        .await
        .unwrap();
    let took = until(&client, Duration::from_secs(5), |e| {
        matches!(state(e), Some(RoutingState::Draining { reason }) if reason.contains("replacing a fan"))
    })
    .await;
    assert!(took < Duration::from_secs(1), "drain took {took:?}");

    client.kv_delete(&key).await.unwrap();
    let took = until(&client, Duration::from_secs(5), |e| {
        matches!(state(e), Some(RoutingState::Active { .. }))
    })
    .await;
    assert!(took < Duration::from_secs(1), "undrain took {took:?}");
}

#[tokio::test]
async fn shutdown_drains_first_and_deregisters_after_the_drain_period() {
    let consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b"]).await;
    let sidecar = Running::start(&args(
        &consul.http_url(),
        &node.url(),
        &two_rtx_4090(),
        &["--drain-timeout=2s"],
    ));
    let client = client(&consul);
    until(&client, Duration::from_secs(10), all_passing).await;

    let started = Instant::now();
    let stopping = tokio::spawn(sidecar.shutdown());
    until(&client, Duration::from_secs(1), |e| {
        matches!(state(e), Some(RoutingState::Draining { .. }))
    })
    .await;
    assert!(
        entry(&client).await.is_some(),
        "still registered while draining"
    );
    until(&client, Duration::from_secs(5), |e| e.is_none()).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "deregistered before the drain period ended"
    );
    stopping.await.unwrap().expect("clean exit");
}

#[tokio::test]
async fn gpu_probe_junk_or_hang_warns_but_keeps_serving() {
    let consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b"]).await;
    let junk = fake_nvidia_smi("junk", "echo 'this is not csv'");
    let _sidecar = Running::start(&args(&consul.http_url(), &node.url(), &junk, &[]));
    let client = client(&consul);
    let took = until(&client, Duration::from_secs(10), |e| {
        state(e)
            == Some(RoutingState::Active {
                weight: 1,
                degraded: true,
            })
    })
    .await;
    assert!(took < Duration::from_secs(10));
    let output = heartbeat_output(entry(&client).await.as_ref());
    assert!(
        output.contains("GPU probe failing") && output.contains("this is not csv"),
        "{output}"
    );
    drop(_sidecar);

    let hang = fake_nvidia_smi("hang", "sleep 30");
    let consul = ConsulDev::start().await;
    let _sidecar = Running::start(&args(
        &consul.http_url(),
        &node.url(),
        &hang,
        &["--gpu-probe-timeout=300ms"],
    ));
    let client = self::client(&consul);
    until(&client, Duration::from_secs(10), |e| {
        matches!(state(e), Some(RoutingState::Active { degraded: true, .. }))
    })
    .await;
    let output = heartbeat_output(entry(&client).await.as_ref());
    assert!(output.contains("did not finish within"), "{output}");
}

#[tokio::test]
async fn an_ollama_answering_garbage_is_critical_with_a_clear_reason() {
    let consul = ConsulDev::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\n<html>hi!",
                )
                .await;
        }
    });
    let _sidecar = Running::start(&args(
        &consul.http_url(),
        &format!("http://{addr}"),
        &two_rtx_4090(),
        &[],
    ));
    let client = client(&consul);
    until(&client, Duration::from_secs(10), |e| {
        matches!(state(e), Some(RoutingState::Out { .. }))
    })
    .await;
    until_summary(
        &client,
        Duration::from_secs(1),
        "did not answer like Ollama's API",
    )
    .await;
}

#[tokio::test]
async fn a_preemption_notice_drains_and_deregisters() {
    let consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b"]).await;
    // A metadata endpoint that answers 404 until the cloud decides to take the node.
    let notice = Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let notice_url = format!(
        "http://{}/latest/meta-data/spot/instance-action",
        listener.local_addr().unwrap()
    );
    let flag = notice.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let reply: &[u8] = if flag.load(Ordering::SeqCst) {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            let _ = stream.write_all(reply).await;
        }
    });
    let sidecar = Running::start(&args(
        &consul.http_url(),
        &node.url(),
        &two_rtx_4090(),
        &[
            &format!("--preemption-notice-url={notice_url}"),
            "--preemption-poll-interval=200ms",
        ],
    ));
    let client = client(&consul);
    until(&client, Duration::from_secs(10), all_passing).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        matches!(
            state(entry(&client).await.as_ref()),
            Some(RoutingState::Active { .. })
        ),
        "404 is no notice"
    );

    notice.store(true, Ordering::SeqCst);
    until(&client, Duration::from_secs(2), |e| {
        matches!(state(e), Some(RoutingState::Draining { reason }) if reason.contains("preemption"))
    })
    .await;
    until(&client, Duration::from_secs(5), |e| e.is_none()).await;
    tokio::time::timeout(Duration::from_secs(5), sidecar.finished())
        .await
        .expect("the sidecar exits")
        .expect("cleanly");
}

#[tokio::test]
async fn the_binary_notifies_systemd_drains_on_sigterm_and_exits_zero() {
    let consul = ConsulDev::start().await;
    let node = SimNode::with_models(&["llama3.2:3b"]).await;
    let socket_path =
        std::env::temp_dir().join(format!("ollama-mesh-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket_path);
    let notify = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ollama-mesh-sidecar"))
        .args([
            "--instance-id",
            ID,
            "--gpu-probe",
            "none",
            "--poll-interval",
            "200ms",
        ])
        .args(["--drain-timeout", "1s", "--check-interval", "1s"])
        .args(["--ollama-url", &node.url()])
        .env("CONSUL_HTTP_ADDR", consul.http_url())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = client(&consul);
    until(&client, Duration::from_secs(10), all_passing).await;

    let mut messages = Vec::new();
    let mut buf = [0u8; 256];
    while !messages.iter().any(|m| m == "READY=1") || !messages.iter().any(|m| m == "WATCHDOG=1") {
        let n = tokio::time::timeout(Duration::from_secs(5), notify.recv(&mut buf))
            .await
            .expect("sd_notify message")
            .unwrap();
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    until(&client, Duration::from_secs(1), |e| matches!(state(e), Some(RoutingState::Draining { reason }) if reason.contains("SIGTERM"))).await;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), notify.recv(&mut buf))
            .await
            .expect("STOPPING=1")
            .unwrap();
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    until(&client, Duration::from_secs(5), |e| e.is_none()).await;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_file(&socket_path);
}

/// The same registration against a real Ollama with the tiny model (`scripts/test` provides it
/// through `OLLAMA_BIN` and `OLLAMA_MESH_TEST_MODELS`; elsewhere the test says it was skipped).
#[tokio::test]
async fn registers_and_drains_a_real_ollama() {
    let (Some(ollama), Some(models)) = (
        std::env::var_os("OLLAMA_BIN"),
        std::env::var_os("OLLAMA_MESH_TEST_MODELS"),
    ) else {
        assert!(
            std::env::var_os("OLLAMA_MESH_REQUIRE_REAL_OLLAMA").is_none(),
            "OLLAMA_BIN and OLLAMA_MESH_TEST_MODELS must be set when OLLAMA_MESH_REQUIRE_REAL_OLLAMA is"
        );
        eprintln!("skipped: set OLLAMA_BIN and OLLAMA_MESH_TEST_MODELS (scripts/test does) to run against a real Ollama");
        return;
    };
    let consul = ConsulDev::start().await;
    let port = ollama_mesh_test_support::free_port();
    let mut server = tokio::process::Command::new(ollama)
        .arg("serve")
        .env("OLLAMA_HOST", format!("127.0.0.1:{port}"))
        .env("OLLAMA_MODELS", models)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let sidecar = Running::start(&args(
        &consul.http_url(),
        &url,
        &two_rtx_4090(),
        &["--gpu-probe=none"],
    ));
    let client = client(&consul);
    until(&client, Duration::from_secs(30), all_passing).await;
    let entry = entry(&client).await.unwrap();
    let meta = meta(&entry);
    assert!(
        meta.models_on_disk.contains("tiny"),
        "{:?}",
        meta.models_on_disk
    );
    assert!(
        meta.ollama_version
            .as_deref()
            .is_some_and(|v| v.starts_with("0.")),
        "{:?}",
        meta.ollama_version
    );

    let stopping = tokio::spawn(sidecar.shutdown());
    until(&client, Duration::from_secs(1), |e| {
        matches!(state(e), Some(RoutingState::Draining { .. }))
    })
    .await;
    until(&client, Duration::from_secs(5), |e| e.is_none()).await;
    stopping.await.unwrap().expect("clean exit");
    server.kill().await.unwrap();
}
