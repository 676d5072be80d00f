//! Build the pipeline's dataflow from a source stream:
//! `routed records → [upsert_tables (persisted, restored) → render_documents, for documents
//! built from several tables] → doc_state (exchange by doc_id) → write_index (embed + sink, capability
//! held until acknowledged) → probe` — the probe's frontier is the sink frontier.
//! Beside it, the state's size changes form a differential collection whose `count_total`
//! maintains the exact number of live documents and chunks the index converges to.

use std::rc::Rc;

use differential_dataflow::collection::AsCollection;
use differential_dataflow::operators::CountTotal;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::Stream;
use timely::scheduling::SyncActivator;

use crate::dataflow::operators::doc_state::{DocStateExt, InitialState};
use crate::dataflow::operators::render_documents::RenderDocumentsExt;
use crate::dataflow::operators::upsert_tables::{TableOut, UpsertTablesExt};
use crate::dataflow::operators::write_index::{Acked, IndexWriter, WriteIndexExt};
use crate::dataflow::state::DocShape;
use crate::dataflow::tables::{DocModel, TableState};
use crate::dataflow::{Routed, StateOut, Time};

/// Which size a [`SizeObserver`] is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeKind {
    /// Live documents.
    Documents,
    /// Their chunks (= points the index holds once caught up).
    Chunks,
}

/// Receives the exact totals of the state's size as they change.
pub type SizeObserver = std::sync::Arc<dyn Fn(SizeKind, i64) + Send + Sync>;

/// Probes on the stages' outputs: their frontiers are what `freshet_stage_frontier_timestamp_seconds`
/// reports (the embed stage's is kept by the writers, the source's by the readers).
#[derive(Clone, Default)]
pub struct StageProbes {
    /// After the source operator (records read and decoded).
    pub decode: ProbeHandle<Time>,
    /// After the document state (writes decided).
    pub state: ProbeHandle<Time>,
    /// After the index writer (acknowledged by the sink).
    pub sink: ProbeHandle<Time>,
}

/// Separate the [`crate::dataflow::Ingested::Resync`] markers (for the document state) from
/// the table rows.
fn split_resyncs<'scope>(
    routed: Stream<'scope, Time, Vec<Routed>>,
) -> (Stream<'scope, Time, Vec<Routed>>, Stream<'scope, Time, Vec<Routed>>) {
    use crate::dataflow::Ingested;
    let is_resync = |r: &Routed| matches!(r.item, Ingested::Resync { .. });
    let pick = |want: bool, name: &str| {
        routed.clone().unary(Pipeline, name, move |_cap, _info| {
            move |input, output| {
                input.for_each(|cap, data| {
                    output.session(&cap).give_iterator(data.drain(..).filter(|r| is_resync(r) == want));
                });
            }
        })
    };
    (pick(true, "Resyncs"), pick(false, "TableRows"))
}

/// The resync of restored tables ([`TableOut::Resync`]), as a marker for this worker's
/// document state.
fn restored_resyncs<'scope>(tables: Stream<'scope, Time, Vec<TableOut>>) -> Stream<'scope, Time, Vec<Routed>> {
    use crate::dataflow::Ingested;
    let index = tables.scope().index() as u64;
    tables.unary(Pipeline, "RestoredResync", move |_cap, _info| {
        move |input, output| {
            input.for_each(|cap, data| {
                let resyncs = data.iter().filter_map(|o| match o {
                    TableOut::Resync(version) => {
                        Some(Routed { target: index, counted: false, item: Ingested::Resync { version: *version } })
                    }
                    _ => None,
                });
                output.session(&cap).give_iterator(resyncs);
            });
        }
    })
}

/// Assemble the operators after the source; `probes.sink` then reads the sink frontier.
/// Returns the stream of acknowledged times.
pub fn build<'scope, W, F>(
    routed: Stream<'scope, Time, Vec<Routed>>,
    shape: Rc<DocShape>,
    tables: Option<Rc<DocModel>>,
    table_state: Option<TableState>,
    initial: InitialState,
    make_writer: F,
    probes: &StageProbes,
    sizes: SizeObserver,
) -> Stream<'scope, Time, Vec<Acked>>
where
    W: IndexWriter,
    F: FnOnce(SyncActivator) -> W + 'static,
{
    let routed = routed.probe_with(&probes.decode);
    // A multi-table dataflow: rows → tables → documents (joins) before the document state.
    let (docs, table_counters) = match tables {
        Some(model) => {
            let (resyncs, rows) = split_resyncs(routed);
            let upserted = rows.upsert_tables("UpsertTables", Rc::clone(&model), table_state);
            let restored = restored_resyncs(upserted.clone());
            let (docs, counters) = upserted.render_documents("RenderDocuments", model);
            (docs.concat(resyncs).concat(restored), Some(counters))
        }
        None => (routed, None),
    };
    let state = docs.doc_state("DocState", shape, initial).probe_with(&probes.state);
    state
        .clone()
        .unary::<timely::container::CapacityContainerBuilder<Vec<(u8, Time, isize)>>, _, _, _>(
            Pipeline,
            "StateSize",
            |_cap, _info| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let Some(time) = cap.least().copied() else { return };
                        let mut session = output.session(&cap);
                        for o in data.iter() {
                            if let StateOut::Size { documents, chunks } = o {
                                session.give((0u8, time, *documents as isize));
                                session.give((1u8, time, *chunks as isize));
                            }
                        }
                    });
                }
            },
        )
        .as_collection()
        .count_total()
        .inspect(move |((kind, total), _time, diff)| {
            if *diff > 0 {
                let kind = if *kind == 0 { SizeKind::Documents } else { SizeKind::Chunks };
                sizes(kind, *total as i64);
            }
        });
    let to_write = match table_counters {
        Some(counters) => state.concat(counters),
        None => state,
    };
    to_write.write_index("WriteIndex", make_writer).probe_with(&probes.sink)
}
