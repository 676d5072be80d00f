//! The persistent, content-addressed embedding cache: vectors keyed by (model id, content
//! hash) in one [redb](https://docs.rs/redb) file, so restarts, replays (also `--into` a
//! new collection), re-chunking that keeps some chunk texts, and `reindex` with an
//! unchanged model pay nothing for text they have embedded before. A vector is immutable
//! for its key, so the file only grows; losing it costs re-embedding, never correctness.
//!
//! Each write is one transaction (a batch of vectors), committed durably.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTableMetadata, TableDefinition};

use crate::model::ContentHash;

const VECTORS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("vectors");

/// See module docs.
pub struct DiskCache {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache").field("path", &self.path).finish()
    }
}

/// A cache failure (the caller logs it and goes on without the cache).
#[derive(Debug, thiserror::Error)]
#[error("embedding cache {path}: {message}")]
pub struct CacheError {
    path: PathBuf,
    message: String,
}

fn key(model: &str, hash: &ContentHash) -> Vec<u8> {
    let mut k = Vec::with_capacity(model.len() + 1 + 32);
    k.extend_from_slice(model.as_bytes());
    k.push(0);
    k.extend_from_slice(&hash.0);
    k
}

impl DiskCache {
    /// Open (create) the cache file.
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let db = Database::create(path).map_err(|e| CacheError { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(Self { db, path: path.to_path_buf() })
    }

    fn err(&self, e: impl std::fmt::Display) -> CacheError {
        CacheError { path: self.path.clone(), message: e.to_string() }
    }

    /// The vectors of `hashes` the cache holds for `model`.
    pub fn get_many(&self, model: &str, hashes: &[ContentHash]) -> Result<HashMap<ContentHash, Vec<f32>>, CacheError> {
        let mut out = HashMap::new();
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = match txn.open_table(VECTORS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
            Err(e) => return Err(self.err(e)),
        };
        for h in hashes {
            if let Some(v) = table.get(key(model, h).as_slice()).map_err(|e| self.err(e))? {
                let bytes = v.value();
                out.insert(*h, bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
            }
        }
        Ok(out)
    }

    /// Remember vectors of `model` (one durable transaction).
    pub fn put_many(&self, model: &str, vectors: &[(ContentHash, &[f32])]) -> Result<(), CacheError> {
        if vectors.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(VECTORS).map_err(|e| self.err(e))?;
            let mut bytes = Vec::new();
            for (h, v) in vectors {
                bytes.clear();
                bytes.extend(v.iter().flat_map(|f| f.to_le_bytes()));
                table.insert(key(model, h).as_slice(), bytes.as_slice()).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Vectors held (all models).
    pub fn len(&self) -> Result<u64, CacheError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        match txn.open_table(VECTORS) {
            Ok(t) => t.len().map_err(|e| self.err(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> Result<bool, CacheError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn vectors_survive_reopening_and_models_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let (a, b) = (ContentHash::of("alpha"), ContentHash::of("beta"));
        {
            let c = DiskCache::open(&path).unwrap();
            assert!(c.get_many("m1", &[a]).unwrap().is_empty());
            c.put_many("m1", &[(a, &[1.0, -2.5][..]), (b, &[0.25, 4.0][..])]).unwrap();
            c.put_many("m2", &[(a, &[9.0, 9.0][..])]).unwrap();
        }
        let c = DiskCache::open(&path).unwrap();
        let got = c.get_many("m1", &[a, b, ContentHash::of("gamma")]).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[&a], vec![1.0, -2.5]);
        assert_eq!(c.get_many("m2", &[a]).unwrap()[&a], vec![9.0, 9.0]);
        assert!(c.get_many("m2", &[b]).unwrap().is_empty());
        assert_eq!(c.len().unwrap(), 3);
    }
}
