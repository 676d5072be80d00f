//! The runtime's [`IndexWriter`]: for each submitted time it resolves the vectors the
//! writes need (cache → vectors already in the collection → embedder), builds the sink
//! operations and applies them **in time order**, retrying transient sink errors, then
//! records dead letters and tombstones and acknowledges the time to the dataflow.
//! Vector resolution of later times overlaps the sink write of earlier ones.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use timely::scheduling::SyncActivator;
use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use super::store::{DeadLetterLog, TombstoneLog};
use crate::dataflow::operators::write_index::{Acked, IndexWriter, WriteBatch};
use crate::dataflow::{Tally, Time};
use crate::embed::batcher::{EmbedService, Vector};
use crate::model::{chunk_payload, point_id, update_payload, ContentHash, DeadLetter, DocWrite};
use crate::sink::{SinkError, SinkOp, SinkPoint, VectorSink};
use crate::telemetry::metrics::Metrics;

/// What every worker's writer shares.
pub struct WriterShared {
    /// The sink.
    pub sink: Arc<dyn VectorSink>,
    /// The embedding service.
    pub embed: Arc<EmbedService>,
    /// Point-id namespace of the collection.
    pub namespace: Uuid,
    /// Dead-letter file.
    pub dead_letters: Arc<DeadLetterLog>,
    /// Tombstone log.
    pub tombstones: Arc<TombstoneLog>,
    /// Names each write's points before it starts (torn writes are found at restart).
    pub inflight: Arc<super::store::InflightLog>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Times whose vectors are resolved ahead of the sink write.
    pub pipeline_depth: usize,
    /// Longest wait between retries of a transient sink error.
    pub max_backoff: Duration,
    /// Told the documents of every write once the sink has it (`reindex` mirrors them).
    pub on_written: Option<WrittenHook>,
}

/// See [`WriterShared::on_written`].
pub type WrittenHook = Arc<dyn Fn(Vec<crate::model::DocId>) + Send + Sync>;

/// One worker's writer (see module docs).
pub struct RuntimeWriter {
    tx: mpsc::UnboundedSender<(Time, WriteBatch)>,
    acked: Arc<Mutex<VecDeque<Acked>>>,
    metrics: Arc<Metrics>,
}

impl RuntimeWriter {
    /// Start the writer's tasks on `handle`; `activator` wakes the operator on acks.
    pub fn start(shared: Arc<WriterShared>, handle: &tokio::runtime::Handle, activator: SyncActivator) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Time, WriteBatch)>();
        let acked = Arc::new(Mutex::new(VecDeque::new()));
        let (rtx, mut rrx) = mpsc::channel::<tokio::task::JoinHandle<Resolved>>(shared.pipeline_depth.max(1));
        let s1 = Arc::clone(&shared);
        handle.spawn(async move {
            while let Some((time, batch)) = rx.recv().await {
                let s = Arc::clone(&s1);
                let h = tokio::spawn(async move {
                    let r = resolve(&s, time, batch).await;
                    s.metrics.embedding_done(time);
                    r
                });
                if rtx.send(h).await.is_err() {
                    return;
                }
            }
        });
        let metrics = Arc::clone(&shared.metrics);
        let s2 = shared;
        let acked2 = Arc::clone(&acked);
        handle.spawn(async move {
            while let Some(h) = rrx.recv().await {
                let mut resolved = match h.await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "vector resolution task failed; stopping this worker's writer");
                        return;
                    }
                };
                let time = resolved.time;
                let commits = std::mem::take(&mut resolved.batch.applied_commits);
                let tables = std::mem::take(&mut resolved.batch.table_tallies);
                let tally = write(&s2, resolved).await;
                s2.metrics.record_acked(&tally);
                s2.metrics.record_table_acked(&tables);
                s2.metrics.record_searchable(time, &commits);
                if let Ok(mut q) = acked2.lock() {
                    q.push_back(Acked { time, tally });
                }
                let _ = activator.activate();
            }
        });
        Self { tx, acked, metrics }
    }
}

impl IndexWriter for RuntimeWriter {
    fn submit(&mut self, time: Time, batch: WriteBatch) {
        self.metrics.embedding_started(time);
        if self.tx.send((time, batch)).is_err() {
            self.metrics.embedding_done(time);
            tracing::error!(time, "writer stopped; the time stays unacknowledged");
        }
    }

    fn poll_acked(&mut self) -> Vec<Acked> {
        self.acked.lock().map(|mut q| q.drain(..).collect()).unwrap_or_default()
    }
}

