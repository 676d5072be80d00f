//! Per-document state and the pure logic that folds changes into it.
//!
//! The state holds hashes, not text: a document's version, the content hash of each chunk,
//! a hash per text field (to resolve unchanged-TOAST placeholders) and per metadata field.
//! [`DocShape::apply`] folds one change into a state and classifies it; [`diff`] turns the
//! state before and after a batch of changes into the writes the sink must perform.

use std::collections::BTreeMap;

use crate::config::{DataflowSpec, TemplatePart, TextTemplate, TruncatePolicy};
use crate::dataflow::chunk::Chunker;
use crate::model::{
    str_hash, value_hash, ChangeClass, ChangeOp, ChunkUpsert, ContentHash, DocChange, DocId, DocWrite, FieldValue,
    Metadata, Version,
};

/// What the index holds for one document (or remembers of a deleted one).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DocState {
    /// Newest version seen (applied or no-op); older events are superseded.
    pub version: Version,
    /// Version written in the points' payload (last content or metadata change).
    pub payload_version: Version,
    /// False for a tombstone: the document was deleted at `version`.
    pub live: bool,
    /// Content hash of each chunk, by position.
    pub chunks: Vec<ContentHash>,
    /// Hash per template text field; `None` when unknown.
    pub text_fields: Option<Vec<u64>>,
    /// Hash per metadata field, in spec order.
    pub meta: Vec<u64>,
}

impl DocState {
    /// What this state adds to the index: (documents, chunks) — (0, 0) for a tombstone.
    pub fn size(&self) -> (i64, i64) {
        if self.live {
            (1, self.chunks.len() as i64)
        } else {
            (0, 0)
        }
    }

    /// A tombstone at `version`.
    pub fn tombstone(version: Version) -> Self {
        Self { version, payload_version: version, live: false, ..Self::default() }
    }
}

/// Why a change was rejected by the document stage (it goes to the dead-letter file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Short reason code.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// Outcome of folding one change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied and classified.
    Applied(ChangeClass),
    /// Older than (or as old as a delete/truncate of) what is known: ignored.
    Superseded,
    /// Same version seen again: ignored.
    Duplicate,
    /// Rejected; the state is unchanged.
    Rejected(Rejection),
}

/// In-batch working data that is not state: the texts and metadata values of the newest
/// change, needed to write what changed.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    /// Chunk texts of the newest content computation in this batch.
    pub texts: Option<Vec<String>>,
    /// Metadata values known in this batch (`None` = unchanged-TOAST, value unknown).
    pub meta_values: Vec<Option<serde_json::Value>>,
    /// Newest source commit time folded.
    pub commit_ts_ms: Option<u64>,
}

/// How rows of one pipeline become documents.
#[derive(Debug)]
pub struct DocShape {
    template: TextTemplate,
    text_fields: Vec<String>,
    meta_fields: Vec<String>,
    chunker: Chunker,
    truncate: TruncatePolicy,
    /// Child collections (arrays) by field name, with the separator they are joined with
    /// in the text.
    separators: BTreeMap<String, String>,
}

impl DocShape {
    /// The shape a dataflow spec describes.
    pub fn new(spec: &DataflowSpec) -> Self {
        let template = spec.template();
        Self {
            text_fields: template.fields(),
            template,
            meta_fields: spec.document.metadata.clone(),
            chunker: Chunker::new(&spec.chunker),
            truncate: spec.source.truncate,
            separators: spec.children.iter().map(|c| (c.name.clone(), c.separator.clone())).collect(),
        }
    }

    /// Table truncates are dead-lettered instead of applied (`source.truncate`).
    pub fn refuses_truncates(&self) -> bool {
        self.truncate == TruncatePolicy::DeadLetter
    }

    /// Metadata field names, in payload order.
    pub fn meta_fields(&self) -> &[String] {
        &self.meta_fields
    }

    /// The chunker.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// Render a template text field value.
    pub fn render_field(name: &str, v: &serde_json::Value) -> Result<String, Rejection> {
        match v {
            serde_json::Value::Null => Ok(String::new()),
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            serde_json::Value::Bool(b) => Ok(b.to_string()),
            other => Err(Rejection {
                reason: "wrong_type",
                message: format!("text field `{name}` is {} but the text template needs a string", json_kind(other)),
            }),
        }
    }

    /// Render a text field value: a child collection (an array) is its elements joined
    /// with its separator; anything else as [`DocShape::render_field`].
    fn render_value(&self, name: &str, v: &serde_json::Value) -> Result<String, Rejection> {
        match (v, self.separators.get(name)) {
            (serde_json::Value::Array(items), Some(sep)) => {
                let parts: Result<Vec<String>, Rejection> = items.iter().map(|i| Self::render_field(name, i)).collect();
                Ok(parts?.join(sep))
            }
            _ => Self::render_field(name, v),
        }
    }

