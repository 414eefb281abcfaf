//! Fleet-wide views: `/api/tags`, `/api/ps` and `/v1/models` answered for the whole fleet, in
//! Ollama's shapes, by asking every node that takes work and merging the answers; and the
//! fleet's `/api/version`.
//!
//! Meta carries only model names, while clients read sizes, digests and details, so the views
//! ask the nodes themselves. They are rarely called (model pickers, health probes), so the
//! fan-out costs nothing on the request path.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use super::fanout::FanOut;
use crate::{Backend, BackendSet};

/// Asks nodes for their views and merges them.
#[derive(Clone)]
pub struct Views {
    fanout: FanOut,
    timeout: Duration,
}

/// Which list to gather.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `/api/tags`: models on disk, one entry per model.
    Tags,
    /// `/api/ps`: loaded models, one entry per model and node, each naming its node.
    Ps,
    /// `/v1/models`: models on disk in OpenAI's list shape.
    OpenAiModels,
}

impl Views {
    /// A client whose requests to one node give up after `timeout`.
    pub fn new(fanout: FanOut, timeout: Duration) -> Self {
        Self { fanout, timeout }
    }

    /// The merged view across every node that takes work, with only the models `visible`
    /// accepts (a caller sees the models its key may use). Nodes that fail to answer are left
    /// out (and logged): a model picker should not break because one node is slow.
    pub async fn gather(
        &self,
        view: View,
        set: &BackendSet,
        visible: impl Fn(&str) -> bool,
    ) -> Bytes {
        let path = match view {
            View::Tags => "/api/tags",
            View::Ps => "/api/ps",
            View::OpenAiModels => "/v1/models",
        };
        let nodes: Vec<&std::sync::Arc<Backend>> = set.accepting().collect();
        let answers = self
            .fanout
            .send_all(&nodes, &Method::GET, path, &Bytes::new(), self.timeout)
            .await;
        let lists = nodes
            .iter()
            .zip(answers)
            .filter_map(|(backend, answer)| match parse_view(answer) {
                Ok(value) => Some((backend.id().to_string(), value)),
                Err(error) => {
                    tracing::warn!(node = %backend.id(), path, %error, "node left out of the fleet view");
                    None
                }
            });
        let mut merged = match view {
            View::Tags => merge_tags(lists),
            View::Ps => merge_ps(lists),
            View::OpenAiModels => merge_openai_models(lists),
        };
        retain_visible(view, &mut merged, visible);
        Bytes::from(merged.to_string())
    }
}