struct Resolved {
    time: Time,
    batch: WriteBatch,
    vectors: HashMap<ContentHash, Vector>,
    failed: HashMap<ContentHash, String>,
}

async fn resolve(s: &WriterShared, time: Time, batch: WriteBatch) -> Resolved {
    let mut needed: HashMap<ContentHash, String> = HashMap::new();
    for w in &batch.writes {
        for u in &w.upserts {
            needed.entry(u.hash).or_insert_with(|| u.text.clone());
        }
    }
    let hashes: Vec<ContentHash> = needed.keys().copied().collect();
    // The memory cache is a lookup; only the disk cache is worth a blocking-pool hop.
    let mut vectors = if s.embed.has_disk_cache() {
        let embed = Arc::clone(&s.embed);
        let lookup = hashes.clone();
        tokio::task::spawn_blocking(move || embed.cached(&lookup)).await.unwrap_or_default()
    } else {
        s.embed.cached(&hashes)
    };
    let mut reused = vectors.len() as u64;
    let missing: Vec<ContentHash> = hashes.iter().filter(|h| !vectors.contains_key(h)).copied().collect();
    let started = std::time::Instant::now();
    if !missing.is_empty() {
        let sink = Arc::clone(&s.sink);
        let model = s.embed.model_id().to_string();
        let found = tokio::task::spawn_blocking(move || sink.vectors_by_hash(&model, &missing)).await;
        match found {
            Ok(Ok(found)) => {
                let found: Vec<(ContentHash, Vector)> = found.into_iter().map(|(h, v)| (h, v.into())).collect();
                reused += found.len() as u64;
                if s.embed.has_disk_cache() {
                    let embed = Arc::clone(&s.embed);
                    let copy = found.clone();
                    let _ = tokio::task::spawn_blocking(move || embed.remember_all(&copy)).await;
                } else {
                    s.embed.remember_all(&found);
                }
                vectors.extend(found);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "looking up known vectors failed; embedding instead"),
            Err(e) => tracing::warn!(error = %e, "looking up known vectors failed; embedding instead"),
        }
    }
    s.metrics.record_reused(reused);
    let lookup = started.elapsed();
    let to_embed: Vec<(ContentHash, String)> = needed.into_iter().filter(|(h, _)| !vectors.contains_key(h)).collect();
    let mut failed = HashMap::new();
    if !to_embed.is_empty() {
        for (h, r) in s.embed.embed(time, to_embed).await {
            match r {
                Ok(v) => {
                    vectors.insert(h, v);
                }
                Err(e) => {
                    failed.insert(h, e);
                }
            }
        }
    }
    let total = started.elapsed();
    if total >= SLOW_STAGE {
        tracing::debug!(
            time,
            lookup_ms = lookup.as_millis() as u64,
            embed_ms = (total - lookup).as_millis() as u64,
            "slow vector resolution (known vectors looked up in the collection, then embedding)"
        );
    }
    Resolved { time, batch, vectors, failed }
}

/// A writer stage slower than this is logged (at debug) with where its time went.
const SLOW_STAGE: std::time::Duration = std::time::Duration::from_millis(250);

fn build_ops(
    s: &WriterShared,
    w: &DocWrite,
    r: &Resolved,
    dead: &mut Vec<DeadLetter>,
    tally: &mut Tally,
) -> Vec<SinkOp> {
    let model = s.embed.model_id();
    let mut points = Vec::with_capacity(w.upserts.len());
    let mut deletes: Vec<Uuid> = w.deletes.iter().map(|i| point_id(&s.namespace, &w.doc_id, *i)).collect();
    for u in &w.upserts {
        let id = point_id(&s.namespace, &w.doc_id, u.chunk_index);
        match r.vectors.get(&u.hash) {
            Some(v) => points.push(SinkPoint {
                id,
                vector: v.to_vec(),
                payload: chunk_payload(
                    &w.metadata,
                    &w.doc_id,
                    u.chunk_index,
                    &u.hash,
                    w.version,
                    model,
                    &u.text,
                    &w.text_field_hashes,
                ),
            }),
            None => {
                // The chunk can never be embedded: no stale point may stay at its position.
                let reason = r.failed.get(&u.hash).cloned().unwrap_or_else(|| "no vector".into());
                dead.push(DeadLetter {
                    origin: None,
                    position: 0,
                    stage: "embed".into(),
                    reason: "embedding_rejected".into(),
                    error: reason,
                    doc_id: Some(w.doc_id.0.clone()),
                    record_excerpt: Some(u.text.chars().take(1024).collect()),
                    record_bytes: Some(u.text.len()),
                    raw: None,
                });
                deletes.push(id);
            }
        }
    }
    let mut ops = Vec::new();
    tally.points_upserted += points.len() as u64;
    if !points.is_empty() {
        ops.push(SinkOp::Upsert(points));
    }
    if !w.payload_updates.is_empty() {
        tally.points_payload_updated += w.payload_updates.len() as u64;
        ops.push(SinkOp::SetPayload {
            ids: w.payload_updates.iter().map(|(i, _)| point_id(&s.namespace, &w.doc_id, *i)).collect(),
            payload: update_payload(&w.metadata, w.version, model, &w.text_field_hashes),
        });
    }
    tally.points_deleted += deletes.len() as u64;
    if !deletes.is_empty() {
        ops.push(SinkOp::Delete(deletes));
    }
    ops
}

