//! Model capabilities: what `/api/show` lists under `capabilities` and what a request may ask
//! of a model.
//!
//! Ollama derives a model's capabilities from its files (an embedding model has a pooling type,
//! a template that mentions `.Tools` supports tools, one with `.Suffix` supports insert, one
//! with thinking tags supports thinking) and refuses a request that needs one the model lacks
//! with a 400 before anything is scheduled. The simulator has no files, so the catalogue states
//! each model's set.

use serde::Deserialize;

/// One capability, as Ollama names it (`model/capability.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Generates text: `/api/generate`, `/api/chat` and their `/v1` twins.
    Completion,
    /// An embedding model: it embeds but does not generate.
    Embedding,
    /// Accepts `tools`.
    Tools,
    /// Accepts `suffix` (fill-in-the-middle).
    Insert,
    /// Accepts `think` / `reasoning_effort`.
    Thinking,
}

impl Capability {
    /// Every capability, in the order Ollama lists them.
    const ALL: [Capability; 5] = [
        Capability::Completion,
        Capability::Embedding,
        Capability::Tools,
        Capability::Insert,
        Capability::Thinking,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Completion => "completion",
            Capability::Embedding => "embedding",
            Capability::Tools => "tools",
            Capability::Insert => "insert",
            Capability::Thinking => "thinking",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of capabilities; it lists them in Ollama's order whatever order they were added in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities(u8);

impl Capabilities {
    /// A plain generative model (the tiny test model, gemma2, any unknown model).
    pub const COMPLETION: Capabilities = Capabilities::of(&[Capability::Completion]);
    /// A model with tool calling (llama3.1, llama3.2, qwen2.5, mistral).
    pub const TOOLS: Capabilities = Capabilities::of(&[Capability::Completion, Capability::Tools]);
    /// A reasoning model with tool calling (deepseek-r1, qwen3).
    pub const THINKING: Capabilities = Capabilities::of(&[
        Capability::Completion,
        Capability::Tools,
        Capability::Thinking,
    ]);
    /// An embedding model.
    pub const EMBEDDING: Capabilities = Capabilities::of(&[Capability::Embedding]);

    /// The set holding `caps`.
    pub const fn of(caps: &[Capability]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < caps.len() {
            bits |= caps[i].bit();
            i += 1;
        }
        Capabilities(bits)
    }

    /// Whether `cap` is in the set.
    pub fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    /// The capabilities in Ollama's order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// The wire names, in Ollama's order: `/api/show`'s `capabilities`.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Capability::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_in_ollamas_order_whatever_the_insertion_order() {
        let caps = Capabilities::of(&[
            Capability::Thinking,
            Capability::Completion,
            Capability::Tools,
        ]);
        assert_eq!(caps, Capabilities::THINKING);
        assert_eq!(caps.names(), ["completion", "tools", "thinking"]);
        assert_eq!(Capabilities::EMBEDDING.names(), ["embedding"]);
    }

    #[test]
    fn membership() {
        assert!(Capabilities::TOOLS.contains(Capability::Tools));
        assert!(!Capabilities::COMPLETION.contains(Capability::Tools));
        assert!(!Capabilities::EMBEDDING.contains(Capability::Completion));
        assert!(Capabilities::default().names().is_empty());
    }

    #[test]
    fn deserializes_ollamas_names() {
        let caps: Vec<Capability> = serde_json::from_str(r#"["completion","insert"]"#).unwrap();
        assert_eq!(caps, [Capability::Completion, Capability::Insert]);
        assert!(serde_json::from_str::<Capability>(r#""vision""#).is_err());
    }
}
