//! Vector sinks: the [`VectorSink`] trait (one collection) and the [`Catalog`] trait (the
//! collections and the aliases in front of them), implemented on the embedded Qdrant engine
//! (`qdrant-edge`, [`embedded`]) and on a Qdrant server over gRPC ([`qdrant`]). Sinks know
//! nothing of timely; the runtime calls them off the timely threads. Every write returns only
//! once it is durable (the acknowledgement the dataflow's capability waits for).
//!
//! The name a dataflow gives its collection is an alias of a versioned collection
//! `<name>__<model tag>` ([`versioned_name`]); [`open_for_writing`] resolves or creates it.

pub mod embedded;
pub mod qdrant;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use uuid::Uuid;

use crate::model::{ContentHash, Metadata};

/// A sink failure, knowing whether a retry may help.
#[derive(Debug, Error)]
pub enum SinkError {
    /// Storage or connection trouble; retrying may help.
    #[error("sink unavailable: {0}")]
    Transient(String),
    /// The server is overloaded and asked to wait (gRPC resource exhausted).
    #[error("sink overloaded: {message} (retry after {}s)", after.as_secs_f64())]
    Throttled {
        /// The server's message.
        message: String,
        /// How long it asked to wait.
        after: Duration,
    },
    /// The request can never succeed (wrong dimension, invalid payload, …).
    #[error("sink rejected the request: {0}")]
    Permanent(String),
}

impl SinkError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient(_) | SinkError::Throttled { .. })
    }

    /// The least wait before a retry the server asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Throttled { after, .. } => Some(*after),
            _ => None,
        }
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
    /// The points of these documents (payload `doc_id`), with or without vectors.
    fn points_of_docs(&self, docs: &[String], with_vectors: bool) -> Result<Vec<StoredPoint>, SinkError>;
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
    /// Stop while a background index build may still be running, without waiting for it:
    /// make every write durable and leave the collection so that the next open recovers
    /// only what the build could have left behind. Returns whether a build was running
    /// (a Qdrant server builds its indexes by itself: nothing to do).
    fn stop_during_build(&self) -> Result<bool, SinkError> {
        Ok(false)
    }
    /// What opening the collection found of a crash and repaired (a Qdrant server
    /// recovers by itself and reports nothing here).
    fn recovery(&self) -> SinkRecovery {
        SinkRecovery::default()
    }
}

/// Evidence of a crash that opening a collection found, and what it did about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkRecovery {
    /// The collection was not closed cleanly (a crash or kill).
    pub unclean_close: bool,
    /// Operations of the engine's WAL re-applied.
    pub wal_operations_replayed: usize,
    /// Earlier WAL replays that a crash interrupted (their partial copies are skipped).
    pub interrupted_replays: usize,
    /// Points stored twice (a crash during an index build), rewritten once.
    pub duplicate_points_repaired: usize,
    /// Storage pages a crash left uncovered by their segment's bitmask, removed so that the
    /// segment loads (nothing was written to them; the WAL replay restores the rest).
    pub uncovered_pages_removed: usize,
}

/// How a collection is created (from the dataflow's `[sink]` and the embedder).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionParams {
    /// Vector dimension.
    pub dimension: usize,
    /// Distance.
    pub distance: crate::config::Distance,
    /// HNSW `m`.
    pub hnsw_m: Option<u64>,
    /// HNSW `ef_construct`.
    pub hnsw_ef_construct: Option<u64>,
    /// Vectors on disk.
    pub on_disk_vectors: bool,
    /// Payloads on disk.
    pub on_disk_payload: bool,
    /// Payload indexes: always `doc_id`, `content_hash`, `model_id` (keyword), then the
    /// dataflow's filterable fields.
    pub indexes: Vec<(String, crate::config::IndexKind)>,
}

impl CollectionParams {
    /// A cosine collection of `dimension` with the engine's defaults and freshet's own
    /// payload indexes only.
    pub fn basic(dimension: usize) -> Self {
        Self::of(
            &crate::config::SinkSpec {
                kind: crate::config::SinkKind::Embedded,
                collection: String::new(),
                distance: crate::config::Distance::Cosine,
                hnsw_m: None,
                hnsw_ef_construct: None,
                on_disk_vectors: false,
                on_disk_payload: false,
                filterable: Default::default(),
            },
            dimension,
        )
    }

    /// The parameters a dataflow asks for, for vectors of `dimension`.
    pub fn of(spec: &crate::config::SinkSpec, dimension: usize) -> Self {
        use crate::config::IndexKind;
        use crate::model::keys;
        let mut indexes: Vec<(String, IndexKind)> = [keys::DOC_ID, keys::CONTENT_HASH, keys::MODEL_ID]
            .into_iter()
            .map(|k| (k.to_string(), IndexKind::Keyword))
            .collect();
        indexes.extend(spec.filterable.iter().map(|(k, v)| (k.clone(), *v)));
        Self {
            dimension,
            distance: spec.distance,
            hnsw_m: spec.hnsw_m,
            hnsw_ef_construct: spec.hnsw_ef_construct,
            on_disk_vectors: spec.on_disk_vectors,
            on_disk_payload: spec.on_disk_payload,
            indexes,
        }
    }
}

