//! Sources: readers that turn external records (a file of events, Kafka partitions;
//! Postgres logical replication later) into routed [`crate::model::SourceRecord`]s for the
//! dataflow, the decoders they share (`decode/`), and the progress they report to the
//! runtime ([`SourceProgress`]).

pub mod decode;
pub mod file;
pub mod kafka;
pub mod registry;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::config::SourceFormat;
use crate::dataflow::{Ingested, Routed};
use crate::model::{route, ChangeOp, DeadLetter, FieldValue, RawRecordBytes, SourceRecord};
use decode::avro::{decode_debezium_avro, decode_upsert_avro, SchemaLookup};
use decode::debezium::decode_debezium_json;
use decode::upsert::decode_upsert_json;
use decode::{DecodeSpec, Decoded, SkipKind};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Progress the readers of one process share with the runtime (lag, counters, commits).
#[derive(Debug)]
pub struct SourceProgress {
    /// Records read.
    pub records: AtomicU64,
    /// Per local worker: the time its next records get (ms), 0 before its first pass,
    /// `u64::MAX` once it has finished reading.
    frontiers: Vec<AtomicU64>,
    /// Whether the readers have reached the end of their input at least once.
    pub caught_up: AtomicBool,
    /// Set to ask the readers to stop.
    pub stop: AtomicBool,
    /// Why a reader gave up, if one did (the run then fails).
    pub error: Mutex<Option<String>>,
    /// Offset commits that succeeded / failed (Kafka).
    pub commits: AtomicU64,
    /// Offset commits that failed (logged and retried with the next commit).
    pub commit_failures: AtomicU64,
    /// Per Kafka partition: read, committed and high-watermark offsets.
    pub partitions: Mutex<BTreeMap<(String, i32), PartitionProgress>>,
}

/// Offsets of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Where reading started.
    pub start: i64,
    /// The next offset to read.
    pub read: i64,
    /// The last offset committed to the consumer group (-1: none yet by this run).
    pub committed: i64,
    /// The partition's high watermark as last seen (-1: unknown).
    pub high_watermark: i64,
    /// Where reading stops (replay and `--until-end`), if it does.
    pub end: Option<i64>,
}

impl SourceProgress {
    /// Whether the readers have read everything there is for now: the end of the input
    /// once, or every Kafka partition up to its high watermark.
    pub fn at_end(&self) -> bool {
        if self.caught_up.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        let parts = self.partition_snapshot();
        !parts.is_empty() && parts.values().all(|p| p.read >= p.high_watermark)
    }

    /// Progress for `workers` local readers.
    pub fn new(workers: usize) -> Self {
        Self {
            records: AtomicU64::new(0),
            frontiers: (0..workers.max(1)).map(|_| AtomicU64::new(0)).collect(),
            caught_up: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            error: Mutex::new(None),
            commits: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            partitions: Mutex::new(BTreeMap::new()),
        }
    }

    /// A local reader's frontier moved to `time`.
    pub fn set_frontier(&self, local_worker: usize, time: u64) {
        if let Some(f) = self.frontiers.get(local_worker) {
            f.store(time, Ordering::Relaxed);
        }
    }

    /// Worker threads of this process.
    pub fn local_workers(&self) -> usize {
        self.frontiers.len()
    }

    /// A local reader finished reading.
    pub fn finish(&self, local_worker: usize) {
        self.set_frontier(local_worker, u64::MAX);
    }

    /// The source frontier of this process: the least time any reader may still give
    /// (`u64::MAX` once all have finished, 0 before all have started).
    pub fn frontier_ms(&self) -> u64 {
        self.frontiers.iter().map(|f| f.load(Ordering::Relaxed)).min().unwrap_or(u64::MAX)
    }

    /// Record why reading failed (the run fails with this message).
    pub fn fail(&self, message: String) {
        if let Ok(mut g) = self.error.lock() {
            g.get_or_insert(message);
        }
    }

    /// Update one partition's offsets.
    pub fn update_partition(&self, topic: &str, partition: i32, f: impl FnOnce(&mut PartitionProgress)) {
        if let Ok(mut g) = self.partitions.lock() {
            let entry = g.entry((topic.to_owned(), partition)).or_insert(PartitionProgress {
                committed: -1,
                high_watermark: -1,
                ..PartitionProgress::default()
            });
            f(entry);
        }
    }

