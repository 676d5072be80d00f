//! Vector sinks: the [`VectorSink`] trait (the seam for the Qdrant server sink) and the
//! embedded implementation on the Qdrant engine (`qdrant-edge`). Sinks know nothing of
//! timely; the runtime calls them off the timely threads. Every call returns only once the
//! write is durable (the acknowledgement the dataflow's capability waits for).

pub mod embedded;

use std::collections::HashMap;

use thiserror::Error;
use uuid::Uuid;

use crate::model::{ContentHash, Metadata};

/// A sink failure, knowing whether a retry may help.
#[derive(Debug, Error)]
pub enum SinkError {
    /// Storage or connection trouble; retrying may help.
    #[error("sink unavailable: {0}")]
    Transient(String),
    /// The request can never succeed (wrong dimension, invalid payload, …).
    #[error("sink rejected the request: {0}")]
    Permanent(String),
}

impl SinkError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient(_))
    }
}

/// One write, applied in order within a call.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkOp {
    /// Insert or replace points (vector + full payload).
    Upsert(Vec<SinkPoint>),
    /// Merge `payload` keys into the payload of `ids`.
    SetPayload {
        /// Points to update.
        ids: Vec<Uuid>,
        /// Keys to set.
        payload: Metadata,
    },
    /// Remove points.
    Delete(Vec<Uuid>),
}

/// A point to upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkPoint {
    /// Point id.
    pub id: Uuid,
    /// Vector.
    pub vector: Vec<f32>,
    /// Payload.
    pub payload: Metadata,
}

/// A stored point as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    /// Point id.
    pub id: Uuid,
    /// Payload.
    pub payload: Metadata,
    /// Vector, when asked for.
    pub vector: Option<Vec<f32>>,
}

/// A search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Point id.
    pub id: Uuid,
    /// Cosine similarity.
    pub score: f32,
    /// Payload.
    pub payload: Metadata,
}

/// Where vectors go: a collection of points with payloads.
pub trait VectorSink: Send + Sync {
    /// The collection's vector dimension.
    fn dimension(&self) -> usize;
    /// Apply writes in order; returns once durable.
    fn apply(&self, ops: Vec<SinkOp>) -> Result<(), SinkError>;
    /// Visit stored points in id order, `page` at a time, with or without vectors.
    fn scroll(&self, with_vectors: bool, page: usize, visit: &mut dyn FnMut(Vec<StoredPoint>))
        -> Result<(), SinkError>;
    /// Vectors already stored for any of `hashes` (payload `content_hash`) under `model_id`.
    fn vectors_by_hash(
        &self,
        model_id: &str,
        hashes: &[ContentHash],
    ) -> Result<HashMap<ContentHash, Vec<f32>>, SinkError>;
    /// Nearest points to `vector`, optionally filtered by payload `field == value`.
    fn search(&self, vector: Vec<f32>, k: usize, filter: &[(String, serde_json::Value)])
        -> Result<Vec<Hit>, SinkError>;
    /// Number of points.
    fn count(&self) -> Result<usize, SinkError>;
    /// Build indexes now (HNSW); the embedded engine calls this in the background.
    fn optimize(&self) -> Result<(), SinkError>;
}
