//! Runs the stage graph through the cache, and explains what is fresh, stale or missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::{describe_changes, Settings};
use crate::dag::Dag;
use crate::error::{IoContext, PipelineError, Result};
use crate::hash::{hash_file, hash_parts, SourceHashMemo};
use crate::manifest::{
    Accounting, Manifest, PartFile, SourceRecord, ARTIFACTS_DIR, MANIFEST_FORMAT,
};
use crate::progress::ProgressObserver;
use crate::reader::CommittedDataset;
use crate::stage::{InputChange, OutputRole, PreviousOutput, Stage, StageContext};
use crate::workdir::{Lookup, Workdir};
use crate::writer::{DatasetWriter, OutputSink};

/// Which stages a run covers.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stages to run (with whatever they need upstream); empty means all.
    pub stages: Vec<String>,
    /// Ignore the cache for the named stages (all stages when none are named).
    pub force: bool,
}

/// What happened to one stage in a run.
#[derive(Debug, Clone)]
pub struct StageSummary {
    /// Stage name.
    pub stage: String,
    /// Whether the output came from the cache.
    pub cache_hit: bool,
    /// Whether the stage ran only over rows appended to its inputs, extending its previous
    /// output.
    pub extended: bool,
    /// Rows in, kept, dropped by reason.
    pub accounting: Accounting,
    /// Rows of every output dataset.
    pub output_rows: BTreeMap<String, u64>,
    /// Stage-specific counters.
    pub counters: BTreeMap<String, u64>,
    /// Seconds spent in this run (looking up, or running and committing).
    pub seconds: f64,
    /// Cache key of the output.
    pub key: String,
}

/// Freshness of one stage's cached output against the current config and inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Freshness {
    /// The cache holds a verified output for exactly this config and these inputs.
    Fresh,
    /// An older output exists; the reasons say what changed.
    Stale(Vec<String>),
    /// The stage has never produced an output in this workdir.
    Missing,
}

/// Status of one stage.
#[derive(Debug, Clone)]
pub struct StageStatus {
    /// Stage name.
    pub stage: String,
    /// Fresh, stale (why) or missing.
    pub freshness: Freshness,
}

/// Executes a [`Dag`] against a [`Workdir`].
pub struct Runner<'a> {
    workdir: Workdir,
    dag: Dag,
    settings: Settings,
    progress: &'a dyn ProgressObserver,
    config_path: Option<PathBuf>,
}

/// The inputs of a stage as the cache key sees them.
struct KeyParts {
    config: serde_json::Value,
    inputs: BTreeMap<String, String>,
    sources: Vec<SourceRecord>,
    key: String,
}

impl<'a> Runner<'a> {
    /// A runner for `dag` in `workdir`.
    pub fn new(
        workdir: Workdir,
        dag: Dag,
        settings: Settings,
        progress: &'a dyn ProgressObserver,
    ) -> Self {
        Runner {
            workdir,
            dag,
            settings,
            progress,
            config_path: None,
        }
    }

    /// Names the config file the DAG was built from; a run records it in the catalog, so
    /// `status` of another config can say whose outputs the catalog (and SQL) serves.
    pub fn with_config_path(mut self, path: &Path) -> Self {
        self.config_path = Some(path.to_path_buf());
        self
    }

