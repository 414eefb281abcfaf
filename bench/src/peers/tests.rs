//! Every peer installed here, started in front of two simulated nodes and asked for a chat
//! completion (all peers) and a streamed native chat (native peers). A peer that is not installed
//! prints why and passes: `bench/setup` installs them, CI may not have run it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ollama_mesh_test_support::SimNode;
use serde_json::{json, Value};

use super::*;

/// The release router if built, else the debug one (a missing binary makes the router peer
/// `Unavailable`, which this test prints and tolerates).
fn router_bin() -> PathBuf {
    built("ollama-mesh-router")
}

/// The bench binary, for the oracle; likewise.
fn bench_bin() -> PathBuf {
    built("ollama-mesh-bench")
}

fn built(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let release = target.join("release").join(name);
    if procs::is_executable(&release) {
        release
    } else {
        target.join("debug").join(name)
    }
}

/// `POST url` with a JSON body on a fresh connection: status and whole body.
async fn post(url: &str, bearer: Option<&str>, body: &Value) -> (u16, Bytes) {
    let uri: http::Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::post(uri.path())
        .header("host", authority.as_str())
        .header("content-type", "application/json");
    if let Some(key) = bearer {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

async fn exercise(peer: &RunningPeer) {
    let bearer = peer.bearer.as_deref();
    let messages = json!([{"role": "user", "content": "hello"}]);
    let (status, body) = post(
        &format!("{}/v1/chat/completions", peer.url),
        bearer,
        &json!({"model": "m", "messages": messages}),
    )
    .await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{}: {text}", peer.kind);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let content = answer["choices"][0]["message"]["content"].as_str();
    assert!(
        content.is_some_and(|c| !c.is_empty()),
        "{}: {text}",
        peer.kind
    );

    if peer.kind.api() == Api::Native {
        let (status, body) = post(
            &format!("{}/api/chat", peer.url),
            bearer,
            &json!({"model": "m", "messages": messages, "stream": true}),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{}: {text}", peer.kind);
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert!(
            lines.len() > 2,
            "{}: a stream of chunks, got {text}",
            peer.kind
        );
        assert_eq!(lines.last().unwrap()["done"], true, "{}", peer.kind);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_installed_peer_routes_chat_to_the_nodes() {
    let nodes = [
        SimNode::with_models(&["m"]).await,
        SimNode::with_models(&["m"]).await,
    ];
    let work_dir = std::env::temp_dir().join(format!("bench-peers-{}", std::process::id()));
    let setup = PeerSetup {
        backends: nodes.iter().map(SimNode::addr).collect(),
        workers: 1,
        cpus: "0".to_owned(),
        work_dir: work_dir.clone(),
        model: "m".to_owned(),
        router_bin: router_bin(),
        bench_bin: bench_bin(),
        time_scale: 1.0,
        slots: Vec::new(),
        policy: None,
        placement: Vec::new(),
    };
    let mut ran = Vec::new();
    for kind in PeerKind::ALL {
        let peer = match start(kind, &setup).await {
            Ok(peer) => peer,
            Err(PeerError::Unavailable(reason)) => {
                println!("skipped {kind}: {reason}");
                continue;
            }
            Err(err) => panic!("{err}"),
        };
        tokio::time::timeout(Duration::from_secs(30), exercise(&peer))
            .await
            .unwrap_or_else(|_| panic!("{kind}: no answer within 30 s"));
        println!(
            "ok {kind} ({}): ready in {:?}, rss {:?} KiB, cpu {:?} s",
            peer.version,
            peer.startup,
            peer.rss_kib(),
            peer.cpu_seconds()
        );
        if kind != PeerKind::Direct {
            assert!(peer.rss_kib().is_some_and(|kib| kib > 0), "{kind}");
            assert!(peer.cpu_seconds().is_some(), "{kind}");
        }
        let stopping = std::time::Instant::now();
        peer.stop().await;
        println!("   stopped in {:?}", stopping.elapsed());
        ran.push(kind);
    }
    assert!(ran.contains(&PeerKind::Direct));
    let served: u64 = nodes
        .iter()
        .map(|node| node.sim().stats()["requests_total"].as_u64().unwrap_or(0))
        .sum();
    println!("peers run: {ran:?}; requests the nodes saw: {served}");
    let _ = std::fs::remove_dir_all(work_dir);
}

#[test]
fn names_and_apis() {
    let names: Vec<String> = PeerKind::ALL.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "direct",
            "nginx least_conn",
            "HAProxy leastconn",
            "SMG power_of_two",
            "LiteLLM least-busy",
            "ollama-mesh router",
            "oracle"
        ]
    );
    let openai_only: Vec<PeerKind> = PeerKind::ALL
        .into_iter()
        .filter(|k| k.api() == Api::OpenAiOnly)
        .collect();
    assert_eq!(openai_only, [PeerKind::Smg, PeerKind::Litellm]);
}
