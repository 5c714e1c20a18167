//! Runs the stage graph through the cache: computes each stage's key, takes a verified cached
//! output when there is one, and otherwise runs the stage and commits what it wrote.
//! `status.rs` says what is fresh, stale (and why) or missing without running anything;
//! `previous.rs` finds the output a stage whose inputs only grew can append to.

mod previous;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use self::status::{Freshness, StageStatus};
use crate::config::Settings;
use crate::dag::Dag;
use crate::engine::Engine;
use crate::error::{IoContext, PipelineError, Result};
use crate::hash::{hash_file, hash_parts, SourceHashMemo};
use crate::manifest::{
    Accounting, Manifest, PartFile, SourceRecord, ARTIFACTS_DIR, MANIFEST_FORMAT,
};
use crate::output::OutputRole;
use crate::progress::ProgressObserver;
use crate::reader::CommittedDataset;
use crate::stage::{PreviousOutput, Stage, StageContext};
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
    pub appended: bool,
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

/// Executes a [`Dag`] against a [`Workdir`].
pub struct Runner<'a> {
    workdir: Workdir,
    dag: Dag,
    settings: Settings,
    progress: &'a dyn ProgressObserver,
    config_path: Option<PathBuf>,
    engine: OnceLock<Arc<Engine>>,
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
            engine: OnceLock::new(),
        }
    }

    /// Runs the stages' row-wise work on `engine` (by default an in-process one, made on first
    /// use). Where rows are mapped changes no output: keys, parts and checksums are the same.
    pub fn with_engine(self, engine: Arc<Engine>) -> Self {
        let _ = self.engine.set(engine);
        self
    }

    fn engine(&self) -> Result<&Engine> {
        if self.engine.get().is_none() {
            let _ = self.engine.set(Arc::new(Engine::in_process()?));
        }
        Ok(self.engine.get().expect("engine set above"))
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
            for dataset in CommittedDataset::all_in_entry(&dir, &manifest) {
                available.insert(dataset.name.clone(), dataset);
            }
            summaries.push(StageSummary {
                stage: stage.name().to_string(),
                cache_hit,
                appended: !cache_hit && manifest.appends_to.is_some(),
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
            (self.engine()?, self.progress),
            (artifacts_dir.clone(), scratch.clone()),
            self.settings.clone(),
            inputs,
            sinks,
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
            appends_to: outcome.appends_to,
            accounting,
            counters: outcome.counters,
            warnings: outcome.warnings,
            started_at,
            seconds: clock.elapsed().as_secs_f64(),
            engine: outcome.engine,
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
