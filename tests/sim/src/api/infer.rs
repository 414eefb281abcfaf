//! What every generating endpoint shares: scheduling a job, preload/unload, prompt rendering,
//! and turning a [`Generation`] into a streamed or whole response, cut at the request's stop
//! sequences.
//!
//! As in Ollama, scheduling errors (404, 503…) and failures before the first token are proper
//! status codes; once the first chunk is out, a failure becomes an in-band error and the stream
//! ends. The status line goes out with the first token, as Go's first `Flush` sends it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::body::{self, Response};
use super::error::{ApiError, Flavor};
use crate::app::App;
use crate::duration::KeepAlive;
use crate::generation::{self, DoneReason, Generation, Metrics, Step};
use crate::registry::DiskModel;
use crate::scheduler::{Lease, ModelRequest};
use crate::stats::{self, InFlight};
use crate::stop::{Scan, StopSequences};
use crate::tokenizer::{self, Token};

/// The message of a generation cut by fault injection (the wording of a runner failure).
pub const CUT_MESSAGE: &str =
    "an error was encountered while running the model: simulated failure (fault injection)";

/// One inference request, resolved.
#[derive(Debug)]
pub struct Job {
    /// The model.
    pub model: Arc<DiskModel>,
    /// The rendered prompt.
    pub prompt: Vec<Token>,
    /// `num_predict` / `max_tokens`; negative or absent means the configured distribution.
    pub num_predict: Option<i64>,
    /// `options.num_ctx` (never set on `/v1`, which drops it).
    pub num_ctx: Option<u32>,
    /// `keep_alive` (never set on `/v1`).
    pub keep_alive: Option<KeepAlive>,
    /// `seed`.
    pub seed: Option<i64>,
}

impl App {
    /// Gets a runner for `model`, counting the request against it.
    pub async fn lease(
        &self,
        model: &DiskModel,
        num_ctx: Option<u32>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, ApiError> {
        stats::add(&self.stats.model(&model.name).requests, 1);
        let req = ModelRequest {
            model: model.name.clone(),
            spec: Arc::clone(&model.spec),
            num_ctx,
            keep_alive,
        };
        Ok(self.scheduler.acquire(req).await?)
    }

    /// Ollama's empty-prompt request: unload with `keep_alive: 0`, otherwise load.
    pub async fn preload(
        &self,
        model: &DiskModel,
        num_ctx: Option<u32>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<&'static str, ApiError> {
        if keep_alive.is_some_and(KeepAlive::is_zero) {
            self.scheduler.expire(&model.name);
            return Ok("unload");
        }
        drop(self.lease(model, num_ctx, keep_alive).await?);
        Ok("load")
    }

    /// Schedules `job` and prefills its prompt.
    pub async fn start(&self, job: Job) -> Result<Generation, ApiError> {
        let lease = self.lease(&job.model, job.num_ctx, job.keep_alive).await?;
        let seed = job.seed.map_or_else(
            || self.config.seed ^ tokenizer::digest(&job.prompt),
            |s| s as u64,
        );
        let (tokens, limited) = match job.num_predict {
            Some(n) if n >= 0 => (u32::try_from(n).unwrap_or(u32::MAX), true),
            _ => (
                self.config
                    .output_tokens
                    .sample(&mut fastrand::Rng::with_seed(seed)),
                false,
            ),
        };
        let plan = generation::Plan {
            tokens,
            limited,
            seed,
            cut_after: self.faults.cut_after_tokens(),
            stall_after: self.faults.stall_after_tokens(),
        };
        let counters = self.stats.model(&job.model.name);
        Ok(Generation::start(
            lease,
            &job.prompt,
            plan,
            self.clock,
            Arc::clone(&self.curve),
            counters,
        )
        .await)
    }
}

/// Renders a chat as one prompt, so a conversation's next turn extends the previous prompt
/// and reply token for token (which is what makes the prefix cache hit).
pub fn chat_prompt<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Token> {
    let mut tokens = Vec::new();
    for (role, content) in messages {
        tokenizer::tokenize_into(&format!("<|{role}|>"), &mut tokens);
        tokenizer::tokenize_into(content, &mut tokens);
    }
    tokenizer::tokenize_into("<|assistant|>", &mut tokens);
    tokens
}

/// Ollama's duration and count fields, omitted when zero.
#[derive(Debug, Default, Serialize)]
pub struct MetricsJson {
    #[serde(skip_serializing_if = "is_zero")]
    total_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    load_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    prompt_eval_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    prompt_eval_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    eval_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    eval_duration: u64,
}

/// `skip_serializing_if` for Ollama's `omitempty` counters.
pub fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A duration as Ollama's integer nanoseconds.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl From<Metrics> for MetricsJson {
    fn from(m: Metrics) -> Self {
        Self {
            total_duration: nanos(m.total_duration),
            load_duration: nanos(m.load_duration),
            prompt_eval_count: m.prompt_eval_count as u64,
            prompt_eval_duration: nanos(m.prompt_eval_duration),
            eval_count: m.eval_count as u64,
            eval_duration: nanos(m.eval_duration),
        }
    }
}

