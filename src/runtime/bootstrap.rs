//! Restart reads the index: per-document state is rebuilt from the collection's payloads
//! (`doc_id`, `chunk_index`, `content_hash`, `source_version`, metadata, text field hashes)
//! and the tombstone log, then partitioned to the workers that own each document.
//! Points that cannot belong to a consistent document (beyond a gap in chunk indexes,
//! missing keys) are returned as orphans to delete.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::store::Tombstones;
use crate::dataflow::operators::doc_state::InitialState;
use crate::dataflow::state::{DocShape, DocState};
use crate::dataflow::worker_for;
use crate::model::{keys, parse_field_hashes, point_id, route, value_hash, ContentHash, DocId};
use crate::sink::{SinkError, VectorSink};

/// Why a point cannot belong to the collection's documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OrphanReason {
    /// It lacks freshet's payload keys (`doc_id`, `chunk_index`, `content_hash`,
    /// `source_version`): written by someone else.
    MissingKeys,
    /// Its id is not the one freshet derives from its collection, document and chunk
    /// index: a copy written by someone else.
    WrongId,
    /// Its vector is of another model than the pipeline's.
    OtherModel,
    /// Its document was deleted after it was written.
    DeletedDocument,
    /// It lies beyond a gap in its document's chunk indexes.
    ChunkGap,
}

impl OrphanReason {
    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanReason::MissingKeys => "missing_keys",
            OrphanReason::WrongId => "wrong_id",
            OrphanReason::OtherModel => "other_model",
            OrphanReason::DeletedDocument => "deleted_document",
            OrphanReason::ChunkGap => "chunk_gap",
        }
    }
}

/// The rebuilt state.
#[derive(Debug, Default)]
pub struct Bootstrap {
    /// Per worker.
    pub workers: Vec<InitialState>,
    /// Points to delete before starting, with the reason.
    pub orphans: Vec<(Uuid, OrphanReason)>,
    /// Points of another model (the pipeline refuses to start on them; `reconcile`
    /// removes them).
    pub other_model: Vec<(Uuid, String)>,
    /// Live documents found.
    pub live_docs: usize,
    /// Points read.
    pub points: usize,
    /// Documents a write torn by a crash touched (named by the in-flight log).
    pub torn_documents: usize,
    /// Documents whose points are at different versions (part of a write landed).
    pub mixed_documents: usize,
}

/// The content hash a rebuilt state holds for a chunk whose earlier content is unknown: no
/// text hashes to it, so the next change of text rewrites the chunk.
const UNKNOWN_CHUNK: ContentHash = ContentHash([0; 32]);

#[derive(Default)]
struct Partial {
    /// Chunk index → (content hash, point id, the point's version).
    chunks: BTreeMap<u32, (ContentHash, Uuid, u64)>,
    version: Option<u64>,
    /// The newest version among the points.
    newest: u64,
    meta: Option<Vec<u64>>,
    text_fields: Option<Vec<u64>>,
    /// The version of the point `text_fields` comes from.
    text_fields_version: u64,
    /// The text field hashes of a point at the oldest version (a mixed document goes back
    /// to that version, and to its text), and that version.
    oldest_text_fields: Option<Vec<u64>>,
    oldest_text_fields_version: u64,
}

