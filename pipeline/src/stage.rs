//! The Stage contract: what a stage declares and the context it runs in.
//!
//! A stage names the datasets it reads and writes, the config it depends on and the source
//! files it reads; the runner turns those into a cache key and decides whether to run it.
//! While running, the stage reads input datasets as batch streams, sends output batches to
//! sinks and accounts for every row it read: kept, or dropped with a reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;

use crate::config::Settings;
use crate::engine::{
    Engine, EngineClock, FirstOccurrences, MappedRows, Place, RowFunction, RowStage,
};
use crate::error::{PipelineError, Result};
use crate::manifest::{EngineTime, Manifest};
use crate::output::OutputDecl;
use crate::progress::{ProgressObserver, WorkUnit};
use crate::reader::CommittedDataset;
use crate::writer::OutputSink;

/// A file outside the workdir that a stage reads.
#[derive(Debug, Clone)]
pub struct SourceDecl {
    /// The path as written in the config (recorded in manifests and shown to users).
    pub written: String,
    /// The path resolved against the config's folder.
    pub path: PathBuf,
}

/// A pipeline stage.
pub trait Stage: Send + Sync {
    /// Unique name: the config section, the cache folder and what `--stage` selects.
    fn name(&self) -> &str;
    /// Bumped whenever the logic changes what the stage outputs for the same inputs.
    fn version(&self) -> u32;
    /// Datasets read, produced by upstream stages.
    fn inputs(&self) -> Vec<String> {
        Vec::new()
    }
    /// Datasets written.
    fn outputs(&self) -> Vec<OutputDecl>;
    /// The canonical config subset the outputs depend on.
    fn config(&self) -> serde_json::Value;
    /// Files read from outside the workdir; their content hashes join the cache key.
    fn sources(&self) -> Vec<SourceDecl> {
        Vec::new()
    }
    /// Runs the stage: reads its inputs through `ctx`, writes every output it declared and
    /// accounts for every row it read (kept, or dropped with a reason).
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()>;
}

/// How an input dataset differs from the one a stage's previous output was made from.
#[derive(Debug, Clone)]
pub enum InputChange {
    /// The same parts.
    Same,
    /// The previous parts, then these new ones (a dataset holding only the new parts).
    Appended(CommittedDataset),
    /// Anything else.
    Replaced,
}

/// The latest committed output of a stage, made with the same stage version and config as the
/// run at hand, offered so that a stage whose inputs only grew can extend it instead of
/// starting over (see [`StageContext::append_to_previous`]).
#[derive(Debug, Clone)]
pub struct PreviousOutput {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its cache entry folder.
    pub entry_dir: PathBuf,
    /// How each input changed since.
    pub inputs: BTreeMap<String, InputChange>,
    /// Whether every source file has the content it had then.
    pub sources_unchanged: bool,
}

impl PreviousOutput {
    /// One of its output datasets.
    pub fn dataset(&self, name: &str) -> Option<CommittedDataset> {
        CommittedDataset::in_entry(&self.entry_dir, &self.manifest, name)
    }

    /// Its artifacts folder.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.entry_dir.join(crate::manifest::ARTIFACTS_DIR)
    }

    /// The value of one of its counters (0 when it has none).
    pub fn counter(&self, name: &str) -> u64 {
        self.manifest.counters.get(name).copied().unwrap_or(0)
    }
}

/// What a stage asks of [`StageContext::append_to_previous`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AppendOptions<'s> {
    /// Outputs the stage writes whole again (the rest start with their previous parts).
    pub rewrite: &'s [&'s str],
    /// Inputs the stage reads whole whatever changed in them (the rest must only have grown,
    /// and reads of them return the new parts alone).
    pub whole: &'s [&'s str],
    /// Whether the stage has itself checked that its source files only grew.
    pub sources_checked: bool,
}

