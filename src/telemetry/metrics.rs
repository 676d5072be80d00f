//! Counters, gauges and histograms of a running pipeline, in one registry
//! (prometheus-client), beside what `/status` and the dashboard need that Prometheus text
//! does not carry: windowed latency percentiles, the last errors, the times being embedded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::window::LatencyWindow;
use crate::dataflow::{Tally, Time};
use crate::source::now_ms;

/// Label of a pipeline stage's frontier.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// `source`, `decode`, `state`, `embed`, `sink`.
    pub stage: &'static str,
}

/// The stages whose frontiers are reported, in pipeline order.
pub const STAGES: [&str; 5] = ["source", "decode", "state", "embed", "sink"];

/// Label of a Kafka partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// Topic.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

/// Label of an embedder error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorKindLabel {
    /// `transient` (retried), `throttled` (retried, slower) or `permanent` (dead-lettered).
    pub kind: &'static str,
}

/// Labels of the build-info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    /// freshet's version.
    pub version: String,
    /// The embedding model id.
    pub model_id: String,
}

/// An error worth showing an operator (`/status`, the dashboard).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecentError {
    /// When (ms since epoch).
    pub at_ms: u64,
    /// `sink`, `embed`, `source`, `dead_letter`, `commit`.
    pub kind: &'static str,
    /// What happened.
    pub message: String,
}

/// Errors kept for `/status`.
const RECENT_ERRORS: usize = 20;

fn exponential(start: f64, factor: f64, n: u16) -> impl Iterator<Item = f64> {
    (0..n).map(move |i| start * factor.powi(i32::from(i)))
}

/// Latency buckets (seconds): 5 ms to an hour, finest around the sub-second freshness
/// objective (p50 ≤ 100 ms, p99 ≤ 1 s).
const LATENCY_BUCKETS: [f64; 23] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0, 3600.0,
];

/// Label of an event outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `content`, `metadata`, `delete`, `noop`, `superseded`, `dead_lettered`.
    pub outcome: &'static str,
}

/// Labels of a multi-table dataflow's per-table counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableOutcomeLabel {
    /// The `[[tables]]` name (`(none)`: records no table claims — tombstones, heartbeats,
    /// other tables' events, undecodable records).
    pub table: String,
    /// `received`, `applied`, `noop`, `superseded`, `dead_lettered`.
    pub outcome: &'static str,
}

/// Label of a sink operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// `upsert`, `set_payload`, `delete`.
    pub op: &'static str,
}

/// Label of a result (`ok`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabel {
    /// The result.
    pub result: &'static str,
}

