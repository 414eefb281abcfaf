//! Model management sent to every node at once, with one aggregated answer.
//!
//! Without a target node, `POST /api/pull` pulls the model onto every node that takes work;
//! copy, delete, push and create from an existing model go to every node that has that model
//! (copying a model to a node that lacks it could only fail). Streaming progress from many nodes cannot be merged
//! into one Ollama stream, so each node is asked for a single final answer (`"stream": false`)
//! and the router answers once: when every node answered alike, with that answer exactly as one
//! Ollama gives it; otherwise with every node's result and Ollama's `error` field, so clients
//! raise it. The `X-Ollama-Mesh-Nodes` header always says which nodes answered what.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};

use pingora::proxy::Session;
use pingora::Result;

use super::body::BodyBuffer;
use super::fanout::NodeAnswer;
use super::respond::{respond_error, respond_with};
use super::route::{Dialect, Management};
use super::{MeshProxy, NODES_HEADER};
use crate::Backend;

/// The model a request works on that must already exist on a node: copy's `source`, delete's
/// and push's `model` (or the deprecated `name`, which Ollama's own CLI still sends beside an
/// empty `model`), create's `from`. `None` for pull, or when the body does not say.
pub fn existing_model(management: Management, body: &Bytes) -> Option<String> {
    let fields: &[&str] = match management {
        Management::Copy => &["source"],
        Management::Delete | Management::Push => &["model", "name"],
        Management::Create => &["from"],
        Management::Pull => return None,
    };
    let object = serde_json::from_slice::<Map<String, Value>>(body).ok()?;
    fields
        .iter()
        .filter_map(|field| object.get(*field).and_then(Value::as_str))
        .find(|model| !model.is_empty())
        .map(str::to_owned)
}

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

/// The one answer to a broadcast.
pub struct Aggregated {
    /// HTTP status.
    pub status: u16,
    /// Content type ("" for none).
    pub content_type: &'static str,
    /// Body.
    pub body: Bytes,
    /// Each node and its status, for [`super::NODES_HEADER`].
    pub nodes: String,
}

const JSON: &str = "application/json; charset=utf-8";

/// One answer for all nodes. When every node answered alike, that answer, exactly as one Ollama
/// gives it (clients cannot tell a fleet from a node). Otherwise every node's result, with
/// Ollama's `error` field: the common status when all failed alike (e.g. 404), else 502.
pub fn aggregate(action: &str, nodes: &[&Arc<Backend>], answers: Vec<NodeAnswer>) -> Aggregated {
    let summary = nodes
        .iter()
        .zip(&answers)
        .map(|(node, answer)| match answer {
            Ok((status, _)) => format!("{}={}", node.id(), status.as_u16()),
            Err(_) => format!("{}=unreachable", node.id()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(Ok((status, body))) = answers.first() {
        let alike = answers
            .iter()
            .all(|a| matches!(a, Ok((s, b)) if s == status && b == body));
        if alike {
            return Aggregated {
                status: status.as_u16(),
                content_type: if body.is_empty() { "" } else { JSON },
                body: body.clone(),
                nodes: summary,
            };
        }
    }
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
                results.push(json!({ "instance": id, "error": error.to_string() }));
            }
        }
    }
    let body = if failures.is_empty() {
        json!({ "status": "success", "nodes": results })
    } else {
        let error = format!(
            "{action} failed on {} of {} nodes: {}",
            failures.len(),
            nodes.len(),
            failures.join("; ")
        );
        json!({ "error": error, "nodes": results })
    };
    let status = match statuses.first() {
        _ if failures.is_empty() => 200,
        Some(Some(first)) if statuses.iter().all(|s| *s == Some(*first)) => first.as_u16(),
        _ => 502,
    };
    Aggregated {
        status,
        content_type: JSON,
        body: Bytes::from(body.to_string()),
        nodes: summary,
    }
}

/// Ollama's text when the model a management request names does not exist.
pub fn not_found(management: Management, model: &str) -> String {
    match management {
        Management::Delete => format!("model '{model}' not found"),
        _ => format!("model \"{model}\" not found"),
    }
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

impl MeshProxy {
    /// Sends a management request to every node that takes work and answers for all of them.
    pub(super) async fn broadcast(
        &self,
        session: &mut Session,
        management: Management,
    ) -> Result<bool> {
        let mut buffer = BodyBuffer::new(self.settings.max_body_size);
        while let Some(chunk) = session.read_request_body().await? {
            if let Err(too_large) = buffer.push(&chunk) {
                let message = format!("request body is larger than {} bytes", too_large.limit);
                respond_error(session, Dialect::Native, 413, &message).await?;
                return Ok(true);
            }
        }
        let body = buffer.freeze();
        let set = self.fleet.backends();
        let existing = existing_model(management, &body);
        let mut nodes: Vec<Arc<Backend>> = set
            .accepting()
            .filter(|b| existing.as_deref().is_none_or(|model| b.has_model(model)))
            .cloned()
            .collect();
        if let Some(model) = &existing {
            if nodes.is_empty() {
                nodes = self.lookup.nodes_with(&set, model).await;
            }
            if nodes.is_empty() {
                let message = not_found(management, model);
                respond_error(session, Dialect::Native, 404, &message).await?;
                return Ok(true);
            }
        }
        let header = session.req_header();
        let (method, path) = (header.method.clone(), header.uri.path().to_owned());
        let body = node_body(&body);
        let targets: Vec<&Arc<Backend>> = nodes.iter().collect();
        let answers = self
            .fanout
            .send_all(&targets, &method, &path, &body, self.settings.read_timeout)
            .await;
        let answer = aggregate(management.label(), &targets, answers);
        let headers = [(
            http::HeaderName::from_static(NODES_HEADER),
            answer.nodes.as_str(),
        )];
        respond_with(
            session,
            answer.status,
            answer.content_type,
            answer.body,
            &headers,
        )
        .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_existing_models_name_them() {
        let body = |json: &str| Bytes::from(json.to_owned());
        assert_eq!(
            existing_model(
                Management::Copy,
                &body(r#"{"source":"a","destination":"b"}"#)
            )
            .as_deref(),
            Some("a")
        );
        assert_eq!(
            existing_model(Management::Delete, &body(r#"{"model":"a"}"#)).as_deref(),
            Some("a")
        );
        assert_eq!(
            existing_model(Management::Create, &body(r#"{"model":"b","from":"a"}"#)).as_deref(),
            Some("a")
        );
        assert_eq!(
            existing_model(Management::Pull, &body(r#"{"model":"a"}"#)),
            None
        );
        assert_eq!(existing_model(Management::Copy, &body("{}")), None);
    }

    #[test]
    fn an_empty_field_counts_as_absent() {
        let body = |json: &str| Bytes::from(json.to_owned());
        // `ollama rm tiny`, as Ollama's Go client sends it.
        assert_eq!(
            existing_model(Management::Delete, &body(r#"{"model":"","name":"tiny"}"#)).as_deref(),
            Some("tiny")
        );
        assert_eq!(
            existing_model(Management::Push, &body(r#"{"model":"","name":""}"#)),
            None
        );
        assert_eq!(
            existing_model(Management::Copy, &body(r#"{"source":""}"#)),
            None
        );
    }

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
