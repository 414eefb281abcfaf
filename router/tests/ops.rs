//! The ops listener over a real socket, fed by a static fleet of in-process simulators or by
//! discovery from a real `consul agent -dev`; and the static fleet taking a backend that stops
//! answering out, and back in when it returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ollama_mesh_consul::agent::{CheckDefinition, CheckKind, ServiceRegistration, Weights};
use ollama_mesh_consul::contract::{ModelList, NodeMeta};
use ollama_mesh_consul::health::CheckStatus;
use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_consul::{Client, ConsulSettings};
use ollama_mesh_daemon::AbortOnDrop;
use ollama_mesh_router::metrics::Metrics;
use ollama_mesh_router::static_fleet::{PollConfig, StaticBackend, StaticFleet};
use ollama_mesh_router::{ops, Discovery, Fleet};
use ollama_mesh_sim::NodeSpec;
use ollama_mesh_test_support::{http, ConsulDev, SimNode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Fast polling, so outages show within a second.
const POLL: PollConfig = PollConfig {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(500),
};

/// The fleet gauges are process-wide, like the router's one fleet; tests in this binary run in
/// parallel, each with its own fleet, so they take turns scraping and reading them.
static SCRAPE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The ops server on a free loopback port; stopped on drop.
struct OpsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: AbortOnDrop<()>,
}

impl OpsServer {
    async fn start(fleet: Arc<dyn Fleet>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = AbortOnDrop::spawn(ops::serve(
            listener,
            fleet.clone(),
            ollama_mesh_router::Scheduler::new(fleet, Default::default()),
            Metrics::new(),
            None,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http::get(self.addr, path)
            .await
            .unwrap_or_else(|| panic!("no answer to GET {path}"))
    }

    async fn json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path).await;
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (status, json)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the ops server stops on shutdown")
            .unwrap();
    }
}

