//! One collection on disk: a qdrant-edge `EdgeShard` in its own directory, with a single
//! unnamed dense vector. Owns creating and loading the shard, applying write operations in
//! order and making them durable before returning (qdrant-edge 0.7.1 does not replay its WAL
//! on load, so every write is followed by a flush of the segments), building the HNSW index,
//! and closing the shard.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Once;
use std::time::Duration;

use qdrant_edge::{
    CountRequest, Distance, EdgeConfig, EdgeConfigBuilder, EdgeOptimizersConfig, EdgeShard, EdgeVectorParams, Filter,
    HnswIndexConfig, PointId, PointInsertOperations, PointOperations, PointStructPersisted, ScrollRequest,
    UpdateOperation, VectorStructPersisted, WalOptions, WithPayloadInterface, WithVector,
};
use serde_json::json;
use tracing::warn;

use crate::convert::{stored_dense, DEFAULT_VECTOR};
use crate::error::EmulatorError;

/// What a new collection is created with (from a `CreateCollection` request).
#[derive(Debug, Clone)]
pub struct CollectionSpec {
    /// Dimension of the dense vector.
    pub dimension: usize,
    /// Distance function of the dense vector.
    pub distance: Distance,
    /// Keep the vectors on disk (mmap) rather than in RAM.
    pub on_disk_vectors: Option<bool>,
    /// HNSW parameters of the vector (overrides `hnsw`).
    pub vector_hnsw: Option<HnswIndexConfig>,
    /// HNSW parameters of the collection.
    pub hnsw: Option<HnswIndexConfig>,
    /// Keep payloads on disk rather than in RAM.
    pub on_disk_payload: bool,
    /// Optimiser parameters (segment sizes, indexing threshold, vacuum).
    pub optimizers: EdgeOptimizersConfig,
    /// Write-ahead-log segment size and preallocation.
    pub wal: WalOptions,
}

/// An open collection.
pub struct Collection {
    /// Shared with a background index build, which runs without the collection's lock.
    shard: Arc<EdgeShard>,
    path: PathBuf,
    /// Operation ids handed out in `UpdateResult`s (they restart at 1 with the process).
    last_operation_id: u64,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection").field("path", &self.path).finish()
    }
}

thread_local! {
    static IN_FLUSH: Cell<bool> = const { Cell::new(false) };
}

