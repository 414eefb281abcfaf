//! `/api/generate` and `/api/chat`: NDJSON streams (routes.go:2097-2144, api/types.go).

use std::sync::Arc;
use std::time::SystemTime;

use http::StatusCode;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::body::{self, content_type, Response};
use super::error::{ApiError, Flavor};
use super::infer::{self, Encoder, Job, MetricsJson};
use super::needs::{Endpoint, Needs, Think};
use super::request::{self, NotFound, Options, Unnamed};
use crate::app::App;
use crate::generation::{DoneReason, Generation};
use crate::stats::InFlight;
use crate::timefmt;
use crate::tokenizer::{self, Token};

#[derive(Debug, Deserialize)]
struct GenerateRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    suffix: String,
    #[serde(default)]
    system: String,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    context: Vec<Token>,
    #[serde(default)]
    images: Vec<Value>,
    think: Option<Value>,
    stream: Option<bool>,
    keep_alive: Option<Value>,
    #[serde(default)]
    options: Options,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    tools: Vec<Value>,
    think: Option<Value>,
    stream: Option<bool>,
    keep_alive: Option<Value>,
    #[serde(default)]
    options: Options,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: String,
}

#[derive(Serialize)]
struct GenerateChunk<'a> {
    model: &'a str,
    created_at: String,
    response: &'a str,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a [Token]>,
    #[serde(flatten)]
    metrics: MetricsJson,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    model: &'a str,
    created_at: String,
    message: Assistant<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'a str>,
    done: bool,
    #[serde(flatten)]
    metrics: MetricsJson,
}

#[derive(Serialize)]
struct Assistant<'a> {
    role: &'static str,
    content: &'a str,
}

fn now() -> String {
    timefmt::rfc3339(SystemTime::now())
}

/// `POST /api/generate`.
pub async fn generate(
    app: Arc<App>,
    body: Incoming,
    in_flight: InFlight,
) -> Result<Response, ApiError> {
    let req: GenerateRequest = request::json(body, Flavor::Native).await?;
    // Ollama's decoder reads `think` and `keep_alive`, so their errors come first.
    let think = Think::native(req.think.as_ref())?;
    let keep_alive = request::keep_alive(req.keep_alive.as_ref())?;
    let model = request::model(&app, &req.model, Unnamed::NotFound, NotFound::Quoted)?;
    let needs = Needs {
        endpoint: Endpoint::Generate,
        think,
        tools: false,
        insert: !req.suffix.is_empty(),
    };
    needs.check(&model, &req.model)?;
    req.options.check()?;
    if req.prompt.is_empty() && req.images.is_empty() {
        let reason = app.preload(&model, req.options.num_ctx, keep_alive).await?;
        let chunk = GenerateChunk {
            model: &req.model,
            created_at: now(),
            response: "",
            done: true,
            done_reason: Some(reason),
            context: None,
            metrics: MetricsJson::default(),
        };
        return Ok(body::json(StatusCode::OK, content_type::JSON, &chunk));
    }
    let mut prompt = req.context;
    if !req.raw && !req.system.is_empty() {
        tokenizer::tokenize_into(&req.system, &mut prompt);
    }
    tokenizer::tokenize_into(&req.prompt, &mut prompt);
    let job = Job {
        model,
        prompt,
        num_predict: req.options.num_predict,
        num_ctx: req.options.num_ctx,
        keep_alive,
        seed: req.options.seed,
    };
    let gen = app.start(job).await?;
    let enc = Ndjson(GenerateChunks {
        model: req.model,
        raw: req.raw,
    });
    Ok(infer::respond(
        gen,
        req.options.stop,
        enc,
        req.stream.unwrap_or(true),
        Flavor::Native,
        in_flight,
    )
    .await)
}

