//! Reading generation statistics off a response as it streams past, without buffering it: the
//! final NDJSON chunk (or the whole JSON body) carries `eval_count` and `eval_duration`, and
//! the load and prompt timings the scheduler learns from.

use std::time::Duration;

use serde::Deserialize;

use crate::schedule::Timings;

/// The longest line kept while waiting for its end; final chunks are small, so longer lines are
/// content, not statistics.
const MAX_LINE: usize = 64 * 1024;

#[derive(Deserialize)]
struct FinalChunk {
    eval_count: u64,
    eval_duration: u64,
    #[serde(default)]
    load_duration: u64,
    #[serde(default)]
    prompt_eval_count: u64,
    #[serde(default)]
    prompt_eval_duration: u64,
}

/// Scans response bytes line by line for the final chunk.
#[derive(Debug, Default)]
pub struct CompletionScanner {
    line: Vec<u8>,
    overflowed: bool,
    found: Option<Timings>,
}

impl CompletionScanner {
    /// Feeds the next piece of the response.
    pub fn feed(&mut self, mut data: &[u8]) {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            self.extend(&data[..end]);
            self.finish_line();
            data = &data[end + 1..];
        }
        self.extend(data);
    }

    /// The statistics, once the response has ended.
    pub fn finish(mut self) -> Option<Timings> {
        self.finish_line();
        self.found
    }

    fn extend(&mut self, part: &[u8]) {
        if self.line.len() + part.len() > MAX_LINE {
            self.overflowed = true;
            self.line.clear();
        } else if !self.overflowed {
            self.line.extend_from_slice(part);
        }
    }

    fn finish_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let was_overflowed = std::mem::replace(&mut self.overflowed, false);
        if was_overflowed || !contains(&line, b"\"eval_count\"") {
            return;
        }
        if let Ok(chunk) = serde_json::from_slice::<FinalChunk>(&line) {
            self.found = Some(Timings {
                load: Duration::from_nanos(chunk.load_duration),
                prompt_tokens: chunk.prompt_eval_count,
                prompt_duration: Duration::from_nanos(chunk.prompt_eval_duration),
                eval_tokens: chunk.eval_count,
                eval_duration: Duration::from_nanos(chunk.eval_duration),
            });
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_final_chunk_across_piece_boundaries() {
        let stream = b"{\"response\":\"a\",\"done\":false}\n{\"response\":\"\",\"done\":true,\"load_duration\":3000,\"prompt_eval_count\":7,\"prompt_eval_duration\":5000,\"eval_count\":42,\"eval_duration\":2000000000}\n";
        for split in [1, 10, 40, 70, stream.len()] {
            let mut scanner = CompletionScanner::default();
            for piece in stream.chunks(split) {
                scanner.feed(piece);
            }
            assert_eq!(
                scanner.finish(),
                Some(Timings {
                    load: Duration::from_micros(3),
                    prompt_tokens: 7,
                    prompt_duration: Duration::from_micros(5),
                    eval_tokens: 42,
                    eval_duration: Duration::from_secs(2),
                }),
                "split {split}"
            );
        }
    }

    #[test]
    fn a_single_json_body_without_newline_counts() {
        let mut scanner = CompletionScanner::default();
        scanner.feed(br#"{"response":"hi","done":true,"eval_count":3,"eval_duration":1000}"#);
        assert_eq!(scanner.finish().map(|t| t.eval_tokens), Some(3));
    }

    #[test]
    fn responses_without_statistics_give_none() {
        let mut scanner = CompletionScanner::default();
        scanner.feed(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n");
        assert_eq!(scanner.finish(), None);
        let mut huge = CompletionScanner::default();
        huge.feed(&vec![b'x'; MAX_LINE * 2]);
        huge.feed(b"\n");
        assert_eq!(huge.finish(), None);
    }
}
