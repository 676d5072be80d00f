//! The shared vocabulary of freshet: document ids, versions, content hashes, the decoded
//! change a source produces ([`DocChange`]) and the writes the dataflow asks the sink for
//! ([`DocWrite`]). Everything here is plain data; no I/O, no timely.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The value Debezium puts in a column whose TOASTed value did not change in an update.
pub const TOAST_PLACEHOLDER: &str = "__debezium_unavailable_value";

/// The primary key of a source row, rendered as a string (composite keys joined by `/`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocId(pub String);

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A document version: Debezium's `source.lsn` when present, else the record's source
/// position (line number of a file, offset of a partition). Larger is newer.
pub type Version = u64;

/// SHA-256 of a chunk's text (the key of the embedding cache together with the model id).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Hash a chunk text.
    pub fn of(text: &str) -> Self {
        let digest = Sha256::digest(text.as_bytes());
        Self(digest.into())
    }

    /// Lower-case hex, as stored in the point payload.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse the hex form written by [`ContentHash::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(arr))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..12])
    }
}

/// One column value of a decoded row.
///
/// Rows cross process boundaries in a timely cluster, where timely encodes them with
/// bincode, which cannot decode a `serde_json::Value` (it is self-describing): the value
/// travels as its JSON text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FieldValue {
    /// A present value (JSON, as Debezium's JsonConverter renders it).
    Value(#[serde(with = "json_text")] serde_json::Value),
    /// Debezium's unchanged-TOAST placeholder: the previous value still holds.
    Unchanged,
}

/// A decoded row: column name → value.
pub type Row = BTreeMap<String, FieldValue>;

/// What happened to a document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChangeOp {
    /// Create, update or snapshot read: the row as it is now.
    Upsert(Row),
    /// The row is gone.
    Delete,
}

/// A decoded source record, the input of the dataflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SourceRecord {
    /// A change to one document.
    Doc(DocChange),
    /// `TRUNCATE` of the table: every document with an older version goes.
    Truncate {
        /// Version (LSN or position) of the truncate.
        version: Version,
        /// Source position of the record.
        position: u64,
        /// Source commit time (ms since epoch), if known.
        commit_ts_ms: Option<u64>,
    },
}

/// A change to one document, as decoded from the source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocChange {
    /// The document.
    pub doc_id: DocId,
    /// Its version (see [`Version`]).
    pub version: Version,
    /// Source position (file line, partition offset); orders events of one document as they
    /// arrived and names the record in dead-letter entries.
    pub position: u64,
    /// Source commit time (Debezium `source.ts_ms`), for the commit→searchable latency.
    pub commit_ts_ms: Option<u64>,
    /// The change.
    pub op: ChangeOp,
    /// Where the record came from, without its position (`topic[partition]` on Kafka;
    /// shared by every record of the partition): a dead letter of a later stage names the
    /// record as `{source}@{position}`. (Always serialised: timely exchanges changes
    /// between processes in bincode, which has no field names to skip by.)
    pub source: Option<std::sync::Arc<str>>,
    /// The table the row belongs to, as an index into the dataflow's `[[tables]]` (0 in a
    /// single-table dataflow, whose rows are the documents themselves).
    pub table: u16,
}

impl DocChange {
    /// The record's origin for a dead-letter entry (`topic[partition]@offset`), if the
    /// source names it.
    pub fn origin(&self) -> Option<String> {
        self.source.as_ref().map(|s| format!("{s}@{}", self.position))
    }
}

/// A point id: UUIDv5 of (collection namespace, doc_id, chunk_index).
pub fn point_id(namespace: &uuid::Uuid, doc_id: &DocId, chunk_index: u32) -> uuid::Uuid {
    let name = format!("{}\u{0}{}", doc_id.0, chunk_index);
    uuid::Uuid::new_v5(namespace, name.as_bytes())
}

/// The namespace of a collection's point ids (UUIDv5 of the collection name in the URL
/// namespace), so the same document gets different ids in different collections.
pub fn collection_namespace(collection: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("freshet:{collection}").as_bytes())
}

