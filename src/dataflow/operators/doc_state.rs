//! `doc_state`: per-document state keyed by `doc_id`, exchanged across workers by the
//! document's route hash. For each completed time it folds the changes of every touched
//! document (in arrival order), classifies them and emits the writes that take the index
//! from what it holds to the new state, plus a [`Tally`] and any rejected records.

use std::collections::BTreeMap;
use std::rc::Rc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::dataflow::state::{diff, DocShape, DocState, Outcome, Pending};
use crate::dataflow::{Ingested, Routed, StateOut, Tally, Time};
use crate::model::{ChangeClass, ChangeOp, DeadLetter, DocChange, DocId, SourceRecord, Version};

/// The state a worker starts from (rebuilt from the collection and the tombstone log).
#[derive(Debug, Default, Clone)]
pub struct InitialState {
    /// Documents this worker owns.
    pub docs: BTreeMap<DocId, DocState>,
    /// Newest table truncate.
    pub truncated_at: Option<Version>,
}

/// Extension trait adding [`DocStateExt::doc_state`].
pub trait DocStateExt<'scope> {
    /// Fold routed records into per-document state and emit the writes they require.
    ///
    /// ```
    /// use timely::dataflow::operators::{ToStream, Capture, capture::Event};
    /// use freshet::dataflow::operators::doc_state::{DocStateExt, InitialState};
    /// use freshet::dataflow::{Ingested, Routed, StateOut};
    /// let out = timely::example(move |scope| {
    ///     let spec = freshet::config::DataflowSpec::example_for_tests();
    ///     let shape = std::rc::Rc::new(freshet::dataflow::state::DocShape::new(&spec));
    ///     let skipped = Routed { target: 0, counted: true,
    ///         item: Ingested::Skipped { position: 1, kind: "heartbeat".into() } };
    ///     vec![skipped].to_stream(scope).doc_state("DocState", shape, InitialState::default()).capture()
    /// });
    /// let tallies: Vec<StateOut> = out
    ///     .try_iter()
    ///     .flat_map(|e| match e { Event::Messages(_, d) => d, _ => Vec::new() })
    ///     .collect();
    /// assert!(matches!(tallies[0], StateOut::Tally(t) if t.noop == 1 && t.received == 1));
    /// ```
    fn doc_state(self, name: &str, shape: Rc<DocShape>, initial: InitialState) -> Stream<'scope, Time, Vec<StateOut>>;
}

impl<'scope> DocStateExt<'scope> for Stream<'scope, Time, Vec<Routed>> {
    fn doc_state(self, name: &str, shape: Rc<DocShape>, initial: InitialState) -> Stream<'scope, Time, Vec<StateOut>> {
        self.unary_frontier(Exchange::new(|r: &Routed| r.target), name, move |cap, _info| {
            let mut docs = initial.docs;
            let mut truncated_at = initial.truncated_at;
            let mut stash: BTreeMap<Time, (Capability<Time>, Vec<Routed>)> = BTreeMap::new();
            let mut initial_cap = Some(cap);
            let mut missing = MissingColumns::default();
            move |(input, frontier), output| {
                if let Some(cap) = initial_cap.take() {
                    // The state this worker starts from, for the size collection.
                    let (documents, chunks) =
                        docs.values().map(DocState::size).fold((0, 0), |(d, c), (sd, sc)| (d + sd, c + sc));
                    if documents > 0 {
                        output.session(&cap).give(StateOut::Size { documents, chunks });
                    }
                }
                input.for_each_stamp(|cap, data| {
                    let Some(time) = cap.least().copied() else { return };
                    let Some(retained) = cap.retain_least(output.output_index()) else { return };
                    let entry = stash.entry(time).or_insert_with(|| (retained, Vec::new()));
                    for batch in data {
                        missing.check(&shape, batch);
                        entry.1.append(batch);
                    }
                });
                let ready: Vec<Time> = stash.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
                for time in ready {
                    let Some((cap, items)) = stash.remove(&time) else { continue };
                    let out = process_time(&shape, &mut docs, &mut truncated_at, items);
                    let mut session = output.session(&cap);
                    for o in out {
                        session.give(o);
                    }
                }
            }
        })
    }
}

