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
use crate::model::{ChangeClass, DeadLetter, DocChange, DocId, SourceRecord, Version};

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

enum Event<'a> {
    Change(&'a DocChange),
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
    let mut by_doc: BTreeMap<&DocId, Vec<&DocChange>> = BTreeMap::new();
    let mut truncates: Vec<(u64, Version)> = Vec::new();
    for r in &items {
        if r.counted {
            tally.received += 1;
        }
        match &r.item {
            Ingested::Record(SourceRecord::Doc(c)) => by_doc.entry(&c.doc_id).or_default().push(c),
            Ingested::Record(SourceRecord::Truncate { version, position, commit_ts_ms }) => {
                truncates.push((*position, *version));
                if r.counted {
                    tally.deleted += 1;
                    applied.push(*commit_ts_ms);
                }
            }
            Ingested::Skipped { .. } => tally.noop += 1,
            Ingested::Dead(d) => {
                tally.dead_lettered += 1;
                out.push(StateOut::Dead(d.clone()));
            }
        }
    }
    let mut size_delta = (0i64, 0i64);
    let mut touched: Vec<DocId> = by_doc.keys().map(|d| (*d).clone()).collect();
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
            events.extend(cs.iter().map(|c| (c.position, Event::Change(c))));
        }
        events.sort_by_key(|e| e.0);
        let mut local_trunc = *truncated_at;
        for (_, ev) in events {
            match ev {
                Event::Truncate(v) => {
                    DocShape::truncate(&mut cur, &mut pending, v);
                    local_trunc = Some(local_trunc.map_or(v, |t| t.max(v)));
                }
                Event::Change(c) => match shape.apply(&mut cur, &mut pending, c, local_trunc) {
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
                        out.push(StateOut::Dead(DeadLetter {
                            origin: None,
                            position: c.position,
                            stage: "document".into(),
                            reason: r.reason.into(),
                            error: r.message,
                            doc_id: Some(c.doc_id.0.clone()),
                            record_excerpt: None,
                            record_bytes: None,
                        }));
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

fn position_of(i: &Ingested) -> u64 {
    match i {
        Ingested::Record(SourceRecord::Doc(c)) => c.position,
        Ingested::Record(SourceRecord::Truncate { position, .. }) => *position,
        Ingested::Skipped { position, .. } => *position,
        Ingested::Dead(d) => d.position,
    }
}
