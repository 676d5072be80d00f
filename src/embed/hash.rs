//! The `hash` embedder: deterministic pseudo-vectors derived from the SHA-256 of the text.
//!
//! **For tests and pipeline benchmarks only** — the vectors carry no meaning, so search
//! results are arbitrary. It lets the whole pipeline run without model weights, and an
//! oracle can predict every vector exactly from a chunk's content hash.

use sha2::{Digest, Sha256};

use super::{EmbedError, Embedder};
use crate::model::ContentHash;

/// Deterministic pseudo-vectors (see module docs).
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dimension: usize,
    seed: u64,
    model_id: String,
    /// Appends one line per call (the number of texts) — how tests count embedding spend
    /// across crashes.
    call_log: Option<std::path::PathBuf>,
}

impl HashEmbedder {
    /// A hash embedder producing vectors of `dimension` floats.
    pub fn new(dimension: usize) -> Self {
        Self { dimension, seed: 0, model_id: format!("freshet/hash-{dimension}"), call_log: None }
    }

    /// Another "model" of the same dimension (other vectors, model id
    /// `freshet/hash-<dimension>-seed<seed>`); seed 0 is [`HashEmbedder::new`].
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        if seed != 0 {
            self.model_id = format!("freshet/hash-{}-seed{seed}", self.dimension);
        }
        self
    }

    /// Also append the number of texts of every call to `path` (one line, written before
    /// the vectors are returned).
    pub fn with_call_log(mut self, path: std::path::PathBuf) -> Self {
        self.call_log = Some(path);
        self
    }

    /// The vector for a content hash (what [`Embedder::embed`] returns for a text whose
    /// SHA-256 is `hash`), L2-normalised.
    pub fn vector_for(&self, hash: &ContentHash) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.dimension);
        let mut counter: u32 = 0;
        while out.len() < self.dimension {
            let mut h = Sha256::new();
            h.update(hash.0);
            h.update(counter.to_le_bytes());
            if self.seed != 0 {
                h.update(self.seed.to_le_bytes());
            }
            let block = h.finalize();
            for pair in block.chunks_exact(2) {
                if out.len() == self.dimension {
                    break;
                }
                let v = u16::from_le_bytes([pair[0], pair[1]]);
                out.push(f32::from(v) / 32767.5 - 1.0);
            }
            counter += 1;
        }
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        out.iter_mut().for_each(|x| *x /= norm);
        out
    }
}

impl Embedder for HashEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn count_tokens(&self, text: &str) -> usize {
        estimate_tokens(text)
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if let Some(path) = &self.call_log {
            use std::io::Write as _;
            let hashes: Vec<String> = texts.iter().map(|t| ContentHash::of(t).to_hex()).collect();
            let line = format!("{} {}\n", texts.len(), hashes.join(" "));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| EmbedError::Permanent(format!("call log {}: {e}", path.display())))?;
        }
        Ok(texts.iter().map(|t| self.vector_for(&ContentHash::of(t))).collect())
    }
}

/// A tokenizer-free token estimate: one token per 4 bytes, at least one per word.
pub fn estimate_tokens(text: &str) -> usize {
    let words = text.split_whitespace().count();
    words.max(text.len().div_ceil(4)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_normalised_and_distinct() {
        let e = HashEmbedder::new(16);
        let a = e.embed(&["alpha", "beta", "alpha"]).expect("embed");
        assert_eq!(a[0], a[2]);
        assert_ne!(a[0], a[1]);
        assert_eq!(a[0].len(), 16);
        let norm: f32 = a[1].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
