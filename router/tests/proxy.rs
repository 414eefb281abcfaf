//! The proxy end to end: a real Pingora server in front of simulated Ollama nodes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use ollama_mesh_router::proxy::ProxySettings;
use ollama_mesh_sim::NodeSpec;
use ollama_mesh_test_support::{free_port, SimNode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_only_to_nodes_with_the_model_and_prefer_warm_ones() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let b = SimNode::with_models(&["llama3.2:3b", "qwen2.5:7b"]).await;
    let c = SimNode::with_models(&["llama3.2:3b"]).await;
    let router = Router::start(
        vec![
            entry("a", a.addr(), &["llama3.2:3b"], &[], 4),
            entry("b", b.addr(), &["llama3.2:3b", "qwen2.5:7b"], &[], 4),
            entry("c", c.addr(), &["llama3.2:3b"], &["llama3.2:3b"], 4),
        ],
        settings(),
    )
    .await;

    for _ in 0..6 {
        let answer = post(
            &router.url("/api/generate"),
            json!({"model": "qwen2.5:7b", "prompt": "hi", "stream": false}),
        )
        .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.json()["model"], "qwen2.5:7b");
    }
    assert_eq!(
        (requests_on(&a), requests_on(&b), requests_on(&c)),
        (0, 6, 0)
    );
    let metrics = ollama_mesh_router::metrics::Metrics::new().encode();
    let tokens_on_b = metrics
        .lines()
        .find(|l| {
            l.starts_with("ollama_mesh_tokens_generated_total")
                && l.contains(r#"model="qwen2.5:7b""#)
                && l.contains(r#"node="b""#)
        })
        .unwrap_or_else(|| panic!("no token count for qwen2.5:7b on b in:\n{metrics}"));
    assert!(!tokens_on_b.ends_with(" 0"), "{tokens_on_b}");
    assert!(
        metrics.contains(r#"route="generate""#),
        "requests are counted by route"
    );

    // llama3.2 is loaded on c only: one at a time, c takes them all.
    for _ in 0..6 {
        let answer = post(&router.url("/api/chat"), json!({"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}], "stream": false})).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(requests_on(&c), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_are_404_in_the_callers_dialect() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let router = Router::start(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        settings(),
    )
    .await;

    let native = post(
        &router.url("/api/chat"),
        json!({"model": "nope", "messages": []}),
    )
    .await;
    assert_eq!(native.status, 404);
    let message = native.json()["error"].as_str().unwrap().to_owned();
    assert!(
        message.contains("model 'nope' not found") && message.contains("llama3.2:3b"),
        "{message}"
    );

    let openai = post(
        &router.url("/v1/chat/completions"),
        json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(openai.status, 404);
    assert_eq!(openai.json()["error"]["type"], "not_found_error");
    assert!(openai.content_type().starts_with("application/json"));
    assert_eq!(requests_on(&a), 0, "nothing reached a node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_router_does_not_understand_gets_ollamas_own_answer() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let router = Router::start(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        settings(),
    )
    .await;
    let direct = call(Method::POST, &format!("{}/api/chat", a.url()), "{broken").await;
    let routed = call(Method::POST, &router.url("/api/chat"), "{broken").await;
    assert_eq!(routed.status, direct.status);
    assert_eq!(routed.json(), direct.json());

    let body = json!({"prompt": "hi"});
    let direct = post(&format!("{}/api/generate", a.url()), body.clone()).await;
    let routed = post(&router.url("/api/generate"), body).await;
    assert_eq!(
        (routed.status, routed.json()),
        (direct.status, direct.json()),
        "a missing model is Ollama's to answer"
    );

    let unknown = call(Method::GET, &router.url("/api/nothing"), "").await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_through_chunk_by_chunk() {
    let a = SimNode::start(
        NodeSpec::default()
            .models(["llama3.2:3b"])
            .time_scale(0.0)
            .output_tokens(50),
    )
    .await;
    let router = Router::start(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        settings(),
    )
    .await;

    let native = post(
        &router.url("/api/generate"),
        json!({"model": "llama3.2:3b", "prompt": "tell me"}),
    )
    .await;
    assert_eq!(native.status, 200);
    assert_eq!(native.content_type(), "application/x-ndjson");
    let lines: Vec<Value> = native
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert!(lines.len() > 10, "{} chunks", lines.len());
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert!(last["eval_count"].as_u64().unwrap() > 0);

    let sse = post(&router.url("/v1/chat/completions"), json!({"model": "llama3.2:3b", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(sse.status, 200);
    assert!(sse.content_type().starts_with("text/event-stream"));
    assert!(sse.body.ends_with(b"data: [DONE]\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_views_merge_every_node() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let b = SimNode::with_models(&["llama3.2:3b", "qwen2.5:7b"]).await;
    let router = Router::start(
        vec![
            entry("a", a.addr(), &["llama3.2:3b"], &[], 1),
            entry("b", b.addr(), &["llama3.2:3b", "qwen2.5:7b"], &[], 1),
        ],
        settings(),
    )
    .await;

    let root = call(Method::GET, &router.url("/"), "").await;
    assert_eq!(
        (root.status, root.body.as_ref()),
        (StatusCode::OK, b"Ollama is running".as_ref())
    );
    assert_eq!(
        call(Method::GET, &router.url("/api/version"), "")
            .await
            .json(),
        json!({"version": "0.17.4"})
    );

    let tags = call(Method::GET, &router.url("/api/tags"), "").await.json();
    let mut names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["llama3.2:3b", "qwen2.5:7b"]);
    assert!(
        tags["models"][0]["details"].is_object(),
        "Ollama's full shape"
    );

    for node in [&a, &b] {
        let load = post(
            &format!("{}/api/generate", node.url()),
            json!({"model": "llama3.2:3b"}),
        )
        .await;
        assert_eq!(load.status, 200);
    }
    let ps = call(Method::GET, &router.url("/api/ps"), "").await.json();
    let mut nodes: Vec<&str> = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["a", "b"]);

    let models = call(Method::GET, &router.url("/v1/models"), "")
        .await
        .json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().unwrap().len(), 2);
    let one = call(Method::GET, &router.url("/v1/models/qwen2.5:7b"), "").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], "qwen2.5:7b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_and_long_conversations_are_routed() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let b = SimNode::with_models(&["qwen2.5:7b"]).await;
    let router = Router::start(
        vec![
            entry("a", a.addr(), &["llama3.2:3b"], &[], 1),
            entry("b", b.addr(), &["qwen2.5:7b"], &[], 1),
        ],
        settings(),
    )
    .await;

    // The OpenAI SDK writes `messages` before `model`: the model is at the very end.
    let messages: Vec<Value> = (0..1000).map(|i| json!({"role": if i % 2 == 0 {"user"} else {"assistant"}, "content": format!("message number {i}")})).collect();
    let chat = post(
        &router.url("/v1/chat/completions"),
        json!({"messages": messages, "model": "qwen2.5:7b"}),
    )
    .await;
    assert_eq!(
        chat.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&chat.body)
    );
    assert_eq!(chat.json()["object"], "chat.completion");

    let big_prompt = "x".repeat(10 << 20);
    let generate = post(&router.url("/api/generate"), json!({"prompt": big_prompt, "model": "qwen2.5:7b", "stream": false, "options": {"num_ctx": 8192}})).await;
    assert_eq!(
        generate.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&generate.body[..generate.body.len().min(300)])
    );
    assert_eq!(requests_on(&b), 2);
    assert_eq!(requests_on(&a), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_costs_no_request() {
    let live = SimNode::with_models(&["llama3.2:3b"]).await;
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let router = Router::start(
        vec![
            entry("dead", dead, &["llama3.2:3b"], &[], 1),
            entry("live", live.addr(), &["llama3.2:3b"], &[], 1),
        ],
        settings(),
    )
    .await;
    for _ in 0..20 {
        let answer = post(
            &router.url("/api/generate"),
            json!({"model": "llama3.2:3b", "prompt": "hi", "stream": false}),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(requests_on(&live), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_s_answer_says_its_connection_closes() {
    // The router does not reuse a client's connection after a failure; a client not told so
    // would send its next request on a connection that is about to close, and see a reset.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let router = Router::start(
        vec![entry("dead", dead, &["llama3.2:3b"], &[], 1)],
        settings(),
    )
    .await;
    let answer = post(
        &router.url("/api/generate"),
        json!({"model": "llama3.2:3b", "prompt": "hi", "stream": false}),
    )
    .await;
    // The only node refused: nowhere else to try, so the refusal is the answer.
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    assert!(
        answer.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect")),
        "{:?}",
        answer.body
    );
    assert_eq!(
        answer
            .headers
            .get(http::header::CONNECTION)
            .map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    assert!(answer.json()["error"].is_string(), "Ollama's error shape");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_is_skipped() {
    // A node answering Ollama's "server busy" before any byte.
    let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let busy_addr = busy.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = busy.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = stream.read(&mut buf).await;
                let body = r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#;
                let reply = format!("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    let live = SimNode::with_models(&["llama3.2:3b"]).await;
    let router = Router::start(
        vec![
            entry("busy", busy_addr, &["llama3.2:3b"], &[], 1),
            entry("live", live.addr(), &["llama3.2:3b"], &[], 1),
        ],
        settings(),
    )
    .await;
    for _ in 0..10 {
        let answer = post(
            &router.url("/api/generate"),
            json!({"model": "llama3.2:3b", "prompt": "hi", "stream": false}),
        )
        .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    assert_eq!(requests_on(&live), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_frees_the_nodes_slot() {
    let a = SimNode::start(
        NodeSpec::default()
            .models(["llama3.2:3b"])
            .time_scale(1.0)
            .output_tokens(10_000),
    )
    .await;
    let router = Router::start(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        settings(),
    )
    .await;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(router.addr).await.unwrap();
        let body = json!({"model": "llama3.2:3b", "prompt": "write a novel"}).to_string();
        let request = format!("POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut seen = 0;
        while seen < 3 {
            let n = stream.read(&mut buf).await.unwrap();
            seen += buf[..n].iter().filter(|b| **b == b'\n').count();
        }
        assert!(a.sim().stats()["requests_in_flight"].as_u64().unwrap() == 1);
    }
    let started = Instant::now();
    while a.sim().stats()["requests_in_flight"].as_u64().unwrap() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the node kept generating for a client that left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_is_off_unless_enabled_and_then_aimed_at_one_node() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let b = SimNode::with_models(&["llama3.2:3b"]).await;
    let entries = vec![
        entry("a", a.addr(), &["llama3.2:3b"], &[], 1),
        entry("b", b.addr(), &["llama3.2:3b"], &[], 1),
    ];
    let locked = Router::start(entries.clone(), settings()).await;
    let refused = post(
        &locked.url("/api/copy"),
        json!({"source": "llama3.2:3b", "destination": "mine"}),
    )
    .await;
    assert_eq!(refused.status, 403);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("--enable-management"));
    let sneaky = post(
        &locked.url("//api/./copy"),
        json!({"source": "llama3.2:3b", "destination": "mine"}),
    )
    .await;
    assert_eq!(sneaky.status, 403, "path tricks reach the same route");

    let open = Router::start(
        entries,
        ProxySettings {
            enable_management: true,
            ..settings()
        },
    )
    .await;
    let has = |tags: &Value, name: &str| {
        tags["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == name)
    };
    let targeted = Request::post(open.url("/api/copy"))
        .header("x-ollama-mesh-node", "b")
        .body(Full::new(Bytes::from(
            json!({"source": "llama3.2:3b", "destination": "only-b"}).to_string(),
        )))
        .unwrap();
    assert_eq!(client().request(targeted).await.unwrap().status(), 200);
    let on_a = call(Method::GET, &format!("{}/api/tags", a.url()), "")
        .await
        .json();
    let on_b = call(Method::GET, &format!("{}/api/tags", b.url()), "")
        .await
        .json();
    assert!(has(&on_b, "only-b:latest") && !has(&on_a, "only-b:latest"));

    // No target: every node that has the source; alike answers come back as one Ollama's.
    let everywhere = post(
        &open.url("/api/copy"),
        json!({"source": "llama3.2:3b", "destination": "all"}),
    )
    .await;
    assert_eq!(everywhere.status, 200, "{:?}", everywhere.body);
    assert!(
        everywhere.body.is_empty(),
        "Ollama's copy answers an empty 200"
    );
    assert_eq!(everywhere.headers["x-ollama-mesh-nodes"], "a=200, b=200");
    for node in [&a, &b] {
        let tags = call(Method::GET, &format!("{}/api/tags", node.url()), "")
            .await
            .json();
        assert!(has(&tags, "all:latest"));
    }
    // Meta lags the disk: no node lists only-b yet, but asking the nodes finds it on b.
    let lagging = call(
        Method::DELETE,
        &open.url("/api/delete"),
        json!({"model": "only-b"}).to_string(),
    )
    .await;
    assert_eq!(lagging.status, 200);
    assert_eq!(lagging.headers["x-ollama-mesh-nodes"], "b=200");
    let nowhere = call(
        Method::DELETE,
        &open.url("/api/delete"),
        json!({"model": "only-b"}).to_string(),
    )
    .await;
    assert_eq!(
        (nowhere.status.as_u16(), nowhere.json()["error"].as_str()),
        (404, Some("model 'only-b' not found"))
    );
    // A node whose Meta is stale (it lost the model since) fails; the others still succeed.
    let gone = call(
        Method::DELETE,
        &format!("{}/api/delete", a.url()),
        json!({"model": "llama3.2:3b"}).to_string(),
    )
    .await;
    assert_eq!(gone.status, 200);
    let partly = post(
        &open.url("/api/copy"),
        json!({"source": "llama3.2:3b", "destination": "again"}),
    )
    .await;
    assert_eq!(partly.status, 502, "copied on b, missing on a");
    let error = partly.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("copy failed on 1 of 2 nodes") && error.contains("a: 404"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_quick_when_idle_and_lets_running_streams_finish() {
    let a = SimNode::start(
        NodeSpec::default()
            .models(["llama3.2:3b"])
            .time_scale(1.0)
            .output_tokens(200),
    )
    .await;
    let idle = Router::start(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        settings(),
    )
    .await;
    let took = idle.stop().await;
    assert!(
        took < Duration::from_secs(3),
        "an idle router took {took:?} to stop"
    );

    let busy = Router::start(
        vec![entry("a", a.addr(), &["llama3.2:3b"], &[], 1)],
        settings(),
    )
    .await;
    let url = busy.url("/api/generate");
    let stream = tokio::spawn(async move {
        post(
            &url,
            json!({"model": "llama3.2:3b", "prompt": "hi", "options": {"num_predict": 100}}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    busy.stop().await;
    let answer = stream.await.unwrap();
    assert_eq!(answer.status, 200);
    let last = answer.last_line();
    assert_eq!(last["done"], true, "the stream ran to its end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_on_a_node_before_its_meta_says_so_is_still_found() {
    let a = SimNode::with_models(&["llama3.2:3b"]).await;
    let b = SimNode::with_models(&["llama3.2:3b"]).await;
    let router = Router::start(
        vec![
            entry("a", a.addr(), &["llama3.2:3b"], &[], 1),
            entry("b", b.addr(), &["llama3.2:3b"], &[], 1),
        ],
        settings(),
    )
    .await;
    // Copied onto b a moment ago: the sidecar has not updated b's Meta yet.
    let copied = post(
        &format!("{}/api/copy", b.url()),
        json!({"source": "llama3.2:3b", "destination": "fresh"}),
    )
    .await;
    assert_eq!(copied.status, 200);
    for _ in 0..3 {
        let answer = post(
            &router.url("/api/generate"),
            json!({"model": "fresh", "prompt": "hi", "stream": false}),
        )
        .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    assert_eq!((requests_on(&a), requests_on(&b)), (0, 3));
    let missing = post(
        &router.url("/api/embed"),
        json!({"model": "nowhere", "input": "hi"}),
    )
    .await;
    assert_eq!(missing.status, 404);
    let message = missing.json()["error"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with("model \"nowhere\" not found, try pulling it first"),
        "Ollama's own words for the embedding routes: {message}"
    );
}