    /// Render the template from complete field values.
    pub fn render(&self, values: &BTreeMap<&str, String>) -> String {
        let mut out = String::new();
        for p in &self.template.parts {
            match p {
                TemplatePart::Literal(l) => out.push_str(l),
                TemplatePart::Field(f) => out.push_str(values.get(f.as_str()).map_or("", |s| s)),
            }
        }
        out
    }

    /// Fold `change` into `state` (the document's current state, `None` if never seen).
    /// `truncated_at` is the newest table truncate version. On `Applied`, `state` and
    /// `pending` are updated.
    pub fn apply(
        &self,
        state: &mut Option<DocState>,
        pending: &mut Pending,
        change: &DocChange,
        truncated_at: Option<Version>,
    ) -> Outcome {
        if truncated_at.is_some_and(|t| change.version <= t) {
            return Outcome::Superseded;
        }
        if let Some(s) = state.as_ref() {
            if change.version < s.version {
                return Outcome::Superseded;
            }
            if change.version == s.version {
                return Outcome::Duplicate;
            }
        }
        let row = match &change.op {
            ChangeOp::Delete => {
                let was_live = state.as_ref().is_some_and(|s| s.live);
                *state = Some(DocState::tombstone(change.version));
                pending.texts = None;
                note_commit(pending, change);
                return Outcome::Applied(if was_live { ChangeClass::Delete } else { ChangeClass::NoOp });
            }
            ChangeOp::Upsert(row) => row,
        };
        let prev = state.as_ref().filter(|s| s.live);

        // Text fields.
        let mut rendered: BTreeMap<&str, String> = BTreeMap::new();
        let mut text_hashes = Vec::with_capacity(self.text_fields.len());
        let mut unchanged_text: Vec<usize> = Vec::new();
        for (i, f) in self.text_fields.iter().enumerate() {
            match row.get(f) {
                Some(FieldValue::Unchanged) => {
                    unchanged_text.push(i);
                    text_hashes.push(0);
                }
                Some(FieldValue::Value(v)) => match self.render_value(f, v) {
                    Ok(s) => {
                        text_hashes.push(str_hash(&s));
                        rendered.insert(f.as_str(), s);
                    }
                    Err(r) => return Outcome::Rejected(r),
                },
                None => {
                    text_hashes.push(str_hash(""));
                    rendered.insert(f.as_str(), String::new());
                }
            }
        }
        let (chunks, texts) = if unchanged_text.is_empty() {
            let text = self.render(&rendered);
            let pairs = self.chunker.chunk_and_hash(&text);
            let (h, t): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
            (h, Some(t))
        } else {
            let names: Vec<&str> = unchanged_text.iter().map(|&i| self.text_fields[i].as_str()).collect();
            let Some(prev) = prev else {
                return Outcome::Rejected(Rejection {
                    reason: "toast_without_previous",
                    message: format!(
                        "unchanged-TOAST placeholder in {names:?} but document `{}` has no previous version",
                        change.doc_id
                    ),
                });
            };
            let Some(prev_hashes) = prev.text_fields.as_ref() else {
                return Outcome::Rejected(Rejection {
                    reason: "toast_unresolvable",
                    message: format!("unchanged-TOAST placeholder in {names:?}: previous text field hashes unknown"),
                });
            };
            let others_same = text_hashes
                .iter()
                .enumerate()
                .all(|(i, h)| unchanged_text.contains(&i) || prev_hashes.get(i) == Some(h));
            if !others_same {
                return Outcome::Rejected(Rejection {
                    reason: "toast_unresolvable",
                    message: format!(
                        "unchanged-TOAST placeholder in {names:?} while another text field changed; \
                         freshet keeps hashes, not text, so the previous value cannot be re-chunked"
                    ),
                });
            }
            for &i in &unchanged_text {
                text_hashes[i] = prev_hashes[i];
            }
            (prev.chunks.clone(), None)
        };

        // Metadata fields.
        let mut meta = Vec::with_capacity(self.meta_fields.len());
        let mut meta_values: Vec<Option<serde_json::Value>> = Vec::with_capacity(self.meta_fields.len());
        for (i, f) in self.meta_fields.iter().enumerate() {
            match row.get(f) {
                Some(FieldValue::Value(v)) => {
                    meta.push(value_hash(v));
                    meta_values.push(Some(v.clone()));
                }
                None => {
                    let v = serde_json::Value::Null;
                    meta.push(value_hash(&v));
                    meta_values.push(Some(v));
                }
                Some(FieldValue::Unchanged) => {
                    let Some(h) = prev.and_then(|p| p.meta.get(i)) else {
                        return Outcome::Rejected(Rejection {
                            reason: "toast_without_previous",
                            message: format!(
                                "unchanged-TOAST placeholder in metadata field `{f}` but document `{}` has no previous version",
                                change.doc_id
                            ),
                        });
                    };
                    meta.push(*h);
                    // Known earlier in this batch? Keep it; else unknown.
                    meta_values.push(pending.meta_values.get(i).cloned().flatten());
                }
            }
        }

        let class = match prev {
            None => ChangeClass::Content,
            Some(p) if p.chunks != chunks => ChangeClass::Content,
            Some(p) if p.meta != meta => ChangeClass::MetadataOnly,
            Some(_) => ChangeClass::NoOp,
        };
        if class == ChangeClass::Content && meta_values.iter().any(Option::is_none) {
            return Outcome::Rejected(Rejection {
                reason: "toast_unresolvable",
                message: "unchanged-TOAST placeholder in a metadata field of a content change: \
                          new points need the full payload"
                    .to_string(),
            });
        }
        let payload_version = match (class, prev) {
            (ChangeClass::NoOp, Some(p)) => p.payload_version,
            _ => change.version,
        };
        *state = Some(DocState {
            version: change.version,
            payload_version,
            live: true,
            chunks,
            // A no-op writes nothing, so the payloads keep the text field hashes of the
            // change before it; so does the state, which a restart rebuilds from them.
            text_fields: if class == ChangeClass::NoOp {
                prev.and_then(|p| p.text_fields.clone())
            } else {
                Some(text_hashes)
            },
            meta,
        });
        if class != ChangeClass::NoOp {
            if texts.is_some() {
                pending.texts = texts;
            }
            pending.meta_values = meta_values;
            note_commit(pending, change);
        }
        Outcome::Applied(class)
    }

