//! `freshet reconcile`: compare a collection with the documents freshet's state says it
//! holds and remove every point that should not exist — points written behind freshet's
//! back (missing keys, or a copy under an id freshet would not give it), points of another
//! model, of deleted documents, or beyond a gap in a document's chunks — reporting what
//! was found, by reason. Legitimate points are not touched.
//!
//! Two guards keep a stale configuration from turning into a mass deletion: a collection
//! whose model is not the dataflow's (after `freshet reindex`, with the dataflow file still
//! naming the previous embedder) is refused as a configuration error, like `run` refuses
//! it; and more points to remove than the `[safety]` limit stop the run before anything is
//! deleted unless it is forced ([`super::safety`]).
//!
//! Run it while the pipeline is stopped. The embedded engine enforces that (one process
//! per collection); with a Qdrant server, a pipeline writing at the same time could have
//! a document half-written when the collection is read.

use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;

use super::bootstrap::{self, Bootstrap, OrphanReason};
use super::safety::BulkDelete;
use super::store::{InflightLog, TombstoneLog};
use super::{io, open_catalog, open_embedder, RuntimeError};
use crate::config::{DataflowSpec, RuntimeConfig};
use crate::dataflow::state::DocShape;
use crate::model::collection_namespace;

/// What `reconcile` found and did.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    /// The alias (the dataflow's collection name).
    pub name: String,
    /// The collection behind it.
    pub collection: String,
    /// The dataflow's model: the collection's points must be of it.
    pub model: String,
    /// Points read.
    pub points: usize,
    /// Live documents they form.
    pub documents: usize,
    /// Points that should not exist, by reason.
    pub found: BTreeMap<&'static str, usize>,
    /// Up to 5 point ids per reason.
    pub examples: BTreeMap<&'static str, Vec<Uuid>>,
    /// The most points a run removes without `--force` (`[safety]`).
    pub limit: usize,
    /// What a run does (with `--dry-run`: what a run with the same options would do):
    /// `nothing`, `remove` (the points of `found`), or `stop` (more than `limit`, without
    /// `--force`: nothing is removed).
    pub action: &'static str,
    /// Why it stops, when `action` is `stop`.
    pub stopped: Option<String>,
    /// Points removed (0 with `--dry-run` or when stopped).
    pub removed: usize,
    /// Nothing was changed.
    pub dry_run: bool,
    /// `--force` (or `[safety] force_bulk_delete`): no limit.
    pub forced: bool,
}

/// Reconcile the dataflow's collection (see the module docs). `force` lifts the
/// `[safety]` limit on the points removed; a collection of another model than the
/// dataflow's is refused whatever `force` says.
pub fn reconcile(
    spec: &DataflowSpec,
    config: &RuntimeConfig,
    dry_run: bool,
    force: bool,
) -> Result<ReconcileReport, RuntimeError> {
    let embedder = open_embedder(&spec.embedder)?;
    let model = embedder.model_id().to_string();
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
        &model,
        &collection_namespace(&name),
        &tombstones,
        &suspects,
        1,
    )?;
    check_model(&name, &physical, &model, &boot)?;
    let mut remove: Vec<(Uuid, OrphanReason)> = boot.orphans.clone();
    remove.extend(boot.other_model.iter().map(|(id, _)| (*id, OrphanReason::OtherModel)));
    let delete = BulkDelete::new(remove, boot.points, &config.safety);
    let forced = force || config.safety.force_bulk_delete;
    let (action, stopped) = if delete.is_empty() {
        ("nothing", None)
    } else if delete.over_limit() && !forced {
        let why = delete.refusal(
            &format!("reconcile of `{name}` (collection `{physical}`)"),
            "Check the report (is the dataflow file the one this collection was built with?).",
        );
        ("stop", Some(why))
    } else {
        ("remove", None)
    };
    for (reason, n) in &delete.found {
        tracing::info!(reason, points = n, dry_run, action, "points that should not exist");
    }
    let removed = if action == "remove" && !dry_run { delete.apply(sink.as_ref())? } else { 0 };
    Ok(ReconcileReport {
        name,
        collection: physical,
        model,
        points: boot.points,
        documents: boot.live_docs,
        found: delete.found.clone(),
        examples: delete.examples.clone(),
        limit: delete.limit,
        action,
        stopped,
        removed,
        dry_run,
        forced,
    })
}

/// A collection of another model than the dataflow's is a configuration error, not a
/// collection of strays: after `freshet reindex` the alias points at the new model's
/// collection while the dataflow file may still name the old embedder, and every point
/// would look like one to delete. Refused when the collection's name says another model,
/// or when fewer of its points are of the dataflow's model than of others.
fn check_model(name: &str, physical: &str, model: &str, boot: &Bootstrap) -> Result<(), RuntimeError> {
    let mut others: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, m) in &boot.other_model {
        *others.entry(m.as_str()).or_default() += 1;
    }
    let unknown =
        boot.orphans.iter().filter(|(_, r)| matches!(r, OrphanReason::MissingKeys | OrphanReason::WrongId)).count();
    let own = boot.points.saturating_sub(boot.other_model.len() + unknown);
    let by_name = crate::sink::built_for(physical, model);
    if by_name && boot.other_model.len() <= own {
        return Ok(());
    }
    let theirs = match others.iter().max_by_key(|(_, n)| **n) {
        Some((m, n)) => format!("model `{m}` ({n} of its {} points)", boot.points),
        None => format!(
            "model tag `{}` (its name; {} points, none of model `{model}`)",
            crate::sink::tag_of(physical).unwrap_or("?"),
            boot.points
        ),
    };
    Err(RuntimeError::Config(format!(
        "`{name}` is collection `{physical}`, of {theirs}, but the dataflow embeds with `{model}`: the collection's \
         model is not the dataflow's, so reconcile would take every point for one to delete; nothing was deleted. \
         If the collection was reindexed (`freshet reindex`), put its embedder in the dataflow file (the \
         `[embedder]` given to `reindex --embedder`) and run reconcile again; to move the collection to the \
         dataflow's model, run `freshet reindex --embedder` with it."
    )))
}
