//! The emulator's state under `--data-dir`: the collections (one qdrant-edge shard each in
//! `collections/<name>/`) and the alias map (`aliases.json`). Owns name resolution
//! (a name is an alias or a collection, resolved per request), creating and deleting
//! collections crash-safely (built in `.staging/`, removed via `.deleted/`), atomic alias
//! updates, and the per-collection lock that applies requests one at a time, in arrival order.
//!
//! Locking: the registry lock (collections + aliases) is only held briefly to resolve a name,
//! or for a collection/alias change; a request on a collection then waits on that
//! collection's own lock (a fair, FIFO `RwLock`: writes exclusive, reads shared) and runs the
//! engine call on a blocking thread. No code path takes the registry lock while holding a
//! collection lock.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::RwLock;
use tracing::{info, warn};

use crate::collection::{Collection, CollectionSpec};
use crate::error::EmulatorError;

const COLLECTIONS_DIR: &str = "collections";
const STAGING_DIR: &str = ".staging";
const DELETED_DIR: &str = ".deleted";
const ALIASES_FILE: &str = "aliases.json";
const LOCK_FILE: &str = "emulator.lock";

/// One change of an `update_aliases` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasAction {
    /// Point `alias` at `collection` (re-pointing it if it exists, as Qdrant does).
    Create {
        /// The collection (not an alias) the alias names.
        collection: String,
        /// The alias.
        alias: String,
    },
    /// Remove `alias` (nothing to do if it does not exist, as in Qdrant).
    Delete {
        /// The alias.
        alias: String,
    },
    /// Rename the existing alias `old` to `new`.
    Rename {
        /// The alias to rename.
        old: String,
        /// Its new name.
        new: String,
    },
}

/// A collection as the registry knows it: its name, its vector shape and its lock.
pub struct CollectionHandle {
    name: String,
    dimension: usize,
    /// `None` once the collection has been deleted (requests already waiting then fail).
    state: Arc<RwLock<Option<Collection>>>,
    /// When the collection was last written, if it was written since its last optimisation
    /// (for the idle index build).
    last_write: Mutex<Option<Instant>>,
    /// Whether an index build runs on the collection (its status is then yellow, as a
    /// Qdrant server's is while its optimisers run).
    building: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for CollectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectionHandle").field("name", &self.name).field("dimension", &self.dimension).finish()
    }
}

fn worker_failed(e: tokio::task::JoinError) -> EmulatorError {
    EmulatorError::Internal(format!("the engine call failed: {e}"))
}

