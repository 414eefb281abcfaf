//! Embeddings: `/api/embed`, the legacy `/api/embeddings`, and `/v1/embeddings`.
//!
//! Embedding runs through the scheduler and a slot like any request (prefill only, no decode).
//! Every model can embed, as in Ollama; the tiny test model does. Handlers hold the request's
//! in-flight guard until the response is built.

use std::sync::Arc;

use base64::Engine;
use http::StatusCode;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::body::{self, content_type, Response};
use super::error::{ApiError, Flavor};
use super::infer::{self, Job};
use super::request::{self, NotFound, Options, Unnamed};
use crate::app::App;
use crate::duration::KeepAlive;
use crate::embedding;
use crate::generation::Metrics;
use crate::registry::DiskModel;
use crate::stats::InFlight;
use crate::tokenizer::{self, Token};

#[derive(Debug, Deserialize)]
struct EmbedRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: Value,
    truncate: Option<bool>,
    dimensions: Option<usize>,
    keep_alive: Option<Value>,
    #[serde(default)]
    options: Options,
}

#[derive(Debug, Deserialize)]
struct LegacyRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    prompt: String,
    keep_alive: Option<Value>,
    #[serde(default)]
    options: Options,
}

#[derive(Debug, Deserialize)]
struct OpenAiRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: Value,
    dimensions: Option<usize>,
    encoding_format: Option<String>,
}

/// One embedding batch after scheduling.
struct Embedded {
    vectors: Vec<Vec<f32>>,
    metrics: Metrics,
}

/// Schedules the model, prefills every input on one slot, and computes the vectors.
async fn embed(
    app: &App,
    model: Arc<DiskModel>,
    inputs: &[Vec<Token>],
    options: Options,
    keep_alive: Option<KeepAlive>,
    dimensions: Option<usize>,
) -> Result<Embedded, ApiError> {
    let dims = model.spec.embedding_length as usize;
    let dims = dimensions.filter(|d| (1..dims).contains(d)).unwrap_or(dims);
    let job = Job {
        model,
        prompt: inputs.concat(),
        num_predict: Some(0),
        num_ctx: options.num_ctx,
        keep_alive,
        seed: None,
    };
    let gen = app.start(job).await?;
    let vectors = inputs
        .iter()
        .map(|tokens| embedding::embed(tokens, dims))
        .collect();
    Ok(Embedded {
        vectors,
        metrics: gen.metrics(),
    })
}

/// Strings of an `input` that is a string or a list of strings.
fn string_inputs(input: &Value) -> Result<Vec<&str>, ApiError> {
    match input {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| ApiError::bad_request("invalid input type"))
            })
            .collect(),
        _ => Err(ApiError::bad_request("invalid input type")),
    }
}

/// Tokenizes inputs, truncating to the context length unless `truncate` is false.
fn tokenize_inputs(
    inputs: &[&str],
    model: &DiskModel,
    truncate: bool,
) -> Result<Vec<Vec<Token>>, ApiError> {
    let limit = model.spec.context_length as usize;
    inputs
        .iter()
        .map(|text| {
            let mut tokens = tokenizer::tokenize(text);
            if tokens.len() > limit {
                if !truncate {
                    return Err(ApiError::bad_request(
                        "input exceeds maximum context length",
                    ));
                }
                tokens.truncate(limit);
            }
            Ok(tokens)
        })
        .collect()
}

/// `POST /api/embed`.
pub async fn api_embed(
    app: Arc<App>,
    body: Incoming,
    _in_flight: InFlight,
) -> Result<Response, ApiError> {
    let req: EmbedRequest = request::json(body, Flavor::Native).await?;
    let model = request::model(&app, &req.model, Unnamed::Unqualified, NotFound::Pull)?;
    req.options.check()?;
    let keep_alive = request::keep_alive(req.keep_alive.as_ref())?;
    let inputs = tokenize_inputs(
        &string_inputs(&req.input)?,
        &model,
        req.truncate.unwrap_or(true),
    )?;
    let done = embed(
        &app,
        model,
        &inputs,
        req.options,
        keep_alive,
        req.dimensions,
    )
    .await?;
    let out = EmbedResponse {
        model: &req.model,
        embeddings: done.vectors,
        total_duration: infer::nanos(done.metrics.total_duration),
        load_duration: infer::nanos(done.metrics.load_duration),
        prompt_eval_count: done.metrics.prompt_eval_count as u64,
    };
    Ok(body::json(StatusCode::OK, content_type::JSON, &out))
}