/// Turns generation steps into one API's wire format.
pub trait Encoder: Send + 'static {
    /// Content-Type of the stream.
    const STREAM_TYPE: &'static str;

    /// Appends the chunk carrying one token.
    fn token(&mut self, text: &str, out: &mut Vec<u8>);

    /// Appends the final chunk(s).
    fn finish(&mut self, reason: DoneReason, gen: &Generation, out: &mut Vec<u8>);

    /// The unstreamed response.
    fn whole(self, text: String, reason: DoneReason, gen: &Generation) -> Response;
}

/// A generation seen through its stop sequences: text pieces as they may be sent, then the end.
struct Output {
    gen: Generation,
    stops: StopSequences,
    end: Option<DoneReason>,
}

/// One step of an [`Output`].
enum Piece {
    /// Text to send; never empty.
    Text(String),
    /// Generation finished.
    Done(DoneReason),
    /// Generation failed.
    Failed,
}

impl Output {
    fn new(gen: Generation, stop: Vec<String>) -> Self {
        Self {
            gen,
            stops: StopSequences::new(stop),
            end: None,
        }
    }

    /// The next piece of text, waiting through tokens that are held back or cut off.
    async fn next(&mut self) -> Piece {
        loop {
            if let Some(reason) = self.end {
                return Piece::Done(reason);
            }
            let text = match self.gen.next().await {
                Step::Token(t) => match self.stops.push(t) {
                    Scan::Emit(text) => text.into_owned(),
                    Scan::Stop(text) => {
                        self.end = Some(DoneReason::Stop);
                        text
                    }
                },
                Step::Done(reason) => {
                    self.end = Some(reason);
                    self.stops.flush()
                }
                Step::Failed => return Piece::Failed,
            };
            if !text.is_empty() {
                return Piece::Text(text);
            }
        }
    }
}

/// Runs `gen` to a response, ending it at the first of the `stop` sequences: whole when
/// `stream` is false, otherwise a stream fed by a task that stops as soon as the client goes
/// away.
pub async fn respond<E: Encoder>(
    gen: Generation,
    stop: Vec<String>,
    mut enc: E,
    stream: bool,
    flavor: Flavor,
    in_flight: InFlight,
) -> Response {
    let mut out = Output::new(gen, stop);
    if !stream {
        let mut text = String::new();
        loop {
            match out.next().await {
                Piece::Text(t) => text.push_str(&t),
                Piece::Done(reason) => return enc.whole(text, reason, &out.gen),
                Piece::Failed => return ApiError::internal(CUT_MESSAGE).respond(flavor),
            }
        }
    }
    let mut first = Vec::with_capacity(256);
    let more = match out.next().await {
        Piece::Text(t) => {
            enc.token(&t, &mut first);
            true
        }
        Piece::Done(reason) => {
            enc.finish(reason, &out.gen, &mut first);
            false
        }
        Piece::Failed => return ApiError::internal(CUT_MESSAGE).respond(flavor),
    };
    let (resp, tx) = body::stream(E::STREAM_TYPE);
    // A fresh channel has room for the first chunk.
    let _ = tx.try_send(Bytes::from(first));
    if more {
        tokio::spawn(pump(out, enc, flavor, tx, in_flight));
    }
    resp
}

async fn pump<E: Encoder>(
    mut out: Output,
    mut enc: E,
    flavor: Flavor,
    tx: mpsc::Sender<Bytes>,
    _in_flight: InFlight,
) {
    loop {
        let piece = tokio::select! {
            biased;
            () = tx.closed() => return,
            piece = out.next() => piece,
        };
        let mut buf = Vec::with_capacity(192);
        let last = match piece {
            Piece::Text(t) => {
                enc.token(&t, &mut buf);
                false
            }
            Piece::Done(reason) => {
                enc.finish(reason, &out.gen, &mut buf);
                true
            }
            Piece::Failed => {
                stream_error(flavor, &mut buf);
                true
            }
        };
        if tx.send(Bytes::from(buf)).await.is_err() || last {
            return;
        }
    }
}

/// The in-band error that ends a failed stream: an NDJSON `{"error":…}` line natively, an SSE
/// event with the OpenAI error object on `/v1` (and no `[DONE]`).
fn stream_error(flavor: Flavor, out: &mut Vec<u8>) {
    match flavor {
        Flavor::Native => {
            serde_json::to_writer(&mut *out, &json!({ "error": CUT_MESSAGE })).expect("serializes");
            out.push(b'\n');
        }
        Flavor::OpenAi => {
            let error = json!({ "error": { "message": CUT_MESSAGE, "type": "api_error", "param": null, "code": null } });
            sse_event(out, &error);
        }
    }
}

/// Appends one NDJSON line.
pub fn ndjson_line(out: &mut Vec<u8>, value: &impl Serialize) {
    serde_json::to_writer(&mut *out, value).expect("chunks serialize");
    out.push(b'\n');
}

/// Appends one SSE event.
pub fn sse_event(out: &mut Vec<u8>, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, value).expect("chunks serialize");
    out.extend_from_slice(b"\n\n");
}