impl CollectionHandle {
    fn new(name: String, collection: Collection) -> Result<Self, EmulatorError> {
        let (dimension, _) = collection.vector_params()?;
        Ok(Self {
            name,
            dimension,
            state: Arc::new(RwLock::new(Some(collection))),
            last_write: Mutex::new(None),
            building: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether an index build runs on the collection now.
    pub fn building(&self) -> bool {
        self.building.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimension of the collection's vector.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Run a read on the collection (concurrently with other reads, after earlier writes).
    pub async fn read<T, F>(&self, f: F) -> Result<T, EmulatorError>
    where
        T: Send + 'static,
        F: FnOnce(&Collection) -> Result<T, EmulatorError> + Send + 'static,
    {
        let guard = self.state.clone().read_owned().await;
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || match guard.as_ref() {
            Some(c) => f(c),
            None => Err(EmulatorError::CollectionNotFound(name)),
        })
        .await
        .map_err(worker_failed)?
    }

    /// Run a write on the collection, alone, after every earlier request on it.
    pub async fn write<T, F>(&self, f: F) -> Result<T, EmulatorError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Collection) -> Result<T, EmulatorError> + Send + 'static,
    {
        let mut guard = self.state.clone().write_owned().await;
        let name = self.name.clone();
        let result = tokio::task::spawn_blocking(move || match guard.as_mut() {
            Some(c) => f(c),
            None => Err(EmulatorError::CollectionNotFound(name)),
        })
        .await
        .map_err(worker_failed)?;
        *self.last_write.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        result
    }

    /// If the collection was written and then left without writes for `idle`, build its indexes
    /// — without its lock: requests, writes included, go on during the build, as on a Qdrant
    /// server. Returns `None` if it was not due, else whether the engine optimised anything.
    pub async fn optimize_if_idle(&self, idle: Duration) -> Result<Option<bool>, EmulatorError> {
        let is_idle = |d: &Option<Instant>| d.is_some_and(|since| since.elapsed() >= idle);
        if !is_idle(&self.last_write.lock().unwrap_or_else(PoisonError::into_inner)) {
            return Ok(None);
        }
        let shard = {
            let guard = self.state.read().await;
            let mut last_write = self.last_write.lock().unwrap_or_else(PoisonError::into_inner);
            if !is_idle(&last_write) {
                return Ok(None);
            }
            *last_write = None;
            match guard.as_ref() {
                Some(c) => c.shard_for_build(),
                None => return Ok(Some(false)),
            }
        };
        self.building.store(true, std::sync::atomic::Ordering::Relaxed);
        let optimized = tokio::task::spawn_blocking(move || crate::collection::optimize_shard(&shard)).await;
        self.building.store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(optimized.map_err(worker_failed)??))
    }
}

struct Registry {
    collections: BTreeMap<String, Arc<CollectionHandle>>,
    aliases: BTreeMap<String, String>,
}

/// All collections and aliases of one data directory.
pub struct Store {
    data_dir: PathBuf,
    registry: RwLock<Registry>,
    /// Exclusive lock on the data directory: one emulator per directory.
    _dir_lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("data_dir", &self.data_dir).finish()
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> EmulatorError {
    EmulatorError::Internal(format!("{what} {}: {e}", path.display()))
}

/// Refuse collection names that are not safe as a directory name (Qdrant refuses the same
/// characters).
fn validate_collection_name(name: &str) -> Result<(), EmulatorError> {
    const INVALID: &[char] = &['<', '>', ':', '"', '/', '\\', '|', '?', '*', '\0'];
    let problem = if name.is_empty() {
        Some("collection name must not be empty".to_string())
    } else if name.len() > 255 {
        Some("collection name must be at most 255 bytes long".to_string())
    } else if name == "." || name == ".." {
        Some(format!("collection name cannot be \"{name}\""))
    } else {
        name.chars()
            .find(|c| INVALID.contains(c) || c.is_control())
            .map(|c| format!("collection name cannot contain {c:?} char"))
    };
    match problem {
        Some(p) => Err(EmulatorError::BadInput(format!("Validation error in body: [collection_name: {p}]"))),
        None => Ok(()),
    }
}

/// Write the alias map: temp file, fsync, rename over the old map, fsync the directory.
fn write_aliases(data_dir: &Path, aliases: &BTreeMap<String, String>) -> Result<(), EmulatorError> {
    let path = data_dir.join(ALIASES_FILE);
    let tmp = data_dir.join(format!("{ALIASES_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(aliases).map_err(EmulatorError::internal)?;
    let mut file = File::create(&tmp).map_err(|e| io_error("cannot create", &tmp, e))?;
    file.write_all(&json).and_then(|()| file.sync_all()).map_err(|e| io_error("cannot write", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_error("cannot replace", &path, e))?;
    sync_dir(data_dir)
}

fn sync_dir(dir: &Path) -> Result<(), EmulatorError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error("cannot sync", dir, e))
}

fn read_aliases(data_dir: &Path) -> Result<BTreeMap<String, String>, EmulatorError> {
    let path = data_dir.join(ALIASES_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| EmulatorError::Internal(format!("cannot parse {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io_error("cannot read", &path, e)),
    }
}

/// Move `dir` out of the way into `.deleted/` and remove it.
fn remove_collection_dir(data_dir: &Path, dir: &Path) -> Result<(), EmulatorError> {
    let deleted = data_dir.join(DELETED_DIR);
    fs::create_dir_all(&deleted).map_err(|e| io_error("cannot create", &deleted, e))?;
    let grave = deleted.join(uuid::Uuid::new_v4().to_string());
    fs::rename(dir, &grave).map_err(|e| io_error("cannot move", dir, e))?;
    sync_dir(&data_dir.join(COLLECTIONS_DIR))?;
    fs::remove_dir_all(&grave).map_err(|e| io_error("cannot remove", &grave, e))
}

fn create_collection_dir(data_dir: &Path, name: &str, spec: &CollectionSpec) -> Result<Collection, EmulatorError> {
    let staging = data_dir.join(STAGING_DIR).join(name);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| io_error("cannot remove", &staging, e))?;
    }
    fs::create_dir_all(&staging).map_err(|e| io_error("cannot create", &staging, e))?;
    // Built and closed in the staging directory, then moved in whole: a crash never leaves a
    // half-created collection under `collections/`.
    Collection::create(&staging, spec)?.close()?;
    let target = data_dir.join(COLLECTIONS_DIR).join(name);
    fs::rename(&staging, &target).map_err(|e| io_error("cannot move into place", &target, e))?;
    sync_dir(&data_dir.join(COLLECTIONS_DIR))?;
    Collection::load(&target)
}

impl Store {
    /// Open (or initialise) the data directory and load every collection in it. Blocking.
    pub fn open(data_dir: &Path) -> Result<Self, EmulatorError> {
        fs::create_dir_all(data_dir).map_err(|e| io_error("cannot create", data_dir, e))?;
        let lock_path = data_dir.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error("cannot open", &lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(EmulatorError::Internal(format!(
                "{} is in use by another emulator (stop it first)",
                data_dir.display()
            )));
        }
        for leftover in [STAGING_DIR, DELETED_DIR] {
            let dir = data_dir.join(leftover);
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(|e| io_error("cannot remove", &dir, e))?;
            }
        }
        let collections_dir = data_dir.join(COLLECTIONS_DIR);
        fs::create_dir_all(&collections_dir).map_err(|e| io_error("cannot create", &collections_dir, e))?;

        let mut collections = BTreeMap::new();
        let entries = fs::read_dir(&collections_dir).map_err(|e| io_error("cannot list", &collections_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list", &collections_dir, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                warn!(path = %path.display(), "skipping a collection directory whose name is not UTF-8");
                continue;
            };
            if !path.is_dir() {
                continue;
            }
            let handle = CollectionHandle::new(name.clone(), Collection::load(&path)?)?;
            info!(collection = %name, dimension = handle.dimension, "loaded collection");
            collections.insert(name, Arc::new(handle));
        }

        let mut aliases = read_aliases(data_dir)?;
        let before = aliases.len();
        aliases.retain(|alias, collection| {
            let keep = collections.contains_key(collection);
            if !keep {
                warn!(%alias, %collection, "dropping an alias of a collection that does not exist");
            }
            keep
        });
        if aliases.len() != before {
            write_aliases(data_dir, &aliases)?;
        }
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            registry: RwLock::new(Registry { collections, aliases }),
            _dir_lock: lock,
        })
    }

