//! Deterministic pseudo-text: the words a simulated model "generates" and how many.
//!
//! The same seed and prompt always produce the same words, so tests can compare responses, and
//! every word is a single token of [`crate::tokenizer`] (hence no punctuation, which would
//! merge with the word before it), so a conversation that sends a reply
//! back as context hits the prefix cache exactly like a real one does.

use serde::{Deserialize, Serialize};

const VOCAB: &[&str] = &[
    " the", " of", " and", " to", " in", " is", " that", " for", " it", " as", " was", " with",
    " be", " by", " on", " not", " he", " this", " are", " or", " his", " from", " at", " which",
    " but", " have", " an", " had", " they", " you", " were", " their", " one", " all", " we",
    " can", " her", " has", " there", " been", " if", " more", " when", " will", " would", " who",
    " so", " no", " model", " token", " cache", " node", " graph", " layer", " query", " router",
    " slot", " batch", " quick", " brown", " fox", " jumps", " over", " lazy", " dog", " river",
    " stone", " light", " north", " south", " green", " water", " paper", " sound", " field",
    " order", " value", " point", " small", " large", " early", " later", " often", " again",
    " every", " still", " under", " above", " while", " after", " about", " since", " place",
    " world", " house", " story", " plan", " idea", " time", " year", " day", " way", " part",
];

/// A seeded word source.
pub struct TextGen {
    rng: fastrand::Rng,
    first: bool,
}

impl TextGen {
    /// A generator whose output depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            first: true,
        }
    }

    /// The next token's text; the first one has no leading space.
    pub fn next_token(&mut self) -> &'static str {
        let word = VOCAB[self.rng.usize(..VOCAB.len())];
        if std::mem::take(&mut self.first) {
            word.trim_start()
        } else {
            word
        }
    }
}

/// How many tokens a response has when the request sets no `num_predict` / `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputLength {
    /// Always this many tokens.
    Fixed {
        /// Tokens per response.
        tokens: u32,
    },
    /// Uniformly distributed between `min` and `max` (inclusive).
    Uniform {
        /// Shortest response.
        min: u32,
        /// Longest response.
        max: u32,
    },
}

impl Default for OutputLength {
    /// Chat-like answers: a few sentences to a few paragraphs.
    fn default() -> Self {
        OutputLength::Uniform { min: 32, max: 384 }
    }
}

impl OutputLength {
    /// Draws a length from the distribution.
    pub fn sample(self, rng: &mut fastrand::Rng) -> u32 {
        match self {
            OutputLength::Fixed { tokens } => tokens,
            OutputLength::Uniform { min, max } => rng.u32(min..=max.max(min)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_text() {
        let run = |seed| {
            let mut g = TextGen::new(seed);
            (0..20).map(|_| g.next_token()).collect::<String>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(!run(1).starts_with(' '));
    }

    #[test]
    fn output_length_stays_in_range() {
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100 {
            let n = OutputLength::Uniform { min: 3, max: 5 }.sample(&mut rng);
            assert!((3..=5).contains(&n));
        }
        assert_eq!(OutputLength::Fixed { tokens: 9 }.sample(&mut rng), 9);
    }
}
