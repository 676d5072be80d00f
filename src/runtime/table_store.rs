//! The durable table state of a multi-table dataflow on a source that resumes from committed
//! positions (Kafka): every table row's latest version (tombstones included), in one
//! [redb](https://docs.rs/redb) file per process, `state/<collection>.tables.redb`.
//!
//! `upsert_tables` writes each time's changed rows here (one durable transaction per time
//! and worker) before it emits them; Kafka offsets are committed only for times the sink
//! has passed. So, after any crash: committed offsets ≤ what the index holds ≤ this state.
//! At the next start the stored rows are loaded, every document is rendered from them and
//! compared with the index (what a crash left unwritten is written, what the tables no
//! longer render is deleted), and the records read again from the committed offsets are
//! superseded by the stored versions. No topic is read from its beginning.
//!
//! A row is stored as key `table (u16, big-endian) ++ row key (UTF-8)` → value
//! `version (u64, little-endian) ++ 0` for a tombstone, or `++ 1 ++ (len u32 LE, bytes)*`
//! for the cells. The file is compacted at each start (redb's free pages given back). It
//! also records the number of processes that wrote it: a cluster's
//! rows are split across its processes' files, so a cluster started with another number of
//! processes is refused rather than started without the rows other processes held.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::dataflow::operators::upsert_tables::row_route;
use crate::dataflow::tables::{RowState, RowStore};

const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// See the module docs.
pub struct TableStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for TableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableStore").field("path", &self.path).finish()
    }
}

/// What [`TableStore::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The store.
    pub store: TableStore,
    /// The file did not exist: this is the dataflow's first run on this data directory.
    pub created: bool,
    /// The stored rows for each local worker (index = global worker index − the first
    /// local one).
    pub rows: Vec<Vec<(u16, String, RowState)>>,
    /// Rows stored (all workers), tombstones included.
    pub row_count: u64,
}

/// The store's path for a collection.
pub fn path(data_dir: &Path, collection: &str) -> PathBuf {
    data_dir.join("state").join(format!("{collection}.tables.redb"))
}

impl TableStore {
    /// Open (create) the store and load its rows, split among this process's workers
    /// (`workers` local workers of `peers` in all, the first being `first_worker`).
    pub fn open(
        data_dir: &Path,
        collection: &str,
        processes: usize,
        first_worker: usize,
        workers: usize,
        peers: usize,
    ) -> Result<Opened, String> {
        let path = path(data_dir, collection);
        let shown = path.display().to_string();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let created = !path.exists();
        let db = Database::create(&path).map_err(|e| format!("{shown}: {e}"))?;
        let mut store = TableStore { db, path };
        let err = |e: &dyn std::fmt::Display| format!("{shown}: {e}");
        // The layout: refuse a cluster started with another number of processes.
        {
            let txn = store.db.begin_write().map_err(|e| err(&e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
                let stored = meta.get("processes").map_err(|e| err(&e))?.map(|v| v.value());
                match stored {
                    Some(n) if n as usize != processes && (n > 1 || processes > 1) => {
                        return Err(format!(
                            "{shown} holds the table rows of a cluster of {n} process(es); this run has {processes}. \
                             Start the same number of processes, or rebuild: delete the collection and this \
                             state, and read the topics from the beginning"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        meta.insert("processes", processes as u64).map_err(|e| err(&e))?;
                    }
                }
                txn.open_table(ROWS).map_err(|e| err(&e))?;
            }
            txn.commit().map_err(|e| err(&e))?;
        }
        let mut rows: Vec<Vec<(u16, String, RowState)>> = (0..workers).map(|_| Vec::new()).collect();
        let mut row_count = 0u64;
        {
            let txn = store.db.begin_read().map_err(|e| err(&e))?;
            let table = txn.open_table(ROWS).map_err(|e| err(&e))?;
            for entry in table.iter().map_err(|e| err(&e))? {
                let (k, v) = entry.map_err(|e| err(&e))?;
                let (t, key) = decode_key(k.value()).ok_or_else(|| format!("{shown}: a malformed row key"))?;
                let state = decode_row(v.value()).ok_or_else(|| format!("{shown}: a malformed row of `{key}`"))?;
                row_count += 1;
                let owner = (row_route(t, &key) % peers.max(1) as u64) as usize;
                if let Some(local) = owner.checked_sub(first_worker).filter(|l| *l < workers) {
                    rows[local].push((t, key, state));
                }
            }
        }
        // Many small transactions (one per time and worker) leave free pages behind: give
        // them back at each start, while nothing else uses the file.
        let before = store.file_bytes();
        match store.db.compact() {
            Ok(_) => tracing::debug!(before, after = store.file_bytes(), "table state compacted"),
            Err(e) => tracing::warn!(error = %e, "table state not compacted"),
        }
        Ok(Opened { store, created, rows, row_count })
    }

    /// Rows stored, tombstones included.
    pub fn len(&self) -> Result<u64, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(ROWS).map_err(|e| e.to_string())?;
        table.len().map_err(|e| e.to_string())
    }

    /// Whether no row is stored.
    pub fn is_empty(&self) -> Result<bool, String> {
        Ok(self.len()? == 0)
    }

    /// The file's size in bytes.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

impl RowStore for TableStore {
    fn persist(&self, rows: &[(u16, &str, &RowState)]) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", self.path.display());
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(ROWS).map_err(|e| err(&e))?;
            let (mut k, mut v) = (Vec::new(), Vec::new());
            for (t, key, state) in rows {
                encode_key(*t, key, &mut k);
                encode_row(state, &mut v);
                table.insert(k.as_slice(), v.as_slice()).map_err(|e| err(&e))?;
            }
        }
        txn.commit().map_err(|e| err(&e))
    }
}

fn encode_key(table: u16, key: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&table.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
}

fn decode_key(b: &[u8]) -> Option<(u16, String)> {
    let t = u16::from_be_bytes([*b.first()?, *b.get(1)?]);
    Some((t, String::from_utf8(b[2..].to_vec()).ok()?))
}

fn encode_row(row: &RowState, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&row.version.to_le_bytes());
    match &row.cells {
        None => out.push(0),
        Some(cells) => {
            out.push(1);
            for c in cells {
                out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                out.extend_from_slice(c.as_bytes());
            }
        }
    }
}