    /// Runs the selected stages (and what they need), each from cache when it can.
    pub fn run(&self, options: &RunOptions) -> Result<Vec<StageSummary>> {
        let _lock = self.workdir.lock()?;
        if let Some(why) = self
            .workdir
            .open_catalog_for_run(self.config_path.as_deref())?
        {
            self.progress
                .warning("catalog", &format!("{why}; rebuilding it from this run"));
        }
        let names: BTreeSet<&str> = self.dag.stages().iter().map(|s| s.name()).collect();
        self.workdir.retain_stages(&names)?;
        let memo = SourceHashMemo::open(self.workdir.source_memo_path());
        let selected = if options.stages.is_empty() {
            (0..self.dag.stages().len()).collect()
        } else {
            self.dag.closure(&options.stages)?
        };
        let forced: BTreeSet<usize> = match (options.force, options.stages.is_empty()) {
            (false, _) => BTreeSet::new(),
            (true, true) => selected.iter().copied().collect(),
            (true, false) => options
                .stages
                .iter()
                .map(|n| self.dag.position(n))
                .collect::<Result<_>>()?,
        };
        let mut available: BTreeMap<String, CommittedDataset> = BTreeMap::new();
        let mut summaries = Vec::new();
        for i in selected {
            let stage = self.dag.stages()[i].as_ref();
            let started = Instant::now();
            let inputs = stage
                .inputs()
                .into_iter()
                .map(|name| {
                    let ds = available.get(&name).cloned().ok_or_else(|| {
                        PipelineError::Internal(format!("`{name}` not produced before its reader"))
                    })?;
                    Ok((name, ds))
                })
                .collect::<Result<BTreeMap<_, _>>>()?;
            let parts = self.key_parts(stage, &inputs, &memo, true)?;
            let cached = if forced.contains(&i) {
                None
            } else {
                match self.workdir.lookup(stage.name(), &parts.key) {
                    Lookup::Hit(manifest) => Some(*manifest),
                    Lookup::Missing => None,
                    Lookup::Corrupt(why) => {
                        self.progress.warning(
                            stage.name(),
                            &format!("cached output failed verification ({why}); recomputing"),
                        );
                        None
                    }
                }
            };
            let cache_hit = cached.is_some();
            let manifest = match cached {
                Some(m) => m,
                None => {
                    let previous = if forced.contains(&i) {
                        None
                    } else {
                        self.previous_output(stage, &parts, &inputs)
                    };
                    self.execute(stage, parts, inputs, previous)?
                }
            };
            self.workdir.publish(&manifest)?;
            let dir = self.workdir.entry_dir(stage.name(), &manifest.key);
            for (name, dataset) in &manifest.datasets {
                available.insert(
                    name.clone(),
                    CommittedDataset {
                        name: name.clone(),
                        entry_dir: dir.clone(),
                        manifest: dataset.clone(),
                    },
                );
            }
            summaries.push(StageSummary {
                stage: stage.name().to_string(),
                cache_hit,
                extended: !cache_hit && manifest.extends.is_some(),
                accounting: manifest.accounting.clone(),
                output_rows: manifest
                    .datasets
                    .iter()
                    .map(|(n, d)| (n.clone(), d.rows))
                    .collect(),
                counters: manifest.counters.clone(),
                seconds: started.elapsed().as_secs_f64(),
                key: manifest.key.clone(),
            });
        }
        memo.save()?;
        Ok(summaries)
    }

    /// Reports, for every stage, whether its cached output is fresh, stale (and why) or missing.
    pub fn status(&self) -> Result<Vec<StageStatus>> {
        let memo = SourceHashMemo::open(self.workdir.source_memo_path());
        let mut fresh: BTreeMap<String, CommittedDataset> = BTreeMap::new();
        let mut out = Vec::new();
        for stage in self.dag.stages() {
            let stage = stage.as_ref();
            let previous = self.workdir.latest_manifest(stage.name());
            let not_fresh: Vec<String> = stage
                .inputs()
                .into_iter()
                .filter(|name| !fresh.contains_key(name))
                .collect();
            let freshness = if !not_fresh.is_empty() {
                let mut reasons: Vec<String> = not_fresh
                    .iter()
                    .map(|name| {
                        let up = self
                            .dag
                            .producer_of(name)
                            .map(|p| self.dag.stages()[p].name().to_string())
                            .unwrap_or_default();
                        format!("upstream stage `{up}` is not fresh")
                    })
                    .collect();
                match &previous {
                    Some(prev) => {
                        reasons.extend(self.own_changes(stage, prev));
                        Freshness::Stale(reasons)
                    }
                    None => Freshness::Missing,
                }
            } else {
                let inputs: BTreeMap<String, CommittedDataset> = stage
                    .inputs()
                    .into_iter()
                    .filter_map(|n| fresh.get(&n).map(|d| (n, d.clone())))
                    .collect();
                match self.key_parts(stage, &inputs, &memo, false) {
                    Err(e) => Freshness::Stale(vec![e.to_string()]),
                    Ok(parts) => match self.workdir.lookup(stage.name(), &parts.key) {
                        Lookup::Hit(manifest) => {
                            let dir = self.workdir.entry_dir(stage.name(), &parts.key);
                            for (name, ds) in manifest.datasets {
                                fresh.insert(
                                    name.clone(),
                                    CommittedDataset {
                                        name,
                                        entry_dir: dir.clone(),
                                        manifest: ds,
                                    },
                                );
                            }
                            Freshness::Fresh
                        }
                        Lookup::Corrupt(why) => Freshness::Stale(vec![format!(
                            "cached output failed verification: {why}"
                        )]),
                        Lookup::Missing => match &previous {
                            None => Freshness::Missing,
                            Some(prev) => Freshness::Stale(explain(
                                self.own_changes(stage, prev),
                                prev,
                                &parts,
                            )),
                        },
                    },
                }
            };
            out.push(StageStatus {
                stage: stage.name().to_string(),
                freshness,
            });
        }
        let _ = memo.save();
        Ok(out)
    }