/// A node's view as JSON, if it answered with one.
fn parse_view(answer: super::fanout::NodeAnswer) -> Result<Value, String> {
    let (status, body) = answer.map_err(|error| error.to_string())?;
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// The entries of `key` in each node's answer.
fn entries(value: Value, key: &str) -> Vec<Value> {
    match value {
        Value::Object(mut object) => match object.remove(key) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// One entry per model name, newest first (Ollama's order).
fn merge_tags(lists: impl Iterator<Item = (String, Value)>) -> Value {
    let mut models = unique_by(lists.flat_map(|(_, v)| entries(v, "models")), "name");
    sort_desc_by(&mut models, "modified_at");
    json!({ "models": models })
}

/// Every loaded model on every node, each with a `node` field naming its instance (clients
/// ignore fields they do not know), latest expiry first (Ollama's order).
fn merge_ps(lists: impl Iterator<Item = (String, Value)>) -> Value {
    let mut models: Vec<Value> = lists
        .flat_map(|(node, value)| {
            entries(value, "models").into_iter().map(move |mut model| {
                if let Value::Object(fields) = &mut model {
                    fields.insert("node".into(), Value::String(node.clone()));
                }
                model
            })
        })
        .collect();
    sort_desc_by(&mut models, "expires_at");
    json!({ "models": models })
}

/// One entry per model id, newest first.
fn merge_openai_models(lists: impl Iterator<Item = (String, Value)>) -> Value {
    let mut data = unique_by(lists.flat_map(|(_, v)| entries(v, "data")), "id");
    data.sort_by_key(|m| std::cmp::Reverse(m.get("created").and_then(Value::as_i64)));
    json!({ "object": "list", "data": data })
}

/// Drops the entries of a merged view whose model `visible` refuses.
fn retain_visible(view: View, merged: &mut Value, visible: impl Fn(&str) -> bool) {
    let (list, name) = match view {
        View::Tags | View::Ps => ("models", "name"),
        View::OpenAiModels => ("data", "id"),
    };
    if let Some(Value::Array(entries)) = merged.get_mut(list) {
        entries.retain(|entry| {
            entry
                .get(name)
                .and_then(Value::as_str)
                .is_some_and(&visible)
        });
    }
}

fn unique_by(items: impl Iterator<Item = Value>, key: &str) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    items
        .filter(|item| {
            item.get(key)
                .and_then(Value::as_str)
                .is_some_and(|k| seen.insert(k.to_owned()))
        })
        .collect()
}

/// Sorts by an RFC 3339 timestamp field, latest first. Ollama writes them in one offset per
/// node, so comparing the text orders them correctly within a fleet in one time zone.
fn sort_desc_by(items: &mut [Value], key: &str) {
    items.sort_by(|a, b| {
        let field = |v: &Value| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
        field(b).cmp(&field(a))
    });
}

/// The fleet's version for `/api/version`: the oldest Ollama among the nodes that take work,
/// since a client may only rely on features every node has.
pub fn fleet_version(set: &BackendSet) -> Option<String> {
    set.accepting()
        .filter_map(|b| b.meta().ok()?.ollama_version.clone())
        .min_by_key(|version| version_key(version))
}

fn version_key(version: &str) -> Vec<u64> {
    version
        .split(['.', '-', '+'])
        .map_while(|part| part.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_deduplicated_newest_first() {
        let a = json!({"models": [
            {"name": "llama3.2:3b", "modified_at": "2026-01-02T00:00:00Z", "size": 1},
            {"name": "qwen2.5:7b", "modified_at": "2026-01-01T00:00:00Z", "size": 2},
        ]});
        let b = json!({"models": [
            {"name": "qwen2.5:7b", "modified_at": "2026-01-01T00:00:00Z", "size": 2},
            {"name": "mistral:7b", "modified_at": "2026-01-03T00:00:00Z", "size": 3},
        ]});
        let merged = merge_tags(vec![("a".to_owned(), a), ("b".to_owned(), b)].into_iter());
        let names: Vec<&str> = merged["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["mistral:7b", "llama3.2:3b", "qwen2.5:7b"]);
    }

    #[test]
    fn ps_names_the_node_of_every_entry() {
        let a = json!({"models": [{"name": "llama3.2:3b", "expires_at": "2026-01-01T00:05:00Z"}]});
        let b = json!({"models": [{"name": "llama3.2:3b", "expires_at": "2026-01-01T00:09:00Z"}]});
        let merged = merge_ps(vec![("gpu-a".to_owned(), a), ("gpu-b".to_owned(), b)].into_iter());
        let nodes: Vec<&str> = merged["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["node"].as_str().unwrap())
            .collect();
        assert_eq!(
            nodes,
            ["gpu-b", "gpu-a"],
            "same model on two nodes: two entries, latest expiry first"
        );
    }

    #[test]
    fn openai_models_keep_the_list_shape() {
        let a = json!({"object": "list", "data": [{"id": "x:latest", "object": "model", "created": 1, "owned_by": "library"}]});
        let merged =
            merge_openai_models(vec![("a".to_owned(), a.clone()), ("b".to_owned(), a)].into_iter());
        assert_eq!(merged["object"], "list");
        assert_eq!(merged["data"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn views_show_only_visible_models() {
        let mut tags =
            json!({"models": [{"name": "llama3.2:3b"}, {"name": "qwen2.5:7b"}, {"size": 1}]});
        retain_visible(View::Tags, &mut tags, |m| m.starts_with("llama"));
        assert_eq!(tags, json!({"models": [{"name": "llama3.2:3b"}]}));
        let mut models =
            json!({"object": "list", "data": [{"id": "x:latest"}, {"id": "y:latest"}]});
        retain_visible(View::OpenAiModels, &mut models, |m| m == "y:latest");
        assert_eq!(models["data"], json!([{"id": "y:latest"}]));
    }

    #[test]
    fn garbage_answers_contribute_nothing() {
        let merged = merge_tags(
            vec![
                ("a".to_owned(), json!("nope")),
                ("b".to_owned(), json!({"models": 3})),
            ]
            .into_iter(),
        );
        assert_eq!(merged, json!({"models": []}));
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("0.9.10") > version_key("0.9.9"));
        assert!(
            version_key("0.17.4")
                > version_key("0.17.4-rc1")
                    .into_iter()
                    .take(2)
                    .collect::<Vec<_>>()
        );
    }
}
