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
    /// It was being written when the process died.
    TornWrite,
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
            OrphanReason::TornWrite => "torn_write",
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
}

#[derive(Default)]
struct Partial {
    chunks: BTreeMap<u32, (ContentHash, Uuid)>,
    version: Option<u64>,
    meta: Option<Vec<u64>>,
    text_fields: Option<Vec<u64>>,
}

/// Rebuild state for `peers` workers from the points of a collection whose point ids are
/// derived in `namespace`. Points of another model are listed in
/// [`Bootstrap::other_model`] and take no part in the state.
///
/// `suspects` are the points of a write torn by a crash (from the in-flight log): their
/// vector and payload may disagree, so they are deleted and their documents start from
/// version 0, which makes the change read again (its offsets were not acknowledged)
/// rewrite them.
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
                orphans.push((p.id, OrphanReason::TornWrite));
                dirty.insert(doc_id);
                continue;
            }
            let e = docs.entry(doc_id).or_default();
            e.chunks.insert(idx, (hash, p.id));
            // Points of one document disagree only after a torn write: keep the oldest
            // version so that replaying the newer change repairs them.
            e.version = Some(e.version.map_or(version, |v| v.min(version)));
            let meta: Vec<u64> =
                shape.meta_fields().iter().map(|f| value_hash(pl.get(f).unwrap_or(&serde_json::Value::Null))).collect();
            match &e.meta {
                None => e.meta = Some(meta),
                Some(m) if *m != meta => e.meta = Some(Vec::new()),
                _ => {}
            }
            if e.text_fields.is_none() {
                e.text_fields = parse_field_hashes(pl.get(keys::TEXT_FIELD_HASHES));
            }
        }
    })?;
    let mut workers: Vec<InitialState> = (0..peers.max(1)).map(|_| InitialState::default()).collect();
    let mut live_docs = 0;
    for (doc_id, p) in docs {
        let version = p.version.unwrap_or(0);
        if tombstones.docs.get(&doc_id).is_some_and(|t| *t > version) {
            // Deleted after these points were written (the delete's ack was lost).
            orphans.extend(p.chunks.values().map(|(_, id)| (*id, OrphanReason::DeletedDocument)));
            continue;
        }
        let mut chunks = Vec::with_capacity(p.chunks.len());
        for (i, (idx, (hash, id))) in p.chunks.into_iter().enumerate() {
            if idx as usize == i && chunks.len() == i {
                chunks.push(hash);
            } else {
                orphans.push((id, OrphanReason::ChunkGap));
            }
        }
        // A no-op change may have advanced the version past the payloads'. A document
        // touched by a torn write starts over from version 0.
        let seen = tombstones.seen.get(&doc_id).copied().unwrap_or(0);
        let (version, payload_version) = if dirty.contains(&doc_id) { (0, 0) } else { (version.max(seen), version) };
        let state = DocState {
            version,
            payload_version,
            live: true,
            chunks,
            text_fields: p.text_fields,
            meta: p.meta.unwrap_or_default(),
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
    Ok(Bootstrap { workers, orphans, other_model, live_docs, points })
}