/// What a stage sees while it runs.
pub struct StageContext<'a> {
    stage: String,
    engine: &'a Engine,
    clock: Arc<EngineClock>,
    artifacts_dir: PathBuf,
    scratch_dir: PathBuf,
    settings: Settings,
    inputs: BTreeMap<String, CommittedDataset>,
    outputs: BTreeMap<String, OutputSink>,
    rows_in: u64,
    dropped: BTreeMap<String, u64>,
    counters: BTreeMap<String, u64>,
    warnings: Vec<String>,
    progress: &'a dyn ProgressObserver,
    previous: Option<PreviousOutput>,
    appends_to: Option<String>,
}

/// What a stage leaves behind once it has run: its sinks and its accounting.
pub(crate) struct StageOutcome {
    pub outputs: BTreeMap<String, OutputSink>,
    pub rows_in: u64,
    pub dropped: BTreeMap<String, u64>,
    pub counters: BTreeMap<String, u64>,
    pub warnings: Vec<String>,
    pub appends_to: Option<String>,
    pub engine: Option<EngineTime>,
}

impl<'a> StageContext<'a> {
    /// `around`: where rows are mapped and who is told of progress.
    pub(crate) fn new(
        stage: &str,
        around: (&'a Engine, &'a dyn ProgressObserver),
        dirs: (PathBuf, PathBuf),
        settings: Settings,
        inputs: BTreeMap<String, CommittedDataset>,
        outputs: BTreeMap<String, OutputSink>,
        previous: Option<PreviousOutput>,
    ) -> Self {
        let (engine, progress) = around;
        StageContext {
            stage: stage.to_string(),
            engine,
            clock: Arc::default(),
            artifacts_dir: dirs.0,
            scratch_dir: dirs.1,
            settings,
            inputs,
            outputs,
            rows_in: 0,
            dropped: BTreeMap::new(),
            counters: BTreeMap::new(),
            warnings: Vec::new(),
            progress,
            previous,
            appends_to: None,
        }
    }

    pub(crate) fn into_outcome(self) -> StageOutcome {
        StageOutcome {
            outputs: self.outputs,
            rows_in: self.rows_in,
            dropped: self.dropped,
            counters: self.counters,
            warnings: self.warnings,
            appends_to: self.appends_to,
            engine: self.clock.time(self.engine.place()),
        }
    }

    /// The stage's previous output, when there is one with the same stage version and config
    /// (and the run was not forced).
    pub fn previous(&self) -> Option<&PreviousOutput> {
        self.previous.as_ref()
    }

    /// Extends the previous output instead of starting over, when `how` allows it: every
    /// output not in `how.rewrite` starts with the previous output's parts (hard links), the
    /// previous row accounting and counters are carried over (counters summed with what the
    /// stage adds; [`Self::set_count`] overrides), and reads of inputs not in `how.whole`
    /// return only their appended parts. Returns `false`, changing nothing, when there is no
    /// previous output or an input did more than grow; the stage then does a full run.
    pub fn append_to_previous(&mut self, how: AppendOptions<'_>) -> Result<bool> {
        if self.appends_to.is_some() {
            return Err(PipelineError::Internal(format!(
                "stage `{}` continued its previous output twice",
                self.stage
            )));
        }
        let Some(previous) = &self.previous else {
            return Ok(false);
        };
        if !(previous.sources_unchanged || how.sources_checked) {
            return Ok(false);
        }
        let mut deltas = BTreeMap::new();
        for (name, change) in &previous.inputs {
            if how.whole.contains(&name.as_str()) {
                continue;
            }
            let delta = match change {
                InputChange::Same => {
                    let mut empty = self.input(name)?.clone();
                    empty.manifest.files.clear();
                    empty.manifest.rows = 0;
                    empty.manifest.bytes = 0;
                    empty
                }
                InputChange::Appended(delta) => delta.clone(),
                InputChange::Replaced => return Ok(false),
            };
            deltas.insert(name.clone(), delta);
        }
        for (name, sink) in &mut self.outputs {
            if how.rewrite.contains(&name.as_str()) {
                continue;
            }
            if let Some(dataset) = previous.manifest.datasets.get(name) {
                sink.adopt(dataset.files.clone(), previous.entry_dir.clone())?;
            }
        }
        let accounting = &previous.manifest.accounting;
        self.rows_in += accounting.rows_in;
        for (reason, n) in &accounting.dropped {
            *self.dropped.entry(reason.clone()).or_default() += n;
        }
        for (counter, n) in &previous.manifest.counters {
            *self.counters.entry(counter.clone()).or_default() += n;
        }
        self.inputs.extend(deltas);
        self.appends_to = Some(previous.manifest.key.clone());
        Ok(true)
    }

