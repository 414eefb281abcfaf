//! The watchdog on each attempt (router/src/proxy/watchdog.rs), end to end through Pingora and
//! simulated nodes: a node that sends nothing is given up on at the first-byte deadline and the
//! request retried elsewhere, or answered 504 in the caller's dialect; a stream that stalls
//! ends with an error chunk in the caller's dialect; and Consul's verdict ends attempts in
//! flight at once (moved before their first byte, cut mid-stream on a dead node, left to
//! finish on a draining or deregistered one).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use common::{entry, post, settings, Router};
use ollama_mesh_consul::contract::kv::drain_key;
use ollama_mesh_consul::contract::InstanceId;
use ollama_mesh_consul::health::{CheckStatus, ServiceEntry};
use ollama_mesh_consul::kv::KvPair;
use ollama_mesh_consul::watch::WatchStatus;
use ollama_mesh_router::backend::MeshPolicy;
use ollama_mesh_router::proxy::ProxySettings;
use ollama_mesh_router::{BackendSet, Fleet};
use ollama_mesh_sim::{FaultSpec, NodeSpec};
use ollama_mesh_test_support::SimNode;
use serde_json::{json, Value};
use tokio::sync::watch;

const MODEL: &str = "llama3.2:3b";

/// A fleet whose set the test changes, as discovery does on a Consul change.
struct MovingFleet {
    current: ArcSwap<BackendSet>,
    generation: watch::Sender<u64>,
}

impl MovingFleet {
    fn new(entries: &[ServiceEntry]) -> Arc<Self> {
        let set = BackendSet::build(entries, &[], &BackendSet::default(), MeshPolicy::default());
        Arc::new(Self {
            current: ArcSwap::from_pointee(set),
            generation: watch::Sender::new(1),
        })
    }

    /// Publishes the set for `entries`, with `drained` instances drained by key.
    fn publish(&self, entries: &[ServiceEntry], drained: &[&str]) {
        let keys: Vec<_> = drained
            .iter()
            .map(|id| KvPair {
                key: drain_key(&InstanceId::parse(id).unwrap()),
                value: bytes::Bytes::from_static(b"test drain"),
                flags: 0,
                modify_index: 1,
                create_index: 1,
            })
            .collect();
        let next = BackendSet::build(entries, &keys, &self.current.load(), MeshPolicy::default());
        self.current.store(Arc::new(next));
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Fleet for MovingFleet {
    fn backends(&self) -> Arc<BackendSet> {
        self.current.load_full()
    }
    fn is_ready(&self) -> bool {
        true
    }
    fn watches(&self) -> Vec<(&'static str, Arc<WatchStatus>)> {
        Vec::new()
    }
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.generation.subscribe())
    }
}

/// A node answering at `time_scale` of real time (0 = at once).
async fn node(time_scale: f64) -> SimNode {
    SimNode::start(NodeSpec::default().models([MODEL]).time_scale(time_scale)).await
}

fn fast_settings() -> ProxySettings {
    ProxySettings {
        first_byte_timeout: Duration::from_millis(800),
        stream_idle_timeout: Duration::from_millis(800),
        ..settings()
    }
}

fn stall(node: &SimNode, spec: FaultSpec) {
    node.sim().set_faults(&spec);
}

fn frozen() -> FaultSpec {
    FaultSpec {
        stall_ms: Some(600_000),
        ..FaultSpec::default()
    }
}

fn generate(stream: bool) -> Value {
    json!({"model": MODEL, "prompt": "hello", "stream": stream, "options": {"num_predict": 8}})
}

fn chat(stream: bool) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": stream, "max_tokens": 8})
}

#[tokio::test]
async fn a_node_that_sends_nothing_loses_the_request_to_another_at_the_first_byte_deadline() {
    let silent = node(0.0).await;
    let good = node(0.0).await;
    stall(&silent, frozen());
    // The silent node is the scheduler's first choice: the model is loaded there.
    let router = Router::start(
        vec![
            entry("silent", silent.addr(), &[MODEL], &[MODEL], 1),
            entry("good", good.addr(), &[MODEL], &[], 1),
        ],
        fast_settings(),
    )
    .await;
    for stream in [false, true] {
        let started = Instant::now();
        let answer = post(&router.url("/api/generate"), generate(stream)).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.last_line()["done"], true);
        // Deadline: 0.8 s plus twice the expected time on a warm node (default costs: a 5 s
        // answer), so well under the 600 s read timeout and over the bare 0.8 s.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(30), "took {took:?}");
    }
    assert!(common::requests_on(&good) >= 2);
}

