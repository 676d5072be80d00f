//! Pure timely/differential logic: the pipeline's dataflow, its operators, chunking and
//! per-document state. Nothing here performs I/O or knows rdkafka, reqwest, Qdrant or
//! tokio; the sink side is reached through the [`operators::write_index::IndexWriter`]
//! trait, implemented by `runtime`.

pub mod chunk;
pub mod operators;
pub mod pipeline;
pub mod state;
pub mod tables;

use serde::{Deserialize, Serialize};

use crate::model::{DeadLetter, DocWrite, SourceRecord};

/// Pipeline time: ingestion wall-clock milliseconds (totally ordered).
pub type Time = u64;

/// What a source reader hands to the dataflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Ingested {
    /// A decoded record.
    Record(SourceRecord),
    /// A record that is deliberately ignored (tombstone, heartbeat, `m` message, …).
    Skipped {
        /// Source position.
        position: u64,
        /// Why (`tombstone`, `heartbeat`, `message`, `transaction`, `other_table`).
        kind: String,
    },
    /// A record that could not be decoded.
    Dead(DeadLetter),
    /// The whole source has been read into the tables at this time (a multi-table
    /// dataflow's first pass): every document the worker's state holds that is not
    /// rendered at this time is not a document any more and is deleted at `version`. One
    /// uncounted copy per worker. Without it a restart would keep the points of a
    /// document whose root row was created and deleted while the process was down.
    Resync {
        /// The version the deletes get (the time of the pass).
        version: u64,
    },
}

/// An [`Ingested`] item addressed to a worker (`target % peers`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Routed {
    /// Routing key: the document's route hash, or the worker index for broadcasts.
    pub target: u64,
    /// Whether this copy counts towards the tallies (one copy of a broadcast does).
    pub counted: bool,
    /// The item.
    pub item: Ingested,
}

/// Per-time event counters; they reconcile:
/// `received = content + metadata + deleted + noop + superseded + dead_lettered`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Records that entered the pipeline.
    pub received: u64,
    /// Applied changes whose text changed (including creates).
    pub content: u64,
    /// Applied changes that changed only metadata.
    pub metadata: u64,
    /// Applied deletes (including truncates).
    pub deleted: u64,
    /// Changes that changed nothing, duplicates and skipped records.
    pub noop: u64,
    /// Changes older than what the index holds.
    pub superseded: u64,
    /// Records written to the dead-letter file.
    pub dead_lettered: u64,
    /// Chunks sent to the embedder.
    pub chunks_embedded: u64,
    /// Embedding batches.
    pub embed_batches: u64,
    /// Vectors found in the cache or the collection instead of embedding.
    pub vectors_reused: u64,
    /// Points upserted / payload-updated / deleted.
    pub points_upserted: u64,
    /// Points whose payload was updated.
    pub points_payload_updated: u64,
    /// Points deleted.
    pub points_deleted: u64,
    /// Vectors found in the embedding cache (memory or disk; filled in by the runtime).
    pub cache_hits: u64,
    /// Vectors looked up in the embedding cache and not found there.
    pub cache_misses: u64,
}

impl Tally {
    /// Changes applied (content + metadata + deletes).
    pub fn applied(&self) -> u64 {
        self.content + self.metadata + self.deleted
    }

    /// Add another tally.
    pub fn add(&mut self, o: &Tally) {
        self.received += o.received;
        self.content += o.content;
        self.metadata += o.metadata;
        self.deleted += o.deleted;
        self.noop += o.noop;
        self.superseded += o.superseded;
        self.dead_lettered += o.dead_lettered;
        self.chunks_embedded += o.chunks_embedded;
        self.embed_batches += o.embed_batches;
        self.vectors_reused += o.vectors_reused;
        self.points_upserted += o.points_upserted;
        self.points_payload_updated += o.points_payload_updated;
        self.points_deleted += o.points_deleted;
    }
}

/// Output of the per-document state stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StateOut {
    /// Writes for one document.
    Write(DocWrite),
    /// A rejected record.
    Dead(DeadLetter),
    /// Counters for the records processed at this time.
    Tally(Tally),
    /// A multi-table dataflow's counters by table index (`u16::MAX`: records no table
    /// claims); they add up to the time's [`StateOut::Tally`] of the row stage.
    TableTally(Vec<(u16, Tally)>),
    /// The source commit times (ms; None when the record has none) of the changes applied
    /// at this time, one per change counted as applied in the tally.
    Applied(Vec<Option<u64>>),
    /// The table was truncated at this version (remembered across restarts).
    Truncated(crate::model::Version),
    /// Change in the number of live documents and chunks the state holds.
    Size {
        /// Documents added minus removed.
        documents: i64,
        /// Chunks added minus removed.
        chunks: i64,
    },
}

/// The worker a routing hash lands on (mirrors timely's `Exchange` distribution).
pub fn worker_for(hash: u64, peers: usize) -> usize {
    let peers = peers.max(1) as u64;
    if peers.is_power_of_two() {
        (hash & (peers - 1)) as usize
    } else {
        (hash % peers) as usize
    }
}