/// `POST /api/chat`.
pub async fn chat(
    app: Arc<App>,
    body: Incoming,
    in_flight: InFlight,
) -> Result<Response, ApiError> {
    let req: ChatRequest = request::json(body, Flavor::Native).await?;
    // Ollama's decoder reads `think` and `keep_alive`, so their errors come first.
    let think = Think::native(req.think.as_ref())?;
    let keep_alive = request::keep_alive(req.keep_alive.as_ref())?;
    let model = request::model(&app, &req.model, Unnamed::Required, NotFound::Quoted)?;
    let needs = Needs {
        endpoint: Endpoint::Chat,
        think,
        tools: !req.tools.is_empty(),
        insert: false,
    };
    needs.check(&model, &req.model)?;
    req.options.check()?;
    if req.messages.is_empty() {
        let reason = app.preload(&model, req.options.num_ctx, keep_alive).await?;
        let chunk = ChatChunk {
            model: &req.model,
            created_at: now(),
            message: Assistant {
                role: "assistant",
                content: "",
            },
            done_reason: Some(reason),
            done: true,
            metrics: MetricsJson::default(),
        };
        return Ok(body::json(StatusCode::OK, content_type::JSON, &chunk));
    }
    let prompt = infer::chat_prompt(
        req.messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str())),
    );
    let job = Job {
        model,
        prompt,
        num_predict: req.options.num_predict,
        num_ctx: req.options.num_ctx,
        keep_alive,
        seed: req.options.seed,
    };
    let gen = app.start(job).await?;
    let enc = Ndjson(ChatChunks { model: req.model });
    Ok(infer::respond(
        gen,
        req.options.stop,
        enc,
        req.stream.unwrap_or(true),
        Flavor::Native,
        in_flight,
    )
    .await)
}

/// Builds one native chunk: a token's text, or with `done` the final chunk (or the whole
/// unstreamed response) with its metrics.
trait NativeChunk: Send + 'static {
    fn chunk<'a>(
        &'a self,
        text: &'a str,
        done: Option<(DoneReason, &'a Generation)>,
    ) -> impl Serialize + 'a;
}

/// NDJSON framing for a native endpoint: one chunk per line, or one JSON object unstreamed.
struct Ndjson<C>(C);

impl<C: NativeChunk> Encoder for Ndjson<C> {
    const STREAM_TYPE: &'static str = content_type::NDJSON;

    fn token(&mut self, text: &str, out: &mut Vec<u8>) {
        infer::ndjson_line(out, &self.0.chunk(text, None));
    }

    fn finish(&mut self, reason: DoneReason, gen: &Generation, out: &mut Vec<u8>) {
        infer::ndjson_line(out, &self.0.chunk("", Some((reason, gen))));
    }

    fn whole(self, text: String, reason: DoneReason, gen: &Generation) -> Response {
        body::json(
            StatusCode::OK,
            content_type::JSON,
            &self.0.chunk(&text, Some((reason, gen))),
        )
    }
}

struct GenerateChunks {
    model: String,
    raw: bool,
}

impl NativeChunk for GenerateChunks {
    fn chunk<'a>(
        &'a self,
        text: &'a str,
        done: Option<(DoneReason, &'a Generation)>,
    ) -> impl Serialize + 'a {
        GenerateChunk {
            model: &self.model,
            created_at: now(),
            response: text,
            done: done.is_some(),
            done_reason: done.map(|(reason, _)| reason.as_str()),
            context: done.filter(|_| !self.raw).map(|(_, gen)| gen.context()),
            metrics: done
                .map(|(_, gen)| gen.metrics().into())
                .unwrap_or_default(),
        }
    }
}

struct ChatChunks {
    model: String,
}

impl NativeChunk for ChatChunks {
    fn chunk<'a>(
        &'a self,
        text: &'a str,
        done: Option<(DoneReason, &'a Generation)>,
    ) -> impl Serialize + 'a {
        ChatChunk {
            model: &self.model,
            created_at: now(),
            message: Assistant {
                role: "assistant",
                content: text,
            },
            done_reason: done.map(|(reason, _)| reason.as_str()),
            done: done.is_some(),
            metrics: done
                .map(|(_, gen)| gen.metrics().into())
                .unwrap_or_default(),
        }
    }
}
