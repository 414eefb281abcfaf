//! The requests each scenario sends: small chats (overhead), long streams, and the
//! conversations of the fleet-realism workload.

use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::load::RequestSpec;
use crate::peers::Api;

/// A one-token chat, not streamed: the smallest realistic request, so what is measured is the
/// proxy. Ollama's native route where the peer has it, else the OpenAI one.
pub fn small_chat(api: Api, model: &str) -> RequestSpec {
    let messages = json!([{"role": "user", "content": "hi"}]);
    match api {
        Api::Native => post(
            "/api/chat",
            json!({"model": model, "messages": messages, "stream": false,
                   "options": {"num_predict": 1}}),
            false,
            model,
        ),
        Api::OpenAiOnly => post(
            "/v1/chat/completions",
            json!({"model": model, "messages": messages, "stream": false, "max_tokens": 1}),
            false,
            model,
        ),
    }
}

/// A streamed generation of `tokens` tokens on Ollama's native route (NDJSON).
pub fn long_stream(model: &str, tokens: u32) -> RequestSpec {
    post(
        "/api/generate",
        json!({"model": model, "prompt": "tell me a long story", "stream": true,
               "options": {"num_predict": tokens}}),
        true,
        model,
    )
}

fn post(path: &str, body: serde_json::Value, stream: bool, label: &str) -> RequestSpec {
    RequestSpec {
        method: Method::POST,
        path: path.to_owned(),
        body: Bytes::from(body.to_string()),
        stream,
        label: label.to_owned(),
    }
}

/// Multi-turn conversations over a model mix that shifts halfway through the run, sent as
/// OpenAI chat completions (the one API every peer serves). Each conversation resends its
/// history with every turn, so a node that served its previous turn has the prefix cached.
pub struct Conversations {
    rng: fastrand::Rng,
    mixes: Mixes,
    open: Vec<Conversation>,
    /// Requests until the mix shifts.
    shift_after: u64,
    stream: bool,
}

/// A model mix as (model, weight).
pub type Mix = &'static [(&'static str, u32)];

/// The model mix before and after the shift.
#[derive(Debug, Clone, Copy)]
pub struct Mixes {
    /// Before the shift.
    pub early: Mix,
    /// After it.
    pub late: Mix,
}

impl Mixes {
    /// The heterogeneous fleet's: chat on small models first, then larger ones that do not
    /// all fit in one GPU's memory beside them.
    pub const HETEROGENEOUS: Mixes = Mixes {
        early: &[("llama3.2:3b", 6), ("qwen2.5:7b", 2), ("mistral:7b", 2)],
        late: &[("qwen2.5:14b", 5), ("gemma2:9b", 3), ("llama3.2:3b", 2)],
    };

    /// The homogeneous fleet's: six models, four early and four late, more than fit in one
    /// node's memory at once.
    pub const HOMOGENEOUS: Mixes = Mixes {
        early: &[
            ("llama3.2:3b", 4),
            ("qwen2.5:7b", 2),
            ("mistral:7b", 2),
            ("llama3.1:8b", 2),
        ],
        late: &[
            ("qwen2.5:14b", 4),
            ("gemma2:9b", 3),
            ("llama3.2:3b", 2),
            ("llama3.1:8b", 1),
        ],
    };

    /// Every model either mix uses, sorted.
    pub fn models(&self) -> Vec<&'static str> {
        let mut models: Vec<&str> = self
            .early
            .iter()
            .chain(self.late)
            .map(|(m, _)| *m)
            .collect();
        models.sort_unstable();
        models.dedup();
        models
    }
}

struct Conversation {
    model: &'static str,
    messages: Vec<serde_json::Value>,
}

/// Conversations open at once; a new turn continues one of them or, when it has had its
/// turns, starts a new one.
const OPEN_CONVERSATIONS: usize = 64;
const TURNS: usize = 4;

impl Conversations {
    /// Conversations over `mixes` whose mix shifts after `shift_after` requests, streamed or
    /// not; deterministic for a seed.
    pub fn new(seed: u64, mixes: Mixes, shift_after: u64, stream: bool) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            mixes,
            open: Vec::new(),
            shift_after,
            stream,
        }
    }

    /// The `n`th request.
    pub fn next(&mut self, n: u64) -> RequestSpec {
        let mix = if n < self.shift_after {
            self.mixes.early
        } else {
            self.mixes.late
        };
        if self.open.len() < OPEN_CONVERSATIONS {
            self.open.push(Conversation::new(pick(&mut self.rng, mix)));
        }
        let index = self.rng.usize(..self.open.len());
        if !mix
            .iter()
            .any(|(model, _)| *model == self.open[index].model)
        {
            // Users moved on to the new mix: a conversation on a model it no longer has ends.
            self.open[index] = Conversation::new(pick(&mut self.rng, mix));
        }
        let conversation = &mut self.open[index];
        let turn = conversation.messages.len() / 2;
        conversation.messages.push(json!({"role": "user",
            "content": format!("question {turn} of conversation {n}: how do I keep my fleet busy?")}));
        let max_tokens = self.rng.u32(32..=160);
        let request = post(
            "/v1/chat/completions",
            json!({"model": conversation.model, "messages": conversation.messages,
                   "stream": self.stream, "max_tokens": max_tokens}),
            self.stream,
            conversation.model,
        );
        conversation.messages.push(json!({"role": "assistant",
            "content": "Keep the models warm and route by model."}));
        if turn + 1 >= TURNS {
            // Finished: a new conversation (of the current mix) takes its place.
            self.open[index] = Conversation::new(pick(&mut self.rng, mix));
        }
        request
    }
}

impl Conversation {
    /// A new conversation on `model`: just the system prompt every conversation shares.
    fn new(model: &'static str) -> Self {
        Self {
            model,
            messages: vec![json!({"role": "system",
                "content": "You are a helpful assistant for a team running GPU servers."})],
        }
    }
}

fn pick(rng: &mut fastrand::Rng, mix: &[(&'static str, u32)]) -> &'static str {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut roll = rng.u32(..total);
    for (model, weight) in mix {
        if roll < *weight {
            return model;
        }
        roll -= weight;
    }
    mix[0].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_resend_their_history_and_shift_their_mix() {
        let mut conversations = Conversations::new(7, Mixes::HETEROGENEOUS, 200, true);
        let early: Vec<RequestSpec> = (0..200).map(|n| conversations.next(n)).collect();
        let late: Vec<RequestSpec> = (200..400).map(|n| conversations.next(n)).collect();
        let share = |requests: &[RequestSpec], model: &str| {
            requests.iter().filter(|r| r.label == model).count() as f64 / requests.len() as f64
        };
        assert!(share(&early, "llama3.2:3b") > 0.4);
        assert!(share(&early, "qwen2.5:14b") == 0.0);
        assert!(share(&late, "qwen2.5:14b") > 0.2);
        // Later turns carry the earlier ones.
        let longest = early.iter().map(|r| r.body.len()).max().unwrap();
        let shortest = early.iter().map(|r| r.body.len()).min().unwrap();
        assert!(longest > shortest + 100);
        assert!(early
            .iter()
            .all(|r| r.stream && r.path == "/v1/chat/completions"));
    }
}
