//! `render_documents`: the documents of a multi-table dataflow, maintained by differential
//! dataflow. The row updates of `upsert_tables` become one collection per table; each
//! lookup joins the rows it starts from (the root, or an earlier lookup) on their foreign
//! key with the looked-up table's arrangement, re-keyed to the root's key; each child
//! collection is keyed by its parent column; a `reduce` over all the parts of a root key
//! assembles the document ([`DocModel::assemble`], the filter included). A change to any
//! row therefore re-renders exactly the documents that depend on it: an author rename the
//! author's articles, a moved foreign key the document that moved, a child row its parent.
//!
//! The documents' changes at each completed time leave as [`DocChange`]s (an upsert of the
//! document's fields, or a delete when it stops being a document) for `doc_state`, whose
//! chunk hashes decide what is embedded: a re-rendered document whose text is the same
//! writes payloads only, one whose fields are all the same writes nothing. Their version is
//! the time (ingestion ms, totally ordered), as the per-row versions were checked upstream;
//! the restored tables of a restart, emitted at time 0, render at the start time.

use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::collection::AsCollection;
use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::dataflow::operators::upsert_tables::TableOut;
use crate::dataflow::tables::{Cells, DocModel, Part};
use crate::dataflow::{Ingested, Routed, StateOut, Time};
use crate::model::{route, ChangeOp, DocChange, DocId, FieldValue, Row, SourceRecord};

type Fields = Vec<(String, String)>;

/// The documents changed at one time: root key → its fields now (None: not a document).
type Changed = BTreeMap<String, Option<Fields>>;

/// Extension trait adding [`RenderDocumentsExt::render_documents`].
pub trait RenderDocumentsExt<'scope> {
    /// Join the tables into documents; returns the document changes (routed to their
    /// `doc_state` worker) and the row stage's counters and dead letters.
    ///
    /// ```
    /// use timely::dataflow::operators::{ToStream, Capture, capture::Event};
    /// use freshet::dataflow::operators::render_documents::RenderDocumentsExt;
    /// use freshet::dataflow::operators::upsert_tables::TableOut;
    /// use freshet::dataflow::{Ingested, Routed};
    /// use freshet::model::{ChangeOp, FieldValue, SourceRecord};
    /// let cells = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    /// let (docs, _) = timely::example(move |scope| {
    ///     let spec = freshet::config::DataflowSpec::multi_table_example_for_tests();
    ///     let model = std::rc::Rc::new(freshet::dataflow::tables::DocModel::for_spec(&spec).unwrap());
    ///     let rows = vec![
    ///         // article 1 (title, body, status, author 7), its author, one tag
    ///         TableOut::Update(0, "1".into(), cells(&["1", "\"T\"", "\"B\"", "\"published\"", "7"]), 1),
    ///         TableOut::Update(1, "7".into(), cells(&["7", "\"Ada\""]), 1),
    ///         TableOut::Update(2, "3".into(), cells(&["3", "1", "\"rust\""]), 1),
    ///     ];
    ///     let (docs, counters) = rows.to_stream(scope).render_documents("RenderDocuments", model);
    ///     (docs.capture(), counters.capture())
    /// });
    /// let docs: Vec<Routed> = docs.try_iter()
    ///     .flat_map(|e| match e { Event::Messages(_, d) => d, _ => Vec::new() }).collect();
    /// let Ingested::Record(SourceRecord::Doc(c)) = &docs[0].item else { panic!() };
    /// let ChangeOp::Upsert(row) = &c.op else { panic!() };
    /// assert_eq!(row["author.name"], FieldValue::Value("Ada".into()));
    /// assert_eq!(row["tags"], FieldValue::Value(serde_json::json!(["rust"])));
    /// ```
    fn render_documents(
        self,
        name: &str,
        model: Rc<DocModel>,
    ) -> (Stream<'scope, Time, Vec<Routed>>, Stream<'scope, Time, Vec<StateOut>>);
}

