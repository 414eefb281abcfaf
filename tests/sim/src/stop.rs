//! Stop sequences (`options.stop`, OpenAI `stop`), matched the way Ollama's runner does.
//!
//! Generated text that could still be the start of a stop sequence is held back; once the text
//! contains a stop sequence, generation ends there: the text before it is sent, the stop
//! sequence and anything after it are not, and `done_reason` is `stop`. Text still held back
//! when generation ends otherwise is sent at the end.

use std::borrow::Cow;

/// What one token's text turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Text that is safe to send (possibly empty while a partial match is held back).
    Emit(Cow<'static, str>),
    /// A stop sequence was generated: send this text, then end with `stop`.
    Stop(String),
}

/// The stop sequences of one generation and the text held back for them.
#[derive(Debug, Default)]
pub struct StopSequences {
    stops: Vec<String>,
    pending: String,
}

impl StopSequences {
    /// Matches `stops`; empty strings are ignored, as they would stop before the first token.
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds the next token's text.
    pub fn push(&mut self, text: &'static str) -> Scan {
        if self.stops.is_empty() {
            return Scan::Emit(Cow::Borrowed(text));
        }
        self.pending.push_str(text);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.pending.truncate(at);
            return Scan::Stop(std::mem::take(&mut self.pending));
        }
        let held = self.partial_suffix();
        let rest = self.pending.split_off(self.pending.len() - held);
        Scan::Emit(Cow::Owned(std::mem::replace(&mut self.pending, rest)))
    }

    /// The text held back, once generation has ended without a stop sequence.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of the pending text that begins some stop sequence.
    fn partial_suffix(&self) -> usize {
        self.pending
            .char_indices()
            .map(|(i, _)| &self.pending[i..])
            .find(|tail| self.stops.iter().any(|stop| stop.starts_with(tail)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(text: &str) -> Scan {
        Scan::Emit(Cow::Owned(text.to_owned()))
    }

    #[test]
    fn without_stop_sequences_text_passes_through() {
        let mut s = StopSequences::new(vec![String::new()]);
        assert_eq!(s.push("hello"), Scan::Emit(Cow::Borrowed("hello")));
        assert_eq!(s.flush(), "");
    }

    #[test]
    fn stops_before_the_sequence_and_drops_it() {
        let mut s = StopSequences::new(vec![" ".to_owned()]);
        assert_eq!(s.push("fox"), emit("fox"));
        assert_eq!(s.push(" jumps"), Scan::Stop(String::new()));
        let mut s = StopSequences::new(vec!["END".to_owned(), "um".to_owned()]);
        assert_eq!(s.push("a jumps over"), Scan::Stop("a j".to_owned()));
    }

    #[test]
    fn a_sequence_split_across_tokens_is_held_back_then_matched() {
        let mut s = StopSequences::new(vec!["lazy dog".to_owned()]);
        assert_eq!(s.push("the la"), emit("the "));
        assert_eq!(s.push("zy d"), emit(""));
        assert_eq!(s.push("og barks"), Scan::Stop(String::new()));
    }

    #[test]
    fn held_text_that_does_not_complete_a_sequence_is_released() {
        let mut s = StopSequences::new(vec!["lazy dog".to_owned()]);
        assert_eq!(s.push("so la"), emit("so "));
        assert_eq!(s.push("zy cat"), emit("lazy cat"));
        assert_eq!(s.push(" la"), emit(" "));
        assert_eq!(s.flush(), "la");
        assert_eq!(s.flush(), "");
    }

    #[test]
    fn partial_matches_respect_utf8_boundaries() {
        let mut s = StopSequences::new(vec!["éé".to_owned()]);
        assert_eq!(s.push("aé"), emit("a"));
        assert_eq!(s.push("é!"), Scan::Stop(String::new()));
    }
}
