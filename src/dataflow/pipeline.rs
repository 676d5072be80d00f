//! Build the pipeline's dataflow from a source stream:
//! `routed records → doc_state (exchange by doc_id) → write_index (embed + sink, capability
//! held until acknowledged) → probe` — the probe's frontier is the sink frontier.

use std::rc::Rc;

use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;
use timely::dataflow::Stream;
use timely::scheduling::SyncActivator;

use crate::dataflow::operators::doc_state::{DocStateExt, InitialState};
use crate::dataflow::operators::write_index::{Acked, IndexWriter, WriteIndexExt};
use crate::dataflow::state::DocShape;
use crate::dataflow::{Routed, Time};

/// Assemble the operators after the source; returns the sink-frontier probe and the stream
/// of acknowledged times.
pub fn build<'scope, W, F>(
    routed: Stream<'scope, Time, Vec<Routed>>,
    shape: Rc<DocShape>,
    initial: InitialState,
    make_writer: F,
) -> (ProbeHandle<Time>, Stream<'scope, Time, Vec<Acked>>)
where
    W: IndexWriter,
    F: FnOnce(SyncActivator) -> W + 'static,
{
    routed.doc_state("DocState", shape, initial).write_index("WriteIndex", make_writer).probe()
}
