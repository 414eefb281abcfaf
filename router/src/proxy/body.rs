//! Reading a request body to learn which model it names, without losing the body.

use std::borrow::Cow;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// What the body says about the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelInBody {
    /// A JSON object naming this model.
    Named(String),
    /// Valid JSON without a model (Ollama answers "model is required").
    Missing,
    /// Not a JSON object: Ollama answers with its own parse error.
    Unparsable,
}

/// The fields of a request body the router reads. The conversation and options are kept as
/// raw JSON and read only as far as scheduling needs, so a malformed conversation still reaches
/// Ollama, which answers for it.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(default)]
    model: Option<String>,
    /// The deprecated spelling `/api/show`, `/api/pull`, `/api/push`, `/api/delete` and
    /// `/api/create` still accept.
    #[serde(default)]
    name: Option<String>,
    #[serde(default, borrow)]
    messages: Option<&'a RawValue>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default, borrow)]
    system: Option<&'a RawValue>,
    #[serde(default, borrow)]
    options: Option<&'a RawValue>,
}

/// One chat message's role.
#[derive(Deserialize)]
struct Role<'a> {
    #[serde(default, borrow)]
    role: Option<Cow<'a, str>>,
}

/// Runner options whose change makes Ollama load a model anew.
#[derive(Deserialize)]
struct RunnerOptions<'a> {
    #[serde(default, borrow)]
    num_ctx: Option<&'a RawValue>,
    #[serde(default, borrow)]
    num_batch: Option<&'a RawValue>,
    #[serde(default, borrow)]
    num_gpu: Option<&'a RawValue>,
    #[serde(default, borrow)]
    main_gpu: Option<&'a RawValue>,
    #[serde(default, borrow)]
    use_mmap: Option<&'a RawValue>,
    #[serde(default, borrow)]
    num_thread: Option<&'a RawValue>,
}

impl RunnerOptions<'_> {
    /// A fingerprint of the options set; 0 when none is.
    fn fingerprint(&self) -> u64 {
        let set = [
            ("num_ctx", self.num_ctx),
            ("num_batch", self.num_batch),
            ("num_gpu", self.num_gpu),
            ("main_gpu", self.main_gpu),
            ("use_mmap", self.use_mmap),
            ("num_thread", self.num_thread),
        ];
        if set
            .iter()
            .all(|(_, value)| value.is_none_or(|v| v.get() == "null"))
        {
            return 0;
        }
        hash_of(|h| {
            for (name, value) in set {
                if let Some(value) = value {
                    name.hash(h);
                    value.get().hash(h);
                }
            }
        })
    }
}

/// What a request body tells the scheduler besides its model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conversation {
    /// Fingerprint of the runner options that force a reload; 0 when none is set.
    pub runner: u64,
    /// Hash of the leading context: the messages up to the first user message (the system
    /// prompt and the conversation's opening), or the system prompt and the prompt's first
    /// [`PROMPT_PREFIX`] bytes. The same in every turn of one conversation.
    pub affinity: Option<u64>,
    /// Estimated prompt tokens.
    pub prompt_tokens: u32,
    /// Estimated tokens of the newest message: what a node holding the prefix still reads.
    pub fresh_tokens: u32,
}

/// Leading bytes of a prompt that key its affinity.
pub const PROMPT_PREFIX: usize = 1024;
/// Leading bytes of each message that go into the affinity key.
const MESSAGE_PREFIX: usize = 4096;
/// Bytes per token, roughly, for estimates.
const BYTES_PER_TOKEN: usize = 4;

/// What a JSON request body says: its model, and its conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The model.
    pub model: ModelInBody,
    /// The conversation.
    pub conversation: Conversation,
}

/// Finds the model a JSON request body names. Every other field is skipped unparsed, so a long
/// conversation costs one scan of its bytes.
///
/// The model is the first *non-empty* of `model` and `name`, as Ollama reads it (Go's
/// `cmp.Or(req.Model, req.Name)`): Ollama's own Go client sends `"model":""` beside
/// `"name":"tiny"` for `ollama show`, so an empty field must count as absent.
pub fn model_in(body: &[u8]) -> ModelInBody {
    inspect(body).model
}

/// Reads a JSON request body: its model and what the scheduler needs of its conversation.
pub fn inspect(body: &[u8]) -> Inspection {
    let Ok(fields) = serde_json::from_slice::<Fields>(body) else {
        return Inspection {
            model: ModelInBody::Unparsable,
            conversation: Conversation::default(),
        };
    };
    let model = match non_empty(fields.model).or_else(|| non_empty(fields.name)) {
        Some(model) => ModelInBody::Named(model),
        None => ModelInBody::Missing,
    };
    Inspection {
        model,
        conversation: conversation(
            fields.messages,
            fields.prompt,
            fields.system,
            fields.options,
        ),
    }
}

