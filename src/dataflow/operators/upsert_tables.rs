//! `upsert_tables`: the tables of a multi-table dataflow as upserted collections. Rows are
//! exchanged by (table, key); for each completed time every row event is folded into its
//! table's state in source order ([`DocModel::upsert`]: the per-row version guard, TOAST
//! resolved from the stored row, only the used columns kept), and each change leaves as a
//! differential update — the old row retracted, the new one inserted — for
//! `render_documents`. Beside them: the time's [`Tally`] of row outcomes, dead letters,
//! and the commit times of the rows applied (the freshness of this time's writes).
//!
//! With a [`TableState`] (a source that resumes from committed positions), the rows of the
//! previous run are the tables' state from the start and leave as insertions at time 0,
//! with a [`TableOut::Resync`]; each time's changed rows are made durable in the store
//! before the time's updates leave (a failing store holds the time, and everything after
//! it, until it succeeds).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::dataflow::tables::{Cells, DocModel, RowOutcome, RowState, RowStore, TableState};
use crate::dataflow::{Ingested, Routed, StateOut, Tally, Time};
use crate::model::{DeadLetter, SourceRecord};

/// What `upsert_tables` emits.
#[derive(Clone, Debug, PartialEq)]
pub enum TableOut {
    /// A row of table `.0` with key `.1` entered (+1) or left (-1) the table.
    Update(u16, String, Cells, isize),
    /// Counters, dead letters and applied commit times for the write stage.
    State(StateOut),
    /// The restored tables have all been emitted (at time 0): the documents not rendered
    /// from them at this time are no longer documents (for `doc_state`, at this version).
    Resync(u64),
}

/// A time's output, and the rows it changed, waiting for the store.
type Unpersisted = (Capability<Time>, Vec<TableOut>, Vec<(u16, String)>);

/// The worker a table row goes to: a stable hash of (table, key).
pub fn row_route(table: u16, key: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// Extension trait adding [`UpsertTablesExt::upsert_tables`].
pub trait UpsertTablesExt<'scope> {
    /// Fold routed table rows into per-table state; emit row updates and counters.
    ///
    /// ```
    /// use timely::dataflow::operators::{ToStream, Capture, capture::Event};
    /// use freshet::dataflow::operators::upsert_tables::{TableOut, UpsertTablesExt};
    /// use freshet::dataflow::{Ingested, Routed, StateOut};
    /// use freshet::model::{ChangeOp, DocChange, DocId, FieldValue, SourceRecord};
    /// let row = [("author_id", "7"), ("name", "\"Ada\"")].into_iter()
    ///     .map(|(k, v)| (k.to_string(), FieldValue::Value(serde_json::from_str(v).unwrap()))).collect();
    /// let change = DocChange { doc_id: DocId("7".into()), version: 5, position: 1, commit_ts_ms: None,
    ///     op: ChangeOp::Upsert(row), source: None, table: 1 };
    /// let out = timely::example(move |scope| {
    ///     let spec = freshet::config::DataflowSpec::multi_table_example_for_tests();
    ///     let model = std::rc::Rc::new(freshet::dataflow::tables::DocModel::for_spec(&spec).unwrap());
    ///     vec![Routed { target: 0, counted: true, item: Ingested::Record(SourceRecord::Doc(change)) }]
    ///         .to_stream(scope).upsert_tables("UpsertTables", model, None).capture()
    /// });
    /// let out: Vec<TableOut> = out.try_iter()
    ///     .flat_map(|e| match e { Event::Messages(_, d) => d, _ => Vec::new() }).collect();
    /// assert!(out.contains(&TableOut::Update(1, "7".into(), vec!["7".into(), "\"Ada\"".into()], 1)));
    /// assert!(out.iter().any(|o| matches!(o, TableOut::State(StateOut::Tally(t)) if t.received == 1 && t.content == 1)));
    /// ```
    fn upsert_tables(
        self,
        name: &str,
        model: Rc<DocModel>,
        state: Option<TableState>,
    ) -> Stream<'scope, Time, Vec<TableOut>>;
}