    /// Fold a table truncate into a document's state: a live document older than the
    /// truncate is deleted. Returns whether it was.
    pub fn truncate(state: &mut Option<DocState>, pending: &mut Pending, version: Version) -> bool {
        match state {
            Some(s) if s.version < version => {
                let was_live = s.live;
                *state = Some(DocState::tombstone(version));
                pending.texts = None;
                was_live
            }
            _ => false,
        }
    }
}

fn note_commit(pending: &mut Pending, change: &DocChange) {
    if let Some(ts) = change.commit_ts_ms {
        pending.commit_ts_ms = Some(pending.commit_ts_ms.map_or(ts, |p| p.max(ts)));
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The writes that take the index from `before` (as written) to `after` for one document.
/// Returns `None` when nothing needs writing.
pub fn diff(
    shape: &DocShape,
    doc_id: &DocId,
    before: Option<&DocState>,
    after: Option<&DocState>,
    pending: &Pending,
) -> Option<DocWrite> {
    let before_live = before.filter(|s| s.live);
    let after_live = after.filter(|s| s.live);
    let mut w = DocWrite {
        doc_id: doc_id.clone(),
        version: after.map_or(0, |a| a.payload_version),
        metadata: Metadata::new(),
        metadata_partial: false,
        upserts: Vec::new(),
        payload_updates: Vec::new(),
        deletes: Vec::new(),
        text_field_hashes: Vec::new(),
        tombstone: None,
        seen_version: None,
        commit_ts_ms: pending.commit_ts_ms,
    };
    match (before_live, after_live) {
        (None, None) => {
            let a = after?;
            if before.map(|b| b.version) == Some(a.version) {
                return None;
            }
            w.tombstone = Some(a.version);
            return Some(w);
        }
        (Some(b), None) => {
            w.deletes = (0..b.chunks.len() as u32).collect();
            w.tombstone = after.map(|a| a.version);
            return Some(w);
        }
        _ => {}
    }
    let a = after_live?;
    if let Some(b) = before_live {
        if b.chunks == a.chunks && b.meta == a.meta && b.payload_version == a.payload_version {
            // Nothing for the index; a newer version is still remembered (see
            // `DocWrite::seen_version`).
            if a.version > b.version {
                w.seen_version = Some(a.version);
                return Some(w);
            }
            return None;
        }
    }
    for (i, f) in shape.meta_fields.iter().enumerate() {
        match pending.meta_values.get(i).cloned().flatten() {
            Some(v) => {
                w.metadata.insert(f.clone(), v);
            }
            None => w.metadata_partial = true,
        }
    }
    w.text_field_hashes = a.text_fields.clone().unwrap_or_default();
    let texts = pending.texts.as_deref().unwrap_or(&[]);
    for (i, h) in a.chunks.iter().enumerate() {
        let same = before_live.and_then(|b| b.chunks.get(i)) == Some(h);
        if same {
            w.payload_updates.push((i as u32, *h));
        } else {
            // Texts are present whenever a chunk differs from what is written (invariant of
            // `apply`: only a content computation changes chunks, and it records texts).
            let text = texts.get(i).cloned().unwrap_or_default();
            w.upserts.push(ChunkUpsert { chunk_index: i as u32, hash: *h, text });
        }
    }
    if let Some(b) = before_live {
        w.deletes = (a.chunks.len() as u32..b.chunks.len() as u32).collect();
    }
    // A no-op folded after the change carries the version past the payloads'.
    if a.version > a.payload_version {
        w.seen_version = Some(a.version);
    }
    Some(w)
}
