//! The OpenAI compatibility layer: `/v1/chat/completions`, `/v1/completions`, `/v1/models`
//! (middleware/openai.go, openai/openai.go).
//!
//! Like Ollama's layer it drops `keep_alive` and `num_ctx`, so `/v1` traffic always uses the
//! server's default keep-alive and the model's default context. Chunks follow v0.17.4: every
//! delta carries `role`, and the finish chunk is separate with empty content (a superset of the
//! newer `delta:{}` shape that clients read the same way).

use std::sync::Arc;
use std::time::SystemTime;

use http::StatusCode;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::body::{self, content_type, Response};
use super::error::{ApiError, Flavor};
use super::infer::{self, Encoder, Job};
use super::needs::{Endpoint, Needs, Think};
use super::request::{self, NotFound, Unnamed};
use crate::app::App;
use crate::generation::{DoneReason, Generation};
use crate::names;
use crate::stats::InFlight;
use crate::timefmt;
use crate::tokenizer;

#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    seed: Option<i64>,
    stop: Option<Value>,
    #[serde(default)]
    tools: Vec<Value>,
    reasoning_effort: Option<String>,
    reasoning: Option<Reasoning>,
}

#[derive(Debug, Deserialize)]
struct Reasoning {
    effort: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<i64>,
    seed: Option<i64>,
    stop: Option<Value>,
    #[serde(default)]
    suffix: String,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Value,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

impl Usage {
    const ZERO: Usage = Usage {
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
    };

    fn of(gen: &Generation) -> Self {
        let m = gen.metrics();
        Self {
            prompt_tokens: m.prompt_eval_count,
            completion_tokens: m.eval_count,
            total_tokens: m.prompt_eval_count + m.eval_count,
        }
    }
}

/// Text of a message: a string, or the text parts of a content array.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// OpenAI's `stop`: one string or a list of them. The middleware passes nothing else on.
fn stop_sequences(stop: Option<Value>) -> Vec<String> {
    match stop {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Ollama's ids are a prefix and a small random number.
fn id(prefix: &str) -> String {
    format!("{prefix}-{}", fastrand::u32(0..999))
}

fn unix_now() -> u64 {
    timefmt::unix_secs(SystemTime::now())
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    app: Arc<App>,
    body: Incoming,
    in_flight: InFlight,
) -> Result<Response, ApiError> {
    let req: ChatRequest = request::json(body, Flavor::OpenAi).await?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("[] is too short - 'messages'").raised_by_middleware());
    }
    let effort = req
        .reasoning_effort
        .as_deref()
        .or(req.reasoning.as_ref().and_then(|r| r.effort.as_deref()));
    let needs = Needs {
        endpoint: Endpoint::Chat,
        think: Think::openai(effort)?,
        tools: !req.tools.is_empty(),
        insert: false,
    };
    let model = request::model(&app, &req.model, Unnamed::Required, NotFound::Quoted)?;
    needs.check(&model, &req.model)?;
    let texts: Vec<String> = req.messages.iter().map(|m| text_of(&m.content)).collect();
    let prompt = infer::chat_prompt(
        req.messages
            .iter()
            .zip(&texts)
            .map(|(m, t)| (m.role.as_str(), t.as_str())),
    );
    let job = Job {
        model,
        prompt,
        num_predict: req.max_completion_tokens.or(req.max_tokens),
        num_ctx: None,
        keep_alive: None,
        seed: req.seed,
    };
    let gen = app.start(job).await?;
    let enc = ChatEncoder(Header {
        id: id("chatcmpl"),
        model: req.model,
        created: unix_now(),
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
    });
    let stop = stop_sequences(req.stop);
    Ok(infer::respond(gen, stop, enc, req.stream, Flavor::OpenAi, in_flight).await)
}

/// `POST /v1/completions`.
pub async fn completions(
    app: Arc<App>,
    body: Incoming,
    in_flight: InFlight,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = request::json(body, Flavor::OpenAi).await?;
    let model = request::model(&app, &req.model, Unnamed::NotFound, NotFound::Quoted)?;
    let needs = Needs {
        endpoint: Endpoint::Generate,
        think: None,
        tools: false,
        insert: !req.suffix.is_empty(),
    };
    needs.check(&model, &req.model)?;
    let enc = CompletionEncoder(Header {
        id: id("cmpl"),
        model: req.model,
        created: unix_now(),
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
    });
    if req.prompt.is_empty() {
        let reason = app.preload(&model, None, None).await?;
        return Ok(enc.completion("", reason, Usage::ZERO));
    }
    let job = Job {
        model,
        prompt: tokenizer::tokenize(&req.prompt),
        num_predict: req.max_tokens,
        num_ctx: None,
        keep_alive: None,
        seed: req.seed,
    };
    let gen = app.start(job).await?;
    let stop = stop_sequences(req.stop);
    Ok(infer::respond(gen, stop, enc, req.stream, Flavor::OpenAi, in_flight).await)
}

/// `GET /v1/models`.
pub fn models(app: &App) -> Response {
    let data: Vec<Value> = app
        .registry
        .list()
        .iter()
        .map(|m| model_object(&m.name, m.modified_at))
        .collect();
    body::json(
        StatusCode::OK,
        content_type::OPENAI_JSON,
        &json!({ "object": "list", "data": data }),
    )
}

/// `GET /v1/models/{model}`: the id echoes the requested name, as Ollama's does.
pub fn model(app: &App, requested: &str) -> Response {
    match names::canonical(requested).and_then(|n| app.registry.get(&n)) {
        Some(m) => body::json(
            StatusCode::OK,
            content_type::OPENAI_JSON,
            &model_object(requested, m.modified_at),
        ),
        None => {
            ApiError::not_found(format!("model '{requested}' not found")).respond(Flavor::OpenAi)
        }
    }
}

fn model_object(name: &str, modified_at: SystemTime) -> Value {
    let owned_by = name
        .split_once('/')
        .map_or("library", |(namespace, _)| namespace);
    json!({ "id": name, "object": "model", "created": timefmt::unix_secs(modified_at), "owned_by": owned_by })
}

/// One chat or text completion object or chunk; `choices` is a slice of one of the choice
/// types below (empty in the usage chunk).
#[derive(Serialize)]
struct Completion<'a, C: Serialize> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: &'a [C],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct DeltaChoice<'a> {
    index: u32,
    delta: AssistantMessage<'a>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct MessageChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    finish_reason: Option<&'a str>,
}