    /// The collection a name (an alias or a collection) stands for now.
    pub async fn resolve(&self, name: &str) -> Result<Arc<CollectionHandle>, EmulatorError> {
        let registry = self.registry.read().await;
        let collection = registry.aliases.get(name).map_or(name, String::as_str);
        registry
            .collections
            .get(collection)
            .cloned()
            .ok_or_else(|| EmulatorError::CollectionNotFound(collection.into()))
    }

    /// Every collection (for the background optimiser).
    pub async fn handles(&self) -> Vec<Arc<CollectionHandle>> {
        self.registry.read().await.collections.values().cloned().collect()
    }

    /// Names of all collections.
    pub async fn collection_names(&self) -> Vec<String> {
        self.registry.read().await.collections.keys().cloned().collect()
    }

    /// Create a collection; fails if a collection or an alias has that name.
    pub async fn create_collection(&self, name: &str, spec: CollectionSpec) -> Result<(), EmulatorError> {
        validate_collection_name(name)?;
        let mut registry = self.registry.write().await;
        if registry.collections.contains_key(name) {
            return Err(EmulatorError::CollectionExists(name.into()));
        }
        if registry.aliases.contains_key(name) {
            return Err(EmulatorError::AliasNameTaken(name.into()));
        }
        let data_dir = self.data_dir.clone();
        let dir_name = name.to_string();
        let logged = spec.clone();
        let collection = tokio::task::spawn_blocking(move || create_collection_dir(&data_dir, &dir_name, &spec))
            .await
            .map_err(worker_failed)??;
        registry.collections.insert(name.into(), Arc::new(CollectionHandle::new(name.into(), collection)?));
        info!(
            collection = %name,
            dimension = logged.dimension,
            distance = ?logged.distance,
            "created collection"
        );
        Ok(())
    }

