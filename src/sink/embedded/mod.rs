//! The embedded sink: the Qdrant engine (`qdrant-edge` 0.7.1) in-process, one directory per
//! collection under `<data_dir>/collections/<name>/`, and the aliases in front of them in
//! `<data_dir>/aliases.json` ([`EmbeddedCatalog`]; replaced atomically by rename). Writes
//! are durable when `apply` returns. HNSW indexes are built by [`VectorSink::optimize`],
//! which the runtime calls from a background thread — never on the write path.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::Duration;

use qdrant_edge::{
    Distance, EdgeConfigBuilder, EdgeShard, EdgeVectorParams, Filter, PayloadOps, PointId, PointOperations,
    PointStructPersisted, ScoringQuery, ScrollRequest, SetPayloadOp, UpdateOperation, WithPayloadInterface, WithVector,
};
use serde_json::json;
use uuid::Uuid;

pub mod wal;

use super::{Catalog, CollectionParams, Hit, SinkError, SinkOp, SinkPoint, SinkRecovery, StoredPoint, VectorSink};
use crate::config::IndexKind;
use crate::model::{keys, ContentHash, Metadata};

/// A collection in the embedded Qdrant engine.
pub struct EmbeddedSink {
    shard: EdgeShard,
    dimension: usize,
    path: PathBuf,
    /// Serialises writes and their flush (the engine's flush must not race an update).
    write_lock: Mutex<()>,
    /// Exclusive lock on the collection directory: one process at a time.
    _dir_lock: std::fs::File,
    /// What the open found of a crash and repaired.
    recovery: SinkRecovery,
    /// The WAL's end when the running index build started (flushed then), if one runs.
    building: Mutex<Option<u64>>,
    /// The newest closed WAL segment already synced (see [`wal::sync`]).
    wal_synced: Mutex<Option<u64>>,
    /// A lower bound of the WAL's end (the number after its last entry), kept without
    /// reading the WAL: its end at open plus one per successful update since (an update
    /// that fails may or may not have logged its entry; not counting it keeps the bound).
    wal_next: std::sync::atomic::AtomicU64,
}

thread_local! {
    static IN_FLUSH: Cell<bool> = const { Cell::new(false) };
}

/// qdrant-edge 0.7.1 does not replay its WAL on load, so a write is durable only once the
/// segments are flushed; its `flush()` panics (instead of waiting) when the background
/// optimiser briefly holds the segment lock. We flush under `catch_unwind` and retry; this
/// hook keeps those expected, recovered panics out of stderr.
fn install_flush_panic_filter() {
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

/// File in a collection's directory that says it was closed cleanly (see
/// `repair_duplicates`, which a crash makes necessary).
const CLEAN_MARKER: &str = "freshet.clean";

/// The page of points a duplicate repair is rewriting (see `repair_duplicates`).
const REPAIR_JOURNAL: &str = "freshet.repair.json";

/// The engine's WAL position up to which the segments are known whole — written when the
/// collection is created or closed cleanly — and the WAL ranges that recoveries since
/// appended (copies of earlier entries, skipped by the next replay; see `replay_wal`).
const WAL_CHECKPOINT: &str = "freshet.wal-checkpoint";

/// A write slower than this is logged (at debug) with where its time went.
const SLOW_WRITE: Duration = Duration::from_millis(250);

/// What an unclean open replays.
struct Replay {
    ops: Vec<UpdateOperation>,
    /// Earlier replays a crash interrupted.
    interrupted: usize,
    checkpoint: Checkpoint,
    /// The WAL's end before the replay.
    wal_end: u64,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    /// WAL entries before this number are in the segments.
    wal_end: u64,
    /// `[start, end)` ranges of entries written by replays after this checkpoint. A replay
    /// records its range, open-ended (`end` = `u64::MAX`), before it appends anything, and
    /// closes it when done: a replay a crash interrupted leaves an open range, which covers
    /// everything up to the WAL's end (nothing else writes while a replay runs).
    #[serde(default)]
    replayed: Vec<[u64; 2]>,
}

/// The `end` of a replay's range while it runs (see [`Checkpoint::replayed`]).
const REPLAY_RUNNING: u64 = u64::MAX;

impl Drop for EmbeddedSink {
    fn drop(&mut self) {
        let _guard = self.write_lock.lock();
        if self.flush().is_ok() && self.checkpoint(None).is_ok() {
            let _ = std::fs::File::create(self.path.join(CLEAN_MARKER)).and_then(|f| f.sync_all());
        }
    }
}

impl std::fmt::Debug for EmbeddedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSink").field("path", &self.path).field("dimension", &self.dimension).finish()
    }
}

fn transient(e: impl std::fmt::Display) -> SinkError {
    SinkError::Transient(e.to_string())
}

/// The directory of a collection under a data directory.
pub fn collection_dir(data_dir: &Path, collection: &str) -> PathBuf {
    data_dir.join("collections").join(collection)
}

