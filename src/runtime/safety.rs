//! Guards on bulk deletes. A stale or mismatched configuration (another pipeline's
//! collection, a renamed `sink.collection`, a data directory of another pipeline, a
//! dataflow still naming the model before a reindex) makes every point look like one that
//! should not exist. Whatever deletes in bulk — `freshet reconcile`, the removal of orphans
//! at start-up — first builds a [`BulkDelete`], which counts the points by reason, and
//! stops before deleting anything when there are more than the `[safety]` limit allows,
//! unless forced.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::bootstrap::{Bootstrap, OrphanReason};
use super::RuntimeError;
use crate::config::SafetyConfig;
use crate::sink::{SinkOp, VectorSink};

/// Example ids kept per reason.
const EXAMPLES: usize = 5;

/// Points one bulk delete would remove, by reason, against the limit for the collection.
#[derive(Debug, Clone)]
pub struct BulkDelete {
    ids: Vec<Uuid>,
    /// Points of each reason.
    pub found: BTreeMap<&'static str, usize>,
    /// Up to 5 ids per reason.
    pub examples: BTreeMap<&'static str, Vec<Uuid>>,
    /// Points in the collection.
    pub points: usize,
    /// The most points removed without `--force` ([`SafetyConfig::bulk_delete_limit`]).
    pub limit: usize,
}

impl BulkDelete {
    /// The delete of `remove` from a collection of `points`.
    pub fn new(remove: impl IntoIterator<Item = (Uuid, OrphanReason)>, points: usize, safety: &SafetyConfig) -> Self {
        let mut ids = Vec::new();
        let mut found: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut examples: BTreeMap<&'static str, Vec<Uuid>> = BTreeMap::new();
        for (id, reason) in remove {
            ids.push(id);
            *found.entry(reason.as_str()).or_default() += 1;
            let e = examples.entry(reason.as_str()).or_default();
            if e.len() < EXAMPLES {
                e.push(id);
            }
        }
        Self { ids, found, examples, points, limit: safety.bulk_delete_limit(points) }
    }

    /// Points to remove.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// More points than the limit.
    pub fn over_limit(&self) -> bool {
        self.ids.len() > self.limit
    }

    /// `wrong_id: 120 (e.g. …, …), missing_keys: 3 (e.g. …)`.
    pub fn summary(&self) -> String {
        self.found
            .iter()
            .map(|(reason, n)| {
                let ex: Vec<String> =
                    self.examples.get(reason).into_iter().flatten().take(3).map(Uuid::to_string).collect();
                format!("{reason}: {n} (e.g. {})", ex.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Why a delete over the limit stops: what it is, what it would remove, the limit and
    /// how to go on. `what` names the operation (`reconcile of …`).
    pub fn refusal(&self, what: &str, hint: &str) -> String {
        format!(
            "{what} would delete {} of the collection's {} points — {} — which is more than the limit of {} \
             ([safety] max_bulk_delete_ratio of the collection, at least min_bulk_delete_points, at most \
             max_bulk_delete_points); nothing was deleted. {hint} To delete them anyway, give --force (or set \
             [safety] force_bulk_delete = true).",
            self.ids.len(),
            self.points,
            self.summary(),
            self.limit
        )
    }

    /// Delete the points, a page at a time; returns how many.
    pub fn apply(&self, sink: &dyn VectorSink) -> Result<usize, RuntimeError> {
        let mut removed = 0;
        for page in self.ids.chunks(1000) {
            sink.apply(vec![SinkOp::Delete(page.to_vec())])?;
            removed += page.len();
        }
        Ok(removed)
    }
}

/// Start-up: delete the points that cannot belong to the rebuilt documents
/// ([`Bootstrap::orphans`]) — unless they are more than `[safety]` allows and nothing
/// forces it, in which case the run refuses to start and nothing is deleted.
pub fn remove_orphans(
    sink: &dyn VectorSink,
    collection: &str,
    boot: &Bootstrap,
    safety: &SafetyConfig,
) -> Result<(), RuntimeError> {
    let orphans = BulkDelete::new(boot.orphans.iter().copied(), boot.points, safety);
    if orphans.is_empty() {
        return Ok(());
    }
    if orphans.over_limit() {
        if !safety.force_bulk_delete {
            return Err(RuntimeError::Config(orphans.refusal(
                &format!("starting on collection `{collection}`"),
                "So many points that do not fit the dataflow usually mean that the configuration does not match \
                 the collection (another pipeline's collection, a renamed `sink.collection`, the data directory \
                 of another pipeline); `freshet reconcile --dry-run` lists them.",
            )));
        }
        tracing::warn!(points = orphans.len(), limit = orphans.limit, found = %orphans.summary(), "forced: deleting more points than the safety limit");
    }
    tracing::info!(points = orphans.len(), found = %orphans.summary(), "removing points that cannot belong to the documents");
    orphans.apply(sink)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids(n: usize, reason: OrphanReason) -> Vec<(Uuid, OrphanReason)> {
        (0..n).map(|i| (Uuid::from_u128(i as u128 + 1), reason)).collect()
    }

    #[test]
    fn the_limit_groups_by_reason_and_stops_only_past_the_bound() {
        let safety = SafetyConfig::default();
        let mut remove = ids(40, OrphanReason::WrongId);
        remove.extend(ids(2, OrphanReason::MissingKeys));
        let d = BulkDelete::new(remove, 2_000, &safety);
        assert_eq!((d.len(), d.limit, d.over_limit()), (42, 20, true));
        assert_eq!(d.found, BTreeMap::from([("missing_keys", 2), ("wrong_id", 40)]));
        assert_eq!(d.examples["wrong_id"].len(), 5);
        let msg = d.refusal("reconcile of `c`", "Check it.");
        assert!(msg.contains("delete 42 of the collection's 2000 points"), "{msg}");
        assert!(msg.contains("wrong_id: 40 (e.g. "), "{msg}");
        assert!(msg.contains("limit of 20") && msg.contains("--force"), "{msg}");
        let small = BulkDelete::new(ids(20, OrphanReason::ChunkGap), 2_000, &safety);
        assert!(!small.over_limit(), "exactly the limit is allowed");
    }
}
