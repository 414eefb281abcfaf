//! Model management sent to every node at once, with one aggregated answer.
//!
//! `POST /api/pull` without a target node pulls the model onto every node that takes work (and
//! likewise copy, delete, create, push). Streaming progress from many nodes cannot be merged
//! into one Ollama stream, so each node is asked for a single final answer (`"stream": false`)
//! and the router answers with every node's result:
//! `{"status": "success", "nodes": [{"instance": "gpu-1", "status": 200, "response": {…}}]}`.
//! When any node fails the answer also carries Ollama's `error` field, so clients raise it.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};

use super::fanout::NodeAnswer;
use crate::Backend;

/// The body each node gets: the client's, with streaming turned off when it is a JSON object.
pub fn node_body(body: &Bytes) -> Bytes {
    match serde_json::from_slice::<Map<String, Value>>(body) {
        Ok(mut object) => {
            object.insert("stream".into(), Value::Bool(false));
            Bytes::from(Value::Object(object).to_string())
        }
        Err(_) => body.clone(),
    }
}

/// The aggregated status and body. All succeeded: 200. All failed alike: that status (e.g.
/// 404 when no node has the model). Otherwise 502, naming the nodes that failed.
pub fn aggregate(
    action: &str,
    nodes: &[&std::sync::Arc<Backend>],
    answers: Vec<NodeAnswer>,
) -> (u16, Bytes) {
    let mut results = Vec::with_capacity(answers.len());
    let mut failures = Vec::new();
    let mut statuses = Vec::new();
    for (node, answer) in nodes.iter().zip(answers) {
        let id = node.id().to_string();
        match answer {
            Ok((status, body)) => {
                if !status.is_success() {
                    failures.push(format!("{id}: {}", error_text(status, &body)));
                }
                statuses.push(Some(status));
                results.push(json!({ "instance": id, "status": status.as_u16(), "response": response_value(&body) }));
            }
            Err(error) => {
                failures.push(format!("{id}: {error}"));
                statuses.push(None);
                results.push(json!({ "instance": id, "error": error }));
            }
        }
    }
    if nodes.is_empty() {
        let body = json!({ "error": "no Ollama instance is accepting requests", "nodes": [] });
        return (503, Bytes::from(body.to_string()));
    }
    if failures.is_empty() {
        let body = json!({ "status": "success", "nodes": results });
        return (200, Bytes::from(body.to_string()));
    }
    let status = match statuses.first() {
        Some(Some(first)) if statuses.iter().all(|s| *s == Some(*first)) => first.as_u16(),
        _ => 502,
    };
    let error = format!(
        "{action} failed on {} of {} nodes: {}",
        failures.len(),
        nodes.len(),
        failures.join("; ")
    );
    let body = json!({ "error": error, "nodes": results });
    (status, Bytes::from(body.to_string()))
}

fn response_value(body: &Bytes) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn error_text(status: StatusCode, body: &Bytes) -> String {
    match response_value(body) {
        Value::Object(object) => match object.get("error") {
            Some(Value::String(message)) => format!("{} {message}", status.as_u16()),
            _ => status.to_string(),
        },
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_is_turned_off_for_each_node() {
        let body = node_body(&Bytes::from_static(
            br#"{"model":"llama3.2","stream":true}"#,
        ));
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value, json!({"model": "llama3.2", "stream": false}));
        assert_eq!(
            node_body(&Bytes::from_static(b"not json")),
            Bytes::from_static(b"not json")
        );
    }
}