    /// Whether this run appends to the previous output (see [`Self::append_to_previous`]).
    pub fn is_appending(&self) -> bool {
        self.appends_to.is_some()
    }

    /// The folder for files the stage commits besides datasets (created on first use). They are
    /// checksummed into the manifest and committed atomically with the datasets.
    pub fn artifacts_dir(&self) -> Result<&Path> {
        std::fs::create_dir_all(&self.artifacts_dir)
            .map_err(|e| PipelineError::io(&self.artifacts_dir, e))?;
        Ok(&self.artifacts_dir)
    }

    /// A folder that survives a failed or interrupted run of this stage with the same cache key
    /// (checkpoints to resume from), removed once the stage commits.
    pub fn scratch_dir(&self) -> Result<&Path> {
        std::fs::create_dir_all(&self.scratch_dir)
            .map_err(|e| PipelineError::io(&self.scratch_dir, e))?;
        Ok(&self.scratch_dir)
    }

    /// Preferred rows per batch.
    pub fn batch_rows(&self) -> usize {
        self.settings.batch_rows
    }

    /// An input dataset.
    pub fn input(&self, name: &str) -> Result<&CommittedDataset> {
        self.inputs.get(name).ok_or_else(|| {
            PipelineError::Internal(format!(
                "stage `{}` read `{name}`, which it did not declare",
                self.stage
            ))
        })
    }