/// The metadata carried into every point of a document (mapped payload fields).
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// One chunk that must be (re)written with a vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkUpsert {
    /// Position of the chunk in the document.
    pub chunk_index: u32,
    /// Hash of `text`.
    pub hash: ContentHash,
    /// The chunk text (travels only with the change that needs it).
    pub text: String,
}

/// Everything the sink must do for one document at one time, in order:
/// upserts (with full payload), then payload updates of unchanged chunks, then deletes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocWrite {
    /// The document.
    pub doc_id: DocId,
    /// Version written into every touched point's payload.
    pub version: Version,
    /// Metadata for the payload of every touched point (complete: placeholders resolved
    /// by the caller only when `metadata_partial` is false).
    pub metadata: Metadata,
    /// When true, `metadata` holds only the fields that are known; payload updates must
    /// merge them into the existing payload rather than replace it.
    pub metadata_partial: bool,
    /// Chunks whose position or content changed: written with a vector and full payload.
    pub upserts: Vec<ChunkUpsert>,
    /// Chunks whose content is unchanged but whose payload must be refreshed
    /// (metadata or version changed): (chunk_index, hash).
    pub payload_updates: Vec<(u32, ContentHash)>,
    /// Chunk indexes whose points must be removed.
    pub deletes: Vec<u32>,
    /// Hashes of the template's text fields, stored in the payload so that an
    /// unchanged-TOAST placeholder can be resolved after a restart.
    pub text_field_hashes: Vec<u64>,
    /// Set when the document is deleted: the version to remember as its tombstone.
    pub tombstone: Option<Version>,
    /// Set when the document's version advanced with nothing to write (a no-op change with
    /// a newer version): remembered beside the collection, so that after a restart an
    /// older event read again stays superseded.
    #[serde(default)]
    pub seen_version: Option<Version>,
    /// Source commit time of the newest change folded into this write.
    pub commit_ts_ms: Option<u64>,
}

/// Payload keys freshet writes besides the mapped metadata.
pub mod keys {
    /// The document id.
    pub const DOC_ID: &str = "doc_id";
    /// The chunk's position.
    pub const CHUNK_INDEX: &str = "chunk_index";
    /// Hex SHA-256 of the chunk text.
    pub const CONTENT_HASH: &str = "content_hash";
    /// Version of the change that last altered the document's content or metadata.
    pub const SOURCE_VERSION: &str = "source_version";
    /// The embedding model.
    pub const MODEL_ID: &str = "model_id";
    /// The chunk text.
    pub const TEXT: &str = "text";
    /// Hashes of the text fields (hex u64, template order).
    pub const TEXT_FIELD_HASHES: &str = "text_field_hashes";
}

/// The payload of a chunk point: metadata, then freshet's own keys. A null metadata value (a
/// NULL column, or a column the row does not have yet) is no key at all, which is what a
/// payload update leaves: Qdrant's set-payload merge removes a key set to null, so a null
/// written into new points would give one document's chunks two shapes (`key: null` on the
/// re-embedded ones, no key on the others).
#[allow(clippy::too_many_arguments)]
pub fn chunk_payload(
    metadata: &Metadata,
    doc_id: &DocId,
    chunk_index: u32,
    hash: &ContentHash,
    version: Version,
    model_id: &str,
    text: &str,
    text_field_hashes: &[u64],
) -> Metadata {
    let mut p: Metadata = nest_metadata(metadata).into_iter().filter(|(_, v)| !v.is_null()).collect();
    p.insert(keys::DOC_ID.into(), doc_id.0.clone().into());
    p.insert(keys::CHUNK_INDEX.into(), chunk_index.into());
    p.insert(keys::CONTENT_HASH.into(), hash.to_hex().into());
    p.insert(keys::SOURCE_VERSION.into(), version.into());
    p.insert(keys::MODEL_ID.into(), model_id.into());
    p.insert(keys::TEXT.into(), text.into());
    p.insert(keys::TEXT_FIELD_HASHES.into(), field_hashes_json(text_field_hashes));
    p
}

