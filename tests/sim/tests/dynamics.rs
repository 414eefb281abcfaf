//! Black-box checks of scheduling dynamics, faults and stats over HTTP.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Node, Reply};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use ollama_mesh_sim::{NodeSpec, ServeExit};

const CHAT: &str =
    r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":3}}"#;

#[tokio::test]
async fn client_disconnect_cancels_generation_and_frees_the_slot() {
    // Real time: 100 000 tokens at 2 000 tok/s would take 50 s.
    let node = Node::start(NodeSpec::default().models(["tiny"]).time_scale(1.0)).await;
    let long = r#"{"model":"tiny","prompt":"tell me everything","options":{"num_predict":100000}}"#;
    let resp = node
        .open(Method::POST, "/api/generate", Some(long), &[])
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"{\"model\":\"tiny\""));
    assert_eq!(node.stats()["slots_busy"], 1);
    drop(body);
    assert!(
        eventually(Duration::from_secs(2), || node.stats()["slots_busy"] == 0).await,
        "{}",
        node.stats()
    );
    let generated = node.stats()["generated_tokens"].as_u64().unwrap();
    assert!(
        generated < 10_000,
        "generation stopped early ({generated} tokens)"
    );
    let start = Instant::now();
    let next = node
        .post(
            "/api/generate",
            r#"{"model":"tiny","prompt":"x","stream":false,"options":{"num_predict":1}}"#,
        )
        .await;
    assert_eq!(next.status, StatusCode::OK);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the slot was free"
    );
    assert_eq!(node.stats()["requests_in_flight"], 0);
}

