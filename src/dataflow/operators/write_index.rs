//! `write_index`: hands each completed time's writes to an [`IndexWriter`] (embedding and
//! the sink live behind it, off the timely thread) and **holds the capability for that
//! time until the writer reports the sink acknowledged it**. Its output carries one
//! [`Acked`] per acknowledged time, so a probe on it reads the sink frontier.

use std::collections::BTreeMap;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
use timely::scheduling::SyncActivator;

use crate::dataflow::{StateOut, Tally, Time};
use crate::model::{DeadLetter, DocWrite};

/// Everything one worker must write for one time.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// Document writes.
    pub writes: Vec<DocWrite>,
    /// Rejected records for the dead-letter file.
    pub dead: Vec<DeadLetter>,
    /// Counters of the records behind these writes.
    pub tally: Tally,
    /// A multi-table dataflow's counters by table.
    pub table_tallies: BTreeMap<u16, Tally>,
    /// Newest table truncate seen at this time.
    pub truncated_at: Option<crate::model::Version>,
    /// Source commit times of the changes applied at this time (one per applied change).
    pub applied_commits: Vec<Option<u64>>,
}

/// A time whose writes are durable in the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Acked {
    /// The time.
    pub time: Time,
    /// Counters, completed by the writer (chunks embedded, points written).
    pub tally: Tally,
}

/// The sink side of the dataflow, implemented by the runtime. Must not block.
pub trait IndexWriter: 'static {
    /// Hand over one time's batch. Called in increasing time order.
    fn submit(&mut self, time: Time, batch: WriteBatch);
    /// Times acknowledged since the last call, in increasing order, with final tallies.
    /// A time is acknowledged only after every earlier submitted time.
    fn poll_acked(&mut self) -> Vec<Acked>;
}

/// Extension trait adding [`WriteIndexExt::write_index`].
pub trait WriteIndexExt<'scope> {
    /// Write each completed time through the writer `make` builds (given an activator that
    /// wakes this operator when acknowledgements arrive).
    ///
    /// ```
    /// use timely::dataflow::operators::{ToStream, Capture, capture::Event};
    /// use freshet::dataflow::operators::write_index::{Acked, IndexWriter, WriteBatch, WriteIndexExt};
    /// use freshet::dataflow::{StateOut, Tally, Time};
    /// struct Immediate(Vec<Acked>);
    /// impl IndexWriter for Immediate {
    ///     fn submit(&mut self, time: Time, b: WriteBatch) { self.0.push(Acked { time, tally: b.tally }) }
    ///     fn poll_acked(&mut self) -> Vec<Acked> { std::mem::take(&mut self.0) }
    /// }
    /// let out = timely::example(|scope| {
    ///     let t = Tally { received: 1, noop: 1, ..Tally::default() };
    ///     vec![StateOut::Tally(t)].to_stream(scope)
    ///         .write_index("WriteIndex", |_activator| Immediate(Vec::new()))
    ///         .capture()
    /// });
    /// let acked: Vec<Acked> = out
    ///     .try_iter()
    ///     .flat_map(|e| match e { Event::Messages(_, d) => d, _ => Vec::new() })
    ///     .collect();
    /// assert_eq!(acked.len(), 1);
    /// assert_eq!(acked[0].tally.received, 1);
    /// ```
    fn write_index<W, F>(self, name: &str, make: F) -> Stream<'scope, Time, Vec<Acked>>
    where
        W: IndexWriter,
        F: FnOnce(SyncActivator) -> W + 'static;
}

impl<'scope> WriteIndexExt<'scope> for Stream<'scope, Time, Vec<StateOut>> {
    fn write_index<W, F>(self, name: &str, make: F) -> Stream<'scope, Time, Vec<Acked>>
    where
        W: IndexWriter,
        F: FnOnce(SyncActivator) -> W + 'static,
    {
        let scope = self.scope();
        self.unary_frontier(Pipeline, name, move |_cap, info| {
            let activator = scope.worker().sync_activator_for(info.address.to_vec());
            let mut writer = make(activator);
            let mut stash: BTreeMap<Time, (Capability<Time>, WriteBatch)> = BTreeMap::new();
            let mut in_flight: BTreeMap<Time, Capability<Time>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(time) = cap.least().copied() else { return };
                    let Some(retained) = cap.retain_least(output.output_index()) else { return };
                    let entry = stash.entry(time).or_insert_with(|| (retained, WriteBatch::default()));
                    for batch in data {
                        for item in batch.drain(..) {
                            match item {
                                StateOut::Write(w) => entry.1.writes.push(w),
                                StateOut::Dead(d) => entry.1.dead.push(d),
                                StateOut::Tally(t) => entry.1.tally.add(&t),
                                StateOut::TableTally(ts) => {
                                    for (table, t) in ts {
                                        entry.1.table_tallies.entry(table).or_default().add(&t);
                                    }
                                }
                                StateOut::Applied(c) => entry.1.applied_commits.extend(c),
                                StateOut::Size { .. } => {}
                                StateOut::Truncated(v) => {
                                    entry.1.truncated_at = Some(entry.1.truncated_at.map_or(v, |x| x.max(v)));
                                }
                            }
                        }
                    }
                });
                // Submit completed times in order; keep their capabilities while in flight.
                let ready: Vec<Time> = stash.keys().copied().filter(|t| !frontier.less_equal(t)).collect();
                for time in ready {
                    if let Some((cap, batch)) = stash.remove(&time) {
                        writer.submit(time, batch);
                        in_flight.insert(time, cap);
                    }
                }
                for acked in writer.poll_acked() {
                    if let Some(cap) = in_flight.remove(&acked.time) {
                        output.session(&cap).give(acked);
                    }
                }
            }
        })
    }
}