impl<'scope> UpsertTablesExt<'scope> for Stream<'scope, Time, Vec<Routed>> {
    fn upsert_tables(
        self,
        name: &str,
        model: Rc<DocModel>,
        state: Option<TableState>,
    ) -> Stream<'scope, Time, Vec<TableOut>> {
        let exchange = Exchange::new(|r: &Routed| match &r.item {
            Ingested::Record(SourceRecord::Doc(c)) => row_route(c.table, &c.doc_id.0),
            _ => r.target,
        });
        let scope = self.scope();
        self.unary_frontier(exchange, name, move |cap, info| {
            let activator = scope.activator_for(Rc::clone(&info.address));
            let mut tables: Vec<BTreeMap<String, RowState>> = Vec::new();
            let mut stash: BTreeMap<Time, (Capability<Time>, Vec<Routed>)> = BTreeMap::new();
            // The restored rows, emitted at time 0 on the first activation.
            let mut restored: Option<(Capability<Time>, Vec<TableOut>)> = None;
            let mut store: Option<std::sync::Arc<dyn RowStore>> = None;
            if let Some(s) = state {
                let mut out = Vec::with_capacity(s.rows.len() + 1);
                for (t, key, row) in s.rows {
                    let t_i = t as usize;
                    if tables.len() <= t_i {
                        tables.resize_with(t_i + 1, BTreeMap::new);
                    }
                    if let Some(cells) = &row.cells {
                        out.push(TableOut::Update(t, key.clone(), cells.clone(), 1));
                    }
                    tables[t_i].insert(key, row);
                }
                out.push(TableOut::Resync(s.restore_version));
                restored = Some((cap, out));
                store = Some(s.store);
            }
            // A time whose rows the store has not made durable yet: its output waits.
            let mut unpersisted: Option<Unpersisted> = None;
            let mut last_warning: Option<std::time::Instant> = None;
            move |(input, frontier), output| {
                if let Some((cap, out)) = restored.take() {
                    output.session(&cap).give_iterator(out.into_iter());
                }
                input.for_each_stamp(|cap, data| {
                    let Some(time) = cap.least().copied() else { return };
                    let Some(retained) = cap.retain_least(output.output_index()) else { return };
                    let entry = stash.entry(time).or_insert_with(|| (retained, Vec::new()));
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                loop {
                    if let Some((cap, out, touched)) = unpersisted.take() {
                        if let Some(store) = &store {
                            let rows: Vec<(u16, &str, &RowState)> = touched
                                .iter()
                                .filter_map(|(t, k)| {
                                    tables.get(*t as usize)?.get(k).map(|r| (*t, k.as_str(), r))
                                })
                                .collect();
                            if let Err(e) = store.persist(&rows) {
                                if last_warning.is_none_or(|w| w.elapsed() >= std::time::Duration::from_secs(10)) {
                                    tracing::error!(error = %e, "table state not persisted; the pipeline waits for the store");
                                    last_warning = Some(std::time::Instant::now());
                                }
                                unpersisted = Some((cap, out, touched));
                                activator.activate_after(std::time::Duration::from_millis(500));
                                return;
                            }
                        }
                        output.session(&cap).give_iterator(out.into_iter());
                    }
                    let Some(time) = stash.keys().next().copied().filter(|t| !frontier.less_equal(t)) else { break };
                    let Some((cap, items)) = stash.remove(&time) else { break };
                    let (out, touched) = upsert_time(&model, &mut tables, items);
                    unpersisted = Some((cap, out, touched));
                }
            }
        })
    }
}