impl EmbeddedSink {
    /// Open the collection, creating it (cosine distance, `dimension`, payload indexes on
    /// `doc_id`, `content_hash` and `model_id`) if it does not exist. Refuses a collection of
    /// another dimension.
    pub fn open(data_dir: &Path, collection: &str, dimension: usize) -> Result<Self, SinkError> {
        let params = CollectionParams::basic(dimension);
        Self::open_with(data_dir, collection, Some(&params))
    }

    /// Create the collection with `params` if it does not exist, else open it (refusing
    /// another dimension).
    pub fn open_or_create(data_dir: &Path, collection: &str, params: &CollectionParams) -> Result<Self, SinkError> {
        Self::open_with(data_dir, collection, Some(params))
    }

    /// Open an existing collection with the dimension it was created with (for reading:
    /// export, search), without needing the embedder.
    pub fn open_existing(data_dir: &Path, collection: &str) -> Result<Self, SinkError> {
        Self::open_with(data_dir, collection, None)
    }

    /// Whether an index build ([`VectorSink::optimize`]) is running.
    pub fn build_running(&self) -> bool {
        self.building.lock().map(|b| b.is_some()).unwrap_or(false)
    }

    /// Whether a collection exists under `data_dir`.
    pub fn exists(data_dir: &Path, collection: &str) -> bool {
        collection_dir(data_dir, collection).join("edge_config.json").exists()
    }

