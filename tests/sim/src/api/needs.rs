//! What a generating request asks of its model (`think`, `tools`, `suffix`), and Ollama's 400s
//! when the model lacks the capability.
//!
//! Checked after the model is resolved and before anything is scheduled, in Ollama's order
//! (routes.go, v0.17.4): a think level on `/api/generate`, then thinking, then the endpoint
//! itself (`completion`), then tools or insert. The texts differ in how they name the model:
//! the handlers' own checks quote the name as requested (`"tiny" does not support thinking`),
//! the scheduler's capability check names the fully qualified model
//! (`registry.ollama.ai/library/tiny:latest does not support tools`).

use serde_json::Value;

use super::error::ApiError;
use crate::capability::Capability;
use crate::names;
use crate::registry::DiskModel;

/// The levels `think` and the OpenAI reasoning effort accept besides booleans.
const LEVELS: [&str; 3] = ["high", "medium", "low"];

/// A request's `think`, as Ollama's `ThinkValue` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Think {
    /// `false`, or reasoning effort `none`.
    Off,
    /// `true`.
    On,
    /// `"high"`, `"medium"` or `"low"`: only gpt-oss models take a level on `/api/generate`.
    Level(&'static str),
}

impl Think {
    /// The native `think` field; a value of another kind is refused as Ollama's decoder does.
    pub fn native(value: Option<&Value>) -> Result<Option<Think>, ApiError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(on)) => Ok(Some(if *on { Think::On } else { Think::Off })),
            Some(Value::String(s)) => match level(s) {
                Some(level) => Ok(Some(Think::Level(level))),
                None => Err(ApiError::bad_request(format!(
                    "invalid think value: {s:?} (must be \"high\", \"medium\", \"low\", true, or false)"
                ))),
            },
            Some(_) => Err(ApiError::bad_request(
                "think must be a boolean or string (\"high\", \"medium\", \"low\", true, or false)",
            )),
        }
    }

    /// `/v1` `reasoning_effort` (or `reasoning.effort`), refused by the OpenAI middleware when it
    /// is not a known effort.
    pub fn openai(effort: Option<&str>) -> Result<Option<Think>, ApiError> {
        match effort {
            None => Ok(None),
            Some("none") => Ok(Some(Think::Off)),
            Some(e) => level(e).map(|l| Some(Think::Level(l))).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid reasoning value: '{e}' (must be \"high\", \"medium\", \"low\", or \"none\")"
                ))
                .raised_by_middleware()
            }),
        }
    }

    fn wanted(self) -> bool {
        self != Think::Off
    }
}

fn level(text: &str) -> Option<&'static str> {
    LEVELS.into_iter().find(|l| *l == text)
}

/// The endpoint a request came through, which names what it needs in the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/generate`, `/v1/completions`.
    Generate,
    /// `/api/chat`, `/v1/chat/completions`.
    Chat,
}

/// What one request needs of its model.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// Where the request came in.
    pub endpoint: Endpoint,
    /// `think` / reasoning effort, when given.
    pub think: Option<Think>,
    /// A non-empty `tools`.
    pub tools: bool,
    /// A non-empty `suffix`.
    pub insert: bool,
}

/// Why a model was refused for a request: always a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A think level on `/api/generate` (only gpt-oss's harmony parser takes one there).
    #[error("think value {0:?} is not supported for this model")]
    ThinkLevel(&'static str),
    /// `think` asked of a model without the thinking capability.
    #[error("{0:?} does not support thinking")]
    Thinking(String),
    /// An embedding model asked to generate or chat.
    #[error("{model:?} does not support {verb}")]
    Endpoint {
        /// The name as requested.
        model: String,
        /// `generate` or `chat`.
        verb: &'static str,
    },
    /// Tools or insert asked of a model without them.
    #[error("{model} does not support {capability}")]
    Capability {
        /// The fully qualified name.
        model: String,
        /// What is missing.
        capability: Capability,
    },
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::bad_request(r.to_string())
    }
}

