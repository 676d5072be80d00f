//! Decoders: turn the key and value bytes of one source record into a
//! [`SourceRecord`](crate::model::SourceRecord), or say why the record is skipped
//! ([`SkipKind`]) or rejected ([`DecodeError`], which the reader dead-letters with its
//! [`DecodeErrorKind::as_str`] reason). Decoders are pure functions of the bytes and the
//! [`DecodeSpec`]: no I/O, no timely, no state between records. Debezium JSON lives in
//! [`debezium`], the plain upsert format in [`upsert`]; [`avro`] reads the Confluent wire
//! format into the JSON those two read, and [`connect`] gives Kafka Connect's semantic
//! types one meaning in both formats.

pub mod avro;
pub mod connect;
pub mod debezium;
pub mod upsert;

use std::fmt;

use crate::model::SourceRecord;

/// Largest record (key + value bytes) accepted by [`DecodeSpec::new`].
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// What to pull out of each record: the id columns, the version, the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeSpec {
    /// Row columns forming the document id, in order (composite ids joined with "/").
    pub id_fields: Vec<String>,
    /// Dotted path into the Debezium envelope giving the version, e.g. "source.lsn".
    /// When the event lacks it (MySQL, abridged sources) the record's position is used.
    pub version_field: Option<String>,
    /// Only events of this table ("schema.table" or just "table") are decoded; others are
    /// skipped. None = all tables.
    pub table: Option<String>,
    /// Records (key+value bytes) larger than this are rejected (error kind TooLarge).
    pub max_record_bytes: usize,
    /// A multi-table dataflow's tables, one spec each (its key, version and `table`), in
    /// `[[tables]]` order: a record is decoded by the one whose table it belongs to, and
    /// its change carries that index ([`crate::model::DocChange::table`]). Empty for a
    /// single-table dataflow, which this spec's own fields describe.
    pub tables: Vec<DecodeSpec>,
}

impl DecodeSpec {
    /// A spec with the given id columns, version `source.lsn`, every table, and
    /// [`DEFAULT_MAX_RECORD_BYTES`].
    pub fn new<S: Into<String>>(id_fields: impl IntoIterator<Item = S>) -> Self {
        Self {
            id_fields: id_fields.into_iter().map(Into::into).collect(),
            version_field: Some("source.lsn".to_owned()),
            table: None,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            tables: Vec::new(),
        }
    }
}

/// Reject a record whose key + value exceed [`DecodeSpec::max_record_bytes`].
pub(crate) fn check_size(spec: &DecodeSpec, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), DecodeError> {
    let key_len = key.map_or(0, <[u8]>::len);
    let value_len = value.map_or(0, <[u8]>::len);
    let total = key_len.saturating_add(value_len);
    if total > spec.max_record_bytes {
        return Err(DecodeError::new(
            DecodeErrorKind::TooLarge,
            format!(
                "record is {total} bytes (key {key_len} + value {value_len}), more than max_record_bytes = {}",
                spec.max_record_bytes
            ),
        ));
    }
    Ok(())
}

/// The outcome of decoding one record that is not an error.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A change for the dataflow.
    Record(SourceRecord),
    /// A well-formed record that carries no document change.
    Skip(SkipKind),
}

/// Why a well-formed record carries no document change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipKind {
    /// A null value (Kafka compaction marker after a delete).
    Tombstone,
    /// A Debezium heartbeat (`{"ts_ms":…}` only).
    Heartbeat,
    /// A logical decoding message (op `m`).
    Message,
    /// Transaction metadata (`BEGIN` / `END`).
    TransactionMetadata,
    /// An event of a table other than [`DecodeSpec::table`].
    OtherTable,
}

impl SkipKind {
    /// Stable lower-case name, for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipKind::Tombstone => "tombstone",
            SkipKind::Heartbeat => "heartbeat",
            SkipKind::Message => "message",
            SkipKind::TransactionMetadata => "transaction_metadata",
            SkipKind::OtherTable => "other_table",
        }
    }
}

/// A record that cannot be decoded. Always permanent: the same bytes fail the same way,
/// so the record goes to the dead-letter destination with [`DecodeErrorKind::as_str`] as
/// its reason and `message` as its detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The class of failure (the dead-letter reason).
    pub kind: DecodeErrorKind,
    /// What was wrong, naming the field and what was found.
    pub message: String,
}

impl DecodeError {
    /// An error of `kind` with a human-readable `message`.
    pub fn new(kind: DecodeErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// Whether retrying may help: never, the bytes will not change.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// The class of a [`DecodeError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    /// Key or value bytes are not UTF-8.
    InvalidUtf8,
    /// Key or value is not parsable JSON.
    InvalidJson,
    /// Key + value exceed [`DecodeSpec::max_record_bytes`].
    TooLarge,
    /// An id field is absent (or null) in the row and in the record key.
    MissingId,
    /// A field has the wrong JSON type (id, version, `after`, `op`…).
    WrongType,
    /// `op` is not one of c, u, d, r, t, m.
    UnknownOp,
    /// Valid JSON, but not a Debezium change event, heartbeat or transaction record.
    NotDebezium,
    /// An Avro format's key or value is not in the Confluent wire format (magic byte 0 and
    /// a 4-byte schema id).
    NotAvro,
    /// An Avro datum does not decode with its writer schema.
    InvalidAvro,
    /// The schema registry does not know the record's schema id (HTTP 404), or serves a
    /// schema that is not valid Avro.
    UnknownSchema,
}

impl DecodeErrorKind {
    /// Stable snake-case name, used as the dead-letter reason and metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DecodeErrorKind::InvalidUtf8 => "invalid_utf8",
            DecodeErrorKind::InvalidJson => "invalid_json",
            DecodeErrorKind::TooLarge => "too_large",
            DecodeErrorKind::MissingId => "missing_id",
            DecodeErrorKind::WrongType => "wrong_type",
            DecodeErrorKind::UnknownOp => "unknown_op",
            DecodeErrorKind::NotDebezium => "not_debezium",
            DecodeErrorKind::NotAvro => "not_avro",
            DecodeErrorKind::InvalidAvro => "invalid_avro",
            DecodeErrorKind::UnknownSchema => "unknown_schema",
        }
    }
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
