//! Reading requests: JSON bodies, options, keep-alive and model names, with Ollama's errors.

use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{ApiError, Flavor};
use crate::app::App;
use crate::duration::KeepAlive;
use crate::names;
use crate::registry::DiskModel;

/// Bodies larger than this are refused (embedding batches can be large, so be generous).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Reads a JSON body; an empty one is Ollama's `missing request body` (gin's `EOF` on `/v1`,
/// where body errors come from the OpenAI middleware).
pub async fn json<T: DeserializeOwned>(body: Incoming, flavor: Flavor) -> Result<T, ApiError> {
    let raised = |e: ApiError| match flavor {
        Flavor::Native => e,
        Flavor::OpenAi => e.raised_by_middleware(),
    };
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| raised(ApiError::bad_request(e.to_string())))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(raised(ApiError::bad_request(match flavor {
            Flavor::Native => "missing request body",
            Flavor::OpenAi => "EOF",
        })));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        // Go's decoder says "unexpected EOF" for truncated JSON; other texts differ anyway.
        let message = if e.is_eof() {
            "unexpected EOF".to_owned()
        } else {
            e.to_string()
        };
        raised(ApiError::bad_request(message))
    })
}

/// The `options` the simulator acts on; others are accepted and ignored, as Ollama ignores
/// options a model does not use. A wrongly typed option is remembered and refused by
/// [`Options::check`] with Ollama's 500, after the model has been resolved (as Ollama does).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Context length; a change forces a reload.
    pub num_ctx: Option<u32>,
    /// Token limit; negative means no limit.
    pub num_predict: Option<i64>,
    /// Seed of the pseudo-text.
    pub seed: Option<i64>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// The first wrongly typed option and the type it must have.
    wrong_type: Option<(&'static str, &'static str)>,
}

impl<'de> Deserialize<'de> for Options {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default();
        let mut wrong_type = None;
        let mut integer = |name: &'static str| match map.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Some(_) => {
                wrong_type.get_or_insert((name, "integer"));
                None
            }
        };
        let num_ctx = integer("num_ctx").map(|n| u32::try_from(n.max(1)).unwrap_or(u32::MAX));
        let num_predict = integer("num_predict");
        let seed = integer("seed");
        let stop = match map.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => strings(v).unwrap_or_else(|| {
                wrong_type.get_or_insert(("stop", "array"));
                Vec::new()
            }),
        };
        Ok(Options {
            num_ctx,
            num_predict,
            seed,
            stop,
            wrong_type,
        })
    }
}

/// The strings of a JSON array of strings.
fn strings(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

impl Options {
    /// Refuses wrongly typed options the way Ollama does.
    pub fn check(&self) -> Result<(), ApiError> {
        match self.wrong_type {
            Some((name, kind)) => Err(ApiError::internal(format!(
                "option {name:?} must be of type {kind}"
            ))),
            None => Ok(()),
        }
    }
}

/// Parses an optional `keep_alive`.
pub fn keep_alive(value: Option<&Value>) -> Result<Option<KeepAlive>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => KeepAlive::from_json(v)
            .map(Some)
            .map_err(|e| ApiError::bad_request(e.to_string())),
    }
}

/// How a handler words "not found" (Ollama's handlers differ; checked against v0.17.4).
#[derive(Debug, Clone, Copy)]
pub enum NotFound {
    /// `model 'x' not found` (generate, chat, show, delete).
    Quoted,
    /// `model "x" not found, try pulling it first` (the scheduler's error: the embed endpoints).
    Pull,
}

/// How a handler answers a request that names no model (Ollama's handlers differ; checked
/// against v0.17.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unnamed {
    /// `400 model is required` (chat, the legacy `/api/embeddings`).
    Required,
    /// Looked up like any other name: `404 model '' not found` (generate, `/v1/completions`).
    NotFound,
    /// `500 unqualified name: …`: `/api/embed` and `/v1/embeddings` hand the empty name to the
    /// scheduler, which cannot make a model path of it.
    Unqualified,
}

/// Resolves the model a request names and checks it exists. What the request needs of the
/// model is checked by the caller ([`super::needs`]).
pub fn model(
    app: &App,
    requested: &str,
    unnamed: Unnamed,
    not_found: NotFound,
) -> Result<Arc<DiskModel>, ApiError> {
    if requested.trim().is_empty() {
        match unnamed {
            Unnamed::Required => return Err(ApiError::bad_request("model is required")),
            Unnamed::Unqualified => {
                return Err(ApiError::internal(format!(
                    "unqualified name: {}",
                    names::qualified("!MISSING!:latest")
                )))
            }
            Unnamed::NotFound => {}
        }
    }
    let found = names::canonical(requested).and_then(|name| app.registry.get(&name));
    found.ok_or_else(|| {
        ApiError::not_found(match not_found {
            NotFound::Quoted => format!("model '{requested}' not found"),
            NotFound::Pull => format!("model {requested:?} not found, try pulling it first"),
        })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn options(value: Value) -> Options {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn stop_is_a_list_of_strings() {
        let o = options(json!({"stop": ["\n", "User:"], "num_predict": 5}));
        assert_eq!(o.stop, ["\n", "User:"]);
        assert_eq!(o.num_predict, Some(5));
        assert!(o.check().is_ok());
        assert!(options(json!({})).stop.is_empty());
    }

    #[test]
    fn wrongly_typed_options_are_refused_with_ollamas_500() {
        let err = options(json!({"stop": "x"})).check().unwrap_err();
        assert_eq!(err.status, http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(err.message, "option \"stop\" must be of type array");
        let err = options(json!({"num_predict": "many", "stop": 1}))
            .check()
            .unwrap_err();
        assert_eq!(
            err.message,
            "option \"num_predict\" must be of type integer"
        );
    }
}