/// qdrant-edge 0.7.1's `flush()` panics (instead of waiting) when another thread briefly
/// holds the WAL or segment lock. Flushes run under `catch_unwind` and are retried; this hook
/// keeps those expected, recovered panics out of stderr. Installed once at startup.
pub fn install_flush_panic_filter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_FLUSH.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Run `f` (which may hit the engine's flush panic) with the panic filter on.
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    IN_FLUSH.with(|flag| flag.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_FLUSH.with(|flag| flag.set(false));
    r
}

impl Collection {
    /// Create a new collection in the (existing, empty) directory `path` and flush it.
    pub fn create(path: &Path, spec: &CollectionSpec) -> Result<Self, EmulatorError> {
        let params = EdgeVectorParams {
            size: spec.dimension,
            distance: spec.distance,
            on_disk: spec.on_disk_vectors,
            multivector_config: None,
            datatype: None,
            quantization_config: None,
            hnsw_config: spec.vector_hnsw,
        };
        let mut builder = EdgeConfigBuilder::new()
            .vector(DEFAULT_VECTOR, params)
            .on_disk_payload(spec.on_disk_payload)
            .optimizers(spec.optimizers.clone())
            .wal_options(spec.wal.clone());
        if let Some(hnsw) = spec.hnsw {
            builder = builder.hnsw_config(hnsw);
        }
        let shard = EdgeShard::new(path, builder.build()).map_err(EmulatorError::engine)?;
        let collection = Self { shard: Arc::new(shard), path: path.to_path_buf(), last_operation_id: 0 };
        collection.flush()?;
        Ok(collection)
    }

    /// Open the collection stored in `path` (repairing points stored twice, see
    /// [`Self::repair_duplicates`]).
    pub fn load(path: &Path) -> Result<Self, EmulatorError> {
        let shard = EdgeShard::load(path, None).map_err(EmulatorError::engine)?;
        let mut collection = Self { shard: Arc::new(shard), path: path.to_path_buf(), last_operation_id: 0 };
        collection.vector_params()?;
        let repaired = collection.repair_duplicates()?;
        if repaired > 0 {
            warn!(path = %path.display(), points = repaired, "repaired points stored twice (killed mid-optimisation)");
        }
        Ok(collection)
    }

    /// An optimisation writes its new segment before it removes the segments it replaces;
    /// killed in between, the collection holds both on disk. Qdrant deduplicates points on
    /// load, qdrant-edge 0.7.1 does not (its count then sees such points twice). Find the
    /// points present in more than one segment and rewrite each once (its newest version).
    /// Returns how many points were rewritten.
    fn repair_duplicates(&mut self) -> Result<usize, EmulatorError> {
        let total = self.shard.count(CountRequest { filter: None, exact: true }).map_err(EmulatorError::engine)?;
        let ids = self.all_ids()?;
        if ids.len() == total {
            return Ok(0);
        }
        let mut twice = Vec::new();
        for id in ids {
            let filter: Filter =
                serde_json::from_value(json!({ "must": [{ "has_id": [id] }] })).map_err(EmulatorError::internal)?;
            let copies =
                self.shard.count(CountRequest { filter: Some(filter), exact: true }).map_err(EmulatorError::engine)?;
            if copies > 1 {
                twice.push(id);
            }
        }
        let records = self
            .shard
            .retrieve(&twice, Some(WithPayloadInterface::Bool(true)), Some(WithVector::Bool(true)))
            .map_err(EmulatorError::engine)?;
        let points = records
            .into_iter()
            .map(|r| {
                let vector = r.vector.and_then(stored_dense).ok_or_else(|| {
                    EmulatorError::Internal(format!("point {} stored twice has no dense vector", r.id))
                })?;
                Ok(PointStructPersisted { id: r.id, vector: VectorStructPersisted::Single(vector), payload: r.payload })
            })
            .collect::<Result<Vec<_>, EmulatorError>>()?;
        let repaired = points.len();
        self.apply(vec![
            UpdateOperation::PointOperation(PointOperations::DeletePoints { ids: twice }),
            UpdateOperation::PointOperation(PointOperations::UpsertPoints(PointInsertOperations::PointsList(points))),
        ])?;
        Ok(repaired)
    }

    /// The ids of all points (each once).
    fn all_ids(&self) -> Result<Vec<PointId>, EmulatorError> {
        let mut ids = Vec::new();
        let mut offset = None;
        loop {
            let (records, next) = self
                .shard
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(10_000),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(false)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(EmulatorError::engine)?;
            ids.extend(records.into_iter().map(|r| r.id));
            match next {
                Some(next) => offset = Some(next),
                None => return Ok(ids),
            }
        }
    }

    /// The engine shard, for reads.
    pub fn shard(&self) -> &EdgeShard {
        &self.shard
    }

    /// A copy of the shard's configuration.
    pub fn config(&self) -> EdgeConfig {
        self.shard.config().clone()
    }

    /// Dimension and distance of the collection's unnamed dense vector.
    pub fn vector_params(&self) -> Result<(usize, Distance), EmulatorError> {
        let config = self.shard.config();
        match (config.vectors.get(DEFAULT_VECTOR), config.vectors.len(), config.sparse_vectors.is_empty()) {
            (Some(v), 1, true) => Ok((v.size, v.distance)),
            _ => Err(EmulatorError::Internal(format!(
                "the collection at {} does not have exactly one unnamed dense vector",
                self.path.display()
            ))),
        }
    }

    /// Apply `ops` strictly in order, then flush. Stops at the first failing operation (the
    /// ones before it stay applied, as in Qdrant); whatever was applied is flushed either way.
    /// Returns one operation id per operation.
    pub fn apply(&mut self, ops: Vec<UpdateOperation>) -> Result<Vec<u64>, EmulatorError> {
        let mut ids = Vec::with_capacity(ops.len());
        let mut failure = None;
        for op in ops {
            if let Err(e) = self.shard.update(op) {
                failure = Some(EmulatorError::engine(e));
                break;
            }
            self.last_operation_id += 1;
            ids.push(self.last_operation_id);
        }
        self.flush()?;
        match failure {
            Some(e) => Err(e),
            None => Ok(ids),
        }
    }

    /// Make everything applied so far durable (see [`install_flush_panic_filter`]).
    pub fn flush(&self) -> Result<(), EmulatorError> {
        flush_shard(&self.shard)
    }

    /// The shard, for an index build that runs without the collection's lock (see
    /// [`optimize_shard`]).
    pub fn shard_for_build(&self) -> Arc<EdgeShard> {
        Arc::clone(&self.shard)
    }

    /// Flush and close the shard.
    pub fn close(self) -> Result<(), EmulatorError> {
        let flushed = self.flush();
        // Dropping the shard flushes again; that flush can panic like any other.
        if quietly(move || drop(self)).is_err() {
            return Err(EmulatorError::Internal("the engine panicked while closing the collection".into()));
        }
        flushed
    }
}

/// Make everything applied to `shard` so far durable (see [`install_flush_panic_filter`]).
pub fn flush_shard(shard: &EdgeShard) -> Result<(), EmulatorError> {
    for _ in 0..500 {
        if quietly(|| shard.flush()).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(EmulatorError::Internal("the engine stayed busy; could not flush the collection".into()))
}

/// Run the engine's optimisers on `shard`, then flush. Qdrant's optimiser builds the new
/// segments beside the live ones (proxies take the writes made meanwhile), so writes need
/// not wait: the build runs without the collection's lock, as a Qdrant server's does.
pub fn optimize_shard(shard: &EdgeShard) -> Result<bool, EmulatorError> {
    let optimized = shard.optimize().map_err(EmulatorError::engine)?;
    flush_shard(shard)?;
    Ok(optimized)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec() -> CollectionSpec {
        CollectionSpec {
            dimension: 2,
            distance: Distance::Dot,
            on_disk_vectors: None,
            vector_hnsw: None,
            hnsw: None,
            on_disk_payload: true,
            optimizers: EdgeOptimizersConfig::default(),
            wal: WalOptions::default(),
        }
    }

    #[test]
    fn applied_writes_survive_reopening() {
        install_flush_panic_filter();
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collection::create(dir.path(), &spec()).unwrap();
        let upsert =
            UpdateOperation::PointOperation(PointOperations::UpsertPoints(PointInsertOperations::PointsList(vec![
                PointStructPersisted {
                    id: PointId::NumId(1),
                    vector: VectorStructPersisted::Single(vec![1.0, 0.0]),
                    payload: None,
                },
            ])));
        assert_eq!(c.apply(vec![upsert]).unwrap(), vec![1]);
        c.close().unwrap();
        let c = Collection::load(dir.path()).unwrap();
        assert_eq!(c.vector_params().unwrap(), (2, Distance::Dot));
        let n = c.shard().count(CountRequest { filter: None, exact: true }).unwrap();
        assert_eq!(n, 1);
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// A segment on disk twice — what a kill in the middle of an optimisation leaves — is
    /// repaired on load: every point once, with its payload.
    #[test]
    fn points_stored_twice_are_repaired_on_load() {
        install_flush_panic_filter();
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collection::create(dir.path(), &spec()).unwrap();
        let points = (1..=3u64)
            .map(|i| PointStructPersisted {
                id: PointId::NumId(i),
                vector: VectorStructPersisted::Single(vec![i as f32, 1.0]),
                payload: Some(qdrant_edge::Payload(serde_json::Map::from_iter([("i".to_string(), json!(i))]))),
            })
            .collect();
        c.apply(vec![UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        ))])
        .unwrap();
        c.close().unwrap();
        let segments = dir.path().join("segments");
        let segment = std::fs::read_dir(&segments).unwrap().next().unwrap().unwrap().path();
        copy_dir(&segment, &segments.join(uuid::Uuid::new_v4().to_string()));
        {
            let raw = EdgeShard::load(dir.path(), None).unwrap();
            let seen = raw.count(CountRequest { filter: None, exact: true }).unwrap();
            assert_eq!(seen, 6, "without the repair the engine counts every point twice");
        }

        let c = Collection::load(dir.path()).unwrap();
        assert_eq!(c.shard().count(CountRequest { filter: None, exact: true }).unwrap(), 3);
        let records = c
            .shard()
            .retrieve(&[PointId::NumId(2)], Some(WithPayloadInterface::Bool(true)), Some(WithVector::Bool(true)))
            .unwrap();
        assert_eq!(records[0].payload.as_ref().unwrap().0["i"], json!(2));
        assert_eq!(records[0].vector.clone().and_then(stored_dense), Some(vec![2.0, 1.0]));
    }
}