impl<'scope> RenderDocumentsExt<'scope> for Stream<'scope, Time, Vec<TableOut>> {
    fn render_documents(
        self,
        name: &str,
        model: Rc<DocModel>,
    ) -> (Stream<'scope, Time, Vec<Routed>>, Stream<'scope, Time, Vec<StateOut>>) {
        let states = self.clone().unary(Pipeline, "TableCounters", |_cap, _info| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for o in data.drain(..) {
                        if let TableOut::State(s) = o {
                            session.give(s);
                        }
                    }
                });
            }
        });
        let rows = self
            .unary::<timely::container::CapacityContainerBuilder<Vec<((u16, String, Cells), Time, isize)>>, _, _, _>(
                Pipeline,
                "TableRows",
                |_cap, _info| {
                    move |input, output| {
                        input.for_each(|cap, data| {
                            let Some(time) = cap.least().copied() else { return };
                            let mut session = output.session(&cap);
                            for o in data.drain(..) {
                                if let TableOut::Update(t, k, c, d) = o {
                                    session.give(((t, k, c), time, d));
                                }
                            }
                        });
                    }
                },
            )
            .as_collection();
        let table = |i: usize| {
            let i = i as u16;
            rows.clone().filter(move |(t, _, _)| *t == i).map(|(_, k, c)| (k, c))
        };
        let root = table(model.root());
        // Each lookup's rows, keyed by the root key they belong to.
        let mut found: Vec<VecCollection<'scope, Time, (String, Cells)>> = Vec::new();
        for (t, from, on) in model.lookups() {
            let from_rows = match from {
                None => root.clone(),
                Some(j) => found[j].clone(),
            };
            let by_fk = from_rows
                .flat_map(move |(rk, cells)| cells.get(on).and_then(|c| DocModel::key_of(c)).map(|fk| (fk, rk)));
            found.push(by_fk.join_map(table(t), |_fk, rk, cells| (rk.clone(), cells.clone())));
        }
        let mut parts = root.map(|(k, c)| (k, Part::Root(c)));
        for (i, f) in found.into_iter().enumerate() {
            parts = parts.concat(f.map(move |(k, c)| (k, Part::Lookup(i as u16, c))));
        }
        for (i, (t, parent, value, order)) in model.children().into_iter().enumerate() {
            let kids = table(t).flat_map(move |(ck, cells)| {
                let pk = cells.get(parent).and_then(|c| DocModel::key_of(c))?;
                let order = order.and_then(|o| cells.get(o).cloned()).unwrap_or_default();
                let v = cells.get(value).cloned().unwrap_or_else(|| "null".into());
                Some((pk, Part::Child(i as u16, order, ck, v)))
            });
            parts = parts.concat(kids);
        }
        let m = Rc::clone(&model);
        let docs = parts.reduce_named::<_, Fields, isize>("RenderDocument", move |_key, input, output| {
            let present: Vec<&Part> = input.iter().filter(|(_, d)| *d > 0).map(|(p, _)| *p).collect();
            if let Some(fields) = m.assemble(&present) {
                output.push((fields, 1));
            }
        });
        let changes = docs.inner.unary_frontier(
            Exchange::new(|((k, _), _, _): &((String, Fields), Time, isize)| route(&DocId(k.clone()))),
            name,
            |_cap, _info| {
                let mut stash: BTreeMap<Time, (Capability<Time>, Changed)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        for batch in data {
                            for ((key, fields), time, diff) in batch.drain(..) {
                                let entry = stash
                                    .entry(time)
                                    .or_insert_with(|| (cap.delayed(&time, output.output_index()), BTreeMap::new()));
                                let doc = entry.1.entry(key).or_insert(None);
                                if diff > 0 {
                                    *doc = Some(fields);
                                }
                            }
                        }
                    });
                    let ready: Vec<Time> = stash.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
                    for time in ready {
                        let Some((cap, docs)) = stash.remove(&time) else { continue };
                        let mut session = output.session(&cap);
                        for (key, fields) in docs {
                            let op = match fields {
                                Some(fields) => ChangeOp::Upsert(to_row(fields)),
                                None => ChangeOp::Delete,
                            };
                            let doc_id = DocId(key);
                            let version = model.version_at(time);
                            let change = DocChange {
                                version,
                                position: version,
                                commit_ts_ms: None,
                                op,
                                source: None,
                                table: model.root() as u16,
                                doc_id,
                            };
                            session.give(Routed {
                                target: route(&change.doc_id),
                                counted: false,
                                item: Ingested::Record(SourceRecord::Doc(change)),
                            });
                        }
                    }
                }
            },
        );
        (changes, states)
    }
}

fn to_row(fields: Fields) -> Row {
    fields
        .into_iter()
        .map(|(k, v)| (k, FieldValue::Value(serde_json::from_str(&v).unwrap_or(serde_json::Value::Null))))
        .collect()
}
