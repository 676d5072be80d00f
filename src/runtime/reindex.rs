//! `freshet reindex`: move a pipeline to another embedding model with no moment at which
//! readers see a missing, partial or mixed index.
//!
//! The dataflow's collection name is an alias of `<name>__<model tag>` (the *old*
//! collection). `reindex` builds `<name>__<new model tag>` beside it while the pipeline
//! keeps running on the old one:
//!
//! 1. the live pipeline runs as usual (same source, same consumer group, the current
//!    embedder) and, after each acknowledged write, marks the documents it touched;
//! 2. a mirror copies the old collection into the new one — payloads as they are with the
//!    new `model_id`, vectors reused when the new collection already holds one for the
//!    chunk's content hash (a resumed reindex), else embedded with the new model from the
//!    chunk text — first a full pass (with a progress bar), then every marked document
//!    again, read afresh from the old collection, so live changes reach the new one too;
//! 3. once the mirror has caught up, the source stops, in-flight writes drain, the last
//!    marked documents are mirrored, and the two collections are compared in full (same
//!    points, same payloads but `model_id`, every point of the new model) and a sample of
//!    vectors is embedded again and compared;
//! 4. only then the alias switches, in one atomic request; the old collection is kept or
//!    dropped as asked, and the pipeline's state log is carried over.
//!
//! With the same model (to rebuild with other `[sink]` settings: distance, HNSW, on-disk,
//! indexes) the new collection is `<name>__<model tag>--<generation>` and every vector is
//! copied from the old one; nothing is embedded but the verification sample.
//!
//! Afterwards start `freshet run` with the new embedder in the dataflow file: it resumes
//! from the committed offsets, which cover exactly what both collections hold.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use super::{io, open_catalog, open_embedder, run, MirrorHooks, RunOptions, RuntimeError};
use crate::config::{DataflowSpec, EmbedderSpec, RuntimeConfig};
use crate::embed::Embedder;
use crate::model::{keys, ContentHash, DocId, Metadata};
use crate::sink::{
    open_for_writing, versioned_name, Catalog, CollectionParams, SinkError, SinkOp, SinkPoint, StoredPoint, VectorSink,
};

/// Options of `freshet reindex`.
#[derive(Debug, Clone)]
pub struct ReindexOptions {
    /// The pipeline, with its current embedder.
    pub dataflow: DataflowSpec,
    /// Where it runs.
    pub config: RuntimeConfig,
    /// The new embedder.
    pub embedder: EmbedderSpec,
    /// Drop the old collection after the switch.
    pub drop_old: bool,
    /// Draw a progress bar on stderr.
    pub progress_bar: bool,
    /// Vectors embedded again to verify the new collection.
    pub sample: usize,
}

/// What `reindex` did.
#[derive(Debug, Clone, Serialize)]
pub struct ReindexReport {
    /// The alias.
    pub name: String,
    /// The collection it pointed at.
    pub old_collection: String,
    /// The collection it points at now.
    pub new_collection: String,
    /// Old model.
    pub old_model: String,
    /// New model.
    pub new_model: String,
    /// Points in the new collection.
    pub points: usize,
    /// Chunks embedded with the new model.
    pub chunks_embedded: u64,
    /// Vectors reused: from the old collection when the model is the same, else from the
    /// new collection (a resumed reindex).
    pub vectors_reused: u64,
    /// Documents mirrored again after a live change.
    pub live_documents_mirrored: u64,
    /// Vectors embedded again and compared.
    pub verified_vectors: usize,
    /// The alias now points at the new collection.
    pub switched: bool,
    /// The old collection was dropped.
    pub old_dropped: bool,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
}

