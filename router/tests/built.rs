//! The router as `ollama-mesh-router` builds it from its flags ([`ollama_mesh_router::Router`]):
//! static backends, API keys from a file, the ops endpoints and the draining stop, end to end.

mod common;

use std::time::Duration;

use common::{call, call_with, key_entry_json, Dir, Router};
use http::{Method, StatusCode};
use ollama_mesh_test_support::SimNode;
use serde_json::Value;

#[tokio::test]
async fn the_binarys_router_routes_by_model_checks_keys_and_serves_its_ops_endpoints() {
    let llama = SimNode::with_models(&["llama3.2:3b"]).await;
    let qwen = SimNode::with_models(&["qwen2.5:7b"]).await;
    let dir = Dir::new("built-router");
    let keys = dir.write(
        "keys.json",
        &format!(r#"{{"tests": {}}}"#, key_entry_json("secret-1", "")),
    );
    let backends = format!("--backend={},{}", llama.url(), qwen.url());
    let keys_file = format!("--keys-file={}", keys.display());
    let (router, ops) = Router::built(&[
        &backends,
        "--backend-poll-interval=100ms",
        &keys_file,
        "--threads=2",
        "--grace-period=5s",
    ])
    .await;

    // Ready once both backends have been read.
    let started = std::time::Instant::now();
    loop {
        let ready = call(Method::GET, &format!("http://{ops}/readyz"), "").await;
        if ready.status == StatusCode::OK {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let unauthorized = call(Method::GET, &router.url("/api/tags"), "").await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);

    let bearer = [("authorization", "Bearer secret-1")];
    let tags = call_with(Method::GET, &router.url("/api/tags"), &bearer, "").await;
    assert_eq!(tags.status, StatusCode::OK);
    let names: Vec<String> = tags.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        names.contains(&"llama3.2:3b".to_owned()) && names.contains(&"qwen2.5:7b".to_owned()),
        "the fleet's models: {names:?}"
    );
    for (model, node) in [("qwen2.5:7b", &qwen), ("llama3.2:3b", &llama)] {
        let body = format!(r#"{{"model":"{model}","prompt":"hi","stream":false}}"#);
        let answer = call_with(Method::POST, &router.url("/api/generate"), &bearer, body).await;
        assert_eq!(answer.status, StatusCode::OK, "{model}");
        assert_eq!(answer.json()["done"], Value::Bool(true));
        assert_eq!(
            node.sim().stats()["loads"],
            1,
            "{model} went to the node that has it"
        );
    }

    let nodes = call(Method::GET, &format!("http://{ops}/v1/mesh/nodes"), "").await;
    assert_eq!(nodes.status, StatusCode::OK);
    assert_eq!(
        nodes.json().as_array().map(Vec::len),
        Some(2),
        "both backends listed"
    );

    let took = router.stop().await;
    assert!(
        took < Duration::from_secs(5),
        "an idle router stops at once: {took:?}"
    );
}