#[tokio::test]
async fn with_no_other_node_the_caller_gets_504_in_its_own_dialect() {
    let silent = node(0.0).await;
    stall(&silent, frozen());
    let router = Router::start(
        vec![entry("silent", silent.addr(), &[MODEL], &[MODEL], 1)],
        fast_settings(),
    )
    .await;
    let native = post(&router.url("/api/generate"), generate(false)).await;
    assert_eq!(native.status, 504);
    let message = native.json()["error"].as_str().unwrap().to_owned();
    assert!(
        message.contains("instance silent sent nothing") && message.contains("first-byte"),
        "{message}"
    );
    let openai = post(&router.url("/v1/chat/completions"), chat(false)).await;
    assert_eq!(openai.status, 504);
    assert_eq!(openai.json()["error"]["type"], "api_error");
    assert!(openai.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sent nothing"));
}

#[tokio::test]
async fn a_stream_that_stalls_midway_ends_with_an_error_chunk_in_the_callers_dialect() {
    let node = node(0.0).await;
    stall(
        &node,
        FaultSpec {
            stall_after_tokens: Some(Some(3)),
            ..FaultSpec::default()
        },
    );
    let router = Router::start(
        vec![entry("stalls", node.addr(), &[MODEL], &[MODEL], 1)],
        fast_settings(),
    )
    .await;
    let started = Instant::now();
    let native = post(&router.url("/api/generate"), generate(true)).await;
    assert_eq!(native.status, 200);
    let last = native.last_line();
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("stopped sending mid-answer")),
        "{last}"
    );
    let tokens = native
        .body
        .split(|b| *b == b'\n')
        .filter(|l| l.starts_with(b"{\"model\""))
        .count();
    assert_eq!(tokens, 3, "three tokens came before the stall");

    let openai = post(&router.url("/v1/chat/completions"), chat(true)).await;
    let text = String::from_utf8_lossy(&openai.body).into_owned();
    let last_event = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .last()
        .unwrap()
        .to_owned();
    let error: Value = serde_json::from_str(last_event.trim_start_matches("data: ")).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--stream-idle-timeout")),
        "{last_event}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn consuls_verdict_moves_requests_waiting_for_their_first_byte_at_once() {
    let stuck = node(0.0).await;
    let good = node(0.0).await;
    stall(&stuck, frozen());
    let entries = [
        entry("stuck", stuck.addr(), &[MODEL], &[MODEL], 1),
        entry("good", good.addr(), &[MODEL], &[], 1),
    ];
    let fleet = MovingFleet::new(&entries);
    // A first-byte deadline far away: only the verdict can move the request in time.
    let router = Router::with_fleet(
        fleet.clone(),
        ProxySettings {
            first_byte_timeout: Duration::from_secs(120),
            ..settings()
        },
    )
    .await;
    let url = router.url("/api/generate");
    let request = tokio::spawn(async move { post(&url, generate(false)).await });
    until(|| stuck.sim().stats()["requests_in_flight"].as_u64() == Some(1)).await;
    let started = Instant::now();
    let mut critical = entries.to_vec();
    critical[0].checks[0].status = CheckStatus::Critical;
    fleet.publish(&critical, &[]);
    let answer = request.await.unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(common::requests_on(&good), 1);
}

#[tokio::test]
async fn a_stream_goes_on_while_its_node_drains_or_leaves_and_ends_with_an_error_when_it_dies() {
    // Real time: 8 tokens take a while, enough to change the set mid-stream.
    let slow = node(1.0).await;
    let entries = [entry("slow", slow.addr(), &[MODEL], &[MODEL], 1)];
    let fleet = MovingFleet::new(&entries);
    let router = Router::with_fleet(fleet.clone(), settings()).await;

    // Drained, then gone from the catalog (a restarted agent, say) mid-stream: the stream
    // finishes.
    let drained: &[ServiceEntry] = &entries;
    for (during, drains) in [(drained, &["slow"][..]), (&[][..], &[][..])] {
        fleet.publish(&entries, &[]);
        let mut stream = streaming(&router.url("/api/generate"), generate(true)).await;
        stream.first_line().await;
        fleet.publish(during, drains);
        let lines = stream.rest().await;
        assert_eq!(
            serde_json::from_str::<Value>(lines.last().unwrap()).unwrap()["done"],
            true,
            "{drains:?}"
        );
    }

    // Dead mid-stream: the stream ends at once, with the reason.
    fleet.publish(&entries, &[]);
    let mut stream = streaming(&router.url("/api/generate"), generate(true)).await;
    stream.first_line().await;
    let mut critical = entries.to_vec();
    critical[0].checks[0].status = CheckStatus::Critical;
    fleet.publish(&critical, &[]);
    let lines = stream.rest().await;
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("went down")),
        "{last}"
    );
}

/// Waits until `condition` holds, for at most 10 s.
async fn until(condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An NDJSON response read line by line.
struct Streaming {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

async fn streaming(url: &str, body: Value) -> Streaming {
    use http_body_util::Full;
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let response = common::client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    Streaming {
        body: response.into_body(),
        buffer: Vec::new(),
    }
}

impl Streaming {
    /// Waits for the first complete line.
    async fn first_line(&mut self) {
        use http_body_util::BodyExt;
        while !self.buffer.contains(&b'\n') {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("a first line within 10 s")
                .expect("the stream goes on")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }

    /// Reads to the end; every line.
    async fn rest(mut self) -> Vec<String> {
        use http_body_util::BodyExt;
        let rest = tokio::time::timeout(Duration::from_secs(30), self.body.collect())
            .await
            .expect("the stream ends within 30 s")
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        self.buffer.extend_from_slice(&rest);
        String::from_utf8_lossy(&self.buffer)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