fn decode_row(b: &[u8]) -> Option<RowState> {
    let version = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    match *b.get(8)? {
        0 => Some(RowState { version, cells: None }),
        1 => {
            let mut cells = Vec::new();
            let mut rest = &b[9..];
            while !rest.is_empty() {
                let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                cells.push(String::from_utf8(rest.get(4..4 + len)?.to_vec()).ok()?);
                rest = &rest[4 + len..];
            }
            Some(RowState { version, cells: Some(cells) })
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(version: u64, cells: Option<&[&str]>) -> RowState {
        RowState { version, cells: cells.map(|c| c.iter().map(|s| s.to_string()).collect()) }
    }

    #[test]
    fn rows_survive_reopening_split_among_workers() {
        let dir = tempfile::tempdir().unwrap();
        let a = row(7, Some(&["1", "\"Ada\"", ""]));
        let gone = row(9, None);
        {
            let o = TableStore::open(dir.path(), "c", 1, 0, 2, 2).unwrap();
            assert!(o.created);
            assert_eq!(o.row_count, 0);
            o.store.persist(&[(0, "1", &a), (1, "k/2", &gone)]).unwrap();
            // A later state of the same row replaces it.
            let a2 = row(8, Some(&["1", "\"Ada L.\"", "x"]));
            o.store.persist(&[(0, "1", &a2)]).unwrap();
        }
        let o = TableStore::open(dir.path(), "c", 1, 0, 2, 2).unwrap();
        assert!(!o.created);
        assert_eq!(o.row_count, 2);
        let mut all: Vec<_> = o.rows.iter().flatten().cloned().collect();
        all.sort_by(|x, y| (x.0, &x.1).cmp(&(y.0, &y.1)));
        assert_eq!(all, vec![(0, "1".into(), row(8, Some(&["1", "\"Ada L.\"", "x"]))), (1, "k/2".into(), gone)]);
        // Each row went to the worker that owns it.
        for (w, rows) in o.rows.iter().enumerate() {
            for (t, k, _) in rows {
                assert_eq!(row_route(*t, k) % 2, w as u64);
            }
        }
        drop(o);
        // Worker 1 of a 2-process cluster of 1 worker each: refused (the file is a single process's).
        let err = TableStore::open(dir.path(), "c", 2, 1, 1, 2).unwrap_err();
        assert!(err.contains("cluster of 1 process"), "{err}");
    }

    #[test]
    fn a_malformed_row_is_an_error_not_a_panic() {
        assert!(decode_row(&[1, 2]).is_none());
        assert!(decode_row(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 9, 0, 0, 0, b'x']).is_none());
        assert!(decode_key(&[0]).is_none());
    }
}