/// Loads `model` on the simulator the way a client would, so `/api/ps` lists it.
async fn load(node: &SimNode, model: &str) {
    let body = format!(r#"{{"model":"{model}","prompt":"","stream":false}}"#);
    let request = format!(
        "POST /api/generate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        node.addr(),
        body.len()
    );
    let mut stream = TcpStream::connect(node.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Polls `check` until it holds, for at most `limit`.
async fn until<T>(limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < limit, "not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node<'a>(nodes: &'a Value, id: &str) -> &'a Value {
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {nodes:#}"))
}

fn static_backend(addr: SocketAddr) -> StaticBackend {
    StaticBackend::parse(&format!("http://{addr}")).unwrap()
}

#[tokio::test]
async fn ops_endpoints_describe_a_static_fleet() {
    let gpu = SimNode::with_models(&["llama3.2:3b", "qwen2.5:7b"]).await;
    let cpu = SimNode::with_models(&["nomic-embed-text"]).await;
    load(&gpu, "qwen2.5:7b").await;
    // Accepts connections (the kernel's backlog) but never answers: the first round has to
    // wait for the poll timeout, so readiness is observably not there yet.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backends = vec![
        static_backend(gpu.addr()),
        static_backend(cpu.addr()),
        static_backend(silent.local_addr().unwrap()),
    ];
    let fleet = Arc::new(StaticFleet::start(backends.clone(), POLL, None));
    let server = OpsServer::start(fleet.clone()).await;

    let (status, body) = server.json("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(server.json("/healthz").await.0, 200, "alive before ready");

    fleet.ready().await;
    let (status, body) = server.json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backends"], 3);
    assert_eq!(body["consul"], "not used");

    let (status, nodes) = server.json("/v1/mesh/nodes").await;
    assert_eq!(status, 200);
    let gpu_node = node(&nodes, backends[0].id().as_str());
    assert_eq!(gpu_node["state"], "active");
    assert_eq!(gpu_node["address"], gpu.addr().to_string());
    assert_eq!(
        gpu_node["models"]["on_disk"]["names"],
        serde_json::json!(["llama3.2:3b", "qwen2.5:7b"])
    );
    assert_eq!(
        gpu_node["models"]["loaded"]["names"],
        serde_json::json!(["qwen2.5:7b"])
    );
    assert!(gpu_node["versions"]["ollama"].is_string());
    assert!(humantime::parse_rfc3339(gpu_node["last_change"].as_str().unwrap()).is_ok());
    let cpu_node = node(&nodes, backends[1].id().as_str());
    assert_eq!(cpu_node["models"]["on_disk"]["total"], 1);
    let silent_node = node(&nodes, backends[2].id().as_str());
    assert_eq!(silent_node["state"], "out");
    assert!(silent_node["reason"]
        .as_str()
        .unwrap()
        .contains("no answer"));

    let (status, text) = {
        let _turn = SCRAPE.lock().await;
        server.get("/metrics").await
    };
    assert_eq!(status, 200);
    assert!(
        text.contains("ollama_mesh_backends{state=\"active\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("ollama_mesh_backends{state=\"out\"} 1"),
        "{text}"
    );
    let in_flight = format!(
        "ollama_mesh_backend_in_flight{{instance=\"{}\"",
        backends[0].id()
    );
    assert!(text.contains(&in_flight), "{text}");

    let (status, body) = server.json("/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not found: /nope");

    server.stop().await;
}

#[tokio::test]
async fn metrics_name_every_family_after_calls() {
    let fleet = Arc::new(StaticFleet::start(Vec::new(), POLL, None));
    let server = OpsServer::start(fleet.clone()).await;
    let metrics = Metrics::new();
    metrics.request_finished("chat", "llama3.2:3b", 200, Duration::from_millis(1500));
    metrics.first_byte("chat", "llama3.2:3b", Duration::from_millis(300));
    metrics.tokens("llama3.2:3b", "gpu-1", 64, Duration::from_secs(1));
    metrics.retry("chat", "busy");
    let (status, text) = {
        let _turn = SCRAPE.lock().await;
        server.get("/metrics").await
    };
    assert_eq!(status, 200);
    for line in [
        r#"ollama_mesh_requests_total{model="llama3.2:3b",route="chat",status="200"} 1"#,
        r#"ollama_mesh_request_duration_seconds_count{model="llama3.2:3b",route="chat"} 1"#,
        r#"ollama_mesh_time_to_first_byte_seconds_count{model="llama3.2:3b",route="chat"} 1"#,
        r#"ollama_mesh_tokens_generated_total{model="llama3.2:3b",node="gpu-1"} 64"#,
        r#"ollama_mesh_tokens_per_second_sum{model="llama3.2:3b",node="gpu-1"} 64"#,
        r#"ollama_mesh_retries_total{reason="busy",route="chat"} 1"#,
        r#"ollama_mesh_backends{state="active"} 0"#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_static_backend_that_stops_answering_is_taken_out_and_put_back() {
    let node = SimNode::with_models(&["llama3.2:3b"]).await;
    let backend = static_backend(node.addr());
    let id = backend.id().as_str().to_owned();
    let fleet = StaticFleet::start(vec![backend], POLL, None);
    fleet.ready().await;
    let state = |fleet: &StaticFleet| {
        let set = fleet.backends();
        let b = set.get(&id).expect("listed");
        (b.state().accepts_new_work(), b.has_model("llama3.2:3b"))
    };
    assert_eq!(state(&fleet), (true, true));

    let addr = node.stop().await;
    let started = Instant::now();
    until(Duration::from_secs(3), async || {
        (state(&fleet) == (false, true)).then_some(())
    })
    .await;
    let out_after = started.elapsed();

    let node = SimNode::start_on(
        addr,
        NodeSpec::default()
            .models(["llama3.2:3b", "qwen2.5:7b"])
            .time_scale(0.0),
    )
    .await;
    until(Duration::from_secs(3), async || {
        let set = fleet.backends();
        let b = set.get(&id)?;
        (b.state().accepts_new_work() && b.has_model("qwen2.5:7b")).then_some(())
    })
    .await;
    assert!(
        out_after < Duration::from_secs(1),
        "out within a few poll rounds, took {out_after:?}"
    );
    drop(node);
}

fn consul_client(consul: &ConsulDev) -> Client {
    let settings = ConsulSettings {
        http_addr: Some(consul.http_url()),
        ..ConsulSettings::default()
    };
    Client::new(&settings.validate().unwrap()).unwrap()
}

/// Discovery from `consul` with short waits and backoff, once it has its first set.
async fn discovery(consul: &ConsulDev) -> Arc<Discovery> {
    let config = WatchConfig {
        wait: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        ..WatchConfig::default()
    };
    let discovery = Arc::new(Discovery::start(
        consul_client(consul),
        "ollama",
        config,
        None,
    ));
    tokio::time::timeout(Duration::from_secs(10), discovery.ready())
        .await
        .expect("first snapshot");
    discovery
}

#[tokio::test]
async fn nodes_follow_consul_and_stamp_each_change() {
    let consul = ConsulDev::start().await;
    let client = consul_client(&consul);
    let id = "ollama-gpu-7-11434";
    let meta = NodeMeta {
        gpu_name: Some("NVIDIA GeForce RTX 4090".into()),
        gpu_count: 2,
        gpu_vram_mib: 49128,
        parallel_slots: 4,
        models_on_disk: ModelList::new(["llama3.2:3b", "qwen2.5:7b"]),
        models_loaded: ModelList::new(["llama3.2:3b"]),
        ollama_version: Some("0.17.4".into()),
        sidecar_version: "0.1.0".into(),
        preemptible: true,
    };
    client
        .register_service(&ServiceRegistration {
            id: id.into(),
            name: "ollama".into(),
            address: "127.0.0.1".into(),
            port: 11434,
            meta: meta.to_consul_meta(),
            weights: Weights {
                passing: 8,
                warning: 1,
            },
            checks: vec![CheckDefinition {
                check_id: format!("{id}:heartbeat"),
                name: "heartbeat".into(),
                notes: String::new(),
                kind: CheckKind::Ttl {
                    ttl: Duration::from_secs(60),
                },
                status: Some(CheckStatus::Passing),
                deregister_critical_after: None,
            }],
            ..ServiceRegistration::default()
        })
        .await
        .unwrap();
    let discovery = discovery(&consul).await;
    let server = OpsServer::start(discovery).await;

    let active = until(Duration::from_secs(5), async || {
        let (_, nodes) = server.json("/v1/mesh/nodes").await;
        let found = nodes.as_array()?.iter().find(|n| n["id"] == id)?.clone();
        (found["state"] == "active").then_some(found)
    })
    .await;
    assert_eq!(active["address"], "127.0.0.1:11434");
    assert_eq!(active["weight"], 8);
    assert_eq!(active["capacity"], 8);
    assert_eq!(active["in_flight"], 0);
    assert_eq!(
        active["gpu"],
        serde_json::json!({"name": "NVIDIA GeForce RTX 4090", "count": 2, "vram_mib": 49128})
    );
    assert_eq!(active["parallel_slots"], 4);
    assert_eq!(active["preemptible"], true);
    assert_eq!(active["versions"]["ollama"], "0.17.4");
    assert_eq!(active["models"]["loaded"]["names"][0], "llama3.2:3b");
    assert_eq!(active["models"]["on_disk"]["truncated"], false);

    tokio::time::sleep(Duration::from_millis(50)).await;
    client
        .set_service_maintenance(id, true, "replacing fan")
        .await
        .unwrap();
    let draining = until(Duration::from_secs(2), async || {
        let (_, nodes) = server.json("/v1/mesh/nodes").await;
        let found = nodes.as_array()?.iter().find(|n| n["id"] == id)?.clone();
        (found["state"] == "draining").then_some(found)
    })
    .await;
    assert_eq!(draining["reason"], "replacing fan");
    assert_eq!(draining["weight"], 0);
    let stamp = |node: &Value| humantime::parse_rfc3339(node["last_change"].as_str().unwrap());
    assert!(
        stamp(&draining).unwrap() > stamp(&active).unwrap(),
        "last_change moves with the state: {} then {}",
        active["last_change"],
        draining["last_change"]
    );
    server.stop().await;
}

#[tokio::test]
async fn readiness_follows_discovery_and_survives_consul_going_away() {
    let mut consul = ConsulDev::start().await;
    let discovery = discovery(&consul).await;
    let server = OpsServer::start(discovery.clone()).await;
    let (status, body) = server.json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["consul"], "ok");
    let names: Vec<&str> = body["watches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["health", "drain"]);

    consul.kill();
    let body = until(Duration::from_secs(15), async || {
        let (status, body) = server.json("/readyz").await;
        assert_eq!(status, 200, "still ready on the last good set: {body}");
        (body["consul"] == "unreachable").then_some(body)
    })
    .await;
    assert!(body["stale_seconds"].as_f64().is_some(), "{body}");

    let (_, text) = {
        let _turn = SCRAPE.lock().await;
        server.get("/metrics").await
    };
    assert!(
        text.contains(r#"ollama_mesh_consul_watch_connected{watch="health"} 0"#)
            || text.contains(r#"ollama_mesh_consul_watch_connected{watch="drain"} 0"#),
        "{text}"
    );
    assert!(text.contains("ollama_mesh_consul_watch_seconds_since_contact{watch="));
    assert!(text.contains("ollama_mesh_consul_watch_last_index{watch=\"health\"}"));
    server.stop().await;
}