/// Ollama's `EmbedResponse`; the counters are omitted when zero.
#[derive(Serialize)]
struct EmbedResponse<'a> {
    model: &'a str,
    embeddings: Vec<Vec<f32>>,
    #[serde(skip_serializing_if = "infer::is_zero")]
    total_duration: u64,
    #[serde(skip_serializing_if = "infer::is_zero")]
    load_duration: u64,
    #[serde(skip_serializing_if = "infer::is_zero")]
    prompt_eval_count: u64,
}

/// `POST /api/embeddings` (legacy): one prompt, `{"embedding":[…]}`.
pub async fn api_embeddings(
    app: Arc<App>,
    body: Incoming,
    _in_flight: InFlight,
) -> Result<Response, ApiError> {
    let req: LegacyRequest = request::json(body, Flavor::Native).await?;
    let model = request::model(&app, &req.model, Unnamed::Required, NotFound::Pull)?;
    req.options.check()?;
    let keep_alive = request::keep_alive(req.keep_alive.as_ref())?;
    let inputs: Vec<Vec<Token>> = if req.prompt.is_empty() {
        Vec::new()
    } else {
        vec![tokenizer::tokenize(&req.prompt)]
    };
    let done = embed(&app, model, &inputs, req.options, keep_alive, None).await?;
    let embedding = done.vectors.into_iter().next().unwrap_or_default();
    Ok(body::json(
        StatusCode::OK,
        content_type::JSON,
        &json!({ "embedding": embedding }),
    ))
}

/// `POST /v1/embeddings`.
pub async fn openai(
    app: Arc<App>,
    body: Incoming,
    _in_flight: InFlight,
) -> Result<Response, ApiError> {
    let req: OpenAiRequest = request::json(body, Flavor::OpenAi).await?;
    let inputs = openai_inputs(&req.input)?;
    let model = request::model(&app, &req.model, Unnamed::Unqualified, NotFound::Pull)?;
    let done = embed(
        &app,
        model,
        &inputs,
        Options::default(),
        None,
        req.dimensions,
    )
    .await?;
    let base64 = req.encoding_format.as_deref() == Some("base64");
    let data = done
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Floats(v)
            };
            EmbeddingObject {
                object: "embedding",
                embedding,
                index,
            }
        })
        .collect();
    let tokens = done.metrics.prompt_eval_count;
    let out = EmbeddingList {
        object: "list",
        data,
        model: &req.model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    Ok(body::json(StatusCode::OK, content_type::OPENAI_JSON, &out))
}

/// `/v1/embeddings`' answer. Vectors stay `f32` so they print as short as Go prints them.
#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingObject {
    object: &'static str,
    embedding: Vector,
    index: usize,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// OpenAI inputs: a string, strings, a token array or token arrays; empty is refused.
fn openai_inputs(input: &Value) -> Result<Vec<Vec<Token>>, ApiError> {
    let invalid = || ApiError::bad_request("invalid input");
    let one = |v: &Value| -> Result<Vec<Token>, ApiError> {
        match v {
            Value::String(s) => Ok(tokenizer::tokenize(s)),
            Value::Array(ids) => ids
                .iter()
                .map(|id| id.as_u64().map(|n| n as Token).ok_or_else(invalid))
                .collect(),
            _ => Err(invalid()),
        }
    };
    let inputs = match input {
        Value::String(_) => vec![one(input)?],
        Value::Array(items) if items.first().is_some_and(Value::is_number) => vec![one(input)?],
        Value::Array(items) => items.iter().map(one).collect::<Result<_, _>>()?,
        _ => return Err(invalid()),
    };
    if inputs.is_empty() {
        return Err(invalid());
    }
    Ok(inputs)
}