/// Copies the old collection into the new one (see module docs).
struct Mirror {
    old: Arc<dyn VectorSink>,
    /// The model did not change: read the old vectors to reuse them.
    same_model: bool,
    new: Arc<dyn VectorSink>,
    embedder: Arc<dyn Embedder>,
    batch_texts: usize,
    dirty: Mutex<BTreeSet<String>>,
    embedded: std::sync::atomic::AtomicU64,
    reused: std::sync::atomic::AtomicU64,
    live_docs: std::sync::atomic::AtomicU64,
}

fn permanent(msg: String) -> RuntimeError {
    RuntimeError::Sink(SinkError::Permanent(msg))
}

/// Retry transient sink errors (the new collection's server may blink).
fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, SinkError>) -> Result<T, RuntimeError> {
    let mut backoff = Duration::from_millis(100);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tracing::warn!(error = %e, what, "retrying");
                std::thread::sleep(backoff.max(e.retry_after().unwrap_or_default()));
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn doc_of(p: &StoredPoint) -> Option<String> {
    p.payload.get(keys::DOC_ID).and_then(|v| v.as_str()).map(str::to_string)
}

impl Mirror {
    fn model(&self) -> &str {
        self.embedder.model_id()
    }

    /// The payload a point has in the new collection.
    fn payload_for(&self, old: &Metadata) -> Metadata {
        let mut p = old.clone();
        p.insert(keys::MODEL_ID.into(), self.model().into());
        p
    }

    /// Write `points` (read from the old collection) into the new one, skipping those
    /// already there with the same payload; with `docs`, also delete the new collection's
    /// points of those documents that the old one no longer has.
    fn sync(&self, points: Vec<StoredPoint>, docs: Option<&[String]>) -> Result<(), RuntimeError> {
        let mut doc_set: Vec<String> = points.iter().filter_map(doc_of).collect();
        if let Some(d) = docs {
            doc_set.extend(d.iter().cloned());
        }
        doc_set.sort();
        doc_set.dedup();
        let existing: HashMap<Uuid, Metadata> =
            retry("reading the new collection", || self.new.points_of_docs(&doc_set, false))?
                .into_iter()
                .map(|p| (p.id, p.payload))
                .collect();
        let wanted: Vec<(Uuid, Metadata)> = points
            .iter()
            .map(|p| (p.id, self.payload_for(&p.payload)))
            .filter(|(id, payload)| existing.get(id) != Some(payload))
            .collect();
        let keep: BTreeSet<Uuid> = points.iter().map(|p| p.id).collect();
        let deletes: Vec<Uuid> = match docs {
            Some(_) => existing.keys().filter(|id| !keep.contains(id)).copied().collect(),
            None => Vec::new(),
        };
        // Vectors: reuse what the new collection holds for the same content, embed the rest.
        let hash_of = |p: &Metadata| p.get(keys::CONTENT_HASH).and_then(|v| v.as_str()).and_then(ContentHash::from_hex);
        let hashes: Vec<ContentHash> = wanted.iter().filter_map(|(_, p)| hash_of(p)).collect();
        let mut vectors = if hashes.is_empty() {
            HashMap::new()
        } else {
            retry("reading vectors", || self.new.vectors_by_hash(self.model(), &hashes))?
        };
        // Same model (a rebuild with other collection settings): the old vectors are good.
        for p in &points {
            if p.payload.get(keys::MODEL_ID).and_then(|v| v.as_str()) == Some(self.model()) {
                if let (Some(h), Some(v)) = (hash_of(&p.payload), &p.vector) {
                    if v.len() == self.new.dimension() {
                        vectors.entry(h).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        self.reused.fetch_add(
            wanted.iter().filter(|(_, p)| hash_of(p).is_some_and(|h| vectors.contains_key(&h))).count() as u64,
            Ordering::Relaxed,
        );
        let missing: Vec<(ContentHash, String)> = {
            let mut seen = BTreeSet::new();
            wanted
                .iter()
                .filter_map(|(_, p)| {
                    let h = hash_of(p)?;
                    if vectors.contains_key(&h) || !seen.insert(h) {
                        return None;
                    }
                    Some((h, p.get(keys::TEXT).and_then(|t| t.as_str()).unwrap_or("").to_string()))
                })
                .collect()
        };
        for batch in missing.chunks(self.batch_texts.max(1)) {
            let texts: Vec<&str> = batch.iter().map(|(_, t)| t.as_str()).collect();
            let out = self.embed(&texts)?;
            for ((h, _), v) in batch.iter().zip(out) {
                vectors.insert(*h, v);
            }
            self.embedded.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        let mut upserts = Vec::with_capacity(wanted.len());
        for (id, payload) in wanted {
            let Some(v) = hash_of(&payload).and_then(|h| vectors.get(&h)) else {
                return Err(permanent(format!(
                    "point {id} of the old collection has no content hash; run `freshet reconcile`"
                )));
            };
            upserts.push(SinkPoint { id, vector: v.clone(), payload });
        }
        let mut ops = Vec::new();
        if !upserts.is_empty() {
            ops.push(SinkOp::Upsert(upserts));
        }
        if !deletes.is_empty() {
            ops.push(SinkOp::Delete(deletes));
        }
        if !ops.is_empty() {
            retry("writing the new collection", || self.new.apply(ops.clone()))?;
        }
        Ok(())
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.embedder.embed(texts) {
                Ok(v) if v.len() == texts.len() && v.iter().all(|x| x.len() == self.new.dimension()) => return Ok(v),
                Ok(v) => {
                    return Err(permanent(format!(
                        "the new embedder returned {} vectors for {} texts (or of another dimension than {})",
                        v.len(),
                        texts.len(),
                        self.new.dimension()
                    )))
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "embedding with the new model failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(RuntimeError::Embedder(e)),
            }
        }
    }

    /// Mirror up to `max` marked documents; returns how many.
    fn drain_some(&self, max: usize) -> Result<usize, RuntimeError> {
        let docs: Vec<String> = {
            let mut d = self.dirty.lock().map_err(|_| permanent("mirror lock poisoned".into()))?;
            let take: Vec<String> = d.iter().take(max).cloned().collect();
            for t in &take {
                d.remove(t);
            }
            take
        };
        if docs.is_empty() {
            return Ok(0);
        }
        let points = retry("reading the old collection", || self.old.points_of_docs(&docs, self.same_model))?;
        self.sync(points, Some(&docs))?;
        self.live_docs.fetch_add(docs.len() as u64, Ordering::Relaxed);
        Ok(docs.len())
    }

    fn pending(&self) -> usize {
        self.dirty.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Every point of a collection: id → payload without `model_id`.
    fn snapshot(sink: &dyn VectorSink) -> Result<BTreeMap<Uuid, Metadata>, RuntimeError> {
        let mut out = BTreeMap::new();
        retry("reading a collection", || {
            out.clear();
            sink.scroll(false, 1024, &mut |page| {
                for mut p in page {
                    p.payload.remove(keys::MODEL_ID);
                    out.insert(p.id, p.payload);
                }
            })
        })?;
        Ok(out)
    }

    /// Compare the two collections in full; mirror the documents that differ. Returns the
    /// number of documents that differed.
    fn compare_and_repair(&self) -> Result<usize, RuntimeError> {
        let old = Self::snapshot(self.old.as_ref())?;
        let new = Self::snapshot(self.new.as_ref())?;
        let mut docs = BTreeSet::new();
        for (id, p) in &old {
            if new.get(id) != Some(p) {
                docs.extend(p.get(keys::DOC_ID).and_then(|v| v.as_str()).map(str::to_string));
            }
        }
        let mut strays = Vec::new();
        for (id, p) in &new {
            if !old.contains_key(id) {
                match p.get(keys::DOC_ID).and_then(|v| v.as_str()) {
                    Some(d) => {
                        docs.insert(d.to_string());
                    }
                    None => strays.push(*id),
                }
            }
        }
        if !strays.is_empty() {
            retry("removing stray points", || self.new.apply(vec![SinkOp::Delete(strays.clone())]))?;
        }
        let docs: Vec<String> = docs.into_iter().collect();
        for group in docs.chunks(256) {
            let points = retry("reading the old collection", || self.old.points_of_docs(group, self.same_model))?;
            self.sync(points, Some(group))?;
        }
        Ok(docs.len() + strays.len())
    }
}

/// `<name>__<tag>` → `<name>__<tag>--2`, `<name>__<tag>--k` → `--k+1` (a model tag never
/// holds `--`).
fn next_generation(collection: &str) -> String {
    match collection.rsplit_once("--") {
        Some((base, k)) if k.parse::<u32>().is_ok() && base.contains("__") => {
            format!("{base}--{}", k.parse::<u32>().unwrap_or(1) + 1)
        }
        _ => format!("{collection}--2"),
    }
}

/// Run `freshet reindex` (see the module docs). `stop` aborts it without switching.
pub fn reindex(opts: ReindexOptions, stop: Arc<AtomicBool>) -> Result<ReindexReport, RuntimeError> {
    let started = Instant::now();
    let ReindexOptions { dataflow: spec, config, embedder: new_spec, drop_old, progress_bar, sample } = opts;
    let name = spec.sink.collection.clone();
    let catalog = open_catalog(&spec, &config)?;
    if catalog.resolve(&name)?.is_none() {
        return Err(RuntimeError::Config(format!(
            "nothing to reindex: no collection `{name}` in the {} (run the pipeline first)",
            catalog.describe()
        )));
    }
    let old_embedder = open_embedder(&spec.embedder)?;
    let new_embedder = open_embedder(&new_spec)?;
    let (old_model, new_model) = (old_embedder.model_id().to_string(), new_embedder.model_id().to_string());
    let old_dimension = old_embedder.dimension();
    drop(old_embedder);
    let (old_name, old_sink) =
        open_for_writing(catalog.as_ref(), &name, &old_model, &CollectionParams::of(&spec.sink, old_dimension))
            .map_err(|e| {
                RuntimeError::Config(format!("`{name}` is not the collection of the dataflow's embedder: {e}"))
            })?;
    if old_name == name {
        return Err(RuntimeError::Config(format!(
            "`{name}` is a collection, not an alias (created before freshet used aliases), so no alias can be \
             switched: rebuild it once (drop it and run the pipeline, which creates `{}` behind the alias `{name}`), \
             then reindex",
            versioned_name(&name, &old_model)
        )));
    }
    // The same model again (other collection settings): the next generation of its name.
    let new_name = if old_model == new_model { next_generation(&old_name) } else { versioned_name(&name, &new_model) };
    let params = CollectionParams::of(&spec.sink, new_embedder.dimension());
    let new_sink = match catalog.resolve(&new_name)? {
        Some(_) => {
            let s = catalog.open(&new_name)?;
            if s.dimension() != params.dimension {
                return Err(permanent(format!(
                    "collection `{new_name}` exists with dimension {}, the new embedder produces {}; drop it first",
                    s.dimension(),
                    params.dimension
                )));
            }
            tracing::info!(collection = %new_name, "resuming an earlier reindex");
            s
        }
        None => catalog.create(&new_name, &params)?,
    };
    tracing::info!(alias = %name, from = %old_name, to = %new_name, old_model, new_model, "reindex started");

    let mirror = Arc::new(Mirror {
        old: Arc::clone(&old_sink),
        same_model: old_model == new_model,
        new: Arc::clone(&new_sink),
        embedder: Arc::clone(&new_embedder),
        batch_texts: new_spec.max_batch_texts,
        dirty: Mutex::new(BTreeSet::new()),
        embedded: Default::default(),
        reused: Default::default(),
        live_docs: Default::default(),
    });

    // 1. The live pipeline on the old collection, marking what it writes.
    let run_stop = Arc::new(AtomicBool::new(false));
    let live_idle = Arc::new(AtomicBool::new(false));
    let pipeline = {
        let m = Arc::clone(&mirror);
        let hooks = MirrorHooks {
            sink: (old_name.clone(), Arc::clone(&old_sink)),
            on_written: Arc::new(move |docs: Vec<DocId>| {
                if let Ok(mut d) = m.dirty.lock() {
                    d.extend(docs.into_iter().map(|d| d.0));
                }
            }),
            idle: Arc::clone(&live_idle),
        };
        let opts = RunOptions {
            dataflow: spec.clone(),
            config: config.clone(),
            until_end: false,
            replay: None,
            mirror: Some(hooks),
            cluster: None,
        };
        let run_stop = Arc::clone(&run_stop);
        std::thread::Builder::new()
            .name("freshet-live".into())
            .spawn(move || run(opts, run_stop))
            .map_err(io("starting the live pipeline"))?
    };
    let result = mirror_and_switch(&mirror, &stop, &run_stop, &live_idle, progress_bar, sample);
    run_stop.store(true, Ordering::Relaxed);
    let live = pipeline.join().map_err(|_| RuntimeError::Dataflow("the live pipeline panicked".into()))?;
    live?;
    let verified = result?;
    // The last changes the pipeline acknowledged while stopping.
    while mirror.drain_some(256)? > 0 {}
    let repaired = mirror.compare_and_repair()?;
    if repaired > 0 {
        tracing::info!(documents = repaired, "documents repaired by the final comparison");
        if mirror.compare_and_repair()? > 0 {
            return Err(permanent("the collections still differ after repair; not switching".into()));
        }
    }
    let (old_count, new_count) = (old_sink.count()?, new_sink.count()?);
    if old_count != new_count {
        return Err(permanent(format!("{old_name} has {old_count} points, {new_name} {new_count}; not switching")));
    }
    let mut foreign = 0usize;
    new_sink.scroll(false, 1024, &mut |page| {
        foreign += page
            .iter()
            .filter(|p| p.payload.get(keys::MODEL_ID).and_then(|v| v.as_str()) != Some(new_model.as_str()))
            .count();
    })?;
    if foreign > 0 {
        return Err(permanent(format!("{foreign} points of {new_name} are not of model {new_model}; not switching")));
    }
    if stop.load(Ordering::Relaxed) {
        return Err(RuntimeError::Config("reindex interrupted before the switch; run it again to resume".into()));
    }
    super::store::copy_state(&config.data_dir, &old_name, &new_name).map_err(io("carrying the state log over"))?;
    catalog.switch_alias(&name, &new_name)?;
    confirm_alias(catalog.as_ref(), &name, &new_name)?;
    tracing::info!(alias = %name, collection = %new_name, points = new_count, "alias switched");
    let (chunks_embedded, vectors_reused, live_documents_mirrored) = (
        mirror.embedded.load(Ordering::Relaxed),
        mirror.reused.load(Ordering::Relaxed),
        mirror.live_docs.load(Ordering::Relaxed),
    );
    // Release every handle on the old collection (the embedded engine locks it).
    drop(mirror);
    drop(old_sink);
    drop(new_sink);
    let old_dropped = if drop_old {
        drop_old_collection(catalog.as_ref(), &name, &old_name, &new_name)?;
        true
    } else {
        false
    };
    Ok(ReindexReport {
        name,
        old_collection: old_name,
        new_collection: new_name,
        old_model,
        new_model,
        points: new_count,
        chunks_embedded,
        vectors_reused,
        live_documents_mirrored,
        verified_vectors: verified,
        switched: true,
        old_dropped,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Read the alias back after a switch: it must name `new`. An alias that did not move (a
/// server that acknowledged and did not apply, another process switching it back) stops
/// the reindex before anything is dropped.
fn confirm_alias(catalog: &dyn Catalog, alias: &str, new: &str) -> Result<(), RuntimeError> {
    match catalog.resolve(alias)? {
        Some(target) if target == new => Ok(()),
        other => Err(permanent(format!(
            "after switching, the alias `{alias}` reads back as {}, not `{new}`; nothing was dropped \
             (run reindex again: it resumes and switches again)",
            other.map_or_else(|| "nothing".to_string(), |t| format!("`{t}`"))
        ))),
    }
}

/// `--drop-old`: drop `old` only when the alias, read back now, points at `new` — never
/// the collection the alias serves.
fn drop_old_collection(catalog: &dyn Catalog, alias: &str, old: &str, new: &str) -> Result<(), RuntimeError> {
    if old == new {
        return Err(permanent(format!("`{old}` is the new collection; not dropping it")));
    }
    confirm_alias(catalog, alias, new)?;
    catalog.delete_collection(old)?;
    tracing::info!(collection = %old, "old collection dropped");
    Ok(())
}

/// The full pass, then marked documents until caught up; then the sample check. Returns
/// the number of vectors verified.
fn mirror_and_switch(
    mirror: &Mirror,
    stop: &AtomicBool,
    run_stop: &AtomicBool,
    live_idle: &AtomicBool,
    progress_bar: bool,
    sample: usize,
) -> Result<usize, RuntimeError> {
    let total = retry("counting", || mirror.old.count())?;
    let bar = if progress_bar {
        let b = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} points  {per_sec}  eta {eta}  {msg}",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b.set_prefix("reindex");
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    // Full pass, page by page; marked documents are mirrored between pages so that live
    // changes keep flowing. A transient failure starts the pass again (unchanged points
    // are skipped).
    let mut failed: Option<RuntimeError> = None;
    retry("reading the old collection", || {
        bar.set_position(0);
        mirror.old.scroll(mirror.same_model, 512, &mut |page| {
            if failed.is_some() {
                return;
            }
            if stop.load(Ordering::Relaxed) {
                failed = Some(RuntimeError::Config("reindex interrupted; run it again to resume".into()));
                return;
            }
            let n = page.len() as u64;
            if let Err(e) = mirror.sync(page, None).and_then(|()| mirror.drain_some(64)) {
                failed = Some(e);
                return;
            }
            bar.inc(n);
            bar.set_message(format!(
                "{} embedded, {} live documents",
                mirror.embedded.load(Ordering::Relaxed),
                mirror.live_docs.load(Ordering::Relaxed)
            ));
        })
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    // Caught up when the live pipeline has read and written everything there is and no
    // document waits.
    let mut idle_since: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(RuntimeError::Config("reindex interrupted; run it again to resume".into()));
        }
        if mirror.drain_some(256)? == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_millis(500)
                && mirror.pending() == 0
                && live_idle.load(Ordering::Relaxed)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        } else {
            idle_since = None;
        }
    }
    bar.finish_with_message("caught up; stopping the live pipeline to switch");
    run_stop.store(true, Ordering::Relaxed);
    // Sample: embed again and compare.
    let mut ids: Vec<(Uuid, String)> = Vec::new();
    retry("reading the new collection", || {
        ids.clear();
        mirror
            .new
            .scroll(false, 1024, &mut |page| ids.extend(page.into_iter().filter_map(|p| Some((p.id, doc_of(&p)?)))))
    })?;
    use rand::seq::SliceRandom;
    ids.shuffle(&mut rand::rng());
    ids.truncate(sample);
    let docs: Vec<String> = ids.iter().map(|(_, d)| d.clone()).collect();
    let wanted: BTreeSet<Uuid> = ids.iter().map(|(id, _)| *id).collect();
    let points = retry("reading sample vectors", || mirror.new.points_of_docs(&docs, true))?;
    let mut verified = 0;
    for p in points.into_iter().filter(|p| wanted.contains(&p.id)) {
        let text = p.payload.get(keys::TEXT).and_then(|t| t.as_str()).unwrap_or("").to_string();
        let expect = mirror.embed(&[text.as_str()])?.pop().unwrap_or_default();
        let got = p.vector.unwrap_or_default();
        let dot: f32 = got.iter().zip(&expect).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (norm(&got) * norm(&expect)).max(f32::MIN_POSITIVE);
        if got.len() != expect.len() || cos < 0.999 {
            return Err(permanent(format!(
                "point {} holds a vector that is not the new model's embedding of its text (cosine {cos:.4}); not switching",
                p.id
            )));
        }
        verified += 1;
    }
    Ok(verified)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sink::embedded::EmbeddedCatalog;

    /// A catalog whose alias switches are acknowledged and not applied.
    struct StuckAlias(EmbeddedCatalog);

    impl Catalog for StuckAlias {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn resolve(&self, name: &str) -> Result<Option<String>, SinkError> {
            self.0.resolve(name)
        }
        fn open(&self, collection: &str) -> Result<Arc<dyn VectorSink>, SinkError> {
            self.0.open(collection)
        }
        fn create(&self, collection: &str, params: &CollectionParams) -> Result<Arc<dyn VectorSink>, SinkError> {
            self.0.create(collection, params)
        }
        fn switch_alias(&self, _alias: &str, _collection: &str) -> Result<(), SinkError> {
            Ok(())
        }
        fn delete_collection(&self, collection: &str) -> Result<(), SinkError> {
            self.0.delete_collection(collection)
        }
        fn collections(&self) -> Result<Vec<String>, SinkError> {
            self.0.collections()
        }
    }

    fn point(i: u128) -> SinkPoint {
        SinkPoint { id: Uuid::from_u128(i), vector: vec![1.0, 0.0, 0.0, i as f32], payload: Metadata::new() }
    }

    /// Two collections `a__old` (3 points, behind the alias `a`) and `a__new`.
    fn two_collections(dir: &std::path::Path) -> EmbeddedCatalog {
        let catalog = EmbeddedCatalog::new(dir);
        let old = catalog.create("a__old", &CollectionParams::basic(4)).unwrap();
        old.apply(vec![SinkOp::Upsert(vec![point(1), point(2), point(3)])]).unwrap();
        drop(old);
        drop(catalog.create("a__new", &CollectionParams::basic(4)).unwrap());
        catalog.switch_alias("a", "a__old").unwrap();
        catalog
    }

    #[test]
    fn drop_old_refuses_while_the_alias_still_serves_the_old_collection() {
        let dir = tempfile::tempdir().unwrap();
        let stuck = StuckAlias(two_collections(dir.path()));
        stuck.switch_alias("a", "a__new").unwrap();
        let err = confirm_alias(&stuck, "a", "a__new").unwrap_err();
        assert!(err.to_string().contains("reads back as `a__old`"), "{err}");
        let err = drop_old_collection(&stuck, "a", "a__old", "a__new").unwrap_err();
        assert!(err.to_string().contains("nothing was dropped"), "{err}");
        assert_eq!(stuck.resolve("a").unwrap().as_deref(), Some("a__old"));
        assert_eq!(stuck.open("a__old").unwrap().count().unwrap(), 3, "the collection serving the alias is whole");
        let err = drop_old_collection(&stuck, "a", "a__new", "a__new").unwrap_err();
        assert!(err.to_string().contains("not dropping"), "{err}");
        assert!(stuck.resolve("a__new").unwrap().is_some());
    }

    #[test]
    fn drop_old_drops_after_a_confirmed_switch() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = two_collections(dir.path());
        catalog.switch_alias("a", "a__new").unwrap();
        drop_old_collection(&catalog, "a", "a__old", "a__new").unwrap();
        assert_eq!(catalog.resolve("a").unwrap().as_deref(), Some("a__new"));
        assert_eq!(catalog.resolve("a__old").unwrap(), None);
    }
}