    /// What changed in the stage itself (logic version, its config) since `prev`, whatever
    /// happened upstream.
    fn own_changes(&self, stage: &dyn Stage, prev: &Manifest) -> Vec<String> {
        let mut reasons = Vec::new();
        if prev.version != stage.version() {
            reasons.push(format!(
                "stage logic changed (version {} -> {})",
                prev.version,
                stage.version()
            ));
        }
        reasons.extend(
            describe_changes(&prev.config, &self.stage_config(stage))
                .into_iter()
                .map(|c| format!("config {c}")),
        );
        reasons
    }

    /// The part of the config a stage's cache key covers.
    fn stage_config(&self, stage: &dyn Stage) -> serde_json::Value {
        serde_json::json!({
            stage.name(): stage.config(),
            "pipeline": self.settings,
        })
    }

    fn key_parts(
        &self,
        stage: &dyn Stage,
        inputs: &BTreeMap<String, CommittedDataset>,
        memo: &SourceHashMemo,
        for_run: bool,
    ) -> Result<KeyParts> {
        let config = self.stage_config(stage);
        let inputs: BTreeMap<String, String> = inputs
            .iter()
            .map(|(n, d)| (n.clone(), d.manifest.content_hash.clone()))
            .collect();
        let mut sources = Vec::new();
        for source in stage.sources() {
            if !source.path.is_file() {
                let what = if source.path.exists() {
                    "is not a file"
                } else {
                    "not found"
                };
                return Err(PipelineError::bad_input(
                    &source.path,
                    format!(
                        "{what} (input `{}` of stage `{}`{})",
                        source.written,
                        stage.name(),
                        if for_run {
                            ""
                        } else {
                            "; status cannot check it"
                        }
                    ),
                ));
            }
            // An input that cannot be read (permissions, an I/O error) is bad input too.
            let blake3 = memo.hash(&source.path).map_err(|e| match e {
                PipelineError::Io { source: err, .. } => PipelineError::bad_input(
                    &source.path,
                    format!(
                        "cannot read it: {err} (input `{}` of stage `{}`)",
                        source.written,
                        stage.name()
                    ),
                ),
                other => other,
            })?;
            sources.push(SourceRecord {
                path: source.written.clone(),
                blake3,
            });
        }
        let config_text = config.to_string();
        let version = stage.version().to_string();
        let mut parts: Vec<(String, Vec<u8>)> = vec![
            ("stage".into(), stage.name().as_bytes().to_vec()),
            ("version".into(), version.into_bytes()),
            ("config".into(), config_text.into_bytes()),
        ];
        parts.extend(
            inputs
                .iter()
                .map(|(n, h)| (format!("input:{n}"), h.as_bytes().to_vec())),
        );
        parts.extend(
            sources
                .iter()
                .map(|s| (format!("source:{}", s.path), s.blake3.as_bytes().to_vec())),
        );
        let key =
            hash_parts(parts.iter().map(|(l, b)| (l.as_str(), b.as_slice())))[..32].to_string();
        Ok(KeyParts {
            config,
            inputs,
            sources,
            key,
        })
    }