    /// Streams an input dataset's batches, decoded ahead of the stage on a thread of its own.
    pub fn read(
        &self,
        name: &str,
    ) -> Result<impl Iterator<Item = Result<RecordBatch>> + Send + 'static> {
        Ok(crate::reader::read_ahead(
            self.input(name)?.batches(self.settings.batch_rows),
        ))
    }

    /// Streams an input dataset's rows, in order, each with `F`'s struct in an added
    /// [`MAPPED`](crate::engine::MAPPED) column (called with every column and `settings`), mapped
    /// by the run's engine: in this process or on a cluster, chunks at a time.
    pub fn map_rows<F: RowFunction>(
        &self,
        name: &str,
        settings: &serde_json::Value,
    ) -> Result<MappedRows> {
        self.map_rows_of::<F>(self.input(name)?, settings)
    }

    /// [`Self::map_rows`] over any committed dataset (the appended parts of an input, say).
    pub fn map_rows_of<F: RowFunction>(
        &self,
        dataset: &CommittedDataset,
        settings: &serde_json::Value,
    ) -> Result<MappedRows> {
        self.engine.map_rows::<F>(
            dataset,
            settings,
            self.settings.batch_rows,
            self.clock.clone(),
        )
    }

    /// Runs the row stage `S` over the input dataset `name` (called with `settings`): the run's
    /// engine maps, routes and writes each chunk's rows where it runs, and the chunks' parts
    /// join `S`'s outputs in row order, their row accounting and counters this stage's. A
    /// stage rerun after a failure reuses the chunks written before it (kept in the stage's
    /// scratch folder until it commits).
    pub fn write_rows<S: RowStage>(
        &mut self,
        name: &str,
        settings: &serde_json::Value,
    ) -> Result<()> {
        let dataset = self.input(name)?.clone();
        let folder = self.scratch_dir()?.join("chunks");
        let chunks = self.engine.write_rows::<S>(
            &dataset,
            settings,
            &self.settings,
            &folder,
            self.clock.clone(),
        )?;
        let mut done = 0;
        for chunk in chunks {
            let (dir, written) = chunk?;
            for (output, parts) in written.parts {
                let stage = &self.stage;
                self.outputs
                    .get_mut(&output)
                    .ok_or_else(|| {
                        PipelineError::Internal(format!(
                            "stage `{stage}` wrote `{output}`, which it did not declare"
                        ))
                    })?
                    .take(parts, dir.clone())?;
            }
            self.rows_in += written.rows_in;
            for (reason, n) in written.dropped {
                *self.dropped.entry(reason).or_default() += n;
            }
            for (counter, n) in written.counters {
                *self.counters.entry(counter).or_default() += n;
            }
            done += written.rows_in;
            self.report_progress(done);
        }
        Ok(())
    }

    /// Runs `sql` over the input dataset `name` (the table `input`) where the run maps rows
    /// (see [`Engine::query_dataset`]).
    pub fn query_input(&self, name: &str, sql: &str) -> Result<Vec<RecordBatch>> {
        self.engine.query_dataset(self.input(name)?, sql)
    }

    /// Runs `sql` over Parquet tables (a name and its files or folders each) where the run
    /// maps rows (see [`Engine::query_tables`]).
    pub fn query_tables(
        &self,
        tables: &[(&str, Vec<PathBuf>)],
        sql: &str,
    ) -> Result<Vec<RecordBatch>> {
        self.engine.query_tables(tables, sql)
    }

    /// Writes a first-occurrence table where the run maps rows: the engine aggregates and
    /// writes it (see [`Engine::write_first_occurrences`]).
    pub fn write_first_occurrences<F: RowFunction>(
        &self,
        job: &FirstOccurrences<'_>,
    ) -> Result<()> {
        self.engine.write_first_occurrences::<F>(job, &self.clock)
    }

    /// Where the run maps rows.
    pub fn engine_place(&self) -> &Place {
        self.engine.place()
    }

    /// Sends a batch to an output dataset.
    pub fn write(&mut self, output: &str, batch: RecordBatch) -> Result<()> {
        let stage = &self.stage;
        self.outputs
            .get_mut(output)
            .ok_or_else(|| {
                PipelineError::Internal(format!(
                    "stage `{stage}` wrote `{output}`, which it did not declare"
                ))
            })?
            .write(batch)
    }

    /// Closes the output's current part (if it has rows) and labels the parts that follow
    /// with `label`, which the manifest records per part: a stage that writes parts of its
    /// own choosing (one per training shard, say) starts each with this.
    pub fn start_part(&mut self, output: &str, label: &str) -> Result<()> {
        let stage = &self.stage;
        self.outputs
            .get_mut(output)
            .ok_or_else(|| {
                PipelineError::Internal(format!(
                    "stage `{stage}` started a part of `{output}`, which it did not declare"
                ))
            })?
            .start_part(label)
    }

    /// Counts rows read.
    pub fn count_in(&mut self, rows: u64) {
        self.rows_in += rows;
    }

    /// Counts rows dropped for `reason`.
    pub fn count_dropped(&mut self, reason: &str, rows: u64) {
        *self.dropped.entry(reason.to_string()).or_default() += rows;
    }

    /// Adds to a stage-specific counter recorded in the manifest.
    pub fn count(&mut self, counter: &str, n: u64) {
        *self.counters.entry(counter.to_string()).or_default() += n;
    }

    /// Sets a stage-specific counter, replacing any value (a carried-over one included).
    pub fn set_count(&mut self, counter: &str, n: u64) {
        self.counters.insert(counter.to_string(), n);
    }

    /// Records a warning (shown to the user and kept in the manifest).
    pub fn warn(&mut self, message: impl Into<String>) {
        let message = message.into();
        self.progress.warning(&self.stage, &message);
        self.warnings.push(message);
    }

    /// Sets the amount of work (input bytes or rows) the progress display counts towards.
    pub fn set_work_total(&self, total: u64, unit: WorkUnit) {
        self.progress.work_total(&self.stage, total, unit);
    }

    /// Shows a short status line next to the stage's progress (replacing the rows/s one).
    pub fn report_message(&self, message: &str) {
        self.progress.message(&self.stage, message);
    }

    /// Reports progress: rows read so far and work done so far (same unit as the total).
    pub fn report_progress(&self, work_done: u64) {
        self.progress.progress(&self.stage, self.rows_in, work_done);
    }
}