async fn write(s: &Arc<WriterShared>, mut r: Resolved) -> Tally {
    let mut tally = r.batch.tally;
    let mut dead = std::mem::take(&mut r.batch.dead);
    let mut per_doc: Vec<(usize, Vec<SinkOp>)> = Vec::with_capacity(r.batch.writes.len());
    let mut tombstones = Vec::new();
    let mut seen = Vec::new();
    for (i, w) in r.batch.writes.iter().enumerate() {
        if let Some(v) = w.seen_version {
            seen.push((w.doc_id.clone(), v));
        }
        let ops = build_ops(s, w, &r, &mut dead, &mut tally);
        if !ops.is_empty() {
            per_doc.push((i, ops));
        }
        if let Some(v) = w.tombstone {
            tombstones.push((w.doc_id.clone(), v));
        }
    }
    // Points of different documents are disjoint and one document's upserts, payload
    // updates and deletes touch different positions, so grouping keeps the effect.
    let mut upserts = Vec::new();
    let mut rest = Vec::new();
    for (_, ops) in &per_doc {
        for op in ops {
            match op {
                SinkOp::Upsert(p) => upserts.extend(p.iter().cloned()),
                other => rest.push(other.clone()),
            }
        }
    }
    let mut ops = Vec::with_capacity(rest.len() + 1);
    if !upserts.is_empty() {
        ops.push(SinkOp::Upsert(upserts));
    }
    ops.extend(rest);
    // Every point whose stored vector and payload this write may tear: upserts, and payload
    // updates too — the engine moves a point out of an indexed segment to update its
    // payload (copy-on-write), and a crash during that flush can leave the new payload
    // beside a vector that was never persisted.
    let touched: Vec<Uuid> = ops
        .iter()
        .flat_map(|op| match op {
            SinkOp::Upsert(points) => points.iter().map(|p| p.id).collect::<Vec<_>>(),
            SinkOp::SetPayload { ids, .. } => ids.clone(),
            SinkOp::Delete(_) => Vec::new(),
        })
        .collect();
    let started = std::time::Instant::now();
    let token = if touched.is_empty() {
        None
    } else {
        match s.inflight.begin(&touched) {
            Ok(token) => Some(token),
            Err(e) => {
                tracing::warn!(error = %e, "could not record the write in the in-flight log");
                None
            }
        }
    };
    let inflight_logged = started.elapsed();
    if !ops.is_empty() {
        if let Err(e) = apply_with_retry(s, r.time, ops).await {
            // Something in the batch can never be written: write each document on its
            // own so that only the rejected ones go to the dead-letter file.
            tracing::warn!(time = r.time, error = %e, documents = per_doc.len(), "sink rejected a batch; writing its documents one by one");
            for (i, doc_ops) in &per_doc {
                let (i, doc_ops) = (*i, doc_ops.clone());
                let w = &r.batch.writes[i];
                let Err(e) = apply_with_retry(s, r.time, doc_ops.clone()).await else { continue };
                tracing::error!(time = r.time, doc_id = %w.doc_id.0, error = %e, "sink rejected a document; dead-lettered");
                s.metrics.sink_rejected.inc();
                // No stale point may stay where the rejected write should have landed.
                let ids: Vec<Uuid> = doc_ops
                    .iter()
                    .flat_map(|op| match op {
                        SinkOp::Upsert(p) => p.iter().map(|p| p.id).collect::<Vec<_>>(),
                        SinkOp::SetPayload { ids, .. } | SinkOp::Delete(ids) => ids.clone(),
                    })
                    .collect();
                if let Err(e) = apply_with_retry(s, r.time, vec![SinkOp::Delete(ids)]).await {
                    tracing::error!(doc_id = %w.doc_id.0, error = %e, "could not remove the rejected document's points");
                }
                dead.push(DeadLetter {
                    origin: None,
                    position: w.version,
                    stage: "sink".into(),
                    reason: "sink_rejected".into(),
                    error: e.to_string(),
                    doc_id: Some(w.doc_id.0.clone()),
                    record_excerpt: None,
                    record_bytes: None,
                    raw: None,
                });
            }
        }
    }
    let applied = started.elapsed();
    if let Some(hook) = &s.on_written {
        let docs: Vec<crate::model::DocId> = per_doc.iter().map(|(i, _)| r.batch.writes[*i].doc_id.clone()).collect();
        if !docs.is_empty() {
            hook(docs);
        }
    }
    if let Some(token) = token {
        if let Err(e) = s.inflight.done(token) {
            tracing::warn!(error = %e, "could not mark the write done in the in-flight log");
        }
    }
    if let Some(v) = r.batch.truncated_at {
        if let Err(e) = s.tombstones.append_truncate(v) {
            tracing::warn!(error = %e, "could not persist the truncate");
        }
    }
    if !tombstones.is_empty() {
        if let Err(e) = s.tombstones.append(&tombstones) {
            tracing::warn!(error = %e, "could not persist tombstones");
        }
    }
    if !seen.is_empty() {
        if let Err(e) = s.tombstones.append_seen(&seen) {
            tracing::warn!(error = %e, "could not persist document versions");
        }
    }
    if !dead.is_empty() {
        match s.dead_letters.append(&dead) {
            Ok(()) => {
                s.metrics.dead_letters.inc_by(dead.len() as u64);
            }
            Err(e) => tracing::error!(error = %e, count = dead.len(), "could not write the dead-letter file"),
        }
        for d in &dead {
            let doc = d.doc_id.as_deref().unwrap_or("-");
            s.metrics.record_error("dead_letter", format!("{} ({}, doc {doc}): {}", d.reason, d.stage, d.error));
        }
    }
    let total = started.elapsed();
    if total >= SLOW_STAGE {
        tracing::debug!(
            time = r.time,
            inflight_log_ms = inflight_logged.as_millis() as u64,
            sink_ms = (applied - inflight_logged).as_millis() as u64,
            logs_ms = (total - applied).as_millis() as u64,
            "slow write (in-flight log, sink, then the tombstone, version and dead-letter logs)"
        );
    }
    tally
}

