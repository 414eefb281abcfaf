//! Reading a request body to learn which model it names, without losing the body.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

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

#[derive(Deserialize)]
struct ModelFields {
    #[serde(default)]
    model: Option<String>,
    /// `/api/show` still accepts the deprecated `name`.
    #[serde(default)]
    name: Option<String>,
}

/// Finds the model a JSON request body names. Every other field is skipped unparsed, so a long
/// conversation costs one scan of its bytes.
pub fn model_in(body: &[u8]) -> ModelInBody {
    match serde_json::from_slice::<ModelFields>(body) {
        Ok(fields) => match fields.model.or(fields.name).filter(|m| !m.is_empty()) {
            Some(model) => ModelInBody::Named(model),
            None => ModelInBody::Missing,
        },
        Err(_) => ModelInBody::Unparsable,
    }
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