/// Metadata columns a source row lacked (dropped from the table, or not added yet): the
/// column's value is null from that change on. Warned once per column and worker.
#[derive(Default)]
struct MissingColumns {
    warned: Vec<String>,
}

impl MissingColumns {
    fn check(&mut self, shape: &DocShape, batch: &[Routed]) {
        if self.warned.len() >= shape.meta_fields().len() {
            return;
        }
        for r in batch.iter().filter(|r| r.counted) {
            let Ingested::Record(SourceRecord::Doc(c)) = &r.item else { continue };
            let ChangeOp::Upsert(row) = &c.op else { continue };
            for f in shape.meta_fields() {
                if !row.contains_key(f) && !self.warned.contains(f) {
                    tracing::warn!(
                        column = %f,
                        doc_id = %c.doc_id.0,
                        "a metadata column is not in the source row (dropped, or not added yet?): its value is null \
                         from this change on; warned once per column"
                    );
                    self.warned.push(f.clone());
                }
            }
        }
    }
}

enum Event<'a> {
    /// A change, and whether it counts in the tally.
    Change(&'a DocChange, bool),
    Truncate(Version),
}

/// Fold one time's records. Public for deterministic tests.
pub fn process_time(
    shape: &DocShape,
    docs: &mut BTreeMap<DocId, DocState>,
    truncated_at: &mut Option<Version>,
    mut items: Vec<Routed>,
) -> Vec<StateOut> {
    items.sort_by_key(|r| position_of(&r.item));
    let mut tally = Tally::default();
    let mut applied: Vec<Option<u64>> = Vec::new();
    let mut out = Vec::new();
    // (change, counted): a multi-table document's change (rendered from table rows, which
    // were counted where they were read) is not counted again.
    let mut by_doc: BTreeMap<&DocId, Vec<(&DocChange, bool)>> = BTreeMap::new();
    let mut truncates: Vec<(u64, Version)> = Vec::new();
    let mut resync: Option<Version> = None;
    for r in &items {
        if r.counted {
            tally.received += 1;
        }
        match &r.item {
            Ingested::Record(SourceRecord::Doc(c)) => by_doc.entry(&c.doc_id).or_default().push((c, r.counted)),
            Ingested::Record(SourceRecord::Truncate { version, position, .. }) if shape.refuses_truncates() => {
                // Broadcast to every worker; dead-lettered once.
                if r.counted {
                    tally.dead_lettered += 1;
                    out.push(StateOut::Dead(DeadLetter {
                        origin: None,
                        position: *position,
                        stage: "document".into(),
                        reason: "truncate_refused".into(),
                        error: format!(
                            "table truncate at version {version} not applied: the dataflow sets \
                             `source.truncate = \"dead-letter\"`"
                        ),
                        doc_id: None,
                        record_excerpt: None,
                        record_bytes: None,
                        raw: None,
                    }));
                }
            }
            Ingested::Record(SourceRecord::Truncate { version, position, commit_ts_ms }) => {
                truncates.push((*position, *version));
                if r.counted {
                    tally.deleted += 1;
                    applied.push(*commit_ts_ms);
                }
            }
            Ingested::Skipped { .. } => tally.noop += 1,
            Ingested::Resync { version } => resync = Some(resync.map_or(*version, |v: Version| v.max(*version))),
            Ingested::Dead(d) => {
                tally.dead_lettered += 1;
                out.push(StateOut::Dead(d.clone()));
            }
        }
    }
    let mut size_delta = (0i64, 0i64);
    let mut touched: Vec<DocId> = by_doc.keys().map(|d| (*d).clone()).collect();
    // The documents a resync finds live but not rendered: deleted (uncounted).
    let mut stale: Vec<DocChange> = Vec::new();
    if let Some(version) = resync {
        for (id, s) in docs.iter() {
            if s.live && !by_doc.contains_key(id) {
                touched.push(id.clone());
                stale.push(DocChange {
                    doc_id: id.clone(),
                    version: version.max(s.version + 1),
                    position: u64::MAX,
                    commit_ts_ms: None,
                    op: ChangeOp::Delete,
                    source: None,
                    table: 0,
                });
            }
        }
    }
    let stale: BTreeMap<&DocId, &DocChange> = stale.iter().map(|c| (&c.doc_id, c)).collect();
    if !truncates.is_empty() {
        let max_t = truncates.iter().map(|t| t.1).max();
        for (id, s) in docs.iter() {
            if s.live && max_t.is_some_and(|t| s.version < t) && !by_doc.contains_key(id) {
                touched.push(id.clone());
            }
        }
    }
    for doc_id in touched {
        let before = docs.get(&doc_id).cloned();
        let mut cur = before.clone();
        let mut pending = Pending::default();
        let mut events: Vec<(u64, Event<'_>)> = truncates.iter().map(|(p, v)| (*p, Event::Truncate(*v))).collect();
        if let Some(cs) = by_doc.get(&doc_id) {
            events.extend(cs.iter().map(|(c, counted)| (c.position, Event::Change(c, *counted))));
        }
        if let Some(c) = stale.get(&doc_id) {
            events.push((c.position, Event::Change(c, false)));
        }
        events.sort_by_key(|e| e.0);
        let mut local_trunc = *truncated_at;
        for (_, ev) in events {
            match ev {
                Event::Truncate(v) => {
                    DocShape::truncate(&mut cur, &mut pending, v);
                    local_trunc = Some(local_trunc.map_or(v, |t| t.max(v)));
                }
                Event::Change(c, false) => {
                    // A rendered multi-table document: its rows were counted upstream.
                    if let Outcome::Rejected(r) = shape.apply(&mut cur, &mut pending, c, local_trunc) {
                        // It cannot be indexed as it is now: no stale point of it stays.
                        let delete = DocChange { op: ChangeOp::Delete, ..(*c).clone() };
                        shape.apply(&mut cur, &mut pending, &delete, local_trunc);
                        out.push(StateOut::Dead(rejected(c, r)));
                    }
                }
                Event::Change(c, true) => match shape.apply(&mut cur, &mut pending, c, local_trunc) {
                    Outcome::Applied(ChangeClass::Content) => {
                        tally.content += 1;
                        applied.push(c.commit_ts_ms);
                    }
                    Outcome::Applied(ChangeClass::MetadataOnly) => {
                        tally.metadata += 1;
                        applied.push(c.commit_ts_ms);
                    }
                    Outcome::Applied(ChangeClass::Delete) => {
                        tally.deleted += 1;
                        applied.push(c.commit_ts_ms);
                    }
                    Outcome::Applied(ChangeClass::NoOp) | Outcome::Duplicate => tally.noop += 1,
                    Outcome::Superseded => tally.superseded += 1,
                    Outcome::Rejected(r) => {
                        tally.dead_lettered += 1;
                        out.push(StateOut::Dead(rejected(c, r)));
                    }
                },
            }
        }
        if let Some(w) = diff(shape, &doc_id, before.as_ref(), cur.as_ref(), &pending) {
            out.push(StateOut::Write(w));
        }
        let size = |s: Option<&DocState>| s.map_or((0, 0), DocState::size);
        let (b, a) = (size(before.as_ref()), size(cur.as_ref()));
        size_delta.0 += a.0 - b.0;
        size_delta.1 += a.1 - b.1;
        match cur {
            Some(s) => {
                docs.insert(doc_id, s);
            }
            None => {
                docs.remove(&doc_id);
            }
        }
    }
    if let Some(t) = truncates.iter().map(|t| t.1).max() {
        *truncated_at = Some(truncated_at.map_or(t, |x| x.max(t)));
        out.push(StateOut::Truncated(t));
    }
    if size_delta != (0, 0) {
        out.push(StateOut::Size { documents: size_delta.0, chunks: size_delta.1 });
    }
    if !applied.is_empty() {
        out.push(StateOut::Applied(applied));
    }
    out.push(StateOut::Tally(tally));
    out
}

/// The dead letter of a change the document stage rejected.
fn rejected(c: &DocChange, r: crate::dataflow::state::Rejection) -> DeadLetter {
    DeadLetter {
        origin: c.origin(),
        position: c.position,
        stage: "document".into(),
        reason: r.reason.into(),
        error: r.message,
        doc_id: Some(c.doc_id.0.clone()),
        record_excerpt: None,
        record_bytes: None,
        raw: None,
    }
}

fn position_of(i: &Ingested) -> u64 {
    match i {
        Ingested::Record(SourceRecord::Doc(c)) => c.position,
        Ingested::Record(SourceRecord::Truncate { position, .. }) => *position,
        Ingested::Skipped { position, .. } => *position,
        Ingested::Dead(d) => d.position,
        Ingested::Resync { .. } => u64::MAX,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{DataflowSpec, TruncatePolicy};
    use crate::model::{ChangeOp, FieldValue, Row};

    fn upsert(id: &str, version: Version) -> Routed {
        let row: Row = [("article_id", id), ("title", "T"), ("body", "body"), ("lang", "en"), ("status", "draft")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), FieldValue::Value(serde_json::json!(format!("{v} {id}")))))
            .collect();
        let change = DocChange {
            doc_id: DocId(id.into()),
            version,
            position: version,
            commit_ts_ms: None,
            op: ChangeOp::Upsert(row),
            source: None,
            table: 0,
        };
        Routed { target: 0, counted: true, item: Ingested::Record(SourceRecord::Doc(change)) }
    }

    fn truncate(version: Version, counted: bool) -> Routed {
        Routed {
            target: 0,
            counted,
            item: Ingested::Record(SourceRecord::Truncate { version, position: version, commit_ts_ms: None }),
        }
    }

    fn live(docs: &BTreeMap<DocId, DocState>) -> Vec<&str> {
        docs.iter().filter(|(_, s)| s.live).map(|(d, _)| d.0.as_str()).collect()
    }

    fn writes(out: &[StateOut]) -> Vec<(&str, usize)> {
        out.iter()
            .filter_map(|o| match o {
                StateOut::Write(w) => Some((w.doc_id.0.as_str(), w.deletes.len())),
                _ => None,
            })
            .collect()
    }

    /// A truncate deletes only the documents older than it: one replayed late, or carrying
    /// an old version, never wipes documents indexed after it.
    #[test]
    fn a_truncate_deletes_only_documents_older_than_it() {
        let shape = DocShape::new(&DataflowSpec::example_for_tests());
        let (mut docs, mut truncated_at) = (BTreeMap::new(), None);
        process_time(&shape, &mut docs, &mut truncated_at, vec![upsert("a", 100), upsert("b", 200)]);
        assert_eq!(live(&docs), ["a", "b"]);
        let out = process_time(&shape, &mut docs, &mut truncated_at, vec![truncate(150, true)]);
        assert_eq!(live(&docs), ["b"], "b is newer than the truncate");
        assert_eq!(writes(&out).len(), 1, "{out:?}");
        assert_eq!(writes(&out)[0].0, "a");
        let out = process_time(&shape, &mut docs, &mut truncated_at, vec![truncate(50, true)]);
        assert_eq!(live(&docs), ["b"]);
        assert!(writes(&out).is_empty(), "an older truncate writes nothing: {out:?}");
        assert_eq!(truncated_at, Some(150));
    }

    #[test]
    fn a_refused_truncate_is_dead_lettered_once_and_deletes_nothing() {
        let mut spec = DataflowSpec::example_for_tests();
        spec.source.truncate = TruncatePolicy::DeadLetter;
        let shape = DocShape::new(&spec);
        let (mut docs, mut truncated_at) = (BTreeMap::new(), None);
        process_time(&shape, &mut docs, &mut truncated_at, vec![upsert("a", 100), upsert("b", 200)]);
        // A broadcast truncate: one counted copy, one for the other worker.
        let out = process_time(&shape, &mut docs, &mut truncated_at, vec![truncate(300, true), truncate(300, false)]);
        assert_eq!(live(&docs), ["a", "b"]);
        assert!(writes(&out).is_empty(), "{out:?}");
        assert_eq!(truncated_at, None);
        let dead: Vec<&DeadLetter> = out
            .iter()
            .filter_map(|o| match o {
                StateOut::Dead(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "truncate_refused");
        let tally = out.iter().find_map(|o| match o {
            StateOut::Tally(t) => Some(*t),
            _ => None,
        });
        let t = tally.unwrap();
        assert_eq!((t.received, t.dead_lettered, t.deleted), (1, 1, 0));
    }
}