impl Needs {
    /// Checks `model`, which the request named `requested`.
    pub fn check(&self, model: &DiskModel, requested: &str) -> Result<(), Refusal> {
        let caps = model.spec.capabilities;
        if let (Endpoint::Generate, Some(Think::Level(level))) = (self.endpoint, self.think) {
            return Err(Refusal::ThinkLevel(level));
        }
        if self.think.is_some_and(Think::wanted) && !caps.contains(Capability::Thinking) {
            return Err(Refusal::Thinking(requested.to_owned()));
        }
        if !caps.contains(Capability::Completion) {
            let verb = match self.endpoint {
                Endpoint::Generate => "generate",
                Endpoint::Chat => "chat",
            };
            return Err(Refusal::Endpoint {
                model: requested.to_owned(),
                verb,
            });
        }
        let missing = [
            (self.tools, Capability::Tools),
            (self.insert, Capability::Insert),
        ]
        .into_iter()
        .find(|(needed, cap)| *needed && !caps.contains(*cap));
        match missing {
            Some((_, capability)) => Err(Refusal::Capability {
                model: names::qualified(&model.name),
                capability,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use serde_json::json;

    use super::*;
    use crate::catalogue;

    fn disk(name: &str) -> DiskModel {
        DiskModel {
            name: name.to_owned(),
            spec: Arc::new(catalogue::lookup(name)),
            modified_at: SystemTime::now(),
            digest: String::new(),
        }
    }

    fn needs(endpoint: Endpoint, think: Option<Think>, tools: bool, insert: bool) -> Needs {
        Needs {
            endpoint,
            think,
            tools,
            insert,
        }
    }

    fn refusal(name: &str, n: Needs) -> Option<String> {
        n.check(&disk(name), name.trim_end_matches(":latest"))
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn a_completion_only_model_refuses_thinking_tools_and_insert() {
        let chat =
            |think, tools| refusal("tiny:latest", needs(Endpoint::Chat, think, tools, false));
        assert_eq!(chat(None, false), None);
        assert_eq!(chat(Some(Think::Off), false), None);
        assert_eq!(
            chat(Some(Think::On), true).as_deref(),
            Some("\"tiny\" does not support thinking")
        );
        assert_eq!(
            chat(Some(Think::Level("high")), false).as_deref(),
            Some("\"tiny\" does not support thinking")
        );
        assert_eq!(
            chat(None, true).as_deref(),
            Some("registry.ollama.ai/library/tiny:latest does not support tools")
        );
        assert_eq!(
            refusal("tiny:latest", needs(Endpoint::Generate, None, false, true)).as_deref(),
            Some("registry.ollama.ai/library/tiny:latest does not support insert")
        );
    }

    #[test]
    fn capable_models_are_accepted() {
        let n = needs(Endpoint::Chat, Some(Think::Level("low")), true, false);
        assert_eq!(refusal("qwen3:8b", n), None);
        assert_eq!(
            refusal("llama3.1:8b", needs(Endpoint::Chat, None, true, false)),
            None
        );
    }

    #[test]
    fn generate_takes_no_think_level_and_embedding_models_do_not_generate() {
        let level = needs(Endpoint::Generate, Some(Think::Level("high")), false, false);
        assert_eq!(
            refusal("deepseek-r1:14b", level).as_deref(),
            Some("think value \"high\" is not supported for this model")
        );
        assert_eq!(
            refusal(
                "nomic-embed-text:latest",
                needs(Endpoint::Chat, None, true, false)
            )
            .as_deref(),
            Some("\"nomic-embed-text\" does not support chat")
        );
    }

    #[test]
    fn think_values_parse_like_ollamas() {
        assert_eq!(Think::native(Some(&json!(true))), Ok(Some(Think::On)));
        assert_eq!(Think::native(Some(&json!(null))), Ok(None));
        assert_eq!(
            Think::native(Some(&json!("medium"))),
            Ok(Some(Think::Level("medium")))
        );
        assert!(Think::native(Some(&json!("bogus")))
            .unwrap_err()
            .message
            .starts_with("invalid think value: \"bogus\""));
        assert!(Think::native(Some(&json!(5)))
            .unwrap_err()
            .message
            .starts_with("think must be a boolean or string"));
        assert_eq!(Think::openai(Some("none")), Ok(Some(Think::Off)));
        assert_eq!(Think::openai(Some("high")), Ok(Some(Think::Level("high"))));
        assert!(Think::openai(Some("max"))
            .unwrap_err()
            .message
            .starts_with("invalid reasoning value: 'max'"));
    }
}