/// The identity shared by every chunk of one response.
struct Header {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
}

impl Header {
    fn object<'a, C: Serialize>(
        &'a self,
        object: &'static str,
        choices: &'a [C],
        usage: Option<Usage>,
    ) -> Completion<'a, C> {
        Completion {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            system_fingerprint: "fp_ollama",
            choices,
            usage,
        }
    }
}

fn assistant(content: &str) -> AssistantMessage<'_> {
    AssistantMessage {
        role: "assistant",
        content,
    }
}

struct ChatEncoder(Header);

impl ChatEncoder {
    const CHUNK: &'static str = "chat.completion.chunk";
}

impl Encoder for ChatEncoder {
    const STREAM_TYPE: &'static str = content_type::SSE;

    fn token(&mut self, text: &str, out: &mut Vec<u8>) {
        let choice = [DeltaChoice {
            index: 0,
            delta: assistant(text),
            finish_reason: None,
        }];
        infer::sse_event(out, &self.0.object(Self::CHUNK, &choice, None));
    }

    fn finish(&mut self, reason: DoneReason, gen: &Generation, out: &mut Vec<u8>) {
        let choice = [DeltaChoice {
            index: 0,
            delta: assistant(""),
            finish_reason: Some(reason.as_str()),
        }];
        infer::sse_event(out, &self.0.object(Self::CHUNK, &choice, None));
        if self.0.include_usage {
            let none: [DeltaChoice; 0] = [];
            infer::sse_event(
                out,
                &self.0.object(Self::CHUNK, &none, Some(Usage::of(gen))),
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    fn whole(self, text: String, reason: DoneReason, gen: &Generation) -> Response {
        let choice = [MessageChoice {
            index: 0,
            message: assistant(&text),
            finish_reason: reason.as_str(),
        }];
        let completion = self
            .0
            .object("chat.completion", &choice, Some(Usage::of(gen)));
        body::json(StatusCode::OK, content_type::OPENAI_JSON, &completion)
    }
}

struct CompletionEncoder(Header);

impl CompletionEncoder {
    const OBJECT: &'static str = "text_completion";

    /// With `include_usage`, every chunk carries a zero usage object until the final one.
    fn chunk(&self, text: &str, reason: Option<&str>, out: &mut Vec<u8>) {
        let choice = [TextChoice {
            text,
            index: 0,
            finish_reason: reason,
        }];
        let usage = self.0.include_usage.then_some(Usage::ZERO);
        infer::sse_event(out, &self.0.object(Self::OBJECT, &choice, usage));
    }

    fn completion(&self, text: &str, reason: &str, usage: Usage) -> Response {
        let choice = [TextChoice {
            text,
            index: 0,
            finish_reason: Some(reason),
        }];
        body::json(
            StatusCode::OK,
            content_type::OPENAI_JSON,
            &self.0.object(Self::OBJECT, &choice, Some(usage)),
        )
    }
}

impl Encoder for CompletionEncoder {
    const STREAM_TYPE: &'static str = content_type::SSE;

    fn token(&mut self, text: &str, out: &mut Vec<u8>) {
        self.chunk(text, None, out);
    }

    fn finish(&mut self, reason: DoneReason, gen: &Generation, out: &mut Vec<u8>) {
        self.chunk("", Some(reason.as_str()), out);
        if self.0.include_usage {
            let none: [TextChoice; 0] = [];
            infer::sse_event(
                out,
                &self.0.object(Self::OBJECT, &none, Some(Usage::of(gen))),
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    fn whole(self, text: String, reason: DoneReason, gen: &Generation) -> Response {
        self.completion(&text, reason.as_str(), Usage::of(gen))
    }
}
