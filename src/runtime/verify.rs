//! `freshet reconcile --verify`: read every point of a collection and report the documents
//! whose points disagree with each other or with their own text — the marks a torn or
//! partially recovered write leaves: a chunk whose `content_hash` is not the hash of its
//! `text`, points of one document at different versions (new payload hashes beside old
//! chunks), with different text field hashes or metadata, or a gap in its chunk indexes.
//! Read-only: nothing is changed. A document found here is repaired by replaying its
//! source (`freshet replay`), which rewrites every point of a document that changed.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{keys, ContentHash};
use crate::sink::{SinkError, VectorSink};

/// How a document's points disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disagreement {
    /// A chunk's `content_hash` is not the hash of its `text`.
    TextHash,
    /// Its points carry different `source_version`s.
    Versions,
    /// Its points carry different `text_field_hashes`.
    TextFieldHashes,
    /// Its points carry different metadata values.
    Metadata,
    /// Its chunk indexes are not 0, 1, … without a gap.
    ChunkGap,
}

/// What `--verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Points read.
    pub points: usize,
    /// Documents they form.
    pub documents: usize,
    /// Documents whose points disagree in any way.
    pub disagreeing_documents: usize,
    /// Documents whose points disagree, by kind (a document may count under several).
    pub disagreeing: BTreeMap<Disagreement, usize>,
    /// Up to 10 document ids per kind.
    pub examples: BTreeMap<Disagreement, Vec<String>>,
}

impl VerifyReport {
    /// Whether every document is consistent.
    pub fn is_clean(&self) -> bool {
        self.disagreeing.is_empty()
    }
}

/// What one document's points are compared against: the first point's values.
struct Doc {
    chunks: Vec<u64>,
    version: u64,
    field_hashes: Option<serde_json::Value>,
    meta: Vec<Option<serde_json::Value>>,
    found: [bool; 5],
}

/// Verify the collection behind `sink`; `meta_fields` are the dataflow's metadata fields.
pub fn verify(sink: &dyn VectorSink, meta_fields: &[String]) -> Result<VerifyReport, SinkError> {
    let mut docs: BTreeMap<String, Doc> = BTreeMap::new();
    let mut points = 0;
    sink.scroll(false, 1024, &mut |page| {
        for p in page {
            points += 1;
            let pl = &p.payload;
            let Some(doc) = pl.get(keys::DOC_ID).and_then(|v| v.as_str()) else { continue };
            let version = pl.get(keys::SOURCE_VERSION).and_then(|v| v.as_u64()).unwrap_or(0);
            let field_hashes = pl.get(keys::TEXT_FIELD_HASHES).cloned();
            let meta: Vec<_> = meta_fields.iter().map(|f| pl.get(f).cloned()).collect();
            let d = docs.entry(doc.to_owned()).or_insert_with(|| Doc {
                chunks: Vec::new(),
                version,
                field_hashes: field_hashes.clone(),
                meta: meta.clone(),
                found: [false; 5],
            });
            d.chunks.push(pl.get(keys::CHUNK_INDEX).and_then(|v| v.as_u64()).unwrap_or(u64::MAX));
            let stored = pl.get(keys::CONTENT_HASH).and_then(|v| v.as_str()).and_then(ContentHash::from_hex);
            if let (Some(h), Some(text)) = (stored, pl.get(keys::TEXT).and_then(|v| v.as_str())) {
                d.found[0] |= ContentHash::of(text) != h;
            }
            d.found[1] |= d.version != version;
            d.found[2] |= d.field_hashes != field_hashes;
            d.found[3] |= d.meta != meta;
        }
    })?;
    let kinds = [
        Disagreement::TextHash,
        Disagreement::Versions,
        Disagreement::TextFieldHashes,
        Disagreement::Metadata,
        Disagreement::ChunkGap,
    ];
    let mut report = VerifyReport { points, documents: docs.len(), ..VerifyReport::default() };
    for (doc_id, mut d) in docs {
        d.chunks.sort_unstable();
        d.found[4] = d.chunks.iter().enumerate().any(|(i, c)| *c != i as u64);
        if d.found.iter().any(|bad| *bad) {
            report.disagreeing_documents += 1;
        }
        for (kind, _) in kinds.into_iter().zip(d.found).filter(|(_, bad)| *bad) {
            *report.disagreeing.entry(kind).or_default() += 1;
            let e = report.examples.entry(kind).or_default();
            if e.len() < 10 {
                e.push(doc_id.clone());
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{chunk_payload, collection_namespace, point_id, DocId, Metadata};
    use crate::sink::embedded::EmbeddedSink;
    use crate::sink::{SinkOp, SinkPoint};

    /// A torn write's shape — new payload hashes and version beside an old chunk — and a
    /// chunk whose text is not its hash are reported; a consistent document is not.
    #[test]
    fn reports_documents_whose_points_disagree() {
        let dir = tempfile::tempdir().unwrap();
        let sink = EmbeddedSink::open(dir.path(), "c", 4).unwrap();
        let ns = collection_namespace("c");
        let meta: Metadata = serde_json::json!({"status": "draft"}).as_object().unwrap().clone();
        let point = |doc: &str, idx: u32, version: u64, fields: &[u64], text: &str| {
            let d = DocId(doc.into());
            SinkPoint {
                id: point_id(&ns, &d, idx),
                vector: vec![1.0, 0.0, 0.0, idx as f32],
                payload: chunk_payload(&meta, &d, idx, &ContentHash::of(text), version, "m", text, fields),
            }
        };
        let mut bad_text = point("c", 0, 5, &[1, 2], "right");
        bad_text.payload.insert(keys::TEXT.into(), "wrong".into());
        sink.apply(vec![SinkOp::Upsert(vec![
            point("a", 0, 10, &[1, 2], "a0"),
            point("a", 1, 10, &[1, 2], "a1"),
            point("b", 0, 20, &[1, 3], "b0 new"),
            point("b", 1, 10, &[1, 2], "b1 old"),
            bad_text,
        ])])
        .unwrap();
        let r = verify(&sink, &["status".to_string()]).unwrap();
        assert_eq!((r.points, r.documents), (5, 3));
        assert_eq!(r.disagreeing.get(&Disagreement::Versions), Some(&1));
        assert_eq!(r.disagreeing.get(&Disagreement::TextFieldHashes), Some(&1));
        assert_eq!(r.examples[&Disagreement::Versions], vec!["b".to_string()]);
        assert_eq!(r.examples[&Disagreement::TextHash], vec!["c".to_string()]);
        assert!(!r.disagreeing.contains_key(&Disagreement::Metadata));
        assert_eq!(r.disagreeing_documents, 2);
        assert!(!r.is_clean());
    }
}
