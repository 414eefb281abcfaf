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
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Context length; a change forces a reload.
    pub num_ctx: Option<u32>,
    /// Token limit; negative means no limit.
    pub num_predict: Option<i64>,
    /// Seed of the pseudo-text.
    pub seed: Option<i64>,
    wrong_type: Option<&'static str>,
}

impl<'de> Deserialize<'de> for Options {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default();
        let mut options = Options::default();
        let mut integer = |name: &'static str| match map.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Some(_) => {
                options.wrong_type.get_or_insert(name);
                None
            }
        };
        let num_ctx = integer("num_ctx").map(|n| u32::try_from(n.max(1)).unwrap_or(u32::MAX));
        let num_predict = integer("num_predict");
        let seed = integer("seed");
        Ok(Options {
            num_ctx,
            num_predict,
            seed,
            ..options
        })
    }
}

impl Options {
    /// Refuses wrongly typed options the way Ollama does.
    pub fn check(&self) -> Result<(), ApiError> {
        match self.wrong_type {
            Some(name) => Err(ApiError::internal(format!(
                "option {name:?} must be of type integer"
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

/// What a request will use the model for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// `/api/generate`, `/v1/completions`.
    Generate,
    /// `/api/chat`, `/v1/chat/completions`.
    Chat,
    /// Embeddings: every model can embed in Ollama.
    Embed,
}

/// Resolves the model a request names, checking it exists and can do `usage`.
pub fn model(
    app: &App,
    requested: &str,
    usage: Use,
    not_found: NotFound,
) -> Result<Arc<DiskModel>, ApiError> {
    // v0.17.4's generate handler looks an empty name up like any other and answers 404.
    if requested.trim().is_empty() && usage != Use::Generate {
        return Err(ApiError::bad_request("model is required"));
    }
    let found = names::canonical(requested).and_then(|name| app.registry.get(&name));
    let Some(model) = found else {
        return Err(ApiError::not_found(match not_found {
            NotFound::Quoted => format!("model '{requested}' not found"),
            NotFound::Pull => format!("model {requested:?} not found, try pulling it first"),
        }));
    };
    let verb = match usage {
        Use::Generate => "generate",
        Use::Chat => "chat",
        Use::Embed => return Ok(model),
    };
    if model.spec.embedding_only {
        return Err(ApiError::bad_request(format!(
            "{requested:?} does not support {verb}"
        )));
    }
    Ok(model)
}
