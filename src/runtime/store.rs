//! Small durable files under the data directory: the dead-letter file
//! (`dead-letter.jsonl`); the tombstone log (`state/<collection>.tombstones.jsonl`), which
//! remembers deleted documents, table truncates and versions seen without a write, so that
//! an older event replayed after a restart stays superseded; and the in-flight write log
//! (`state/<collection>.inflight.jsonl`), which names the points of a sink write before it
//! starts and marks it done after, so that a write torn by a crash is found at the next
//! start.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::model::{DeadLetter, DocId, Version};

/// The in-flight write log (see the module docs).
#[derive(Debug)]
pub struct InflightLog {
    /// The file, and the token of the next write.
    file: Mutex<(File, u64)>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum InflightEntry {
    Begin { begin: u64, ids: Vec<uuid::Uuid> },
    Done { done: u64 },
}

impl InflightLog {
    /// The token under which [`InflightLog::open`] carries over the points of writes a
    /// crash interrupted, until the caller has dealt with them.
    pub const CARRIED: u64 = 0;

    /// Open the log and return the points of writes that began and never finished (a
    /// crash in the middle of a write). The log starts empty again, but for those points
    /// (under [`InflightLog::CARRIED`], in case of another crash before they are dealt with).
    pub fn open(data_dir: &Path, collection: &str) -> std::io::Result<(Self, Vec<uuid::Uuid>)> {
        let path = data_dir.join("state").join(format!("{collection}.inflight.jsonl"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut open: BTreeMap<u64, Vec<uuid::Uuid>> = BTreeMap::new();
        if path.exists() {
            for line in BufReader::new(File::open(&path)?).lines() {
                match serde_json::from_str::<InflightEntry>(&line?) {
                    Ok(InflightEntry::Begin { begin, ids }) => {
                        open.entry(begin).or_default().extend(ids);
                    }
                    Ok(InflightEntry::Done { done }) => {
                        open.remove(&done);
                    }
                    // A torn last line: its write never started.
                    Err(_) => {}
                }
            }
        }
        let mut suspects: Vec<uuid::Uuid> = open.into_values().flatten().collect();
        suspects.sort();
        suspects.dedup();
        let mut file = File::create(&path)?;
        if !suspects.is_empty() {
            file.write_all(&encode_lines([InflightEntry::Begin { begin: Self::CARRIED, ids: suspects.clone() }])?)?;
            file.sync_data()?;
        }
        Ok((Self { file: Mutex::new((file, Self::CARRIED + 1)) }, suspects))
    }

    /// Name the points a write is about to touch (synced before the write); returns the
    /// write's token for [`InflightLog::done`]. Every write gets its own token: several
    /// workers write batches of the same time concurrently.
    pub fn begin(&self, ids: &[uuid::Uuid]) -> std::io::Result<u64> {
        let mut guard = self.file.lock().map_err(|_| std::io::Error::other("in-flight log lock poisoned"))?;
        let token = guard.1;
        guard.1 += 1;
        let buf = encode_lines([InflightEntry::Begin { begin: token, ids: ids.to_vec() }])?;
        guard.0.write_all(&buf)?;
        guard.0.sync_data()?;
        Ok(token)
    }

    /// The write with `token` finished (not synced: losing this line only makes the next
    /// start re-apply those documents).
    pub fn done(&self, token: u64) -> std::io::Result<()> {
        let buf = encode_lines([InflightEntry::Done { done: token }])?;
        let mut guard = self.file.lock().map_err(|_| std::io::Error::other("in-flight log lock poisoned"))?;
        guard.0.write_all(&buf)
    }
}

/// Append-only JSON-lines dead-letter file.
#[derive(Debug)]
pub struct DeadLetterLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl DeadLetterLog {
    /// Open (create) `<data_dir>/dead-letter.jsonl`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("dead-letter.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { path, file: Mutex::new(file) })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries in the file (lines), as counted now.
    pub fn count_existing(&self) -> u64 {
        std::fs::read(&self.path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
    }

    /// Append entries and flush them to disk.
    pub fn append(&self, entries: &[DeadLetter]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for e in entries {
            serde_json::to_writer(&mut buf, e)?;
            buf.push(b'\n');
        }
        let mut f = self.file.lock().map_err(|_| std::io::Error::other("dead-letter lock poisoned"))?;
        f.write_all(&buf)?;
        f.sync_data()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TombstoneEntry {
    Doc { doc_id: String, version: Version },
    Seen { doc_id: String, seen: Version },
    Truncate { truncate: Version },
}

/// JSON lines of `entries`.
fn encode_lines<T: Serialize>(entries: impl IntoIterator<Item = T>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut buf, &e)?;
        buf.push(b'\n');
    }
    Ok(buf)
}

/// What the tombstone log remembers.
#[derive(Debug, Default, Clone)]
pub struct Tombstones {
    /// Deleted documents and the version of their delete.
    pub docs: BTreeMap<DocId, Version>,
    /// Newest table truncate.
    pub truncated_at: Option<Version>,
    /// Live documents whose version advanced past what their points' payloads say (no-op
    /// changes with a newer version).
    pub seen: BTreeMap<DocId, Version>,
}

/// Append-only tombstone log.
#[derive(Debug)]
pub struct TombstoneLog {
    file: Mutex<File>,
}

impl TombstoneLog {
    fn path(data_dir: &Path, collection: &str) -> PathBuf {
        data_dir.join("state").join(format!("{collection}.tombstones.jsonl"))
    }

    /// Read the log (newest entry per document wins) and compact it.
    pub fn open(data_dir: &Path, collection: &str) -> std::io::Result<(Self, Tombstones)> {
        let path = Self::path(data_dir, collection);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut t = Tombstones::default();
        if path.exists() {
            for line in BufReader::new(File::open(&path)?).lines() {
                let line = line?;
                // A torn last line after a crash is ignored.
                match serde_json::from_str::<TombstoneEntry>(&line) {
                    Ok(TombstoneEntry::Doc { doc_id, version }) => {
                        let e = t.docs.entry(DocId(doc_id)).or_insert(version);
                        *e = (*e).max(version);
                    }
                    Ok(TombstoneEntry::Seen { doc_id, seen }) => {
                        let e = t.seen.entry(DocId(doc_id)).or_insert(seen);
                        *e = (*e).max(seen);
                    }
                    Ok(TombstoneEntry::Truncate { truncate }) => {
                        t.truncated_at = Some(t.truncated_at.map_or(truncate, |x| x.max(truncate)));
                    }
                    Err(_) => {}
                }
            }
        }
        // Compact: rewrite atomically.
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut f = File::create(&tmp)?;
            let entries = t
                .truncated_at
                .map(|truncate| TombstoneEntry::Truncate { truncate })
                .into_iter()
                .chain(t.docs.iter().map(|(d, v)| TombstoneEntry::Doc { doc_id: d.0.clone(), version: *v }))
                .chain(t.seen.iter().map(|(d, v)| TombstoneEntry::Seen { doc_id: d.0.clone(), seen: *v }));
            let buf = encode_lines(entries)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok((Self { file: Mutex::new(file) }, t))
    }

    /// Remember deleted documents.
    pub fn append(&self, docs: &[(DocId, Version)]) -> std::io::Result<()> {
        self.write(&encode_lines(docs.iter().map(|(d, v)| TombstoneEntry::Doc { doc_id: d.0.clone(), version: *v }))?)
    }

    /// Remember versions seen without a write to the index.
    pub fn append_seen(&self, docs: &[(DocId, Version)]) -> std::io::Result<()> {
        self.write(&encode_lines(docs.iter().map(|(d, v)| TombstoneEntry::Seen { doc_id: d.0.clone(), seen: *v }))?)
    }

    /// Remember a table truncate.
    pub fn append_truncate(&self, v: Version) -> std::io::Result<()> {
        self.write(&encode_lines([TombstoneEntry::Truncate { truncate: v }])?)
    }

    fn write(&self, buf: &[u8]) -> std::io::Result<()> {
        let mut f = self.file.lock().map_err(|_| std::io::Error::other("tombstone lock poisoned"))?;
        f.write_all(buf)?;
        f.sync_data()
    }
}

/// Carry a collection's state log (tombstones, versions seen) over to another collection
/// that now holds the same documents (`reindex`).
pub fn copy_state(data_dir: &Path, from: &str, to: &str) -> std::io::Result<()> {
    let src = TombstoneLog::path(data_dir, from);
    if src.exists() {
        let dst = TombstoneLog::path(data_dir, to);
        let tmp = dst.with_extension("jsonl.tmp");
        std::fs::copy(&src, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &dst)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod inflight_tests {
    use super::*;

    fn id(i: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(i)
    }

    /// Regression (kill test): entries were keyed by the batch's time, and two workers
    /// write batches of the same time concurrently — the second `begin` replaced the
    /// first's points and the first `done` cleared the second's, so a write a crash
    /// interrupted could go unnamed.
    #[test]
    fn concurrent_writes_are_named_until_each_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let (log, suspects) = InflightLog::open(dir.path(), "c").unwrap();
        assert!(suspects.is_empty());
        let a = log.begin(&[id(1), id(2)]).unwrap();
        let b = log.begin(&[id(3)]).unwrap();
        assert_ne!(a, b);
        log.done(a).unwrap();
        drop(log); // a crash: `b` never finished
        let (log, suspects) = InflightLog::open(dir.path(), "c").unwrap();
        assert_eq!(suspects, vec![id(3)]);
        drop(log); // another crash before they were dealt with: still named
        let (log, suspects) = InflightLog::open(dir.path(), "c").unwrap();
        assert_eq!(suspects, vec![id(3)]);
        log.done(InflightLog::CARRIED).unwrap();
        drop(log);
        assert!(InflightLog::open(dir.path(), "c").unwrap().1.is_empty());
    }
}