/// Fold one time's records into the tables; returns the output and the rows whose state
/// changed (to persist). Public for deterministic tests.
pub fn upsert_time(
    model: &DocModel,
    tables: &mut Vec<BTreeMap<String, RowState>>,
    mut items: Vec<Routed>,
) -> (Vec<TableOut>, Vec<(u16, String)>) {
    items.sort_by_key(|r| position_of(&r.item));
    let mut touched: Vec<(u16, String)> = Vec::new();
    let mut tally = Tally::default();
    let mut applied = Vec::new();
    let mut out = Vec::new();
    let mut per_table: BTreeMap<u16, Tally> = BTreeMap::new();
    for r in items {
        // This record's counts, added to the time's and to its table's.
        let mut item = Tally::default();
        if r.counted {
            item.received += 1;
        }
        let table = match &r.item {
            Ingested::Record(SourceRecord::Doc(c)) => c.table,
            _ => u16::MAX,
        };
        match r.item {
            Ingested::Record(SourceRecord::Doc(c)) => {
                let t = c.table as usize;
                if tables.len() <= t {
                    tables.resize_with(t + 1, BTreeMap::new);
                }
                let mut state = tables[t].get(&c.doc_id.0).cloned();
                match model.upsert(t, &mut state, &c) {
                    RowOutcome::Changed { before, after } => {
                        if after.is_some() {
                            item.content += 1;
                        } else {
                            item.deleted += 1;
                        }
                        applied.push(c.commit_ts_ms);
                        if let Some(b) = before {
                            out.push(TableOut::Update(c.table, c.doc_id.0.clone(), b, -1));
                        }
                        if let Some(a) = after {
                            out.push(TableOut::Update(c.table, c.doc_id.0.clone(), a, 1));
                        }
                    }
                    RowOutcome::NoOp => item.noop += 1,
                    RowOutcome::Superseded => item.superseded += 1,
                    RowOutcome::Rejected(rej) => {
                        item.dead_lettered += 1;
                        out.push(TableOut::State(StateOut::Dead(DeadLetter {
                            origin: c.origin(),
                            position: c.position,
                            stage: "table".into(),
                            reason: rej.reason.into(),
                            error: rej.message,
                            doc_id: Some(format!("{}:{}", model.table_name(t), c.doc_id)),
                            record_excerpt: None,
                            record_bytes: None,
                            raw: None,
                        })));
                        state = None;
                    }
                }
                if let Some(s) = state {
                    if tables[t].get(&c.doc_id.0) != Some(&s) {
                        touched.push((c.table, c.doc_id.0.clone()));
                        tables[t].insert(c.doc_id.0, s);
                    }
                }
            }
            Ingested::Record(SourceRecord::Truncate { version, position, .. }) => {
                // Broadcast to every worker; dead-lettered once.
                if r.counted {
                    item.dead_lettered += 1;
                    out.push(TableOut::State(StateOut::Dead(DeadLetter {
                        origin: None,
                        position,
                        stage: "table".into(),
                        reason: "truncate_unsupported".into(),
                        error: format!(
                            "table truncate at version {version} not applied: a multi-table dataflow does not apply \
                             truncates yet (delete the rows instead)"
                        ),
                        doc_id: None,
                        record_excerpt: None,
                        record_bytes: None,
                        raw: None,
                    })));
                }
            }
            Ingested::Skipped { .. } => item.noop += 1,
            // Markers go to the document state directly (`pipeline.rs`).
            Ingested::Resync { .. } => {}
            Ingested::Dead(d) => {
                item.dead_lettered += 1;
                out.push(TableOut::State(StateOut::Dead(d)));
            }
        }
        tally.add(&item);
        if item != Tally::default() {
            per_table.entry(table).or_default().add(&item);
        }
    }
    if !per_table.is_empty() {
        out.push(TableOut::State(StateOut::TableTally(per_table.into_iter().collect())));
    }
    if !applied.is_empty() {
        out.push(TableOut::State(StateOut::Applied(applied)));
    }
    out.push(TableOut::State(StateOut::Tally(tally)));
    touched.sort();
    touched.dedup();
    (out, touched)
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
