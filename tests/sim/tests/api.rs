//! Black-box checks of Ollama's API shapes, errors and aliases.

mod common;

use common::Node;
use http::{Method, StatusCode};
use ollama_mesh_sim::NodeSpec;
use serde_json::Value;

const JSON: &str = "application/json; charset=utf-8";

fn assert_metrics(chunk: &Value) {
    for key in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(
            chunk[key].as_u64().is_some_and(|v| v > 0),
            "{key} in {chunk}"
        );
    }
}

#[tokio::test]
async fn health_checks_and_gin_defaults() {
    let node = Node::tiny().await;
    let root = node.get("/").await;
    assert_eq!(
        (root.status, root.body.as_str()),
        (StatusCode::OK, "Ollama is running")
    );
    assert_eq!(
        root.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let head = node.send(Method::HEAD, "/", None).await;
    assert_eq!((head.status, head.body.as_str()), (StatusCode::OK, ""));
    let version = node.get("/api/version").await;
    assert_eq!(version.json(), serde_json::json!({ "version": "0.17.4" }));
    let missing = node.get("/api/nothing").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (StatusCode::NOT_FOUND, "404 page not found")
    );
    assert_eq!(missing.header("content-type"), Some("text/plain"));
    let wrong = node.send(Method::GET, "/api/chat", None).await;
    assert_eq!(
        (wrong.status, wrong.body.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed")
    );
    let foreign = node
        .open(Method::GET, "/", None, &[("host", "ollama.service.consul")])
        .await;
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn generate_streams_ndjson_and_ends_with_metrics() {
    let node = Node::tiny().await;
    let resp = node
        .post(
            "/api/generate",
            r#"{"model":"tiny","prompt":"why is the sky blue","options":{"num_predict":5}}"#,
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    let lines = resp.lines();
    assert_eq!(lines.len(), 6);
    for chunk in &lines[..5] {
        assert_eq!(chunk["model"], "tiny");
        assert_eq!(chunk["done"], false);
        assert!(chunk["response"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(chunk["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
        assert!(chunk.get("done_reason").is_none());
    }
    let last = &lines[5];
    assert_eq!(
        (
            last["done"].clone(),
            last["done_reason"].clone(),
            last["response"].clone()
        ),
        (Value::from(true), "length".into(), "".into())
    );
    assert_metrics(last);
    assert_eq!(last["eval_count"], 5);
    assert_eq!(last["prompt_eval_count"], 5);
    assert!(last["context"].as_array().is_some_and(|c| c.len() == 10));

    let whole = node.post("/api/generate", r#"{"model":"tiny","prompt":"why is the sky blue","stream":false,"options":{"num_predict":5}}"#).await;
    assert_eq!(whole.header("content-type"), Some(JSON));
    assert!(whole.header("content-length").is_some());
    let whole = whole.json();
    let streamed: String = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert_eq!(
        whole["response"],
        streamed.as_str(),
        "same seed and prompt, same text"
    );
    assert_metrics(&whole);
}

#[tokio::test]
async fn chat_echoes_the_requested_name_and_aliases_share_a_runner() {
    let node = Node::tiny().await;
    let body = |model: &str| {
        format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":false,"options":{{"num_predict":2}}}}"#
        )
    };
    let short = node.post("/api/chat", &body("tiny")).await.json();
    let long = node.post("/api/chat", &body("tiny:latest")).await.json();
    assert_eq!(short["model"], "tiny");
    assert_eq!(long["model"], "tiny:latest");
    assert_eq!(short["message"]["role"], "assistant");
    assert_eq!(short["done_reason"], "length");
    assert_metrics(&short);
    let ps = node.get("/api/ps").await.json();
    let models = ps["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["name"], "tiny:latest");
    assert_eq!(node.stats()["loads"], 1);

    let stream = node.post("/api/chat", r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":3}}"#).await;
    let lines = stream.lines();
    assert_eq!(lines.len(), 4);
    assert!(lines[..3].iter().all(|l| l["message"]["content"]
        .as_str()
        .is_some_and(|c| !c.is_empty())));
    assert_eq!(lines[3]["message"]["content"], "");
    assert_eq!(lines[3]["done"], true);
}

#[tokio::test]
async fn errors_have_ollama_status_codes_and_bodies() {
    let node = Node::tiny().await;
    let cases = [
        (
            "/api/generate",
            "",
            400,
            r#"{"error":"missing request body"}"#,
        ),
        (
            "/api/generate",
            r#"{"prompt":"x"}"#,
            404,
            r#"{"error":"model '' not found"}"#,
        ),
        (
            "/api/chat",
            r#"{"messages":[]}"#,
            400,
            r#"{"error":"model is required"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"nope","prompt":"x"}"#,
            404,
            r#"{"error":"model 'nope' not found"}"#,
        ),
        (
            "/api/chat",
            r#"{"model":"nope","messages":[]}"#,
            404,
            r#"{"error":"model 'nope' not found"}"#,
        ),
        (
            "/api/embed",
            r#"{"model":"nope","input":"x"}"#,
            404,
            r#"{"error":"model \"nope\" not found, try pulling it first"}"#,
        ),
        ("/api/chat", "{", 400, r#"{"error":"unexpected EOF"}"#),
        (
            "/api/generate",
            r#"{"model":"tiny","prompt":"x","options":{"num_predict":"x"}}"#,
            500,
            r#"{"error":"option \"num_predict\" must be of type integer"}"#,
        ),
        (
            "/api/chat",
            r#"{"model":"nomic-embed-text","messages":[{"role":"user","content":"x"}]}"#,
            400,
            r#"{"error":"\"nomic-embed-text\" does not support chat"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"nomic-embed-text","prompt":"x"}"#,
            400,
            r#"{"error":"\"nomic-embed-text\" does not support generate"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"tiny","prompt":"x","keep_alive":"soon"}"#,
            400,
            r#"{"error":"time: invalid duration \"soon\""}"#,
        ),
        (
            "/api/show",
            r#"{"model":"nope"}"#,
            404,
            r#"{"error":"model 'nope' not found"}"#,
        ),
        (
            "/api/copy",
            r#"{"source":"nope","destination":"x"}"#,
            404,
            r#"{"error":"model \"nope\" not found"}"#,
        ),
        (
            "/api/copy",
            "{}",
            400,
            r#"{"error":"source \"\" is invalid"}"#,
        ),
        (
            "/api/embed",
            r#"{"input":"x"}"#,
            500,
            r#"{"error":"unqualified name: registry.ollama.ai/library/!MISSING!:latest"}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"tiny","prompt":"","keep_alive":true}"#,
            400,
            r#"{"error":"Unsupported type: 'bool'"}"#,
        ),
    ];
    for (path, body, status, expected) in cases {
        let resp = node.post(path, body).await;
        assert_eq!(resp.status.as_u16(), status, "{path} {body}");
        assert_eq!(resp.body, expected, "{path} {body}");
        assert_eq!(resp.header("content-type"), Some(JSON));
    }
    let openai = [
        (
            "/v1/chat/completions",
            r#"{"model":"tiny","messages":[]}"#,
            400,
            "[] is too short - 'messages'",
            "invalid_request_error",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
            404,
            "model 'nope' not found",
            "not_found_error",
        ),
        ("/v1/completions", "", 400, "EOF", "invalid_request_error"),
    ];
    for (path, body, status, message, kind) in openai {
        let resp = node.post(path, body).await;
        assert_eq!(resp.status.as_u16(), status, "{path} {body}");
        let expected = serde_json::json!({ "error": { "message": message, "type": kind, "param": null, "code": null } });
        assert_eq!(resp.json(), expected);
        // The OpenAI middleware's own refusals go through gin and carry a charset.
        let content_type = if status == 404 {
            "application/json"
        } else {
            JSON
        };
        assert_eq!(
            resp.header("content-type"),
            Some(content_type),
            "{path} {body}"
        );
    }
    let unnamed = node.send(Method::DELETE, "/api/delete", Some("{}")).await;
    assert_eq!(
        (unnamed.status, unnamed.body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            r#"{"error":"name \"\" is invalid"}"#
        )
    );
    let missing = node.get("/v1/models/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn capabilities_are_listed_and_enforced() {
    let node = Node::start(
        NodeSpec::default()
            .models(["tiny", "llama3.1:8b", "qwen3:8b", "nomic-embed-text"])
            .time_scale(0.0),
    )
    .await;
    for (model, caps) in [
        ("tiny", serde_json::json!(["completion"])),
        ("llama3.1:8b", serde_json::json!(["completion", "tools"])),
        (
            "qwen3:8b",
            serde_json::json!(["completion", "tools", "thinking"]),
        ),
        ("nomic-embed-text", serde_json::json!(["embedding"])),
    ] {
        let show = node
            .post("/api/show", &format!(r#"{{"model":"{model}"}}"#))
            .await;
        assert_eq!(show.json()["capabilities"], caps, "{model}");
    }
    let tools = r#"[{"type":"function","function":{"name":"f","parameters":{}}}]"#;
    let chat = |model: &str, extra: &str| {
        format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"x"}}],"stream":false,"options":{{"num_predict":2}},{extra}}}"#
        )
    };
    let refused = [
        (
            "/api/chat",
            chat("tiny", &format!(r#""tools":{tools}"#)),
            "registry.ollama.ai/library/tiny:latest does not support tools",
        ),
        (
            "/api/chat",
            chat("tiny", r#""think":true"#),
            "\"tiny\" does not support thinking",
        ),
        (
            "/api/generate",
            r#"{"model":"tiny","prompt":"x","suffix":"y"}"#.to_owned(),
            "registry.ollama.ai/library/tiny:latest does not support insert",
        ),
        (
            "/api/generate",
            r#"{"model":"qwen3:8b","prompt":"x","think":"high"}"#.to_owned(),
            "think value \"high\" is not supported for this model",
        ),
    ];
    for (path, body, message) in refused {
        let resp = node.post(path, &body).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(resp.json()["error"], message);
    }
    let v1 = node
        .post(
            "/v1/chat/completions",
            r#"{"model":"tiny","messages":[{"role":"user","content":"x"}],"reasoning_effort":"low"}"#,
        )
        .await;
    assert_eq!(v1.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        v1.json()["error"]["message"],
        "\"tiny\" does not support thinking"
    );
    for body in [
        chat("llama3.1:8b", &format!(r#""tools":{tools}"#)),
        chat("qwen3:8b", r#""think":"low","tools":[]"#),
        chat("tiny", r#""think":false"#),
    ] {
        assert_eq!(
            node.post("/api/chat", &body).await.status,
            StatusCode::OK,
            "{body}"
        );
    }
}

#[tokio::test]
async fn stop_sequences_end_generation_without_being_sent() {
    let node = Node::tiny().await;
    let whole = node
        .post(
            "/api/generate",
            r#"{"model":"tiny","prompt":"x","stream":false,"options":{"num_predict":20,"stop":[" "]}}"#,
        )
        .await
        .json();
    assert_eq!(whole["done_reason"], "stop");
    assert!(!whole["response"].as_str().unwrap().contains(' '));
    assert_eq!(
        whole["eval_count"], 2,
        "the token holding the stop is counted"
    );
    let streamed = node
        .post(
            "/v1/completions",
            r#"{"model":"tiny","prompt":"x","stream":true,"max_tokens":20,"stop":" "}"#,
        )
        .await;
    let (events, done) = streamed.events();
    assert!(done);
    let text: String = events
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, whole["response"]);
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn preload_and_unload() {
    let node = Node::tiny().await;
    let load = node.post("/api/generate", r#"{"model":"tiny"}"#).await;
    assert_eq!(load.header("content-type"), Some(JSON));
    let load = load.json();
    assert_eq!(
        (
            load["done"].clone(),
            load["done_reason"].clone(),
            load["response"].clone()
        ),
        (Value::from(true), "load".into(), "".into())
    );
    assert_eq!(
        node.get("/api/ps").await.json()["models"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let unload = node
        .post(
            "/api/chat",
            r#"{"model":"tiny","messages":[],"keep_alive":0}"#,
        )
        .await
        .json();
    assert_eq!(unload["done_reason"], "unload");
    assert_eq!(
        unload["message"],
        serde_json::json!({ "role": "assistant", "content": "" })
    );
    assert_eq!(
        node.get("/api/ps").await.json()["models"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn openai_sse_framing_and_usage() {
    let node = Node::tiny().await;
    let resp = node
        .post("/v1/chat/completions", r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"#)
        .await;
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let (events, done) = resp.events();
    assert!(done);
    assert_eq!(
        events.len(),
        5,
        "3 tokens, the finish chunk, the usage chunk"
    );
    let id = events[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for e in &events {
        assert_eq!(e["id"], id);
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["system_fingerprint"], "fp_ollama");
        assert_eq!(e["created"], events[0]["created"]);
    }
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[0]["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(events[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(events[4]["choices"], serde_json::json!([]));
    assert_eq!(events[4]["usage"]["completion_tokens"], 3);
    assert_eq!(
        events[4]["usage"]["total_tokens"],
        events[4]["usage"]["prompt_tokens"].as_u64().unwrap() + 3
    );

    let whole = node
        .post(
            "/v1/chat/completions",
            r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#,
        )
        .await;
    assert_eq!(whole.header("content-type"), Some("application/json"));
    let whole = whole.json();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(whole["usage"]["completion_tokens"], 3);

    let (events, done) = node
        .post(
            "/v1/completions",
            r#"{"model":"tiny","prompt":"once","max_tokens":2,"stream":true}"#,
        )
        .await
        .events();
    assert!(done);
    assert_eq!(events.len(), 3);
    assert!(events[0]["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(events[0]["object"], "text_completion");
    assert!(events.iter().all(|e| e.get("usage").is_none()));
    let completion = node
        .post(
            "/v1/completions",
            r#"{"model":"tiny","prompt":"once","max_tokens":2}"#,
        )
        .await
        .json();
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
    assert_eq!(completion["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn embeddings_in_three_dialects() {
    let node = Node::tiny().await;
    let embed = node
        .post("/api/embed", r#"{"model":"tiny","input":["a b c","d e"]}"#)
        .await
        .json();
    let vectors = embed["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    assert_eq!(vectors[0].as_array().unwrap().len(), 64);
    assert_eq!(embed["prompt_eval_count"], 5);
    assert!(embed["total_duration"].as_u64().is_some());
    let nomic = node
        .post(
            "/api/embed",
            r#"{"model":"nomic-embed-text","input":"x","dimensions":256}"#,
        )
        .await
        .json();
    assert_eq!(nomic["embeddings"][0].as_array().unwrap().len(), 256);
    let legacy = node
        .post(
            "/api/embeddings",
            r#"{"model":"nomic-embed-text","prompt":"x"}"#,
        )
        .await
        .json();
    assert_eq!(legacy["embedding"].as_array().unwrap().len(), 768);
    let v1 = node
        .post("/v1/embeddings", r#"{"model":"tiny","input":["x","y"]}"#)
        .await
        .json();
    assert_eq!(v1["object"], "list");
    assert_eq!(v1["data"][1]["index"], 1);
    assert_eq!(v1["data"][0]["object"], "embedding");
    assert_eq!(v1["usage"]["prompt_tokens"], 2);
    let b64 = node
        .post(
            "/v1/embeddings",
            r#"{"model":"tiny","input":"x","encoding_format":"base64"}"#,
        )
        .await
        .json();
    assert!(b64["data"][0]["embedding"].is_string());
    assert_eq!(
        node.post("/v1/embeddings", r#"{"model":"tiny","input":[]}"#)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn model_management() {
    let node = Node::start(NodeSpec::default().models(["tiny"]).time_scale(0.0)).await;
    let tags = node.get("/api/tags").await.json();
    assert_eq!(tags["models"][0]["name"], "tiny:latest");
    assert_eq!(tags["models"][0]["details"]["format"], "gguf");
    let pull = node.post("/api/pull", r#"{"model":"llama3.2:1b"}"#).await;
    assert_eq!(pull.header("content-type"), Some("application/x-ndjson"));
    let lines = pull.lines();
    assert_eq!(lines[0]["status"], "pulling manifest");
    assert!(lines
        .iter()
        .any(|l| l["completed"] == l["total"] && l["total"].as_u64() > Some(1_000_000_000)));
    assert_eq!(lines.last().unwrap()["status"], "success");
    let tags = node.get("/api/tags").await.json();
    assert_eq!(tags["models"][0]["name"], "llama3.2:1b", "newest first");
    assert_eq!(
        node.post("/api/copy", r#"{"source":"tiny","destination":"mine"}"#)
            .await
            .status,
        StatusCode::OK
    );
    let show = node.post("/api/show", r#"{"model":"mine"}"#).await.json();
    assert_eq!(show["capabilities"], serde_json::json!(["completion"]));
    assert_eq!(show["model_info"]["llama.context_length"], 2048);
    let deleted = node
        .send(Method::DELETE, "/api/delete", Some(r#"{"model":"mine"}"#))
        .await;
    assert_eq!(
        (deleted.status, deleted.body.as_str()),
        (StatusCode::OK, "")
    );
    assert_eq!(
        node.send(Method::DELETE, "/api/delete", Some(r#"{"model":"mine"}"#))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        node.post("/api/create", r#"{"model":"x"}"#).await.status,
        StatusCode::NOT_IMPLEMENTED
    );
    let models = node.get("/v1/models").await.json();
    assert_eq!(models["object"], "list");
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "tiny:latest" && m["owned_by"] == "library"));
    assert_eq!(node.get("/v1/models/tiny").await.json()["id"], "tiny");
    let smi = node.get("/sim/nvidia-smi").await;
    assert_eq!(smi.body, "NVIDIA GeForce RTX 4090, 24564, 0, 0\n");
}
