//! The file source: a JSON-lines file of change events (one record value per line, or
//! `key<sep>value`), read by worker 0 in bounded passes. Each pass stamps its records with
//! the ingestion time (ms, strictly increasing) and downgrades the capability, so the
//! dataflow's frontier follows the reader. At end of file the capability is dropped
//! (`until_end`) or kept advancing with the clock while the file is followed.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{Scope, Stream};

use crate::config::SourceFormat;
use crate::dataflow::{Ingested, Routed, Time};
use crate::source::decode::DecodeSpec;
use crate::source::{ingest, now_ms, RawRecord, SourceProgress};

/// How often a followed file is checked for new lines once its end is reached (a line
/// appended waits at most this long to be read).
const FOLLOW_POLL: Duration = Duration::from_millis(20);

/// Options of the file source.
#[derive(Debug, Clone)]
pub struct FileSourceOptions {
    /// The file.
    pub path: PathBuf,
    /// `key<sep>value` lines when set.
    pub key_separator: Option<String>,
    /// Record format.
    pub format: SourceFormat,
    /// Decoding rules.
    pub decode: DecodeSpec,
    /// Lines per pass.
    pub max_records_per_pass: usize,
    /// Stop at end of file (else follow it).
    pub until_end: bool,
    /// Passes read but not yet acknowledged by the sink before reading pauses
    /// (backpressure: bounds the records held in the pipeline).
    pub max_passes_in_flight: usize,
    /// Read the whole file, as far as it goes at start, in the first pass. A multi-table
    /// dataflow sets it: a run reads its file from the start, and its documents must be
    /// rendered from the complete tables — in bounded passes an article read before its
    /// author's row would be rendered (and embedded) without it first, at every restart.
    /// The first pass then holds the file's records in memory.
    pub whole_first_pass: bool,
}

/// Decode one line (`key<sep>value` when `key_separator` is set) into routed items.
pub fn ingest_line(
    line: &[u8],
    position: u64,
    key_separator: Option<&str>,
    format: SourceFormat,
    spec: &DecodeSpec,
    peers: usize,
    out: &mut Vec<Routed>,
) {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (key, value) = match key_separator {
        Some(sep) if !sep.is_empty() => match find(line, sep.as_bytes()) {
            Some(i) => (Some(&line[..i]), &line[i + sep.len()..]),
            None => (None, line),
        },
        _ => (None, line),
    };
    let value = if value.trim_ascii() == b"null" { None } else { Some(value) };
    let record = RawRecord { key, value, position, timestamp_ms: None, headers: &[] };
    ingest(crate::source::Decoder::json(format), spec, record, None, peers, out);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The file source operator (see module docs). Only worker 0 reads. `sink` is the sink
/// frontier's probe: reading pauses while `max_passes_in_flight` passes are unacknowledged.
pub fn file_source<'scope>(
    scope: Scope<'scope, Time>,
    opts: FileSourceOptions,
    progress: Arc<SourceProgress>,
    sink: ProbeHandle<Time>,
) -> Stream<'scope, Time, Vec<Routed>> {
    let peers = scope.peers();
    let global = scope.index();
    // Frontiers are kept per worker of this process.
    let index = global % progress.local_workers().max(1);
    source(scope, "FileSource", move |cap, info| {
        let activator = scope.activator_for(info.address);
        // The first worker of the first process reads; the records are exchanged by doc_id.
        let mut cap = if global == 0 { Some(cap) } else { None };
        if global != 0 {
            progress.finish(index);
        }
        let mut reader: Option<BufReader<File>> = None;
        let mut position: u64 = 0;
        let mut last_time: Time = 0;
        let mut buf = Vec::new();
        let mut partial = false;
        let mut failed = false;
        let mut outstanding: VecDeque<Time> = VecDeque::new();
        let mut first_pass = opts.whole_first_pass;
        move |output| {
            let Some(c) = cap.as_mut() else {
                progress.finish(index);
                return;
            };
            if progress.stop.load(Ordering::Relaxed) || failed {
                progress.finish(index);
                cap = None;
                return;
            }
            while outstanding.front().is_some_and(|t| !sink.less_equal(t)) {
                outstanding.pop_front();
            }
            if outstanding.len() >= opts.max_passes_in_flight.max(1) {
                // Backpressure: wait for the sink to acknowledge earlier passes.
                activator.activate_after(Duration::from_millis(5));
                return;
            }
            if reader.is_none() {
                match File::open(&opts.path) {
                    Ok(f) => reader = Some(BufReader::with_capacity(1 << 20, f)),
                    Err(e) => {
                        tracing::error!(path = %opts.path.display(), error = %e, "cannot open the input file");
                        progress.fail(format!("cannot open the input file {}: {e}", opts.path.display()));
                        failed = true;
                        activator.activate();
                        return;
                    }
                }
            }
            let time = now_ms().max(last_time + 1);
            c.downgrade(&time);
            last_time = time;
            let mut routed = Vec::new();
            let mut read = 0;
            let mut eof = false;
            let whole = std::mem::take(&mut first_pass);
            let limit = if whole { usize::MAX } else { opts.max_records_per_pass };
            if let Some(r) = reader.as_mut() {
                while read < limit {
                    // `buf` keeps a line's start read before its end was written.
                    if !partial {
                        buf.clear();
                    }
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(_) if buf.last() != Some(&b'\n') && !opts.until_end => {
                            // A followed file: the writer has not finished this line (one
                            // line may take several writes); read it whole at a later pass.
                            // (`--until-end` reads a last line without a newline as it is.)
                            partial = true;
                            eof = true;
                            break;
                        }
                        Ok(_) => {
                            partial = false;
                            position += 1;
                            if buf.iter().all(|b| b.is_ascii_whitespace()) {
                                continue;
                            }
                            ingest_line(
                                &buf,
                                position,
                                opts.key_separator.as_deref(),
                                opts.format,
                                &opts.decode,
                                peers,
                                &mut routed,
                            );
                            read += 1;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reading the input file failed");
                            progress.fail(format!("reading the input file {} failed: {e}", opts.path.display()));
                            eof = true;
                            failed = true;
                            break;
                        }
                    }
                }
            }
            progress.records.fetch_add(read as u64, Ordering::Relaxed);
            if whole {
                // Everything the file held is in this pass: tell every worker's document
                // state (see `Ingested::Resync`).
                for w in 0..peers {
                    routed.push(Routed { target: w as u64, counted: false, item: Ingested::Resync { version: time } });
                }
            }
            if !routed.is_empty() {
                output.session(&*c).give_iterator(routed.into_iter());
                outstanding.push_back(time);
            }
            // Nothing more comes at `time`: let the frontier pass it now, not at the next
            // pass (at the end of a followed file that is a poll interval away).
            c.downgrade(&(time + 1));
            progress.set_frontier(index, time + 1);
            if eof {
                progress.caught_up.store(true, Ordering::Relaxed);
                if opts.until_end {
                    progress.finish(index);
                    cap = None;
                } else {
                    activator.activate_after(FOLLOW_POLL);
                }
            } else {
                activator.activate();
            }
        }
    })
}
