//! API keys end to end: the router in front of simulated nodes, requiring keys from a store, from
//! a real Consul agent's KV, and refusing every spelling of a management route without an admin
//! key.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use ollama_mesh_consul::contract::kv as layout;
use ollama_mesh_consul::kv::WriteCondition;
use ollama_mesh_consul::watch::WatchConfig;
use ollama_mesh_router::keys::{ConsulKeys, KeyStore};
use ollama_mesh_router::proxy::ProxySettings;
use ollama_mesh_sim::NodeSpec;
use ollama_mesh_test_support::{ConsulDev, SimNode};
use serde_json::json;

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

async fn chat(router: &Router, model: &str, headers: &[(&str, &str)]) -> Answer {
    let body =
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": false});
    call_with(
        Method::POST,
        &router.url("/api/chat"),
        headers,
        body.to_string(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_need_a_valid_key_and_are_refused_in_the_callers_dialect() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let keys = key_store(&[
        ("alice", "om-alice", ""),
        ("off", "om-off", r#", "enabled": false"#),
        ("old", "om-old", r#", "expires": "2001-01-01T00:00:00Z""#),
    ]);
    let router = Router::with_keys(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        settings(),
        keys,
    )
    .await;

    let missing = chat(&router, "llama3.2:3b", &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers[http::header::WWW_AUTHENTICATE],
        r#"Bearer realm="ollama-mesh""#
    );
    assert!(missing.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("missing API key"));
    let openai = call_with(
        Method::POST,
        &router.url("/v1/chat/completions"),
        &[("authorization", "Bearer om-wrong")],
        json!({"model": "llama3.2:3b", "messages": []}).to_string(),
    )
    .await;
    assert_eq!(openai.status, StatusCode::UNAUTHORIZED);
    assert_eq!(openai.json()["error"]["type"], "authentication_error");
    assert!(openai.headers[http::header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    for (secret, reason) in [("om-off", "disabled"), ("om-old", "expired")] {
        let refused = chat(&router, "llama3.2:3b", &[("x-api-key", secret)]).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{secret}");
        assert!(refused.json()["error"].as_str().unwrap().contains(reason));
    }
    let tags = call(Method::GET, &router.url("/api/tags"), "").await;
    assert_eq!(
        tags.status,
        StatusCode::UNAUTHORIZED,
        "the views need a key too"
    );

    for header in [
        ("authorization", bearer("om-alice")),
        ("x-api-key", "om-alice".into()),
    ] {
        let answer = chat(&router, "llama3.2:3b", &[(header.0, &header.1)]).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{header:?}: {:?}",
            answer.body
        );
    }
    let metrics = ollama_mesh_router::metrics::Metrics::new().encode();
    assert!(
        metrics.contains(r#"ollama_mesh_key_requests_total{key="alice",status="200"}"#),
        "{metrics}"
    );
    assert!(!metrics.contains("om-alice"), "keys are never in metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sees_and_uses_only_its_models() {
    let models = ["llama3.2:3b", "qwen2.5:7b"];
    let a = SimNode::with_models(&models).await;
    let keys = key_store(&[("llama-only", "om-llama", r#", "models": ["llama3*"]"#)]);
    let router = Router::with_keys(
        vec![entry("a", a.addr(), &models, &[], 1)],
        settings(),
        keys,
    )
    .await;
    let auth = bearer("om-llama");
    let auth = [("authorization", auth.as_str())];

    assert_eq!(chat(&router, "llama3.2:3b", &auth).await.status, 200);
    let refused = chat(&router, "qwen2.5:7b", &auth).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("not allowed"));
    let unnamed = call_with(
        Method::POST,
        &router.url("/api/chat"),
        &auth,
        "{\"model\": 1}",
    )
    .await;
    assert_eq!(unnamed.status, StatusCode::BAD_REQUEST, "must name a model");
    let unchecked = call_with(Method::POST, &router.url("/v1/responses"), &auth, "{}").await;
    assert_eq!(
        unchecked.status,
        StatusCode::FORBIDDEN,
        "routes that are not read"
    );
    let one = call_with(Method::GET, &router.url("/v1/models/qwen2.5:7b"), &auth, "").await;
    assert_eq!(one.status, StatusCode::FORBIDDEN);
    assert_eq!(one.json()["error"]["type"], "permission_error");

    let tags = call_with(Method::GET, &router.url("/api/tags"), &auth, "")
        .await
        .json();
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama3.2:3b"]);
    let listed = call_with(Method::GET, &router.url("/v1/models"), &auth, "")
        .await
        .json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama3.2:3b"]);
    for model in models {
        let load = post(
            &format!("{}/api/generate", a.url()),
            json!({"model": model}),
        )
        .await;
        assert_eq!(load.status, 200);
    }
    let ps = call_with(Method::GET, &router.url("/api/ps"), &auth, "")
        .await
        .json();
    let loaded: Vec<&str> = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(loaded, ["llama3.2:3b"]);
}

/// Every spelling of every admin route, with every method, is refused without an admin key:
/// 401 without a valid key, 403 with a user key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_an_admin_route_passes_without_an_admin_key() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let keys = key_store(&[
        ("user", "om-user", ""),
        ("admin", "om-admin", r#", "scope": "admin""#),
    ]);
    let router = Router::with_keys(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        ProxySettings {
            enable_management: true,
            ..settings()
        },
        keys,
    )
    .await;
    let spellings = |route: &str| {
        let upper = route.to_uppercase();
        let (dir, last) = route.rsplit_once('/').unwrap();
        let first = last.chars().next().unwrap();
        vec![
            route.to_owned(),
            format!("/{route}"),
            format!("/api/..{route}"),
            format!("/api/x/..{}", &route[4..]),
            format!("{dir}/./{last}"),
            upper,
            format!("{dir}/%{:02X}{}", first as u32, &last[1..]),
            format!("{dir}/%{:02x}{}", first as u32, &last[1..]),
            format!("{route}/"),
            format!("{route}//"),
            format!("/%2F{}", &route[1..]),
            // Decoded once here, a second time by the node: what it decodes to must be checked.
            format!("{dir}/%25{:02x}{}", first as u32, &last[1..]),
            format!("{route}%3Fx=1"),
            format!("{route}%23x"),
            format!("{route}%20"),
            format!("{route}%2F"),
            format!("{route}?x=1"),
        ]
    };
    let routes = [
        "/api/pull",
        "/api/push",
        "/api/create",
        "/api/copy",
        "/api/delete",
        "/api/blobs/sha256:0000",
    ];
    let methods = [
        Method::POST,
        Method::DELETE,
        Method::GET,
        Method::PUT,
        Method::HEAD,
    ];
    let callers: [(&[(&str, &str)], StatusCode); 4] = [
        (&[], StatusCode::UNAUTHORIZED),
        (
            &[("authorization", "Bearer om-nope")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            &[("authorization", "Bearer om-user")],
            StatusCode::FORBIDDEN,
        ),
        (
            &[("x-api-key", "om-user"), ("x-ollama-mesh-node", "a")],
            StatusCode::FORBIDDEN,
        ),
    ];
    let body = json!({"model": "llama3.2:3b", "source": "llama3.2:3b", "destination": "x"});
    let mut checked = 0;
    for route in routes {
        for path in spellings(route) {
            for method in &methods {
                for (headers, expected) in &callers {
                    let answer = call_with(
                        method.clone(),
                        &router.url(&path),
                        headers,
                        body.to_string(),
                    )
                    .await;
                    assert_eq!(answer.status, *expected, "{method} {path} with {headers:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(
        requests_on(&a),
        0,
        "none of {checked} requests reached the node"
    );
    let admin = call_with(
        Method::POST,
        &router.url("/API/COPY"),
        &[("authorization", "Bearer om-admin")],
        body.to_string(),
    )
    .await;
    assert_ne!(admin.status, StatusCode::FORBIDDEN, "an admin key passes");
    let copied = call_with(
        Method::POST,
        &router.url("/api/copy"),
        &[("authorization", "Bearer om-admin")],
        body.to_string(),
    )
    .await;
    assert_eq!(copied.status, StatusCode::OK, "{:?}", copied.body);
}

/// Polls `check` until it holds, failing after a second.
async fn within_a_second(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: not within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_consul_kv_take_effect_within_a_second() {
    let consul = ConsulDev::start().await;
    let client = consul_client(&consul);
    let a = SimNode::with_models(&["llama3.2:3b", "qwen2.5:7b"]).await;
    let keys = KeyStore::default();
    let config = WatchConfig {
        wait: Duration::from_secs(10),
        ..WatchConfig::default()
    };
    let _following = ConsulKeys::start(client.clone(), keys.clone(), config);
    let router = Router::with_keys(
        vec![entry("a", a.addr(), &["llama3.2:3b", "qwen2.5:7b"], &[], 1)],
        settings(),
        keys,
    )
    .await;
    let put = |name: &str, value: String| {
        let client = client.clone();
        let key = layout::api_key(name).unwrap();
        async move {
            assert!(client
                .kv_put(&key, value, WriteCondition::Always)
                .await
                .unwrap());
        }
    };
    let status = |model: &'static str, secret: &'static str| {
        let router = &router;
        async move { chat(router, model, &[("x-api-key", secret)]).await.status }
    };
    put("broken", "{not json".into()).await;
    put("ci", key_entry_json("om-ci", "")).await;
    within_a_second("added", async || {
        status("llama3.2:3b", "om-ci").await == 200
    })
    .await;

    put("ci", key_entry_json("om-ci", r#", "models": ["qwen2.5"]"#)).await;
    within_a_second("allow-list", async || {
        status("llama3.2:3b", "om-ci").await == 403
    })
    .await;
    assert_eq!(
        status("qwen2.5:7b", "om-ci").await,
        403,
        "qwen2.5 is qwen2.5:latest"
    );

    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3));
    put(
        "ci",
        key_entry_json("om-ci", &format!(r#", "expires": "{soon}""#)),
    )
    .await;
    within_a_second("changed", async || {
        status("qwen2.5:7b", "om-ci").await == 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status("qwen2.5:7b", "om-ci").await, 401, "expired");

    put("ci", key_entry_json("om-ci", "")).await;
    within_a_second("renewed", async || {
        status("qwen2.5:7b", "om-ci").await == 200
    })
    .await;
    client
        .kv_delete(&layout::api_key("ci").unwrap())
        .await
        .unwrap();
    within_a_second("revoked", async || {
        status("qwen2.5:7b", "om-ci").await == 401
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_over_their_limits_get_429_with_retry_after() {
    let slow = SimNode::start(
        NodeSpec::default()
            .models(["llama3.2:3b"])
            .time_scale(1.0)
            .output_tokens(1000),
    )
    .await;
    let keys = key_store(&[
        ("rpm", "om-rpm", r#", "rpm": 2"#),
        ("one", "om-one", r#", "concurrency": 1"#),
    ]);
    let router = Router::with_keys(
        vec![entry("a", slow.addr(), &["llama3.2:3b"], &[], 1)],
        settings(),
        keys,
    )
    .await;

    let rpm = [("x-api-key", "om-rpm")];
    for _ in 0..2 {
        let tags = call_with(Method::GET, &router.url("/api/tags"), &rpm, "").await;
        assert_eq!(tags.status, StatusCode::OK);
    }
    let limited = call_with(Method::GET, &router.url("/v1/models"), &rpm, "").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers[http::header::RETRY_AFTER], "30");
    assert_eq!(limited.json()["error"]["type"], "rate_limit_error");

    let url = router.url("/api/generate");
    // About 3 s of generation: long enough to be running when the second request comes.
    let running = tokio::spawn(async move {
        let body = json!({"model": "llama3.2:3b", "prompt": "hi", "options": {"num_predict": 600}});
        call_with(
            Method::POST,
            &url,
            &[("x-api-key", "om-one")],
            body.to_string(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = chat(&router, "llama3.2:3b", &[("x-api-key", "om-one")]).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers[http::header::RETRY_AFTER], "1");
    assert!(second.json()["error"]
        .as_str()
        .unwrap()
        .contains("already running"));
    assert_eq!(running.await.unwrap().status, StatusCode::OK);
    let after = chat(&router, "llama3.2:3b", &[("x-api-key", "om-one")]).await;
    assert_eq!(after.status, StatusCode::OK, "the slot is free again");
}
