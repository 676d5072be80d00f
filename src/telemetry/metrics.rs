//! Counters and gauges of a running pipeline, in one registry (prometheus-client).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::dataflow::Tally;

/// Label of an event outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `content`, `metadata`, `delete`, `noop`, `superseded`, `dead_lettered`.
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
    /// Source frontier (ms since epoch).
    pub source_frontier_ms: Gauge,
    /// Sink frontier (ms since epoch).
    pub sink_frontier_ms: Gauge,
    /// Kafka offset commits by result (`ok`, `failed`).
    pub offset_commits: Family<ResultLabel, Counter>,
    /// Live documents in the state (exact, maintained by a differential count).
    pub state_documents: Gauge,
    /// Their chunks: the points the collection holds once caught up.
    pub state_chunks: Gauge,
    totals: Mutex<Tally>,
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
        let chunks_embedded = Counter::default();
        let embed_batches = Counter::default();
        let vectors_reused = Counter::default();
        let points = Family::<OpLabel, Counter>::default();
        let retries = Counter::default();
        let sink_rejected = Counter::default();
        let frontier_lag_seconds = Gauge::<f64, AtomicU64>::default();
        let source_frontier_ms = Gauge::default();
        let sink_frontier_ms = Gauge::default();
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
        registry.register("source_frontier_ms", "Source frontier (ms since epoch)", source_frontier_ms.clone());
        registry.register("sink_frontier_ms", "Sink frontier (ms since epoch)", sink_frontier_ms.clone());
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
            source_frontier_ms,
            sink_frontier_ms,
            offset_commits,
            state_documents,
            state_chunks,
            totals: Mutex::new(Tally::default()),
        }
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
        t
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
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
    })
}