/// Metadata as payload keys: a dotted name (`author.name`, `_header.traceparent`) becomes a
/// nested object (`{"author": {"name": …}}`), since a dot in a Qdrant filter or payload-index
/// key is a path: `author.name` then filters and indexes as written. Null leaves are left
/// out of their object, and a group left with no value is null (a payload update's merge
/// removes it; a point's full payload leaves it out). A group replaces its previous object
/// whole: a metadata field next to dotted fields of the same prefix (`author` and
/// `author.name`) is shadowed by them.
pub fn nest_metadata(metadata: &Metadata) -> Metadata {
    let mut out = Metadata::new();
    let mut groups: Vec<&str> = Vec::new();
    for (k, v) in metadata {
        let Some((head, _)) = k.split_once('.') else {
            if !out.get(k).is_some_and(serde_json::Value::is_object) {
                out.insert(k.clone(), v.clone());
            }
            continue;
        };
        groups.push(head);
        if v.is_null() {
            continue;
        }
        let mut map = &mut out;
        let parts: Vec<&str> = k.split('.').collect();
        let (last, path) = parts.split_last().unwrap_or((&"", &[]));
        for part in path {
            let slot = map.entry(part.to_string()).or_insert(serde_json::Value::Null);
            if !slot.is_object() {
                *slot = serde_json::Value::Object(Metadata::new());
            }
            let serde_json::Value::Object(m) = slot else { unreachable!("made an object above") };
            map = m;
        }
        map.insert(last.to_string(), v.clone());
    }
    for g in groups {
        out.entry(g.to_string()).or_insert(serde_json::Value::Null);
    }
    out
}

/// The metadata field `name` of a payload written by [`chunk_payload`] (a dotted name is a
/// path into nested objects); null when absent.
pub fn payload_field<'a>(payload: &'a Metadata, name: &str) -> &'a serde_json::Value {
    static NULL: serde_json::Value = serde_json::Value::Null;
    let mut parts = name.split('.');
    let Some(first) = parts.next() else { return &NULL };
    let mut cur = payload.get(first).unwrap_or(&NULL);
    for p in parts {
        cur = cur.get(p).unwrap_or(&NULL);
    }
    cur
}

/// The payload keys a payload-only update sets (merged into the existing payload: a null
/// metadata value removes its key).
pub fn update_payload(metadata: &Metadata, version: Version, model_id: &str, text_field_hashes: &[u64]) -> Metadata {
    let mut p = nest_metadata(metadata);
    p.insert(keys::SOURCE_VERSION.into(), version.into());
    p.insert(keys::MODEL_ID.into(), model_id.into());
    p.insert(keys::TEXT_FIELD_HASHES.into(), field_hashes_json(text_field_hashes));
    p
}

fn field_hashes_json(h: &[u64]) -> serde_json::Value {
    serde_json::Value::Array(h.iter().map(|x| format!("{x:016x}").into()).collect())
}

/// Parse `text_field_hashes` from a payload.
pub fn parse_field_hashes(v: Option<&serde_json::Value>) -> Option<Vec<u64>> {
    v?.as_array()?.iter().map(|x| u64::from_str_radix(x.as_str()?, 16).ok()).collect()
}