/// All metrics of one process.
pub struct Metrics {
    registry: Registry,
    /// Records read from the source.
    pub received: Counter,
    /// Acknowledged events by outcome.
    pub events: Family<OutcomeLabel, Counter>,
    /// A multi-table dataflow's acknowledged row events by table and outcome.
    pub table_events: Family<TableOutcomeLabel, Counter>,
    /// The tables' names, by index (set once, at start).
    table_names: std::sync::OnceLock<Vec<String>>,
    /// Chunks sent to the embedder.
    pub chunks_embedded: Counter,
    /// Embedding batches.
    pub embed_batches: Counter,
    /// Vectors reused from the cache or the collection.
    pub vectors_reused: Counter,
    /// Points written by operation.
    pub points: Family<OpLabel, Counter>,
    /// Transient sink or embedder errors that were retried.
    pub retries: Counter,
    /// Documents whose sink write was rejected as permanently invalid (dead-lettered).
    pub sink_rejected: Counter,
    /// now − sink frontier while work is pending, else 0 (seconds).
    pub frontier_lag_seconds: Gauge<f64, AtomicU64>,
    /// Kafka offset commits by result (`ok`, `failed`).
    pub offset_commits: Family<ResultLabel, Counter>,
    /// Schema registry requests by result (`ok`, `not_found`, `invalid`, `error`).
    pub schema_registry_requests: Family<ResultLabel, Counter>,
    /// Schema ids the registry client holds (known and unknown).
    pub schema_cache_size: Gauge,
    /// Live documents in the state (exact, maintained by a differential count).
    pub state_documents: Gauge,
    /// Their chunks: the points the collection holds once caught up.
    pub state_chunks: Gauge,
    /// Each stage's frontier (seconds since epoch).
    pub stage_frontier: Family<StageLabel, Gauge<f64, AtomicU64>>,
    /// Per applied change: source commit (`source.ts_ms`) to the sink's acknowledgement.
    pub commit_to_searchable: Histogram,
    /// Per applied change: ingestion to the sink's acknowledgement.
    pub ingest_to_searchable: Histogram,
    /// Applied changes without a source commit time (not in `commit_to_searchable`).
    pub changes_without_commit_time: Counter,
    /// Records behind the high watermark, per partition.
    pub backlog_records: Family<PartitionLabel, Gauge>,
    /// Estimated seconds to read the backlog at the current rate, per partition.
    pub backlog_seconds: Family<PartitionLabel, Gauge<f64, AtomicU64>>,
    /// Texts waiting for an embedding batch.
    pub embed_queue_depth: Gauge,
    /// Texts per embedding batch.
    pub embed_batch_texts: Histogram,
    /// Tokens per embedding batch.
    pub embed_batch_tokens: Histogram,
    /// Time an embedding batch takes (seconds, retries included).
    pub embed_latency: Histogram,
    /// Embedder errors by kind.
    pub embed_errors: Family<ErrorKindLabel, Counter>,
    /// 1 while the embedding circuit breaker holds requests back.
    pub embed_breaker_open: Gauge,
    /// 1 while the embedded engine builds an index in the background.
    pub index_build_running: Gauge,
    /// Vectors found in the embedding cache.
    pub embed_cache_hits: Counter,
    /// Vectors not in the embedding cache.
    pub embed_cache_misses: Counter,
    /// hits / (hits + misses) so far.
    pub embed_cache_hit_ratio: Gauge<f64, AtomicU64>,
    /// Time a sink write takes (seconds, per attempt).
    pub sink_write_latency: Histogram,
    /// Points per sink write.
    pub sink_batch_points: Histogram,
    /// Dead letters written by this process.
    pub dead_letters: Counter,
    /// Resident memory of the process (bytes).
    pub resident_memory_bytes: Gauge,
    /// Always 1, labelled with the version and model id.
    pub build_info: Family<BuildLabel, Gauge>,
    totals: Mutex<Tally>,
    commit_window: Mutex<LatencyWindow>,
    ingest_window: Mutex<LatencyWindow>,
    errors: Mutex<VecDeque<RecentError>>,
    /// Times whose vectors are being resolved, with how many writers hold each.
    embedding: Mutex<BTreeMap<Time, usize>>,
    /// Dead letters in the file when the process started.
    pub dead_letters_before: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered under `freshet_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("freshet");
        let received = Counter::default();
        let events = Family::<OutcomeLabel, Counter>::default();
        let table_events = Family::<TableOutcomeLabel, Counter>::default();
        let chunks_embedded = Counter::default();
        let embed_batches = Counter::default();
        let vectors_reused = Counter::default();
        let points = Family::<OpLabel, Counter>::default();
        let retries = Counter::default();
        let sink_rejected = Counter::default();
        let frontier_lag_seconds = Gauge::<f64, AtomicU64>::default();
        let state_documents = Gauge::default();
        let state_chunks = Gauge::default();
        registry.register(
            "state_documents",
            "Live documents in the state (differential count)",
            state_documents.clone(),
        );
        registry.register("state_chunks", "Chunks of the live documents (points once caught up)", state_chunks.clone());
        registry.register("events_received", "Records read from the source", received.clone());
        registry.register("events", "Acknowledged events by outcome", events.clone());
        registry.register(
            "table_events",
            "Acknowledged row events of a multi-table dataflow by table and outcome (received = applied + noop + superseded + dead_lettered per table)",
            table_events.clone(),
        );
        registry.register("chunks_embedded", "Chunks sent to the embedder", chunks_embedded.clone());
        registry.register("embed_batches", "Embedding batches", embed_batches.clone());
        registry.register("vectors_reused", "Vectors reused from the cache or the collection", vectors_reused.clone());
        registry.register("points_written", "Points written by operation", points.clone());
        registry.register("retries", "Transient errors retried", retries.clone());
        registry.register(
            "sink_rejected",
            "Documents whose write the sink rejected as invalid (dead-lettered)",
            sink_rejected.clone(),
        );
        registry.register(
            "frontier_lag_seconds",
            "Now minus the sink frontier while work is pending, 0 when caught up",
            frontier_lag_seconds.clone(),
        );
        let offset_commits = Family::<ResultLabel, Counter>::default();
        registry.register(
            "offset_commits",
            "Kafka offset commits of acknowledged records, by result",
            offset_commits.clone(),
        );
        let schema_registry_requests = Family::<ResultLabel, Counter>::default();
        registry.register(
            "schema_registry_requests",
            "Schema registry requests (Avro formats) by result: ok, not_found (dead letters), invalid (not Avro), error (retried; records wait)",
            schema_registry_requests.clone(),
        );
        let schema_cache_size = Gauge::default();
        registry.register(
            "schema_cache_size",
            "Schema ids the registry client holds (fetched, read from the disk cache, or known to be unknown)",
            schema_cache_size.clone(),
        );
        let stage_frontier = Family::<StageLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "stage_frontier_timestamp_seconds",
            "Frontier of each pipeline stage (source, decode, state, embed, sink): the earliest ingestion time it may still hold, in seconds since the epoch",
            stage_frontier.clone(),
        );
        let commit_to_searchable = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "commit_to_searchable_seconds",
            "Per applied change: source commit time (source.ts_ms) to the sink's acknowledgement",
            commit_to_searchable.clone(),
        );
        let ingest_to_searchable = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "ingest_to_searchable_seconds",
            "Per applied change: ingestion to the sink's acknowledgement",
            ingest_to_searchable.clone(),
        );
        let changes_without_commit_time = Counter::default();
        registry.register(
            "changes_without_commit_time",
            "Applied changes without a source commit time (not in commit_to_searchable_seconds)",
            changes_without_commit_time.clone(),
        );
        let backlog_records = Family::<PartitionLabel, Gauge>::default();
        registry.register(
            "kafka_backlog_records",
            "Records behind the partition's high watermark",
            backlog_records.clone(),
        );
        let backlog_seconds = Family::<PartitionLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "kafka_backlog_seconds",
            "Estimated seconds to read the partition's backlog at the recent read rate (absent while nothing is read)",
            backlog_seconds.clone(),
        );
        let embed_queue_depth = Gauge::default();
        registry.register("embed_queue_depth", "Texts waiting for an embedding batch", embed_queue_depth.clone());
        let embed_batch_texts = Histogram::new(exponential(1.0, 2.0, 11));
        registry.register("embed_batch_texts", "Texts per embedding batch", embed_batch_texts.clone());
        let embed_batch_tokens = Histogram::new(exponential(64.0, 2.0, 12));
        registry.register("embed_batch_tokens", "Tokens per embedding batch", embed_batch_tokens.clone());
        let embed_latency = Histogram::new(exponential(0.005, 2.0, 14));
        registry.register(
            "embed_latency_seconds",
            "Time an embedding batch takes, retries included",
            embed_latency.clone(),
        );
        let embed_errors = Family::<ErrorKindLabel, Counter>::default();
        registry.register(
            "embed_errors",
            "Embedder errors: transient (retried) and permanent (dead-lettered)",
            embed_errors.clone(),
        );
        let embed_breaker_open = Gauge::default();
        registry.register(
            "embed_breaker_open",
            "1 while the embedding circuit breaker holds requests back after repeated failures",
            embed_breaker_open.clone(),
        );
        let index_build_running = Gauge::default();
        registry.register(
            "index_build_running",
            "1 while the embedded engine builds an index (HNSW) in the background; writes go on meanwhile",
            index_build_running.clone(),
        );
        let embed_cache_hits = Counter::default();
        registry.register("embed_cache_hits", "Vectors found in the embedding cache", embed_cache_hits.clone());
        let embed_cache_misses = Counter::default();
        registry.register("embed_cache_misses", "Vectors not in the embedding cache", embed_cache_misses.clone());
        let embed_cache_hit_ratio = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "embed_cache_hit_ratio",
            "Embedding cache hits / (hits + misses) since start",
            embed_cache_hit_ratio.clone(),
        );
        let sink_write_latency = Histogram::new(exponential(0.001, 2.0, 16));
        registry.register(
            "sink_write_latency_seconds",
            "Time one sink write takes (per attempt)",
            sink_write_latency.clone(),
        );
        let sink_batch_points = Histogram::new(exponential(1.0, 2.0, 14));
        registry.register("sink_batch_points", "Points per sink write", sink_batch_points.clone());
        let dead_letters = Counter::default();
        registry.register("dead_letters", "Dead letters written by this process", dead_letters.clone());
        let resident_memory_bytes = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            resident_memory_bytes.clone(),
        );
        // Series that exist from the start at 0, so that rates and alerts have a baseline.
        for kind in ["transient", "throttled", "permanent"] {
            let _ = embed_errors.get_or_create(&ErrorKindLabel { kind });
        }
        for outcome in ["content", "metadata", "delete", "noop", "superseded", "dead_lettered"] {
            let _ = events.get_or_create(&OutcomeLabel { outcome });
        }
        let build_info = Family::<BuildLabel, Gauge>::default();
        registry.register("build_info", "Version and embedding model (always 1)", build_info.clone());
        Self {
            registry,
            received,
            events,
            chunks_embedded,
            embed_batches,
            vectors_reused,
            points,
            retries,
            sink_rejected,
            frontier_lag_seconds,
            offset_commits,
            schema_registry_requests,
            schema_cache_size,
            state_documents,
            state_chunks,
            stage_frontier,
            commit_to_searchable,
            ingest_to_searchable,
            changes_without_commit_time,
            backlog_records,
            backlog_seconds,
            embed_queue_depth,
            embed_batch_texts,
            embed_batch_tokens,
            embed_latency,
            embed_errors,
            embed_breaker_open,
            index_build_running,
            embed_cache_hits,
            embed_cache_misses,
            embed_cache_hit_ratio,
            sink_write_latency,
            sink_batch_points,
            dead_letters,
            resident_memory_bytes,
            build_info,
            table_events,
            table_names: std::sync::OnceLock::new(),
            totals: Mutex::new(Tally::default()),
            commit_window: Mutex::new(LatencyWindow::default()),
            ingest_window: Mutex::new(LatencyWindow::default()),
            errors: Mutex::new(VecDeque::new()),
            embedding: Mutex::new(BTreeMap::new()),
            dead_letters_before: AtomicU64::new(0),
        }
    }

    /// Name the tables of a multi-table dataflow (their index in the per-table counters).
    pub fn set_table_names(&self, names: Vec<String>) {
        let _ = self.table_names.set(names);
    }

    /// Record a time's acknowledged per-table counters (table index `u16::MAX`: none).
    pub fn record_table_acked(&self, tables: &std::collections::BTreeMap<u16, Tally>) {
        let names = self.table_names.get().map_or(&[][..], Vec::as_slice);
        for (t, tally) in tables {
            let table = names.get(*t as usize).map_or("(none)", String::as_str);
            for (outcome, n) in [
                ("received", tally.received),
                ("applied", tally.applied()),
                ("noop", tally.noop),
                ("superseded", tally.superseded),
                ("dead_lettered", tally.dead_lettered),
            ] {
                if n > 0 {
                    self.table_events.get_or_create(&TableOutcomeLabel { table: table.to_string(), outcome }).inc_by(n);
                }
            }
        }
    }

    /// Set the build-info gauge.
    pub fn set_build_info(&self, model_id: &str) {
        self.build_info
            .get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION").into(), model_id: model_id.into() })
            .set(1);
    }

    /// Record the changes applied at `time` as acknowledged now: one observation per change
    /// in both latency histograms (the commit one only for changes with a commit time).
    pub fn record_searchable(&self, time: Time, commits: &[Option<u64>]) {
        let now = now_ms();
        let now_s = now / 1000;
        let ingest = now.saturating_sub(time) as f64 / 1000.0;
        let mut without = 0;
        for c in commits {
            self.ingest_to_searchable.observe(ingest);
            match c {
                Some(c) => {
                    let v = now.saturating_sub(*c) as f64 / 1000.0;
                    if v >= 1.0 {
                        tracing::debug!(
                            commit_ms = *c,
                            read_after_ms = time.saturating_sub(*c),
                            searchable_after_ms = now.saturating_sub(time),
                            "a change took over a second from its commit to searchable"
                        );
                    }
                    self.commit_to_searchable.observe(v);
                    if let Ok(mut w) = self.commit_window.lock() {
                        w.observe(now_s, v);
                    }
                }
                None => without += 1,
            }
        }
        if !commits.is_empty() {
            if let Ok(mut w) = self.ingest_window.lock() {
                for _ in commits {
                    w.observe(now_s, ingest);
                }
            }
        }
        if without > 0 {
            self.changes_without_commit_time.inc_by(without);
        }
    }

    /// Commit→searchable percentiles over the last `window_s` seconds.
    pub fn commit_percentiles(&self, window_s: u64) -> super::window::Percentiles {
        self.commit_window.lock().map(|w| w.percentiles(now_ms() / 1000, window_s)).unwrap_or_default()
    }

    /// Ingestion→searchable percentiles over the last `window_s` seconds.
    pub fn ingest_percentiles(&self, window_s: u64) -> super::window::Percentiles {
        self.ingest_window.lock().map(|w| w.percentiles(now_ms() / 1000, window_s)).unwrap_or_default()
    }

    /// Remember an error for `/status` (the newest [`RECENT_ERRORS`]).
    pub fn record_error(&self, kind: &'static str, message: impl std::fmt::Display) {
        if let Ok(mut q) = self.errors.lock() {
            if q.len() == RECENT_ERRORS {
                q.pop_front();
            }
            q.push_back(RecentError { at_ms: now_ms(), kind, message: message.to_string() });
        }
    }

    /// The last errors, newest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.errors.lock().map(|q| q.iter().rev().cloned().collect()).unwrap_or_default()
    }

    /// Record embedding-cache lookups.
    pub fn record_cache(&self, hits: u64, misses: u64) {
        self.embed_cache_hits.inc_by(hits);
        self.embed_cache_misses.inc_by(misses);
        let (h, m) = (self.embed_cache_hits.get(), self.embed_cache_misses.get());
        if h + m > 0 {
            self.embed_cache_hit_ratio.set(h as f64 / (h + m) as f64);
        }
    }

    /// A writer starts resolving the vectors of `time`.
    pub fn embedding_started(&self, time: Time) {
        if let Ok(mut g) = self.embedding.lock() {
            *g.entry(time).or_default() += 1;
        }
    }

    /// A writer has resolved the vectors of `time`.
    pub fn embedding_done(&self, time: Time) {
        if let Ok(mut g) = self.embedding.lock() {
            if let Some(n) = g.get_mut(&time) {
                *n -= 1;
                if *n == 0 {
                    g.remove(&time);
                }
            }
        }
    }

    /// The oldest time whose vectors are being resolved in this process.
    pub fn embedding_frontier(&self) -> Option<Time> {
        self.embedding.lock().ok().and_then(|g| g.keys().next().copied())
    }

    /// Dead letters in the file: those there at start and those written since.
    pub fn dead_letters_in_file(&self) -> u64 {
        self.dead_letters_before.load(std::sync::atomic::Ordering::Relaxed) + self.dead_letters.get()
    }

    /// Record an acknowledged time's tally.
    pub fn record_acked(&self, t: &Tally) {
        for (outcome, n) in [
            ("content", t.content),
            ("metadata", t.metadata),
            ("delete", t.deleted),
            ("noop", t.noop),
            ("superseded", t.superseded),
            ("dead_lettered", t.dead_lettered),
        ] {
            if n > 0 {
                self.events.get_or_create(&OutcomeLabel { outcome }).inc_by(n);
            }
        }
        for (op, n) in
            [("upsert", t.points_upserted), ("set_payload", t.points_payload_updated), ("delete", t.points_deleted)]
        {
            if n > 0 {
                self.points.get_or_create(&OpLabel { op }).inc_by(n);
            }
        }
        if let Ok(mut g) = self.totals.lock() {
            g.add(t);
        }
    }

    /// Bring the `events_received` counter up to the source's total.
    pub fn sync_received(&self, total: u64) {
        let seen = self.received.get();
        if total > seen {
            self.received.inc_by(total - seen);
        }
    }

    /// Bring the offset-commit counters up to the source's totals.
    pub fn sync_commits(&self, ok: u64, failed: u64) {
        for (result, total) in [("ok", ok), ("failed", failed)] {
            let c = self.offset_commits.get_or_create(&ResultLabel { result });
            let seen = c.get();
            if total > seen {
                c.inc_by(total - seen);
            }
        }
    }

    /// Record an embedding batch of `n` texts.
    pub fn record_embed_batch(&self, n: u64) {
        self.chunks_embedded.inc_by(n);
        self.embed_batches.inc();
    }

    /// Record vectors found without embedding.
    pub fn record_reused(&self, n: u64) {
        if n > 0 {
            self.vectors_reused.inc_by(n);
        }
    }

    /// Totals of everything acknowledged so far, with the embedder's counters.
    pub fn totals(&self) -> Tally {
        let mut t = self.totals.lock().map(|g| *g).unwrap_or_default();
        t.chunks_embedded = self.chunks_embedded.get();
        t.embed_batches = self.embed_batches.get();
        t.vectors_reused = self.vectors_reused.get();
        t.cache_hits = self.embed_cache_hits.get();
        t.cache_misses = self.embed_cache_misses.get();
        t
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory_bytes.set(rss as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The process's resident memory (`VmRSS` in `/proc/self/status`), where Linux tells it.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The counters as the one-line JSON summary `run --until-end` prints.
pub fn summary_json(t: &Tally) -> serde_json::Value {
    serde_json::json!({
        "received": t.received,
        "applied": t.applied(),
        "superseded": t.superseded,
        "noop": t.noop,
        "dead_lettered": t.dead_lettered,
        "chunks_embedded": t.chunks_embedded,
        "embed_batches": t.embed_batches,
        "content": t.content,
        "metadata_only": t.metadata,
        "deleted": t.deleted,
        "vectors_reused": t.vectors_reused,
        "points_upserted": t.points_upserted,
        "points_payload_updated": t.points_payload_updated,
        "points_deleted": t.points_deleted,
        "cache_hits": t.cache_hits,
        "cache_misses": t.cache_misses,
        "cache_hit_ratio": if t.cache_hits + t.cache_misses > 0 {
            serde_json::json!(t.cache_hits as f64 / (t.cache_hits + t.cache_misses) as f64)
        } else {
            serde_json::Value::Null
        },
    })
}