/// Apply `ops`, retrying transient errors (doubling waits with jitter, at least what the
/// sink asked for) for as long as it takes: the time stays unacknowledged meanwhile, so
/// the frontier — and the lag — show the outage. Returns the permanent error, if any.
async fn apply_with_retry(s: &WriterShared, time: Time, ops: Vec<SinkOp>) -> Result<(), SinkError> {
    let points: usize = ops
        .iter()
        .map(|op| match op {
            SinkOp::Upsert(p) => p.len(),
            SinkOp::SetPayload { ids, .. } | SinkOp::Delete(ids) => ids.len(),
        })
        .sum();
    // A sink write covers one dataflow time: the range is that time.
    let span = tracing::debug_span!(
        "sink_batch",
        points,
        ops = ops.len(),
        time_from = time,
        time_to = time,
        attempts = tracing::field::Empty
    );
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        span.record("attempts", attempts);
        let sink = Arc::clone(&s.sink);
        let ops_now = ops.clone();
        let started = std::time::Instant::now();
        let res = tokio::task::spawn_blocking(move || sink.apply(ops_now))
            .instrument(span.clone())
            .await
            .unwrap_or_else(|e| Err(SinkError::Transient(format!("sink task failed: {e}"))));
        s.metrics.sink_write_latency.observe(started.elapsed().as_secs_f64());
        match res {
            Ok(()) => {
                s.metrics.sink_batch_points.observe(points as f64);
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                s.metrics.retries.inc();
                s.metrics.record_error("sink", format!("write failed, retrying: {e}"));
                let jittered = backoff.mul_f64(rand::random_range(0.5..1.0));
                let wait = jittered.max(e.retry_after().unwrap_or_default());
                tracing::warn!(time, error = %e, retry_in_ms = wait.as_millis() as u64, "sink write failed; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(s.max_backoff);
            }
            Err(e) => return Err(e),
        }
    }
}