/// Rebuild state for `peers` workers from the points of a collection whose point ids are
/// derived in `namespace`. Points of another model are listed in
/// [`Bootstrap::other_model`] and take no part in the state.
///
/// `suspects` are the points of a write a crash interrupted (from the in-flight log): some
/// of its operations may have reached the collection and others not, so their documents
/// may mix two versions. Each point is whole (the sink's writes are atomic per point; the
/// embedded engine's WAL is replayed after a crash), so the points stay — deleting them
/// would lose what the re-read change cannot always restore (an unchanged-TOAST body) —
/// but their documents go back to just before the newest version among their points — or,
/// when the points disagree on their version (part of the write landed), to the oldest
/// version among them, with unknown metadata — so the changes read again (their offsets
/// were not acknowledged) are applied against what the collection holds and rewrite what
/// they must.
pub fn rebuild(
    sink: &dyn VectorSink,
    shape: &DocShape,
    model_id: &str,
    namespace: &Uuid,
    tombstones: &Tombstones,
    suspects: &[Uuid],
    peers: usize,
) -> Result<Bootstrap, SinkError> {
    let suspects: std::collections::BTreeSet<Uuid> = suspects.iter().copied().collect();
    let mut dirty: std::collections::BTreeSet<DocId> = Default::default();
    let mut docs: BTreeMap<DocId, Partial> = BTreeMap::new();
    let mut orphans = Vec::new();
    let mut points = 0usize;
    let mut other_model = Vec::new();
    sink.scroll(false, 1024, &mut |page| {
        for p in page {
            points += 1;
            let pl = &p.payload;
            let doc = pl.get(keys::DOC_ID).and_then(|v| v.as_str());
            let idx = pl.get(keys::CHUNK_INDEX).and_then(|v| v.as_u64()).and_then(|i| u32::try_from(i).ok());
            let hash = pl.get(keys::CONTENT_HASH).and_then(|v| v.as_str()).and_then(ContentHash::from_hex);
            let version = pl.get(keys::SOURCE_VERSION).and_then(|v| v.as_u64());
            let (Some(doc), Some(idx), Some(hash), Some(version)) = (doc, idx, hash, version) else {
                orphans.push((p.id, OrphanReason::MissingKeys));
                continue;
            };
            let doc_id = DocId(doc.to_string());
            if p.id != point_id(namespace, &doc_id, idx) {
                orphans.push((p.id, OrphanReason::WrongId));
                continue;
            }
            match pl.get(keys::MODEL_ID).and_then(|v| v.as_str()) {
                Some(m) if m == model_id => {}
                other => {
                    other_model.push((p.id, other.unwrap_or("(none)").to_string()));
                    continue;
                }
            }
            if suspects.contains(&p.id) {
                dirty.insert(doc_id.clone());
            }
            let e = docs.entry(doc_id).or_default();
            e.chunks.insert(idx, (hash, p.id, version));
            // Points of one document disagree only after a torn write: keep the oldest
            // version so that replaying the newer change repairs them.
            e.version = Some(e.version.map_or(version, |v| v.min(version)));
            e.newest = e.newest.max(version);
            let meta: Vec<u64> =
                shape.meta_fields().iter().map(|f| value_hash(crate::model::payload_field(pl, f))).collect();
            match &e.meta {
                None => e.meta = Some(meta),
                Some(m) if *m != meta => e.meta = Some(Vec::new()),
                _ => {}
            }
            // The text field hashes of the newest write: a torn write leaves older points
            // beside newer ones, and an unchanged-TOAST body read again must resolve to the
            // body of the write before it, not to a body several changes old.
            if e.text_fields.is_none() || version > e.text_fields_version {
                e.text_fields = parse_field_hashes(pl.get(keys::TEXT_FIELD_HASHES));
                e.text_fields_version = version;
            }
            if e.oldest_text_fields.is_none() || version < e.oldest_text_fields_version {
                e.oldest_text_fields = parse_field_hashes(pl.get(keys::TEXT_FIELD_HASHES));
                e.oldest_text_fields_version = version;
            }
        }
    })?;
    let mut workers: Vec<InitialState> = (0..peers.max(1)).map(|_| InitialState::default()).collect();
    let mut live_docs = 0;
    let mut mixed_documents = 0;
    let torn_documents = dirty.len();
    for (doc_id, p) in docs {
        if p.version.is_some_and(|v| v != p.newest) {
            mixed_documents += 1;
        }
        let version = p.version.unwrap_or(0);
        if tombstones.docs.get(&doc_id).is_some_and(|t| *t > version) {
            // Deleted after these points were written (the delete's ack was lost).
            orphans.extend(p.chunks.values().map(|(_, id, _)| (*id, OrphanReason::DeletedDocument)));
            continue;
        }
        let mixed = version != p.newest;
        let mut chunks = Vec::with_capacity(p.chunks.len());
        for (i, (idx, (hash, id, at))) in p.chunks.into_iter().enumerate() {
            if idx as usize == i && chunks.len() == i {
                // In a mixed document, a point newer than the oldest ones was written by the
                // torn write: what the document held there before is unknown, so any text
                // read again rewrites it (its vector is found by hash, not embedded again).
                chunks.push(if mixed && at > version { UNKNOWN_CHUNK } else { hash });
            } else {
                orphans.push((id, OrphanReason::ChunkGap));
            }
        }
        // A no-op change may have advanced the version past the payloads'. A document
        // touched by an interrupted write goes back to just before that write's version
        // (the newest among its points, or older if none of its operations landed): the
        // write's change, read again, applies; changes older than it that the first run
        // superseded are superseded again (version 0 would apply them). If its points are
        // at different versions, part of the write landed: unknown metadata makes the
        // re-read change rewrite every payload; points that agree keep their metadata, so
        // a re-read no-op writes nothing.
        //
        // Points at different versions are a torn write even when the in-flight log no
        // longer names it (its carried entry is marked done right after this rebuild, before
        // the change read again is applied; a crash in between forgets it). Regression
        // (issue 13, a 20-kill run): such a document kept the chunk hashes of both versions,
        // so the change read again found its chunks unchanged and its metadata equal — a
        // no-op — and the points of the older version stayed behind committed offsets.
        //
        // A mixed document goes back to the version of its oldest points: the version it
        // had before the torn write (a document's points share one version after every
        // whole write), so every change the write carried applies again, in order, as it
        // did the first time. Regression (issue 13, seed 101): back to just below the newest
        // version, an edit that shrank the text and a later metadata change with an
        // unchanged-TOAST body, written together and torn before the deletes, left the old
        // text's last chunks for good: the edit read again was superseded, and the metadata
        // change has no text to chunk. Its text field hashes are the oldest points' too: a
        // re-applied change with an unchanged-TOAST body resolves to the text before the torn
        // write, so the edit after it, read again, is a change of text and not a no-op
        // (regression: `tests/torn_writes.rs`, a status flip and an edit written together).
        let seen = tombstones.seen.get(&doc_id).copied().unwrap_or(0);
        let dirty = dirty.contains(&doc_id);
        let (version, payload_version) = match (dirty, mixed) {
            (_, true) => (version.max(seen), 0),
            (true, false) => (p.newest.saturating_sub(1).max(seen), version),
            (false, false) => (version.max(seen), version),
        };
        let state = DocState {
            version,
            payload_version,
            live: true,
            chunks,
            text_fields: if mixed { p.oldest_text_fields } else { p.text_fields },
            meta: if mixed { Vec::new() } else { p.meta.unwrap_or_default() },
        };
        live_docs += 1;
        workers[worker_for(route(&doc_id), peers)].docs.insert(doc_id, state);
    }
    for (doc_id, v) in &tombstones.docs {
        let w = &mut workers[worker_for(route(doc_id), peers)];
        match w.docs.get(doc_id) {
            Some(s) if s.version >= *v => {}
            _ => {
                w.docs.insert(doc_id.clone(), DocState::tombstone(*v));
            }
        }
    }
    for w in &mut workers {
        w.truncated_at = tombstones.truncated_at;
    }
    Ok(Bootstrap { workers, orphans, other_model, live_docs, points, torn_documents, mixed_documents })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::DataflowSpec;
    use crate::model::{chunk_payload, collection_namespace, Metadata};
    use crate::sink::embedded::EmbeddedSink;
    use crate::sink::{SinkOp, SinkPoint};

    /// Regression (kill test): the points of a write a crash interrupted used to be
    /// deleted, and a re-read change that cannot restore them (an unchanged-TOAST body)
    /// left the document without points; and the document restarted from version 0, so a
    /// stale event read again (superseded the first time) was applied. The points stay;
    /// the document goes back to just before the write's version, or, if part of the write
    /// landed, to the version before the write (its oldest points') with unknown metadata,
    /// so the re-read changes apply and rewrite what they must.
    #[test]
    fn points_of_an_interrupted_write_stay_and_their_document_is_reapplied() {
        let spec =
            DataflowSpec::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/articles.toml")))
                .unwrap();
        let shape = DocShape::new(&spec);
        let ns = collection_namespace(&spec.sink.collection);
        let dir = tempfile::tempdir().unwrap();
        let sink = EmbeddedSink::open(dir.path(), "c", 4).unwrap();
        let meta: Metadata =
            serde_json::json!({"title": "T", "lang": "en", "status": "draft"}).as_object().unwrap().clone();
        let point = |doc: &str, idx: u32, version: u64| {
            let text = format!("{doc} chunk {idx}");
            let h = ContentHash::of(&text);
            let d = DocId(doc.into());
            SinkPoint {
                id: point_id(&ns, &d, idx),
                vector: vec![1.0, 0.0, 0.0, idx as f32],
                payload: chunk_payload(&meta, &d, idx, &h, version, "m", &text, &[1, 2]),
            }
        };
        // Document "a" half-rewritten at version 20 (chunk 1 new, chunk 0 old); "b" untouched;
        // "c" named by the interrupted write but none of it landed (or all of it); "d"
        // half-rewritten like "a" but no longer named by the in-flight log.
        let points = vec![
            point("a", 0, 10),
            point("a", 1, 20),
            point("b", 0, 10),
            point("b", 1, 10),
            point("c", 0, 30),
            point("c", 1, 30),
            point("d", 0, 10),
            point("d", 1, 20),
        ];
        sink.apply(vec![SinkOp::Upsert(points)]).unwrap();
        let suspects = [point_id(&ns, &DocId("a".into()), 1), point_id(&ns, &DocId("c".into()), 0)];
        let boot = rebuild(&sink, &shape, "m", &ns, &Tombstones::default(), &suspects, 1).unwrap();
        assert!(boot.orphans.is_empty(), "{:?}", boot.orphans);
        let a = &boot.workers[0].docs[&DocId("a".into())];
        assert_eq!((a.version, a.payload_version, a.chunks.len()), (10, 0, 2), "the version before the torn write");
        assert_eq!(a.chunks[1], UNKNOWN_CHUNK, "the torn write's point: what it held before is unknown");
        assert_ne!(a.chunks[0], UNKNOWN_CHUNK);
        assert!(a.meta.is_empty(), "metadata unknown: the re-read change rewrites every payload");
        let c = &boot.workers[0].docs[&DocId("c".into())];
        assert_eq!((c.version, c.payload_version), (29, 30), "its change applies again; a no-op writes nothing");
        assert!(!c.meta.is_empty());
        let d = &boot.workers[0].docs[&DocId("d".into())];
        assert_eq!((d.version, d.payload_version), (10, 0), "a torn write the log forgot is one all the same");
        assert!(d.meta.is_empty(), "metadata unknown: the change read again rewrites every payload");
        let b = &boot.workers[0].docs[&DocId("b".into())];
        assert_eq!((b.version, b.payload_version, b.chunks.len()), (10, 10, 2));
        assert!(!b.meta.is_empty());
    }
}
