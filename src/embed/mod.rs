//! Embedders: the [`Embedder`] trait and its implementations — `local-minilm` (candle,
//! CPU) and `hash` (deterministic pseudo-vectors for tests and pipeline benchmarks only).
//! Embedders know nothing of timely; the runtime calls them on their own threads.

pub mod batcher;
pub mod hash;
pub mod local;

use thiserror::Error;

/// An embedding failure, knowing whether a retry may help.
#[derive(Debug, Error)]
pub enum EmbedError {
    /// The model or endpoint could not be loaded or reached; retrying may help.
    #[error("embedder unavailable: {0}")]
    Transient(String),
    /// The input can never be embedded (e.g. rejected by the model).
    #[error("embedding rejected: {0}")]
    Permanent(String),
}

impl EmbedError {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, EmbedError::Transient(_))
    }
}

/// Turns texts into vectors. Implementations may block (the runtime calls them on a
/// dedicated thread pool, never on a timely worker).
pub trait Embedder: Send + Sync {
    /// The model id written into every point's payload (`model_id`).
    fn model_id(&self) -> &str;
    /// The vector dimension.
    fn dimension(&self) -> usize;
    /// Tokens `text` costs (exact with the model's tokenizer, else an estimate).
    fn count_tokens(&self, text: &str) -> usize;
    /// Embed a batch; the result has one vector of `dimension()` per input, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
}