    /// Delete a collection and the aliases pointing at it. Like Qdrant, the name must be a
    /// collection (not an alias); returns `false` if there is no such collection.
    pub async fn delete_collection(&self, name: &str) -> Result<bool, EmulatorError> {
        let mut registry = self.registry.write().await;
        let Some(handle) = registry.collections.get(name).cloned() else {
            return Ok(false);
        };
        let mut aliases = registry.aliases.clone();
        aliases.retain(|_, collection| collection != name);
        if aliases != registry.aliases {
            let data_dir = self.data_dir.clone();
            let to_write = aliases.clone();
            tokio::task::spawn_blocking(move || write_aliases(&data_dir, &to_write)).await.map_err(worker_failed)??;
            for (alias, _) in registry.aliases.iter().filter(|(_, c)| c.as_str() == name) {
                info!(%alias, collection = %name, "deleted alias (its collection is deleted)");
            }
            registry.aliases = aliases;
        }
        registry.collections.remove(name);
        // Wait for the requests already admitted to this collection, then close it.
        let mut state = handle.state.clone().write_owned().await;
        let collection = state.take();
        let data_dir = self.data_dir.clone();
        let dir = data_dir.join(COLLECTIONS_DIR).join(name);
        tokio::task::spawn_blocking(move || {
            if let Some(c) = collection {
                if let Err(e) = c.close() {
                    warn!(error = %e, "closing a deleted collection failed");
                }
            }
            remove_collection_dir(&data_dir, &dir)
        })
        .await
        .map_err(worker_failed)??;
        info!(collection = %name, "deleted collection");
        Ok(true)
    }

    /// Apply alias changes atomically: every action is checked, in order, against a copy of
    /// the alias map; only if all succeed is the new map persisted (once) and used.
    pub async fn update_aliases(&self, actions: Vec<AliasAction>) -> Result<(), EmulatorError> {
        let mut registry = self.registry.write().await;
        let mut aliases = registry.aliases.clone();
        for action in &actions {
            match action {
                AliasAction::Create { collection, alias } => {
                    if !registry.collections.contains_key(collection) {
                        return Err(EmulatorError::CollectionNotFound(collection.clone()));
                    }
                    if registry.collections.contains_key(alias) {
                        return Err(EmulatorError::CollectionExists(alias.clone()));
                    }
                    aliases.insert(alias.clone(), collection.clone());
                }
                AliasAction::Delete { alias } => {
                    aliases.remove(alias);
                }
                AliasAction::Rename { old, new } => {
                    let Some(collection) = aliases.remove(old) else {
                        return Err(EmulatorError::NotFound(format!("Alias {old} does not exists!")));
                    };
                    if registry.collections.contains_key(new) {
                        return Err(EmulatorError::CollectionExists(new.clone()));
                    }
                    aliases.insert(new.clone(), collection);
                }
            }
        }
        if aliases != registry.aliases {
            let data_dir = self.data_dir.clone();
            let to_write = aliases.clone();
            tokio::task::spawn_blocking(move || write_aliases(&data_dir, &to_write)).await.map_err(worker_failed)??;
        }
        for action in &actions {
            match action {
                AliasAction::Create { collection, alias } => info!(%alias, %collection, "created alias"),
                AliasAction::Delete { alias } => match registry.aliases.get(alias) {
                    Some(collection) => info!(%alias, %collection, "deleted alias"),
                    None => info!(%alias, "deleted alias (it did not exist)"),
                },
                AliasAction::Rename { old, new } => info!(%old, %new, "renamed alias"),
            }
        }
        registry.aliases = aliases;
        Ok(())
    }

    /// All aliases, as (alias, collection) pairs.
    pub async fn aliases(&self) -> Vec<(String, String)> {
        self.registry.read().await.aliases.iter().map(|(a, c)| (a.clone(), c.clone())).collect()
    }

    /// The aliases of one collection (by its name, not an alias; like Qdrant, unknown names
    /// simply have none).
    pub async fn aliases_of(&self, collection: &str) -> Vec<String> {
        let registry = self.registry.read().await;
        registry.aliases.iter().filter(|(_, c)| c.as_str() == collection).map(|(a, _)| a.clone()).collect()
    }

    /// Close every collection (after serving stopped): wait for running requests and an
    /// index build, flush, release the engine.
    pub async fn close(&self) {
        let handles: Vec<_> = std::mem::take(&mut self.registry.write().await.collections).into_values().collect();
        for handle in handles {
            let mut state = handle.state.clone().write_owned().await;
            if let Some(collection) = state.take() {
                let name = handle.name.clone();
                match tokio::task::spawn_blocking(move || collection.close()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(collection = %name, error = %e, "closing the collection failed"),
                    Err(e) => warn!(collection = %name, error = %e, "closing the collection failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn collection_names_that_are_not_safe_paths_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", "a\nb"] {
            assert!(validate_collection_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_collection_name("docs_v2-2024.1").is_ok());
    }

    #[test]
    fn the_alias_map_is_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let map = BTreeMap::from([("live".to_string(), "docs_v2".to_string())]);
        write_aliases(dir.path(), &map).unwrap();
        assert_eq!(read_aliases(dir.path()).unwrap(), map);
        assert!(!dir.path().join("aliases.json.tmp").exists());
    }
}
