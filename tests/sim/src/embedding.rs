//! Deterministic unit-length embedding vectors.
//!
//! Equal inputs give equal vectors and different inputs give nearly orthogonal ones, which is
//! all a client can check without a real model. `/api/embed` normalizes like Ollama does.

use crate::tokenizer::{self, Token};

/// The L2-normalized embedding of `tokens`, `dims` long.
pub fn embed(tokens: &[Token], dims: usize) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(tokenizer::digest(tokens));
    let mut v: Vec<f32> = (0..dims).map(|_| rng.f32() * 2.0 - 1.0).collect();
    normalize(&mut v);
    v
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_unit_length() {
        let a = embed(&[1, 2, 3], 64);
        assert_eq!(a, embed(&[1, 2, 3], 64));
        assert_ne!(a, embed(&[1, 2, 4], 64));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
