//! Embedders: the [`Embedder`] trait and its implementations — `local-minilm` (candle,
//! CPU), the HTTP embedders (`openai`, `tei`, `ollama`) and `hash` (deterministic
//! pseudo-vectors for tests and pipeline benchmarks only) — and `freshet embed-server`
//! ([`server`]), which serves a local model over those HTTP APIs.
//! Embedders know nothing of timely; the runtime calls them on their own threads.

pub mod batcher;
pub mod disk_cache;
pub mod hash;
pub mod http;
pub mod local;
pub mod server;

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
    /// The endpoint asked to slow down (HTTP 429, or a 503 with `Retry-After`): retried
    /// after at least `retry_after`, with smaller batches and fewer in flight.
    #[error("embedder throttled: {message}")]
    Throttled {
        /// What the endpoint said.
        message: String,
        /// How long it asked to wait (`Retry-After`, `retry-after-ms`).
        retry_after: Option<std::time::Duration>,
    },
}

impl EmbedError {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, EmbedError::Transient(_) | EmbedError::Throttled { .. })
    }

    /// How long the endpoint asked to wait before the next request, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            EmbedError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
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
