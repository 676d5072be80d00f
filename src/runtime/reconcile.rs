//! `freshet reconcile`: compare a collection with the documents freshet's state says it
//! holds and remove every point that should not exist — points written behind freshet's
//! back (missing keys, or a copy under an id freshet would not give it), points of another
//! model, of deleted documents, or beyond a gap in a document's chunks — reporting what
//! was found, by reason. Legitimate points are not touched.
//!
//! Run it while the pipeline is stopped. The embedded engine enforces that (one process
//! per collection); with a Qdrant server, a pipeline writing at the same time could have
//! a document half-written when the collection is read.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use super::bootstrap::{self, OrphanReason};
use super::store::{InflightLog, TombstoneLog};
use super::{io, open_catalog, open_embedder, RuntimeError};
use crate::config::{DataflowSpec, RuntimeConfig};
use crate::dataflow::state::DocShape;
use crate::model::collection_namespace;
use crate::sink::SinkOp;

/// What `reconcile` found and did.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    /// The alias (the dataflow's collection name).
    pub name: String,
    /// The collection behind it.
    pub collection: String,
    /// Points read.
    pub points: usize,
    /// Live documents they form.
    pub documents: usize,
    /// Points that should not exist, by reason.
    pub found: BTreeMap<&'static str, usize>,
    /// Up to 5 point ids per reason.
    pub examples: BTreeMap<&'static str, Vec<Uuid>>,
    /// Points removed (0 with `--dry-run`).
    pub removed: usize,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// Reconcile the dataflow's collection (see the module docs).
pub fn reconcile(spec: &DataflowSpec, config: &RuntimeConfig, dry_run: bool) -> Result<ReconcileReport, RuntimeError> {
    let embedder = open_embedder(&spec.embedder)?;
    let catalog = open_catalog(spec, config)?;
    let name = spec.sink.collection.clone();
    let Some(physical) = catalog.resolve(&name)? else {
        return Err(RuntimeError::Config(format!("no collection or alias `{name}` in the {}", catalog.describe())));
    };
    let sink = catalog.open(&physical)?;
    let (_log, tombstones) =
        TombstoneLog::open(&config.data_dir, &physical).map_err(io("opening the tombstone log"))?;
    // The in-flight log is left as it is: the next run resets the torn documents.
    let (_inflight, suspects) =
        InflightLog::open(&config.data_dir, &physical).map_err(io("opening the in-flight write log"))?;
    let boot = bootstrap::rebuild(
        sink.as_ref(),
        &DocShape::new(spec),
        embedder.model_id(),
        &collection_namespace(&name),
        &tombstones,
        &suspects,
        1,
    )?;
    let mut remove: Vec<(Uuid, OrphanReason)> = boot.orphans.clone();
    remove.extend(boot.other_model.iter().map(|(id, _)| (*id, OrphanReason::OtherModel)));
    let mut found: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut examples: BTreeMap<&'static str, Vec<Uuid>> = BTreeMap::new();
    for (id, reason) in &remove {
        *found.entry(reason.as_str()).or_default() += 1;
        let e = examples.entry(reason.as_str()).or_default();
        if e.len() < 5 {
            e.push(*id);
        }
    }
    let mut removed = 0;
    if !dry_run {
        for page in remove.chunks(1000) {
            sink.apply(vec![SinkOp::Delete(page.iter().map(|(id, _)| *id).collect())])?;
            removed += page.len();
        }
    }
    for (reason, n) in &found {
        tracing::info!(reason, points = n, dry_run, "points that should not exist");
    }
    Ok(ReconcileReport {
        name,
        collection: physical,
        points: boot.points,
        documents: boot.live_docs,
        found,
        examples,
        removed,
        dry_run,
    })
}