/// The collections of a store (a data directory, a Qdrant server) and their aliases.
pub trait Catalog: Send + Sync {
    /// Where the store is (for messages).
    fn describe(&self) -> String;
    /// The collection `name` denotes: an alias's target, or `name` if it is a collection,
    /// or `None`.
    fn resolve(&self, name: &str) -> Result<Option<String>, SinkError>;
    /// Open an existing collection.
    fn open(&self, collection: &str) -> Result<Arc<dyn VectorSink>, SinkError>;
    /// Create a collection (an error if it exists) and open it.
    fn create(&self, collection: &str, params: &CollectionParams) -> Result<Arc<dyn VectorSink>, SinkError>;
    /// Point `alias` at `collection` in one atomic step (replacing its previous target):
    /// readers see the old target or the new one, never neither.
    fn switch_alias(&self, alias: &str, collection: &str) -> Result<(), SinkError>;
    /// Drop a collection (and any alias pointing at it).
    fn delete_collection(&self, collection: &str) -> Result<(), SinkError>;
    /// Names of all collections.
    fn collections(&self) -> Result<Vec<String>, SinkError>;
}

/// The part of a collection name that names the model: lower-case, `[a-z0-9-]`.
///
/// ```
/// assert_eq!(freshet::sink::model_tag("sentence-transformers/all-MiniLM-L6-v2"), "sentence-transformers-all-minilm-l6-v2");
/// assert_eq!(freshet::sink::model_tag("freshet/hash-16"), "freshet-hash-16");
/// ```
pub fn model_tag(model_id: &str) -> String {
    let mut tag = String::with_capacity(model_id.len());
    for c in model_id.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            tag.push(c);
        } else if !tag.ends_with('-') {
            tag.push('-');
        }
    }
    tag.trim_matches('-').to_string()
}

/// The versioned collection behind alias `name` for a model: `<name>__<model tag>`.
pub fn versioned_name(name: &str, model_id: &str) -> String {
    format!("{name}__{}", model_tag(model_id))
}

/// The model tag a versioned collection's name carries: `<name>__<tag>`, or
/// `<name>__<tag>--<generation>` after a same-model reindex; `None` for a bare name (a
/// collection created before freshet used aliases).
///
/// ```
/// assert_eq!(freshet::sink::tag_of("articles__freshet-hash-16--2"), Some("freshet-hash-16"));
/// assert_eq!(freshet::sink::tag_of("articles"), None);
/// ```
pub fn tag_of(collection: &str) -> Option<&str> {
    let (_, rest) = collection.split_once("__")?;
    rest.split("--").next()
}

/// Whether a collection was built for `model_id`, as far as its name says (a bare name
/// says nothing: the payloads' `model_id` decide).
pub fn built_for(collection: &str, model_id: &str) -> bool {
    tag_of(collection).is_none_or(|t| t == model_tag(model_id))
}

/// The collection a pipeline writes: `name` resolved through its alias, or, when nothing
/// has that name yet, a new `<name>__<model tag>` with `name` made its alias. Refuses a
/// collection of another dimension, and a versioned collection of another model (the
/// payloads' `model_id` are checked again when state is rebuilt).
pub fn open_for_writing(
    catalog: &dyn Catalog,
    name: &str,
    model_id: &str,
    params: &CollectionParams,
) -> Result<(String, Arc<dyn VectorSink>), SinkError> {
    match catalog.resolve(name)? {
        Some(physical) => {
            if !built_for(&physical, model_id) {
                return Err(SinkError::Permanent(format!(
                    "`{name}` is collection `{physical}`, built for another model than `{model_id}` \
                     (run `freshet reindex --embedder …` to build and switch to a collection for it)"
                )));
            }
            let sink = catalog.open(&physical)?;
            if sink.dimension() != params.dimension {
                return Err(SinkError::Permanent(format!(
                    "collection `{physical}` holds vectors of dimension {}, the embedder `{model_id}` produces {}; \
                     run `freshet reindex` to switch models",
                    sink.dimension(),
                    params.dimension
                )));
            }
            Ok((physical, sink))
        }
        None => {
            let physical = versioned_name(name, model_id);
            let sink = match catalog.resolve(&physical)? {
                Some(_) => catalog.open(&physical)?,
                // Processes of a cluster start together: another may create it first.
                None => match catalog.create(&physical, params) {
                    Ok(s) => s,
                    Err(e) => match catalog.resolve(&physical)? {
                        Some(_) => {
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            catalog.open(&physical)?
                        }
                        None => return Err(e),
                    },
                },
            };
            catalog.switch_alias(name, &physical)?;
            tracing::info!(alias = name, collection = %physical, store = %catalog.describe(), "collection created behind its alias");
            Ok((physical, sink))
        }
    }
}