    /// A copy of the per-partition offsets.
    pub fn partition_snapshot(&self) -> BTreeMap<(String, i32), PartitionProgress> {
        self.partitions.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// One raw record for [`ingest`].
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// Key bytes (None: a null key).
    pub key: Option<&'a [u8]>,
    /// Value bytes (None: a null value, a tombstone or an upsert delete).
    pub value: Option<&'a [u8]>,
    /// Source position: file line or partition offset (the version when the record has
    /// none).
    pub position: u64,
    /// The record's timestamp (Kafka `CreateTime`), if known.
    pub timestamp_ms: Option<u64>,
    /// Headers (name, value); each becomes the column `_header.<name>` (text) of the row.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

/// How [`ingest`] decodes records: the format, and for Avro the writer schemas by id.
#[derive(Clone, Copy)]
pub struct Decoder<'a> {
    /// The record format.
    pub format: SourceFormat,
    /// Writer schemas by registry id (Avro formats; the reader resolves a record's ids
    /// before handing it over). None with an Avro format: every record is a dead letter.
    pub schemas: Option<SchemaLookup<'a>>,
}

impl<'a> Decoder<'a> {
    /// A decoder of a JSON format (no schemas).
    pub fn json(format: SourceFormat) -> Self {
        Self { format, schemas: None }
    }
}

/// Most bytes of a key or a value a dead letter keeps ([`DeadLetter::raw`]).
const RAW_KEEP: usize = 1 << 20;

/// Decode one record into routed items (`peers` copies for a broadcast truncate).
/// `source` names where it came from (`topic[partition]`; the record's position follows
/// it in dead-letter entries: `topic[partition]@offset`).
pub fn ingest(
    decoder: Decoder<'_>,
    spec: &DecodeSpec,
    record: RawRecord<'_>,
    source: Option<&std::sync::Arc<str>>,
    peers: usize,
    out: &mut Vec<Routed>,
) {
    let RawRecord { key, value, position, timestamp_ms, headers } = record;
    let no_registry = |_: u32| -> Result<std::sync::Arc<decode::avro::AvroSchema>, decode::DecodeError> {
        Err(decode::DecodeError::new(
            decode::DecodeErrorKind::UnknownSchema,
            "an Avro format needs a schema registry (`[schema_registry]` in the runtime config)",
        ))
    };
    let schemas: SchemaLookup<'_> = decoder.schemas.unwrap_or(&no_registry);
    let decode = |spec: &DecodeSpec| match decoder.format {
        SourceFormat::DebeziumJson => decode_debezium_json(spec, key, value, position),
        SourceFormat::UpsertJson => decode_upsert_json(spec, key, value, position, timestamp_ms),
        SourceFormat::DebeziumAvro => decode_debezium_avro(spec, schemas, key, value, position),
        SourceFormat::UpsertAvro => decode_upsert_avro(spec, schemas, key, value, position, timestamp_ms),
    };
    let decoded = if spec.tables.is_empty() {
        decode(spec)
    } else {
        // A multi-table dataflow: the table the event names decodes it (its key, version).
        let mut decoded = Ok(Decoded::Skip(SkipKind::OtherTable));
        for (i, table) in spec.tables.iter().enumerate() {
            match decode(table) {
                Ok(Decoded::Skip(SkipKind::OtherTable)) => continue,
                Ok(Decoded::Record(SourceRecord::Doc(mut c))) => {
                    c.table = i as u16;
                    decoded = Ok(Decoded::Record(SourceRecord::Doc(c)));
                }
                other => decoded = other,
            }
            break;
        }
        decoded
    };
    match decoded {
        Ok(Decoded::Record(SourceRecord::Doc(mut c))) => {
            c.source = source.cloned();
            if let ChangeOp::Upsert(row) = &mut c.op {
                for (name, v) in headers {
                    let text = v.map(|b| String::from_utf8_lossy(b).into_owned());
                    row.insert(
                        format!("_header.{name}"),
                        FieldValue::Value(text.map_or(serde_json::Value::Null, serde_json::Value::String)),
                    );
                }
            }
            out.push(Routed { target: route(&c.doc_id), counted: true, item: Ingested::Record(SourceRecord::Doc(c)) })
        }
        Ok(Decoded::Record(t @ SourceRecord::Truncate { .. })) => {
            for w in 0..peers.max(1) {
                out.push(Routed { target: w as u64, counted: w == 0, item: Ingested::Record(t.clone()) });
            }
        }
        Ok(Decoded::Skip(kind)) => out.push(Routed {
            target: position,
            counted: true,
            item: Ingested::Skipped { position, kind: skip_name(&kind).into() },
        }),
        Err(e) => {
            let raw = decoder.format.is_avro().then(|| {
                let b64 = |b: &[u8]| {
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &b[..b.len().min(RAW_KEEP)])
                };
                RawRecordBytes {
                    key_base64: key.map(b64),
                    value_base64: value.map(b64),
                    truncated: key.is_some_and(|k| k.len() > RAW_KEEP) || value.is_some_and(|v| v.len() > RAW_KEEP),
                }
            });
            let mut excerpt = Vec::new();
            if let Some(k) = key {
                excerpt.extend_from_slice(&k[..k.len().min(256)]);
                excerpt.push(b'\t');
            }
            let v = value.unwrap_or(b"null");
            excerpt.extend_from_slice(&v[..v.len().min(1024)]);
            out.push(Routed {
                target: position,
                counted: true,
                item: Ingested::Dead(DeadLetter {
                    position,
                    origin: source.map(|s| format!("{s}@{position}")),
                    stage: "decode".into(),
                    reason: e.kind.as_str().into(),
                    error: e.to_string(),
                    doc_id: None,
                    record_excerpt: Some(String::from_utf8_lossy(&excerpt).into_owned()),
                    record_bytes: Some(key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len)),
                    raw,
                }),
            })
        }
    }
}

fn skip_name(k: &SkipKind) -> &'static str {
    match k {
        SkipKind::Tombstone => "tombstone",
        SkipKind::Heartbeat => "heartbeat",
        SkipKind::Message => "message",
        SkipKind::TransactionMetadata => "transaction",
        SkipKind::OtherTable => "other_table",
    }
}
