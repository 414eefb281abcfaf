//! A stand-in tokenizer: words of up to six characters are one token, longer words are split
//! into four-character pieces, and a piece's id is a hash of its text.
//!
//! Real token ids do not matter to clients; what matters is that token counts grow with the text
//! the way they do for a real model (about four characters per token) and that equal text gives
//! equal ids, which is what the per-slot prefix cache compares.

/// A token id.
pub type Token = u32;

/// Ids below this are reserved, like the special and byte tokens of a SentencePiece vocabulary.
const FIRST_ID: u32 = 259;
/// The reserved ids of the special tokens, as in a SentencePiece ("llama") vocabulary; `/api/show`
/// reports them.
pub const UNKNOWN_TOKEN_ID: u32 = 0;
/// See [`UNKNOWN_TOKEN_ID`].
pub const BOS_TOKEN_ID: u32 = 1;
/// See [`UNKNOWN_TOKEN_ID`].
pub const EOS_TOKEN_ID: u32 = 2;
/// Ids are below this; also the vocabulary size `/api/show` reports.
pub const VOCAB_SIZE: u32 = 32_000;
const WHOLE_WORD: usize = 6;
const PIECE: usize = 4;

/// Appends the tokens of `text` to `out`.
pub fn tokenize_into(text: &str, out: &mut Vec<Token>) {
    for word in text.split_whitespace() {
        if word.chars().count() <= WHOLE_WORD {
            out.push(id(word, true));
            continue;
        }
        let mut start = 0;
        let mut chars = 0;
        for (i, _) in word.char_indices() {
            if chars == PIECE {
                out.push(id(&word[start..i], start == 0));
                start = i;
                chars = 0;
            }
            chars += 1;
        }
        out.push(id(&word[start..], start == 0));
    }
}

/// The tokens of `text`.
pub fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::with_capacity(text.len() / 4 + 1);
    tokenize_into(text, &mut out);
    out
}

/// FNV-1a of the piece, with word starts hashed apart from word continuations.
fn id(piece: &str, word_start: bool) -> Token {
    let mut hash: u64 = if word_start {
        0xcbf2_9ce4_8422_2325
    } else {
        0x8422_2325_cbf2_9ce4
    };
    for byte in piece.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    FIRST_ID + (hash % u64::from(VOCAB_SIZE - FIRST_ID)) as u32
}

/// A 64-bit digest of a token sequence, used to seed generation and embeddings.
pub fn digest(tokens: &[Token]) -> u64 {
    tokens.iter().fold(0x9e37_79b9_7f4a_7c15, |h: u64, &t| {
        (h ^ u64::from(t))
            .wrapping_mul(0x100_0000_01b3)
            .rotate_left(5)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_prefixes() {
        assert_eq!(tokenize("the quick fox").len(), 3);
        assert_eq!(tokenize("extraordinarily").len(), 4);
        let a = tokenize("hello there big kenobi");
        let b = tokenize("hello there big grievous");
        assert_eq!(a[..3], b[..3]);
        assert_ne!(a[3], b[3]);
        assert!(tokenize("").is_empty());
    }
}