/// A stable 64-bit hash of a field value (first 8 bytes of SHA-256 of its JSON).
pub fn value_hash(v: &serde_json::Value) -> u64 {
    let digest = Sha256::digest(v.to_string().as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

/// A stable 64-bit hash of a string (first 8 bytes of SHA-256).
pub fn str_hash(s: &str) -> u64 {
    let digest = Sha256::digest(s.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

/// A key column's value as it appears in an id or key: strings as-is, integers in decimal
/// (an integral float too), booleans as true/false; None for anything else (null, a
/// fraction, an array, an object). The decoders render ids this way, and a multi-table
/// dataflow renders a foreign key column this way to find the row it names.
pub fn key_part(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else if let Some(i) = n.as_i64() {
                Some(i.to_string())
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => Some((f as i64).to_string()),
                    _ => None,
                }
            }
        }
        _ => None,
    }
}

/// Stable routing hash of a document id (FNV-1a), used to exchange documents to workers.
pub fn route(doc_id: &DocId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in doc_id.0.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A record that could not be used, with why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Source position of the record (file line, partition offset).
    pub position: u64,
    /// Where the record came from (`topic[partition]@offset`), when the source knows more
    /// than its position.
    #[serde(default)]
    pub origin: Option<String>,
    /// Stage that rejected it (`decode`, `document`, `embed`, `sink`).
    pub stage: String,
    /// Short machine-readable reason (`invalid_json`, `missing_id`, ...).
    pub reason: String,
    /// Human-readable error.
    pub error: String,
    /// The document, when known.
    pub doc_id: Option<String>,
    /// The record (or its first bytes when large), lossily decoded as UTF-8.
    pub record_excerpt: Option<String>,
    /// The record's size in bytes.
    pub record_bytes: Option<usize>,
    /// The record's key and value bytes, base64, for binary formats (Avro), whose excerpt
    /// cannot show them: replay or inspect them from here. Up to 1 MiB of each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawRecordBytes>,
}

/// A dead-lettered record's bytes ([`DeadLetter::raw`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawRecordBytes {
    /// The key, base64 (none: a null key).
    pub key_base64: Option<String>,
    /// The value, base64 (none: a null value).
    pub value_base64: Option<String>,
    /// Whether either was cut at 1 MiB.
    #[serde(default)]
    pub truncated: bool,
}

/// How the dataflow classified one applied change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeClass {
    /// Text changed: new chunks embedded, changed positions upserted, surplus deleted.
    Content,
    /// Only metadata changed: payload update, no embedding.
    MetadataOnly,
    /// Nothing the index holds changed.
    NoOp,
    /// The document is gone: all its points removed.
    Delete,
}

/// Serde for a JSON value as its text (see [`FieldValue`]).
mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Regression (found by tests/postgres_e2e.rs against real Debezium): a NULL column gave
    /// re-embedded chunks `category: null` and payload-updated chunks of the same document no
    /// `category` key (the set-payload merge removes null keys).
    #[test]
    fn dotted_metadata_names_are_nested_objects_qdrant_filters_by_path() {
        let meta: Metadata = serde_json::from_value(serde_json::json!({
            "status": "published", "author.name": "Ada", "author.email": null, "category.dept.name": "Tools",
            "editor.name": null
        }))
        .unwrap();
        let doc = DocId("7".into());
        let p = chunk_payload(&meta, &doc, 0, &ContentHash::of("t"), 5, "m", "t", &[1]);
        assert_eq!(p["author"], serde_json::json!({"name": "Ada"}));
        assert_eq!(p["category"], serde_json::json!({"dept": {"name": "Tools"}}));
        assert!(!p.contains_key("editor") && !p.contains_key("author.name"), "{p:?}");
        assert_eq!(payload_field(&p, "author.name"), &serde_json::json!("Ada"));
        assert_eq!(payload_field(&p, "category.dept.name"), &serde_json::json!("Tools"));
        assert!(payload_field(&p, "author.email").is_null() && payload_field(&p, "editor.name").is_null());
        // A payload update removes a group with no value left (the merge drops null keys).
        let u = update_payload(&meta, 6, "m", &[1]);
        assert_eq!(u["editor"], serde_json::Value::Null);
        assert_eq!(u["author"], serde_json::json!({"name": "Ada"}));
    }

    #[test]
    fn null_metadata_is_no_payload_key_as_after_a_payload_update() {
        let mut meta = Metadata::new();
        meta.insert("status".into(), serde_json::json!("draft"));
        meta.insert("category".into(), serde_json::Value::Null);
        let doc = DocId("7".into());
        let p = chunk_payload(&meta, &doc, 0, &ContentHash::of("t"), 5, "m", "t", &[1, 2]);
        assert_eq!(p.get("status"), Some(&serde_json::json!("draft")));
        assert!(!p.contains_key("category"), "{p:?}");
        // The update keeps the null: merged, it removes a value the column no longer has.
        let u = update_payload(&meta, 6, "m", &[1, 2]);
        assert_eq!(u.get("category"), Some(&serde_json::Value::Null));
    }
}