    /// The stage's latest output, when it was made by the same stage version and config and
    /// still verifies, with how each input changed since.
    fn previous_output(
        &self,
        stage: &dyn Stage,
        now: &KeyParts,
        inputs: &BTreeMap<String, CommittedDataset>,
    ) -> Option<PreviousOutput> {
        let manifest = self.workdir.latest_manifest(stage.name())?;
        if manifest.version != stage.version()
            || manifest.config != now.config
            || manifest.key == now.key
            || manifest.inputs.keys().ne(inputs.keys())
        {
            return None;
        }
        let entry_dir = self.workdir.entry_dir(stage.name(), &manifest.key);
        if let Err(why) = manifest.verify(&entry_dir) {
            self.progress.warning(
                stage.name(),
                &format!("previous output failed verification ({why}); not extending it"),
            );
            return None;
        }
        let changes = inputs
            .iter()
            .map(|(name, dataset)| (name.clone(), input_change(&manifest.inputs[name], dataset)))
            .collect();
        let sources_unchanged = manifest.sources == now.sources;
        Some(PreviousOutput {
            manifest,
            entry_dir,
            inputs: changes,
            sources_unchanged,
        })
    }

    fn execute(
        &self,
        stage: &dyn Stage,
        parts: KeyParts,
        inputs: BTreeMap<String, CommittedDataset>,
        previous: Option<PreviousOutput>,
    ) -> Result<Manifest> {
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let clock = Instant::now();
        let pending = self.workdir.begin(stage.name(), &parts.key)?;
        let decls = stage.outputs();
        let mut sinks = BTreeMap::new();
        for decl in &decls {
            let writer = DatasetWriter::new(pending.dir().to_path_buf(), decl, &self.settings)?;
            sinks.insert(decl.name.clone(), OutputSink::spawn(writer));
        }
        let scratch = self.workdir.scratch_dir(stage.name(), &parts.key);
        let artifacts_dir = pending.dir().join(ARTIFACTS_DIR);
        let mut ctx = StageContext::new(
            stage.name(),
            (artifacts_dir.clone(), scratch.clone()),
            self.settings.batch_rows,
            inputs,
            sinks,
            self.progress,
            previous,
        );
        self.progress.stage_started(stage.name());
        let result = stage.run(&mut ctx);
        self.progress.stage_finished(stage.name());
        let outcome = ctx.into_outcome();
        let mut datasets = BTreeMap::new();
        let mut first_error = result.err();
        for (name, sink) in outcome.outputs {
            match sink.finish() {
                Ok(mut d) => {
                    d.role = decls
                        .iter()
                        .find(|decl| decl.name == name)
                        .map_or(OutputRole::Side, |decl| decl.role);
                    datasets.insert(name, d);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            let _ = std::fs::remove_dir_all(pending.dir());
            return Err(e);
        }
        let rows_of = |role: OutputRole| -> Option<u64> {
            decls
                .iter()
                .find(|d| d.role == role)
                .map(|d| datasets[&d.name].rows)
        };
        let kept = rows_of(OutputRole::Kept);
        let accounting = Accounting {
            rows_in: outcome.rows_in,
            kept: kept.unwrap_or(0),
            dropped: outcome.dropped,
            keeps_rows: kept.is_some(),
        };
        let accounted = if accounting.keeps_rows {
            accounting.kept + accounting.dropped_total()
        } else {
            // Without a kept dataset the stage can still not drop more than it read.
            accounting.rows_in.max(accounting.dropped_total())
        };
        if accounting.rows_in != accounted {
            return Err(PipelineError::Internal(format!(
                "stage `{}` lost rows: {} in, {} kept, {} dropped",
                stage.name(),
                accounting.rows_in,
                accounting.kept,
                accounting.dropped_total()
            )));
        }
        if let Some(rejected) = rows_of(OutputRole::Rejects) {
            if rejected != accounting.dropped_total() {
                return Err(PipelineError::Internal(format!(
                    "stage `{}` dropped {} rows but wrote {rejected} rejects",
                    stage.name(),
                    accounting.dropped_total()
                )));
            }
        }
        let artifacts = collect_artifacts(pending.dir(), &artifacts_dir)?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            stage: stage.name().to_string(),
            version: stage.version(),
            key: parts.key,
            config: parts.config,
            inputs: parts.inputs,
            sources: parts.sources,
            datasets,
            artifacts,
            extends: outcome.extends,
            accounting,
            counters: outcome.counters,
            warnings: outcome.warnings,
            started_at,
            seconds: clock.elapsed().as_secs_f64(),
        };
        let waiting = || {
            self.progress.warning(
                stage.name(),
                "replacing its cached output once the queries reading this workdir finish",
            )
        };
        self.workdir.commit(pending, &manifest, &waiting)?;
        // Committed: resumable state of the run is no longer needed.
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(manifest)
    }
}

/// How `dataset` relates to an input whose content hash was `before`: the same, the same
/// parts followed by new ones, or something else.
fn input_change(before: &str, dataset: &CommittedDataset) -> InputChange {
    let files = &dataset.manifest.files;
    if dataset.manifest.content_hash == before {
        return InputChange::Same;
    }
    let prefix_hash = |n: usize| {
        hash_parts(
            files[..n]
                .iter()
                .map(|f| (f.path.as_str(), f.blake3.as_bytes())),
        )
    };
    match (1..files.len()).rev().find(|&n| prefix_hash(n) == before) {
        Some(n) => {
            let mut delta = dataset.clone();
            delta.manifest.files = files[n..].to_vec();
            delta.manifest.rows = delta.manifest.files.iter().map(|f| f.rows).sum();
            delta.manifest.bytes = delta.manifest.files.iter().map(|f| f.bytes).sum();
            InputChange::Appended(delta)
        }
        None => InputChange::Replaced,
    }
}

/// The files under `dir` (recursively, sorted), fsynced and checksummed, with paths relative
/// to the entry folder `entry`.
fn collect_artifacts(entry: &Path, dir: &Path) -> Result<Vec<PartFile>> {
    let mut files = Vec::new();
    if !dir.exists() {
        return Ok(files);
    }
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        crate::fsutil::sync_dir(&folder)?;
        for item in std::fs::read_dir(&folder).at(&folder)? {
            let path = item.at(&folder)?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .at(&path)?;
            let rel = path
                .strip_prefix(entry)
                .expect("artifact inside the entry")
                .to_string_lossy()
                .to_string();
            files.push(PartFile {
                path: rel,
                rows: 0,
                bytes: std::fs::metadata(&path).at(&path)?.len(),
                blake3: hash_file(&path)?,
                label: None,
                stats: Default::default(),
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Why the output `prev` is not what the stage would produce now: `own` (its logic and
/// config changes), then changed input datasets and source files.
fn explain(own: Vec<String>, prev: &Manifest, now: &KeyParts) -> Vec<String> {
    let mut reasons = own;
    let names: BTreeSet<&String> = prev.inputs.keys().chain(now.inputs.keys()).collect();
    for name in names {
        if prev.inputs.get(name) != now.inputs.get(name) {
            reasons.push(format!("input dataset `{name}` changed"));
        }
    }
    let old: BTreeMap<&str, &str> = prev
        .sources
        .iter()
        .map(|s| (s.path.as_str(), s.blake3.as_str()))
        .collect();
    let new: BTreeMap<&str, &str> = now
        .sources
        .iter()
        .map(|s| (s.path.as_str(), s.blake3.as_str()))
        .collect();
    for (path, hash) in &new {
        match old.get(path) {
            None => reasons.push(format!("new source file {path}")),
            Some(h) if h != hash => reasons.push(format!("source file {path} changed")),
            _ => {}
        }
    }
    for path in old.keys().filter(|p| !new.contains_key(*p)) {
        reasons.push(format!("source file {path} no longer read"));
    }
    if reasons.is_empty() {
        reasons.push("the cached output was removed".into());
    }
    reasons
}