/// A field Ollama reads as given: present and not Go's zero value `""`.
fn non_empty(field: Option<String>) -> Option<String> {
    field.filter(|value| !value.is_empty())
}

fn conversation(
    messages: Option<&RawValue>,
    prompt: Option<&RawValue>,
    system: Option<&RawValue>,
    options: Option<&RawValue>,
) -> Conversation {
    let tokens = |bytes: usize| u32::try_from(bytes / BYTES_PER_TOKEN).unwrap_or(u32::MAX);
    let runner = options
        .and_then(|raw| serde_json::from_str::<RunnerOptions>(raw.get()).ok())
        .map_or(0, |options| options.fingerprint());
    let system_bytes = system.map_or(0, |s| s.get().len());
    let messages = messages.and_then(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok());
    if let Some(messages) = messages.filter(|m| !m.is_empty()) {
        let opening = messages
            .iter()
            .position(|m| {
                serde_json::from_str::<Role>(m.get())
                    .is_ok_and(|r| r.role.as_deref() == Some("user"))
            })
            .map_or(messages.len(), |first_user| first_user + 1);
        let affinity = hash_of(|h| {
            for message in &messages[..opening] {
                let text = message.get().as_bytes();
                h.write(&text[..text.len().min(MESSAGE_PREFIX)]);
            }
        });
        let total: usize = messages.iter().map(|m| m.get().len()).sum();
        let newest = messages.last().map_or(0, |m| m.get().len());
        return Conversation {
            runner,
            affinity: Some(affinity),
            prompt_tokens: tokens(total + system_bytes),
            fresh_tokens: tokens(newest),
        };
    }
    let Some(prompt) = prompt.map(RawValue::get).filter(|p| p.len() > 2) else {
        return Conversation {
            runner,
            ..Conversation::default()
        };
    };
    let leading = &prompt.as_bytes()[..prompt.len().min(PROMPT_PREFIX)];
    let affinity = hash_of(|h| {
        h.write(system.map_or("", RawValue::get).as_bytes());
        h.write(leading);
    });
    Conversation {
        runner,
        affinity: Some(affinity),
        prompt_tokens: tokens(prompt.len() + system_bytes),
        fresh_tokens: tokens(prompt.len() - leading.len()),
    }
}

/// A hash that is the same in every process (std's `DefaultHasher::new` has fixed keys), so
/// router replicas and restarts key a conversation alike.
fn hash_of(write: impl FnOnce(&mut DefaultHasher)) -> u64 {
    let mut hasher = DefaultHasher::new();
    write(&mut hasher);
    hasher.finish()
}

/// A body larger than the configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// The limit in bytes.
    pub limit: usize,
}

/// Collects body chunks up to `limit` bytes.
#[derive(Debug)]
pub struct BodyBuffer {
    data: BytesMut,
    limit: usize,
}