    fn open_with(data_dir: &Path, collection: &str, create: Option<&CollectionParams>) -> Result<Self, SinkError> {
        let path = collection_dir(data_dir, collection);
        let exists = Self::exists(data_dir, collection);
        let missing = || {
            SinkError::Permanent(format!(
                "no collection `{collection}` under {} (run the pipeline first)",
                data_dir.display()
            ))
        };
        if !exists && create.is_none() {
            return Err(missing());
        }
        std::fs::create_dir_all(&path).map_err(transient)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("freshet.lock"))
            .map_err(transient)?;
        if lock.try_lock().is_err() {
            return Err(SinkError::Permanent(format!(
                "collection `{collection}` at {} is open in another freshet process (stop it first)",
                path.display()
            )));
        }
        let dimension = create.map(|p| p.dimension);
        // Written when the collection is closed; missing after a crash.
        let marker = path.join(CLEAN_MARKER);
        let clean = marker.exists();
        // What the WAL holds beyond the last checkpoint, read before the engine opens it.
        let replay = if exists && !clean { Some(Self::wal_since_checkpoint(&path)?) } else { None };
        if exists && clean {
            Self::prune_wal(&path);
        }
        let mut uncovered_pages_removed = 0;
        let (shard, dimension) = match (exists, create) {
            (true, _) => {
                let (shard, removed) = Self::load_shard(&path)?;
                uncovered_pages_removed = removed;
                let existing = shard.config().vectors.values().next().map(|v| v.size);
                match (existing, dimension) {
                    (Some(have), None) => (shard, have),
                    (Some(have), Some(want)) if have == want => (shard, have),
                    (_, want) => {
                        return Err(SinkError::Permanent(format!(
                            "collection `{collection}` at {} has vectors of dimension {existing:?}, the embedder \
                             produces {want:?}; use another collection (or reindex)",
                            path.display()
                        )))
                    }
                }
            }
            (false, Some(params)) => (Self::create(&path, params)?, params.dimension),
            (false, None) => return Err(missing()),
        };
        install_flush_panic_filter();
        if clean {
            std::fs::remove_file(&marker).map_err(transient)?;
        }
        let mut sink = Self {
            shard,
            dimension,
            path,
            write_lock: Mutex::new(()),
            _dir_lock: lock,
            recovery: SinkRecovery::default(),
            building: Mutex::new(None),
            wal_synced: Mutex::new(None),
            wal_next: std::sync::atomic::AtomicU64::new(0),
        };
        if let Some(replay) = replay {
            // First the WAL (which ends with the deletes of a repair a crash interrupted,
            // if any), then the repair's journal and the duplicate check.
            let interrupted_replays = replay.interrupted;
            let wal_operations_replayed = sink.replay_wal(replay)?;
            let duplicate_points_repaired = sink.repair_duplicates()?;
            sink.recovery = SinkRecovery {
                unclean_close: true,
                wal_operations_replayed,
                interrupted_replays,
                duplicate_points_repaired,
                uncovered_pages_removed,
            };
        }
        if !exists {
            sink.flush()?;
            sink.checkpoint(None)?;
        }
        sink.wal_next.store(sink.wal_end()?, std::sync::atomic::Ordering::Relaxed);
        Ok(sink)
    }

    /// Load the engine's shard, repairing what a kill can leave in qdrant-edge 0.7.1's
    /// gridstore (payload storage): it creates a page file before it extends the bitmask
    /// that covers it, and a kill in between leaves a page no bitmask covers, which the
    /// segment refuses to load ("Inconsistent number of gridstore pages … expected 1, but
    /// found 2"). Nothing was written to such a page (values go into a page after it is
    /// covered, and neither the bitmask nor the tracker pointing into it were flushed since,
    /// or the page would be covered): it is removed and the load tried again. The WAL
    /// replay that follows an unclean close restores whatever the segments lack.
    /// Regression (issue 13, seed 102 of `scripts/crash-test`: the collection could not be
    /// opened after a kill).
    fn load_shard(path: &Path) -> Result<(EdgeShard, usize), SinkError> {
        let mut removed = 0;
        loop {
            let error = match EdgeShard::load(path, None) {
                Ok(shard) => return Ok((shard, removed)),
                Err(e) => e,
            };
            let message = error.to_string();
            let Some((dir, expected, found)) = uncovered_pages(&message) else { return Err(transient(error)) };
            if found <= expected || !dir.starts_with(path) || removed >= 1024 {
                return Err(transient(error));
            }
            for n in expected..found {
                let page = dir.join(format!("page_{n}.dat"));
                tracing::warn!(
                    page = %page.display(),
                    "removing a storage page a crash left uncovered by its segment's bitmask (nothing was written to it)"
                );
                match std::fs::remove_file(&page) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(transient(error)),
                    Err(e) => return Err(transient(e)),
                }
            }
        }
    }

    /// The last checkpoint (0 for a collection from before checkpoints: its whole WAL).
    fn read_checkpoint(path: &Path) -> Result<Checkpoint, SinkError> {
        match std::fs::read(path.join(WAL_CHECKPOINT)) {
            Ok(bytes) => serde_json::from_slice::<Checkpoint>(&bytes).map_err(transient),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
            Err(e) => Err(transient(e)),
        }
    }

    /// After a clean close, the WAL before the checkpoint is never needed again; the engine
    /// itself never truncates it. A failure only leaves the files for next time.
    fn prune_wal(path: &Path) {
        let pruned = Self::read_checkpoint(path)
            .map_err(|e| e.to_string())
            .and_then(|c| wal::prune(&path.join("wal"), c.wal_end).map_err(|e| e.to_string()));
        match pruned {
            Ok(0) => {}
            Ok(segments) => tracing::debug!(segments, "removed WAL segments before the checkpoint"),
            Err(error) => tracing::warn!(%error, "could not remove old WAL segments"),
        }
    }

    /// The update operations the engine logged after the last checkpoint (but not the
    /// copies earlier replays wrote), and the checkpoint with the WAL's end.
    fn wal_since_checkpoint(path: &Path) -> Result<Replay, SinkError> {
        let mut checkpoint = Self::read_checkpoint(path)?;
        let mut tail = wal::tail(&path.join("wal"), checkpoint.wal_end)
            .map_err(|e| SinkError::Permanent(format!("reading the engine's WAL of {}: {e}", path.display())))?;
        let mut interrupted = 0;
        for range in checkpoint.replayed.iter_mut().filter(|[_, end]| *end == REPLAY_RUNNING) {
            interrupted += 1;
            // Regression (issue 13): a replay killed part-way left a copy of the oldest
            // operations after the newest ones; replayed again in WAL order, it put
            // documents back to their snapshot text, and their updates, already
            // committed, were never read again.
            tracing::warn!(
                path = %path.display(),
                from = range[0],
                to = tail.end,
                "an earlier WAL replay was interrupted by a crash; skipping the partial copy it wrote"
            );
            range[1] = tail.end;
        }
        tail.records.retain(|(i, _)| !checkpoint.replayed.iter().any(|[a, b]| (*a..*b).contains(i)));
        let ops = tail.operations().map_err(SinkError::Permanent)?;
        Ok(Replay { ops, interrupted, checkpoint, wal_end: tail.end })
    }

    /// The number after the WAL's last entry.
    fn wal_end(&self) -> Result<u64, SinkError> {
        Ok(wal::tail(&self.path.join("wal"), u64::MAX).map_err(transient)?.end)
    }

    /// Record the checkpoint: at a clean close or creation (`None`), everything in the WAL
    /// is in the segments; after a recovery, the same checkpoint as before plus the range
    /// the replay wrote.
    fn checkpoint(&self, after_replay: Option<Checkpoint>) -> Result<(), SinkError> {
        let checkpoint = match after_replay {
            Some(c) => c,
            None => Checkpoint { wal_end: self.wal_end()?, replayed: Vec::new() },
        };
        let tmp = self.path.join(format!("{WAL_CHECKPOINT}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(transient)?;
            f.write_all(&serde_json::to_vec(&checkpoint).map_err(transient)?).map_err(transient)?;
            f.sync_all().map_err(transient)?;
        }
        std::fs::rename(&tmp, self.path.join(WAL_CHECKPOINT)).map_err(transient)
    }

    /// Re-apply, in order, every operation the engine logged since the last clean close.
    ///
    /// qdrant-edge 0.7.1 does not replay its WAL when it opens a collection, and a process
    /// killed in the middle of a flush can leave the segments torn — a point's new payload
    /// beside its old vector, a point missing that a copy-on-write move deleted, even
    /// changes acknowledged before. Qdrant recovers from that by replaying its WAL; so does
    /// this. Every logged operation sets points wholly (upsert, delete) or merges payload
    /// keys, so applying the logged sequence again, from a point at or before the first one
    /// the segments may lack, ends in the state the sequence describes. An operation that
    /// fails again (a payload update of a point deleted since) failed the first time too.
    ///
    /// The checkpoint does not move: a later flush torn by another crash may damage what
    /// this replay restored, so until a clean close every recovery replays from the same
    /// place — skipping the copies earlier recoveries appended, so the work does not
    /// double with each crash.
    fn replay_wal(&self, replay: Replay) -> Result<usize, SinkError> {
        let Replay { ops, mut checkpoint, wal_end, .. } = replay;
        if ops.is_empty() {
            // Ranges of interrupted replays were closed when the WAL was read.
            self.checkpoint(Some(checkpoint))?;
            return Ok(0);
        }
        let replayed = ops.len();
        tracing::warn!(
            path = %self.path.display(),
            operations = ops.len(),
            "the collection was not closed cleanly; replaying the engine's WAL since the last clean close"
        );
        // The copies this replay appends are named before the first is written: a crash
        // in the middle must not leave old operations after newer ones for the next replay.
        checkpoint.replayed.push([wal_end, REPLAY_RUNNING]);
        self.checkpoint(Some(checkpoint.clone()))?;
        let abort_after = fault_abort_after_replayed_ops();
        let mut failed = 0usize;
        for (n, op) in ops.into_iter().enumerate() {
            if abort_after == Some(n) {
                tracing::error!(replayed = n, "fault injection: aborting in the middle of the WAL replay");
                std::process::abort();
            }
            if let Err(e) = self.shard.update(op) {
                failed += 1;
                tracing::debug!(error = %e, "a replayed operation failed (as it did when first applied)");
            }
        }
        if failed > 0 {
            tracing::info!(failed, "replayed operations that failed again");
        }
        self.flush()?;
        let end = self.wal_end()?;
        if let Some(last) = checkpoint.replayed.last_mut() {
            last[1] = end;
        }
        self.checkpoint(Some(checkpoint))?;
        Ok(replayed)
    }

    /// An optimisation writes its new segment before it removes the segments it replaces;
    /// a process killed in between leaves both on disk, and qdrant-edge 0.7.1 (unlike
    /// Qdrant) does not deduplicate points on load. Writes go on during a build, so the
    /// copies may differ; a read returns each point's newest copy (the engine compares the
    /// versions, the numbers of the operations that wrote them), and rewriting every point
    /// once (delete every copy, then upsert the copy read) makes the collection whole
    /// again. Detected by the exact count exceeding the distinct ids.
    ///
    /// Crash-safe: each page is journalled (fsync) before its points are deleted, and a
    /// journal found at open is applied first.
    fn repair_duplicates(&self) -> Result<usize, SinkError> {
        let journal = self.path.join(REPAIR_JOURNAL);
        if journal.exists() {
            let bytes = std::fs::read(&journal).map_err(transient)?;
            // A torn journal was never acted on (the delete follows its fsync).
            if let Ok(points) = serde_json::from_slice::<Vec<PointStructPersisted>>(&bytes) {
                tracing::warn!(points = points.len(), "finishing a repair interrupted by a crash");
                self.rewrite(points, None)?;
            }
            std::fs::remove_file(&journal).map_err(transient)?;
        }
        let total = self.count()?;
        let mut distinct = 0usize;
        self.scroll_raw(None, false, false, 4096, &mut |page| {
            distinct += page.len();
            Ok(())
        })?;
        if distinct == total {
            return Ok(0);
        }
        tracing::warn!(
            path = %self.path.display(),
            counted = total,
            distinct,
            "collection holds points twice (killed during an index build); rewriting every point once"
        );
        self.scroll_raw(None, true, true, 1024, &mut |page| {
            let points: Vec<PointStructPersisted> = page
                .into_iter()
                .filter_map(|r| {
                    Some(PointStructPersisted { id: r.id, vector: dense(r.vector)?.into(), payload: r.payload })
                })
                .collect();
            self.rewrite(points, Some(&journal))
        })?;
        let after = self.count()?;
        if after != distinct {
            return Err(SinkError::Permanent(format!(
                "{}: {after} points counted after rewriting {distinct} distinct ones",
                self.path.display()
            )));
        }
        Ok(total - distinct)
    }

    /// Delete `points` (every copy) and upsert them once, durably; with `journal`, record
    /// them there first and remove it after.
    fn rewrite(&self, points: Vec<PointStructPersisted>, journal: Option<&Path>) -> Result<(), SinkError> {
        if let Some(j) = journal {
            use std::io::Write;
            let mut f = std::fs::File::create(j).map_err(transient)?;
            f.write_all(&serde_json::to_vec(&points).map_err(transient)?).map_err(transient)?;
            f.sync_all().map_err(transient)?;
        }
        let ids: Vec<PointId> = points.iter().map(|p| p.id).collect();
        self.update(UpdateOperation::PointOperation(PointOperations::DeletePoints { ids }))?;
        self.update(UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            qdrant_edge::PointInsertOperations::PointsList(points),
        )))?;
        self.flush()?;
        if let Some(j) = journal {
            std::fs::remove_file(j).map_err(transient)?;
        }
        Ok(())
    }

    /// Visit the records matching `filter` (all when none) in id order, each id once,
    /// `page` at a time, with or without payloads and vectors.
    fn scroll_raw(
        &self,
        filter: Option<Filter>,
        with_payload: bool,
        with_vectors: bool,
        page: usize,
        visit: &mut dyn FnMut(Vec<qdrant_edge::Record>) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        let mut offset: Option<PointId> = None;
        loop {
            let (records, next) = self
                .shard
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(page.max(1)),
                    filter: filter.clone(),
                    with_payload: Some(WithPayloadInterface::Bool(with_payload)),
                    with_vector: WithVector::Bool(with_vectors),
                    order_by: None,
                })
                .map_err(transient)?;
            visit(records)?;
            match next {
                Some(n) => offset = Some(n),
                None => return Ok(()),
            }
        }
    }

    fn create(path: &Path, params: &CollectionParams) -> Result<EdgeShard, SinkError> {
        let vector = EdgeVectorParams {
            size: params.dimension,
            distance: match params.distance {
                crate::config::Distance::Cosine => Distance::Cosine,
                crate::config::Distance::Dot => Distance::Dot,
                crate::config::Distance::Euclid => Distance::Euclid,
            },
            on_disk: Some(params.on_disk_vectors),
            multivector_config: None,
            datatype: None,
            quantization_config: None,
            hnsw_config: None,
        };
        let mut builder = EdgeConfigBuilder::new().vector("", vector).on_disk_payload(params.on_disk_payload);
        if params.hnsw_m.is_some() || params.hnsw_ef_construct.is_some() {
            let default = qdrant_edge::HnswIndexConfig::default();
            builder = builder.hnsw_config(qdrant_edge::HnswIndexConfig {
                m: params.hnsw_m.map_or(default.m, |m| m as usize),
                ef_construct: params.hnsw_ef_construct.map_or(default.ef_construct, |e| e as usize),
                ..default
            });
        }
        let shard = EdgeShard::new(path, builder.build()).map_err(transient)?;
        for (field, kind) in &params.indexes {
            let schema = match kind {
                IndexKind::Keyword => "keyword",
                IndexKind::Integer => "integer",
                IndexKind::Float => "float",
                IndexKind::Bool => "bool",
                IndexKind::Datetime => "datetime",
            };
            let op: UpdateOperation =
                serde_json::from_value(json!({ "create_index": { "field_name": field, "field_schema": schema } }))
                    .map_err(transient)?;
            shard.update(op).map_err(transient)?;
        }
        Ok(shard)
    }

    /// Make everything written so far durable (see [`install_flush_panic_filter`]).
    fn flush(&self) -> Result<(), SinkError> {
        for _ in 0..500 {
            IN_FLUSH.with(|f| f.set(true));
            let r = catch_unwind(AssertUnwindSafe(|| self.shard.flush()));
            IN_FLUSH.with(|f| f.set(false));
            if r.is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(SinkError::Transient("the engine stayed busy; could not flush".into()))
    }

    /// Make the engine's WAL durable up to its last append (not the segments). Under the
    /// write lock.
    fn sync_wal(&self) -> Result<(), SinkError> {
        let mut synced = self.wal_synced.lock().map_err(|_| transient("WAL sync state poisoned"))?;
        wal::sync(&self.path.join("wal"), &mut synced).map_err(transient)
    }

    fn update(&self, op: UpdateOperation) -> Result<(), SinkError> {
        let updated = self.shard.update(op);
        if updated.is_ok() {
            self.wal_next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        updated.map_err(|e| {
            let msg = e.to_string();
            // A wrong dimension, a malformed request, or a payload update of a point that
            // does not exist can never succeed.
            if msg.contains("dimension") || msg.contains("Wrong input") || msg.contains("No point with id") {
                SinkError::Permanent(msg)
            } else {
                SinkError::Transient(msg)
            }
        })
    }

    fn apply_locked(&self, ops: Vec<SinkOp>) -> Result<(), SinkError> {
        // Validate the whole call first: a rejected call applies nothing.
        for op in &ops {
            if let SinkOp::Upsert(points) = op {
                if let Some(p) = points.iter().find(|p| p.vector.len() != self.dimension) {
                    return Err(SinkError::Permanent(format!(
                        "vector of dimension {} for a collection of dimension {}",
                        p.vector.len(),
                        self.dimension
                    )));
                }
            }
        }
        for op in ops {
            match op {
                SinkOp::Upsert(points) => {
                    if points.is_empty() {
                        continue;
                    }
                    let list = points
                        .into_iter()
                        .map(|SinkPoint { id, vector, payload }| PointStructPersisted {
                            id: PointId::Uuid(id),
                            vector: vector.into(),
                            payload: Some(payload_of(&payload)),
                        })
                        .collect();
                    self.update(UpdateOperation::PointOperation(PointOperations::UpsertPoints(
                        qdrant_edge::PointInsertOperations::PointsList(list),
                    )))?;
                }
                SinkOp::SetPayload { ids, payload } => {
                    if ids.is_empty() {
                        continue;
                    }
                    fault_abort_before("set_payload");
                    self.update(UpdateOperation::PayloadOperation(PayloadOps::SetPayload(SetPayloadOp {
                        payload: payload_of(&payload),
                        points: Some(ids.into_iter().map(PointId::Uuid).collect()),
                        filter: None,
                        key: None,
                    })))?;
                }
                SinkOp::Delete(ids) => {
                    if ids.is_empty() {
                        continue;
                    }
                    fault_abort_before("delete");
                    self.update(UpdateOperation::PointOperation(PointOperations::DeletePoints {
                        ids: ids.into_iter().map(PointId::Uuid).collect(),
                    }))?;
                }
            }
        }
        Ok(())
    }

    fn filter_from(conditions: serde_json::Value) -> Result<Filter, SinkError> {
        serde_json::from_value(conditions).map_err(|e| SinkError::Permanent(format!("bad filter: {e}")))
    }
}

/// The directory and the page counts of qdrant-edge's "Inconsistent number of gridstore pages
/// at \"DIR\": expected N, but found M" load error.
fn uncovered_pages(message: &str) -> Option<(PathBuf, u32, u32)> {
    let rest = message.split("Inconsistent number of gridstore pages at \"").nth(1)?;
    let (dir, rest) = rest.split_once("\": expected ")?;
    let (expected, rest) = rest.split_once(", but found ")?;
    let found: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((PathBuf::from(dir), expected.parse().ok()?, found.parse().ok()?))
}

/// Fault injection for crash tests: `FRESHET_FAULT_ABORT_AFTER_REPLAYED_OPS=N` aborts the
/// process (as a kill would) after the WAL replay has re-applied `N` operations.
fn fault_abort_after_replayed_ops() -> Option<usize> {
    std::env::var("FRESHET_FAULT_ABORT_AFTER_REPLAYED_OPS").ok()?.parse().ok()
}

/// Fault injection for crash tests: `FRESHET_FAULT_ABORT_BEFORE=delete` (or `set_payload`)
/// aborts the process (as a kill would) when a write reaches its first delete (payload
/// update), after the operations before it in the same write reached the engine: a write
/// torn between its operations.
fn fault_abort_before(op: &str) {
    if std::env::var("FRESHET_FAULT_ABORT_BEFORE").is_ok_and(|v| v == op) {
        tracing::error!(op, "fault injection: aborting before this operation, the ones before it applied");
        std::process::abort();
    }
}

fn payload_of(m: &Metadata) -> qdrant_edge::Payload {
    qdrant_edge::Payload(m.clone())
}

/// Records as freshet's points (UUID ids only).
fn stored(records: Vec<qdrant_edge::Record>, with_vectors: bool) -> Vec<StoredPoint> {
    records
        .into_iter()
        .filter_map(|r| {
            Some(StoredPoint {
                id: uuid_of(&r.id)?,
                payload: r.payload.map(|p| p.0).unwrap_or_default(),
                vector: if with_vectors { dense(r.vector) } else { None },
            })
        })
        .collect()
}

fn uuid_of(id: &PointId) -> Option<Uuid> {
    match id {
        PointId::Uuid(u) => Some(*u),
        PointId::NumId(_) => None,
    }
}

fn dense(v: Option<qdrant_edge::VectorStructInternal>) -> Option<Vec<f32>> {
    match v? {
        qdrant_edge::VectorStructInternal::Single(d) => Some(d),
        qdrant_edge::VectorStructInternal::Named(mut m) => match m.remove("")? {
            qdrant_edge::VectorInternal::Dense(d) => Some(d),
            _ => None,
        },
        qdrant_edge::VectorStructInternal::MultiDense(_) => None,
    }
}

impl VectorSink for EmbeddedSink {
    fn dimension(&self) -> usize {
        self.dimension
    }

    /// Durable when it returns: the engine's WAL is synced, and every open after a crash
    /// replays the WAL since the last clean close (`replay_wal`). The segments are not
    /// flushed here — that costs far more than the WAL's sync and is what kept a change
    /// seconds from searchable (issue 15); they are flushed around each index build and at
    /// close.
    fn apply(&self, ops: Vec<SinkOp>) -> Result<(), SinkError> {
        let started = std::time::Instant::now();
        let _guard = self.write_lock.lock().map_err(|_| SinkError::Transient("write lock poisoned".into()))?;
        let locked = started.elapsed();
        self.apply_locked(ops)?;
        let applied = started.elapsed();
        self.sync_wal()?;
        let total = started.elapsed();
        if total >= SLOW_WRITE {
            tracing::debug!(
                lock_wait_ms = locked.as_millis() as u64,
                engine_ms = (applied - locked).as_millis() as u64,
                wal_sync_ms = (total - applied).as_millis() as u64,
                build_running = self.build_running(),
                "slow write to the embedded engine"
            );
        }
        Ok(())
    }

    fn scroll(
        &self,
        with_vectors: bool,
        page: usize,
        visit: &mut dyn FnMut(Vec<StoredPoint>),
    ) -> Result<(), SinkError> {
        self.scroll_raw(None, true, with_vectors, page, &mut |records| {
            visit(stored(records, with_vectors));
            Ok(())
        })
    }

    fn points_of_docs(&self, docs: &[String], with_vectors: bool) -> Result<Vec<StoredPoint>, SinkError> {
        let mut out = Vec::new();
        for group in docs.chunks(256) {
            let filter = Self::filter_from(json!({ "must": [{ "key": keys::DOC_ID, "match": { "any": group } }] }))?;
            self.scroll_raw(Some(filter), true, with_vectors, 1024, &mut |records| {
                out.extend(stored(records, with_vectors));
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn vectors_by_hash(
        &self,
        model_id: &str,
        hashes: &[ContentHash],
    ) -> Result<HashMap<ContentHash, Vec<f32>>, SinkError> {
        let mut out = HashMap::new();
        if hashes.is_empty() {
            return Ok(out);
        }
        let hex: Vec<String> = hashes.iter().map(ContentHash::to_hex).collect();
        let filter = Self::filter_from(json!({ "must": [
            { "key": keys::CONTENT_HASH, "match": { "any": hex } },
            { "key": keys::MODEL_ID, "match": { "value": model_id } }
        ]}))?;
        let (records, _) = self
            .shard
            .scroll(ScrollRequest {
                offset: None,
                limit: Some(hashes.len() * 4),
                filter: Some(filter),
                with_payload: Some(WithPayloadInterface::Bool(true)),
                with_vector: WithVector::Bool(true),
                order_by: None,
            })
            .map_err(transient)?;
        for r in records {
            let Some(h) = r
                .payload
                .as_ref()
                .and_then(|p| p.0.get(keys::CONTENT_HASH))
                .and_then(|v| v.as_str())
                .and_then(ContentHash::from_hex)
            else {
                continue;
            };
            if let Some(v) = dense(r.vector) {
                out.entry(h).or_insert(v);
            }
        }
        Ok(out)
    }

    fn search(
        &self,
        vector: Vec<f32>,
        k: usize,
        filter: &[(String, serde_json::Value)],
    ) -> Result<Vec<Hit>, SinkError> {
        let filter = if filter.is_empty() {
            None
        } else {
            let must: Vec<_> = filter.iter().map(|(k, v)| json!({ "key": k, "match": { "value": v } })).collect();
            Some(Self::filter_from(json!({ "must": must }))?)
        };
        let query: qdrant_edge::QueryRequest = qdrant_edge::QueryRequest {
            prefetches: vec![],
            query: Some(ScoringQuery::Vector(qdrant_edge::QueryEnum::Nearest(qdrant_edge::NamedQuery {
                query: vector.into(),
                using: None,
            }))),
            filter,
            score_threshold: None,
            limit: k,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let points = self.shard.query(query).map_err(transient)?;
        Ok(points
            .into_iter()
            .filter_map(|p| {
                Some(Hit { id: uuid_of(&p.id)?, score: p.score, payload: p.payload.map(|p| p.0).unwrap_or_default() })
            })
            .collect())
    }

    fn count(&self) -> Result<usize, SinkError> {
        self.shard.count(qdrant_edge::CountRequest { filter: None, exact: true }).map_err(transient)
    }

    /// Writes never wait for the build: Qdrant's optimiser builds the new segments beside
    /// the live ones — proxies take the writes made meanwhile — and swaps them in. A kill in
    /// the middle leaves the old segments beside the new (with newer copies of the points
    /// written meanwhile, and deletes made meanwhile known only to the proxies); the next
    /// open replays the WAL and keeps each point's newest copy (`repair_duplicates`).
    ///
    /// Nothing here takes the write lock for longer than it takes to note where the WAL
    /// stands: a write is durable by its WAL entry, not by a flush. The engine's flush (all
    /// segments, which blocks writes to them while it runs) comes before and after the
    /// build, keeping what the segments hold in memory bounded; a stop during the build
    /// flushes what is left (`stop_during_build`).
    fn optimize(&self) -> Result<(), SinkError> {
        let t = std::time::Instant::now();
        {
            let _guard = self.write_lock.lock().map_err(|_| SinkError::Transient("write lock poisoned".into()))?;
            // Every operation before this number was applied before the build started.
            let start = self.wal_next.load(std::sync::atomic::Ordering::Relaxed);
            *self.building.lock().map_err(|_| transient("build marker poisoned"))? = Some(start);
        }
        let flushed_before = self.flush();
        let flush_before = t.elapsed();
        tracing::debug!(flush_ms = flush_before.as_millis() as u64, "index build starting");
        let built = self.shard.optimize().map_err(transient);
        let build = t.elapsed() - flush_before;
        let flushed_after = self.flush();
        *self.building.lock().map_err(|_| transient("build marker poisoned"))? = None;
        tracing::debug!(
            build_ms = build.as_millis() as u64,
            flush_after_ms = (t.elapsed() - flush_before - build).as_millis() as u64,
            "index build done"
        );
        built?;
        flushed_before.and(flushed_after)
    }

    /// Everything written is flushed (no torn flush: this is no crash) and the checkpoint
    /// moves to the build's start, before which every operation was applied; the clean
    /// marker stays absent — so the next open replays the writes made during the build
    /// (deletes among them, which only the build's proxies knew) and resolves the copies
    /// an interrupted swap may leave.
    fn stop_during_build(&self) -> Result<bool, SinkError> {
        let _guard = self.write_lock.lock().map_err(|_| SinkError::Transient("write lock poisoned".into()))?;
        let Some(start) = *self.building.lock().map_err(|_| transient("build marker poisoned"))? else {
            return Ok(false);
        };
        self.flush()?;
        self.checkpoint(Some(Checkpoint { wal_end: start, replayed: Vec::new() }))?;
        Ok(true)
    }

    fn recovery(&self) -> SinkRecovery {
        self.recovery.clone()
    }
}

/// The collections under a data directory and their aliases (`aliases.json`).
#[derive(Debug, Clone)]
pub struct EmbeddedCatalog {
    data_dir: PathBuf,
}

/// Serialises alias changes within a process (across processes, the rename is atomic and
/// the last writer wins).
static ALIAS_LOCK: Mutex<()> = Mutex::new(());

impl EmbeddedCatalog {
    /// The catalog of `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self { data_dir: data_dir.to_path_buf() }
    }

    fn aliases_path(&self) -> PathBuf {
        self.data_dir.join("aliases.json")
    }

    /// Alias → collection.
    pub fn aliases(&self) -> Result<std::collections::BTreeMap<String, String>, SinkError> {
        match std::fs::read(self.aliases_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                SinkError::Permanent(format!("{} is not a JSON alias map: {e}", self.aliases_path().display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(transient(e)),
        }
    }

    fn write_aliases(&self, map: &std::collections::BTreeMap<String, String>) -> Result<(), SinkError> {
        std::fs::create_dir_all(&self.data_dir).map_err(transient)?;
        let tmp = self.data_dir.join("aliases.json.tmp");
        let bytes = serde_json::to_vec_pretty(map).map_err(transient)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(transient)?;
            f.write_all(&bytes).map_err(transient)?;
            f.sync_all().map_err(transient)?;
        }
        std::fs::rename(&tmp, self.aliases_path()).map_err(transient)?;
        if let Ok(d) = std::fs::File::open(&self.data_dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Catalog for EmbeddedCatalog {
    fn describe(&self) -> String {
        format!("embedded engine at {}", self.data_dir.display())
    }

    fn resolve(&self, name: &str) -> Result<Option<String>, SinkError> {
        if let Some(target) = self.aliases()?.get(name) {
            return Ok(Some(target.clone()));
        }
        Ok(EmbeddedSink::exists(&self.data_dir, name).then(|| name.to_string()))
    }

    fn open(&self, collection: &str) -> Result<std::sync::Arc<dyn VectorSink>, SinkError> {
        Ok(std::sync::Arc::new(EmbeddedSink::open_existing(&self.data_dir, collection)?))
    }

    fn create(&self, collection: &str, params: &CollectionParams) -> Result<std::sync::Arc<dyn VectorSink>, SinkError> {
        if EmbeddedSink::exists(&self.data_dir, collection) || self.aliases()?.contains_key(collection) {
            return Err(SinkError::Permanent(format!("collection `{collection}` already exists")));
        }
        Ok(std::sync::Arc::new(EmbeddedSink::open_or_create(&self.data_dir, collection, params)?))
    }

    fn switch_alias(&self, alias: &str, collection: &str) -> Result<(), SinkError> {
        let _guard = ALIAS_LOCK.lock().map_err(|_| SinkError::Transient("alias lock poisoned".into()))?;
        if !EmbeddedSink::exists(&self.data_dir, collection) {
            return Err(SinkError::Permanent(format!("no collection `{collection}` to point alias `{alias}` at")));
        }
        if EmbeddedSink::exists(&self.data_dir, alias) {
            return Err(SinkError::Permanent(format!("`{alias}` is a collection, it cannot become an alias")));
        }
        let mut map = self.aliases()?;
        map.insert(alias.to_string(), collection.to_string());
        self.write_aliases(&map)
    }

    fn delete_collection(&self, collection: &str) -> Result<(), SinkError> {
        let _guard = ALIAS_LOCK.lock().map_err(|_| SinkError::Transient("alias lock poisoned".into()))?;
        // Holding the collection's lock proves no process has it open.
        let sink = EmbeddedSink::open_existing(&self.data_dir, collection)?;
        let mut map = self.aliases()?;
        let before = map.len();
        map.retain(|_, target| target != collection);
        if map.len() != before {
            self.write_aliases(&map)?;
        }
        let path = sink.path.clone();
        drop(sink);
        std::fs::remove_dir_all(&path).map_err(transient)
    }

    fn collections(&self) -> Result<Vec<String>, SinkError> {
        let mut out = Vec::new();
        match std::fs::read_dir(self.data_dir.join("collections")) {
            Ok(entries) => {
                for e in entries.flatten() {
                    if let Some(name) = e.file_name().to_str() {
                        if EmbeddedSink::exists(&self.data_dir, name) {
                            out.push(name.to_string());
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(transient(e)),
        }
        out.sort();
        Ok(out)
    }
}