#[tokio::test]
async fn full_pending_queue_answers_503() {
    // Loads take seconds of simulated time: 0.1 makes them a few hundred milliseconds.
    let spec = NodeSpec::default()
        .models(["llama3.1:8b", "qwen2.5:7b", "mistral:7b"])
        .time_scale(0.1)
        .max_queue(1);
    let node = std::sync::Arc::new(Node::start(spec).await);
    let body = |m: &str| {
        format!(r#"{{"model":"{m}","prompt":"hi","stream":false,"options":{{"num_predict":1}}}}"#)
    };
    let loading = tokio::spawn({
        let (node, body) = (node.clone(), body("llama3.1:8b"));
        async move { node.post("/api/generate", &body).await.status }
    });
    assert!(
        eventually(Duration::from_secs(2), || node.stats()["loading"]
            == "llama3.1:8b")
        .await
    );
    let queued = tokio::spawn({
        let (node, body) = (node.clone(), body("qwen2.5:7b"));
        async move { node.post("/api/generate", &body).await.status }
    });
    assert!(eventually(Duration::from_secs(2), || node.stats()["queue_depth"] == 1).await);
    let refused = node.post("/api/generate", &body("mistral:7b")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.body,
        r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#
    );
    let refused_v1 = node
        .post(
            "/v1/chat/completions",
            r#"{"model":"mistral:7b","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await;
    assert_eq!(refused_v1.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused_v1.json()["error"]["type"], "api_error");
    assert_eq!(loading.await.unwrap(), StatusCode::OK);
    assert_eq!(queued.await.unwrap(), StatusCode::OK);
    let stats = node.stats();
    assert_eq!(stats["rejected_total"], 2);
    assert_eq!(stats["requests_total"], 4);
    assert_eq!(stats["loads"], 2);
}

#[tokio::test]
async fn faults_fail_stall_and_cut() {
    let node = Node::tiny().await;
    let set = |body: &'static str| {
        let node = &node;
        async move { node.post("/sim/faults", body).await.json() }
    };
    let faults = set(r#"{"fail_next":2}"#).await;
    assert_eq!(faults["fail_next"], 2);
    for _ in 0..2 {
        let failed = node.post("/api/chat", CHAT).await;
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(failed.json()["error"]
            .as_str()
            .unwrap()
            .contains("fault injection"));
    }
    assert_eq!(node.post("/api/chat", CHAT).await.status, StatusCode::OK);

    set(r#"{"stall_ms":300}"#).await;
    let start = Instant::now();
    let resp = node.open(Method::POST, "/api/chat", Some(CHAT), &[]).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(Reply::read(resp).await.status, StatusCode::OK);

    set(r#"{"stall_ms":0,"cut_after_tokens":2}"#).await;
    let cut = node.post("/api/chat", r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":10}}"#).await;
    assert_eq!(
        cut.status,
        StatusCode::OK,
        "the status went out with the first token"
    );
    let lines = cut.lines();
    assert_eq!(lines.len(), 3);
    assert!(lines[2]["error"]
        .as_str()
        .unwrap()
        .starts_with("an error was encountered while running the model"));
    let (events, done) = node.post("/v1/chat/completions", r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":10}"#).await.events();
    assert!(!done, "a failed stream has no [DONE]");
    assert_eq!(events[2]["error"]["type"], "api_error");
    let unstreamed = node
        .post(
            "/api/generate",
            r#"{"model":"tiny","prompt":"x","stream":false,"options":{"num_predict":10}}"#,
        )
        .await;
    assert_eq!(unstreamed.status, StatusCode::INTERNAL_SERVER_ERROR);

    // A stall mid-answer: two tokens, then nothing, the connection open.
    set(r#"{"cut_after_tokens":null,"stall_after_tokens":2}"#).await;
    let resp = node
        .open(
            Method::POST,
            "/api/generate",
            Some(r#"{"model":"tiny","prompt":"x","options":{"num_predict":10}}"#),
            &[],
        )
        .await;
    let read = tokio::time::timeout(Duration::from_millis(500), Reply::read(resp)).await;
    assert!(read.is_err(), "a stalled stream never ends");

    let cleared = node.send(Method::DELETE, "/sim/faults", None).await.json();
    assert_eq!(cleared["cut_after_tokens"], serde_json::Value::Null);
    assert_eq!(cleared["stall_after_tokens"], serde_json::Value::Null);
    assert_eq!(node.get("/sim/faults").await.json(), cleared);
    assert_eq!(
        node.post(
            "/api/generate",
            r#"{"model":"tiny","prompt":"x","stream":false}"#
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(node.stats()["faulted_total"], 2);
    assert_eq!(
        node.post("/sim/faults", r#"{"bogus":1}"#).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn health_checks_can_be_slow_or_hang() {
    let node = Node::tiny().await;
    node.post("/sim/faults", r#"{"health":"slow","health_delay_ms":200}"#)
        .await;
    let start = Instant::now();
    assert_eq!(node.get("/api/version").await.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(200));
    node.post("/sim/faults", r#"{"health":"hang"}"#).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), node.get("/"))
            .await
            .is_err()
    );
    let ps = tokio::time::timeout(Duration::from_millis(300), node.get("/api/ps")).await;
    assert!(ps.is_ok(), "only / and /api/version hang");
}

#[tokio::test]
async fn exit_kills_the_node_abruptly() {
    let node = Node::tiny().await;
    let resp = node
        .open(
            Method::POST,
            "/api/generate",
            Some(r#"{"model":"tiny","prompt":"x"}"#),
            &[],
        )
        .await;
    assert_eq!(node.post("/sim/exit", "").await.status, StatusCode::OK);
    let exit = tokio::time::timeout(Duration::from_secs(2), node.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(exit, ServeExit::Killed);
    drop(resp);

    let node = Node::start(NodeSpec::default().models(["tiny"]).time_scale(0.0)).await;
    node.post("/sim/faults", r#"{"exit_after_requests":2}"#)
        .await;
    assert_eq!(node.post("/api/chat", CHAT).await.status, StatusCode::OK);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        node.open(Method::POST, "/api/chat", Some(CHAT), &[]),
    )
    .await;
    assert_eq!(node.stop().await, ServeExit::Killed);
}

#[tokio::test]
async fn stats_are_ground_truth() {
    let node = Node::tiny().await;
    node.post("/api/generate", r#"{"model":"nope","prompt":"x"}"#)
        .await;
    node.post("/api/generate", "{").await;
    let history = "a b c d e f g h";
    node.post("/api/generate", &format!(r#"{{"model":"tiny","prompt":"{history}","stream":false,"options":{{"num_predict":4}}}}"#)).await;
    node.post("/api/generate", &format!(r#"{{"model":"tiny","prompt":"{history} i j","stream":false,"options":{{"num_predict":4}}}}"#)).await;
    let stats = node.get("/sim/stats").await.json();
    assert_eq!(
        stats["requests_total"], 4,
        "counted on arrival, failures included"
    );
    assert_eq!(stats["generated_tokens"], 8);
    assert_eq!(stats["prompt_tokens"], 18);
    assert_eq!(stats["cache_hits"], 1);
    assert_eq!(stats["cached_prompt_tokens"], 8);
    assert_eq!(stats["loads"], 1);
    let tiny = &stats["models"]["tiny:latest"];
    assert_eq!(tiny["requests"], 2);
    assert_eq!(tiny["loaded"], true);
    assert_eq!(tiny["slots_total"], 1);
    assert_eq!(tiny["slots_busy"], 0);
    assert_eq!(stats["queue_depth"], 0);
    assert_eq!(stats["node_name"], "ollama-sim");
}

#[tokio::test]
async fn cache_hits_show_in_prompt_eval_duration() {
    let node = Node::start(NodeSpec::default().models(["llama3.1:8b"]).time_scale(0.0)).await;
    let long: String = (0..2000).map(|i| format!("w{i} ")).collect();
    let ask = |prompt: String| {
        let node = &node;
        async move {
            let body = serde_json::json!({ "model": "llama3.1:8b", "prompt": prompt, "stream": false, "options": { "num_predict": 1 } });
            node.post("/api/generate", &body.to_string()).await.json()
        }
    };
    let cold = ask(long.clone()).await;
    let warm = ask(format!("{long} more")).await;
    assert_eq!(warm["prompt_eval_count"], 2001);
    let (cold_ns, warm_ns) = (
        cold["prompt_eval_duration"].as_u64().unwrap(),
        warm["prompt_eval_duration"].as_u64().unwrap(),
    );
    assert!(
        warm_ns * 100 < cold_ns,
        "cached prefill {warm_ns} vs cold {cold_ns}"
    );
}