impl BodyBuffer {
    /// An empty buffer accepting at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            data: BytesMut::new(),
            limit,
        }
    }

    /// Appends a chunk, or fails when the body would exceed the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), TooLarge> {
        if self.data.len() + chunk.len() > self.limit {
            return Err(TooLarge { limit: self.limit });
        }
        self.data.extend_from_slice(chunk);
        Ok(())
    }

    /// The whole body.
    pub fn freeze(self) -> Bytes {
        self.data.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_model_wherever_it_is() {
        assert_eq!(
            model_in(br#"{"model":"llama3.2","prompt":"hi"}"#),
            ModelInBody::Named("llama3.2".into())
        );
        let message = r#"{"role":"user","content":"x"}"#;
        let openai_sdk_order = format!(
            r#"{{"messages":[{}],"model":"qwen2.5:7b"}}"#,
            [message; 3].join(",")
        );
        assert_eq!(
            model_in(openai_sdk_order.as_bytes()),
            ModelInBody::Named("qwen2.5:7b".into())
        );
        assert_eq!(
            model_in(br#"{"name":"old-client"}"#),
            ModelInBody::Named("old-client".into())
        );
    }

    /// The exact bodies the `ollama` CLI (v0.17.4) sends, captured from it: Go writes every
    /// field, empty ones as `""`, so `model` is often empty beside the `name` that carries it.
    #[test]
    fn reads_the_bodies_of_the_ollama_cli() {
        let named = |model: &str| ModelInBody::Named(model.to_owned());
        let cases: [(&str, &[u8], ModelInBody); 8] = [
            (
                "ollama show tiny; ollama run tiny (first)",
                br#"{"model":"","system":"","template":"","verbose":false,"options":null,"name":"tiny"}"#,
                named("tiny"),
            ),
            (
                "ollama run tiny hello",
                br#"{"model":"tiny","prompt":"hello","suffix":"","system":"","template":"","options":{}}"#,
                named("tiny"),
            ),
            (
                "ollama stop tiny; ollama rm tiny (first)",
                br#"{"model":"tiny","system":"","template":"","verbose":false,"options":null,"name":""}"#,
                named("tiny"),
            ),
            (
                "ollama stop tiny (the unload)",
                br#"{"model":"tiny","prompt":"","suffix":"","system":"","template":"","keep_alive":"0s","options":null}"#,
                named("tiny"),
            ),
            (
                "ollama rm tiny",
                br#"{"model":"","name":"tiny"}"#,
                named("tiny"),
            ),
            (
                "ollama pull tiny",
                br#"{"model":"","username":"","password":"","name":"tiny"}"#,
                named("tiny"),
            ),
            (
                "ollama run embedder hello (an embedding model)",
                br#"{"model":"embedder","input":"hello world","options":null}"#,
                named("embedder"),
            ),
            (
                "both empty: Ollama answers \"model is required\"",
                br#"{"model":"","name":""}"#,
                ModelInBody::Missing,
            ),
        ];
        for (command, body, expected) in cases {
            assert_eq!(model_in(body), expected, "{command}");
        }
    }

    #[test]
    fn conversations_are_keyed_by_their_opening() {
        let chat = |messages: &str| {
            inspect(format!(r#"{{"model":"m","messages":[{messages}]}}"#).as_bytes()).conversation
        };
        let system = r#"{"role":"system","content":"be brief"}"#;
        let first = r#"{"role":"user","content":"tell me about rust"}"#;
        let answer = r#"{"role":"assistant","content":"a language"}"#;
        let second = r#"{"role":"user","content":"and its borrow checker?"}"#;
        let turn_one = chat(&[system, first].join(","));
        let turn_two = chat(&[system, first, answer, second].join(","));
        assert!(turn_one.affinity.is_some());
        assert_eq!(
            turn_one.affinity, turn_two.affinity,
            "one conversation, one key"
        );
        assert!(turn_two.prompt_tokens > turn_one.prompt_tokens);
        assert_eq!(turn_two.fresh_tokens, (second.len() / 4) as u32);
        let other = chat(&[system, r#"{"role":"user","content":"hello"}"#].join(","));
        assert_ne!(other.affinity, turn_one.affinity);
        // Runner options that force a reload change the fingerprint; others do not.
        let with = |options: &str| {
            inspect(format!(r#"{{"model":"m","prompt":"hi","options":{options}}}"#).as_bytes())
                .conversation
                .runner
        };
        assert_eq!(with("{}"), 0);
        assert_eq!(with(r#"{"temperature":0.2}"#), 0);
        assert_ne!(with(r#"{"num_ctx":8192}"#), 0);
        assert_ne!(with(r#"{"num_ctx":8192}"#), with(r#"{"num_ctx":4096}"#));
        // A malformed conversation still names its model: Ollama answers for the rest.
        let odd = inspect(br#"{"model":"m","messages":"not a list","options":[1]}"#);
        assert_eq!(odd.model, ModelInBody::Named("m".into()));
        assert_eq!(odd.conversation.affinity, None);
    }

    #[test]
    fn missing_or_broken_models_are_left_to_ollama() {
        assert_eq!(model_in(br#"{"prompt":"hi"}"#), ModelInBody::Missing);
        assert_eq!(model_in(br#"{"model":""}"#), ModelInBody::Missing);
        assert_eq!(model_in(b"{not json"), ModelInBody::Unparsable);
        assert_eq!(model_in(br#"{"model":42}"#), ModelInBody::Unparsable);
        assert_eq!(model_in(b""), ModelInBody::Unparsable);
    }

    #[test]
    fn the_limit_is_enforced() {
        let mut buffer = BodyBuffer::new(4);
        buffer.push(b"ab").unwrap();
        buffer.push(b"cd").unwrap();
        assert_eq!(buffer.push(b"e"), Err(TooLarge { limit: 4 }));
        assert_eq!(buffer.freeze(), Bytes::from_static(b"abcd"));
    }
}
