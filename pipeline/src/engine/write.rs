//! Row stages whose parts the engine writes: each chunk of the input is mapped, routed to the
//! stage's outputs and written as Parquet parts by the process that maps it (this one, or an
//! executor of a cluster) into a folder every process can read. The driver then links the
//! parts into the stage's cache entry in chunk order and adds up their row accounting, so no
//! row passes through it and the entry is the same wherever the chunks ran.
//!
//! A chunk is one job: [`WriteChunkTable`], a table whose scan is a [`WriteChunkExec`] over the
//! chunk's rows, answering one row that describes what it wrote ([`WrittenChunk`]). A chunk's
//! folder is committed whole (written aside, then renamed) with that description in it, so a
//! task run again after a lost executor, or a stage run again after a crash, finds a chunk
//! already written and reuses it instead of writing it twice.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray, StructArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::chunk::{Chunk, ChunkTable};
use super::function::{prepared, RowFunction};
use crate::config::Settings;
use crate::error::{IoContext, PipelineError, Result};
use crate::manifest::PartFile;
use crate::output::OutputDecl;
use crate::writer::DatasetWriter;

/// A stage whose rows are independent of each other: its [`RowFunction`] maps them and
/// [`RowStage::route`] sends each to an output (or drops it, with a reason), with no state
/// carried from one batch to the next. Any process can then run it on any chunk.
pub trait RowStage: RowFunction {
    /// The outputs `route` writes to (the stage declares them too).
    fn outputs() -> Vec<OutputDecl>;

    /// Sends `rows` (every input column) to outputs through `out`, given `mapped` (the
    /// function's struct for each row), and accounts for every one of them.
    fn route(
        prepared: &Self::Prepared,
        rows: &RecordBatch,
        mapped: &StructArray,
        out: &mut RoutedRows,
    ) -> Result<()>;
}

/// A [`RowStage`] without its type: what a plan names and an executor runs.
pub trait AnyRowStage: Send + Sync {
    /// Its function's name.
    fn name(&self) -> &'static str;
    /// Its outputs.
    fn outputs(&self) -> Vec<OutputDecl>;
    /// Maps `rows` with `settings` (JSON) and routes them to `out`.
    fn map_and_route(&self, settings: &str, rows: &RecordBatch, out: &mut RoutedRows)
        -> Result<()>;
}

struct Typed<S>(PhantomData<fn() -> S>);

impl<S: RowStage> AnyRowStage for Typed<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        S::outputs()
    }

    fn map_and_route(
        &self,
        settings: &str,
        rows: &RecordBatch,
        out: &mut RoutedRows,
    ) -> Result<()> {
        let prepared = prepared::<S>(settings)?;
        let mapped = S::map(&prepared, rows)?;
        if mapped.len() != rows.num_rows() {
            return Err(PipelineError::Internal(format!(
                "{} answered {} rows for {}",
                S::NAME,
                mapped.len(),
                rows.num_rows()
            )));
        }
        S::route(&prepared, rows, &mapped, out)
    }
}

/// `S` as a stage any process can run by name.
pub fn row_stage<S: RowStage>() -> Arc<dyn AnyRowStage> {
    Arc::new(Typed::<S>(PhantomData))
}

/// The row stages a process can run, by name: what a cluster's processes are started with, so
/// that a plan naming one can be decoded there.
#[derive(Clone, Default)]
pub struct RowStages(Vec<Arc<dyn AnyRowStage>>);

impl RowStages {
    /// A registry of `stages`.
    pub fn new(stages: Vec<Arc<dyn AnyRowStage>>) -> Self {
        RowStages(stages)
    }

    /// The stage whose function is called `name`.
    pub fn find(&self, name: &str) -> Option<Arc<dyn AnyRowStage>> {
        self.0.iter().find(|s| s.name() == name).cloned()
    }
}

impl fmt::Debug for RowStages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|s| s.name()))
            .finish()
    }
}

/// What a chunk's job wrote: its parts per output (paths relative to the chunk's folder) and
/// the accounting of its rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrittenChunk {
    /// Rows read.
    pub rows_in: u64,
    /// Rows dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// The stage's own counters.
    pub counters: BTreeMap<String, u64>,
    /// Parts written, by output, in row order; an output the chunk sent no row to has none.
    pub parts: BTreeMap<String, Vec<PartFile>>,
}

/// The file in a committed chunk folder that describes it.
const WRITTEN_FILE: &str = "written.json";

impl WrittenChunk {
    /// The description in a committed chunk folder, if `dir` is one.
    pub fn read(dir: &Path) -> Result<Option<WrittenChunk>> {
        let path = dir.join(WRITTEN_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                PipelineError::Internal(format!("{}: unreadable: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PipelineError::io(&path, e)),
        }
    }
}

/// Where a row stage's route sends the rows of one chunk: a Parquet writer per output, and
/// the chunk's row accounting.
pub struct RoutedRows {
    writers: BTreeMap<String, DatasetWriter>,
    written: WrittenChunk,
}

impl RoutedRows {
    fn new(dir: &Path, outputs: &[OutputDecl], settings: &Settings) -> Result<Self> {
        let mut writers = BTreeMap::new();
        for decl in outputs {
            let writer = DatasetWriter::new(dir.to_path_buf(), decl, settings)?;
            writers.insert(decl.name.clone(), writer);
        }
        Ok(RoutedRows {
            writers,
            written: WrittenChunk::default(),
        })
    }

    /// Writes `batch` to the output `name` (a batch without rows writes nothing).
    pub fn write(&mut self, name: &str, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.writers
            .get_mut(name)
            .ok_or_else(|| {
                PipelineError::Internal(format!(
                    "a row stage wrote `{name}`, not one of its outputs"
                ))
            })?
            .write(batch)
    }

    /// Counts rows read.
    pub fn count_in(&mut self, rows: u64) {
        self.written.rows_in += rows;
    }

    /// Counts rows dropped for `reason`.
    pub fn count_dropped(&mut self, reason: &str, rows: u64) {
        *self.written.dropped.entry(reason.to_string()).or_default() += rows;
    }

    /// Adds to one of the stage's counters.
    pub fn count(&mut self, counter: &str, n: u64) {
        *self
            .written
            .counters
            .entry(counter.to_string())
            .or_default() += n;
    }

    /// Closes every part (each synced to disk) and describes them.
    fn finish(mut self) -> Result<WrittenChunk> {
        for (name, writer) in self.writers {
            let parts = writer.finish_parts()?;
            if !parts.is_empty() {
                self.written.parts.insert(name, parts);
            }
        }
        Ok(self.written)
    }
}

/// One chunk's job, as a plan carries it from the driver to the process that runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkJob {
    /// The row stage's function name.
    pub stage: String,
    /// Its settings (JSON).
    pub settings: String,
    /// The rows.
    pub chunk: Chunk,
    /// How parts are written (sizes, compression).
    pub writer: Settings,
    /// Rows per batch handed to the stage.
    pub batch_rows: usize,
    /// The chunk's folder: committed there whole, or found there from an earlier attempt.
    pub dir: PathBuf,
}

/// A chunk's job as a table: scanning it writes the chunk and yields one row, the JSON of its
/// [`WrittenChunk`].
#[derive(Clone)]
pub struct WriteChunkTable {
    /// The job.
    pub job: ChunkJob,
    /// The stage it runs.
    pub stage: Arc<dyn AnyRowStage>,
    /// The schema of the rows the chunk holds.
    pub input_schema: SchemaRef,
}

impl fmt::Debug for WriteChunkTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteChunkTable")
            .field("job", &self.job)
            .finish()
    }
}

/// The one column a written chunk is answered in.
pub const WRITTEN: &str = "written";

fn written_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        WRITTEN,
        DataType::Utf8,
        false,
    )]))
}

#[async_trait]
impl TableProvider for WriteChunkTable {
    fn schema(&self) -> SchemaRef {
        written_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let rows = ChunkTable {
            chunk: self.job.chunk.clone(),
            schema: self.input_schema.clone(),
        };
        let input = rows.scan(state, None, &[], None).await?;
        Ok(Arc::new(WriteChunkExec::new(
            self.job.clone(),
            self.stage.clone(),
            input,
        )))
    }
}

/// Writes one chunk: reads its rows from the input plan, maps and routes them with the job's
/// stage into Parquet parts, commits the chunk's folder and yields its [`WrittenChunk`].
pub struct WriteChunkExec {
    job: ChunkJob,
    stage: Arc<dyn AnyRowStage>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl WriteChunkExec {
    /// The job over `input` (the chunk's scan).
    pub fn new(job: ChunkJob, stage: Arc<dyn AnyRowStage>, input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(written_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        WriteChunkExec {
            job,
            stage,
            input,
            properties: Arc::new(properties),
        }
    }

    /// Its job.
    pub fn job(&self) -> &ChunkJob {
        &self.job
    }
}

impl fmt::Debug for WriteChunkExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteChunkExec")
            .field("job", &self.job)
            .finish()
    }
}

impl DisplayAs for WriteChunkExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "WriteChunkExec: {} into {}",
            self.job.stage,
            self.job.dir.display()
        )
    }
}

impl ExecutionPlan for WriteChunkExec {
    fn name(&self) -> &str {
        "WriteChunkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("WriteChunkExec takes one input".to_string()))?;
        Ok(Arc::new(WriteChunkExec::new(
            self.job.clone(),
            self.stage.clone(),
            input,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        if partition != 0 || self.input.properties().partitioning.partition_count() != 1 {
            return Err(DataFusionError::Internal(
                "WriteChunkExec writes one chunk from one input partition".to_string(),
            ));
        }
        let input = self.input.execute(0, context)?;
        let (job, stage) = (self.job.clone(), self.stage.clone());
        let written = async move {
            let written = write_chunk(&job, stage.as_ref(), input)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let json = serde_json::to_string(&written).expect("a written chunk serialises");
            Ok(RecordBatch::try_new(
                written_schema(),
                vec![Arc::new(StringArray::from(vec![json]))],
            )?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            written_schema(),
            futures::stream::once(written),
        )))
    }
}

/// Writes `job`'s chunk from `input`, or finds it written by an earlier attempt.
async fn write_chunk(
    job: &ChunkJob,
    stage: &dyn AnyRowStage,
    mut input: SendableRecordBatchStream,
) -> Result<WrittenChunk> {
    if let Some(done) = WrittenChunk::read(&job.dir)? {
        return Ok(done);
    }
    let name = job
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let aside = job
        .dir
        .with_file_name(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&aside).at(&aside)?;
    let result = async {
        let mut out = RoutedRows::new(&aside, &stage.outputs(), &job.writer)?;
        let mut batches = Recut::new(job.batch_rows);
        while let Some(batch) = input.next().await {
            let batch =
                batch.map_err(|e| PipelineError::Engine(format!("reading a chunk: {e}")))?;
            for rows in batches.push(batch)? {
                stage.map_and_route(&job.settings, &rows, &mut out)?;
            }
        }
        if let Some(rows) = batches.finish()? {
            stage.map_and_route(&job.settings, &rows, &mut out)?;
        }
        let written = out.finish()?;
        let json = serde_json::to_vec(&written).expect("a written chunk serialises");
        crate::fsutil::write_atomic(&aside.join(WRITTEN_FILE), &json)?;
        Ok(written)
    }
    .await;
    let written = match result {
        Ok(written) => written,
        Err(e) => {
            let _ = fs::remove_dir_all(&aside);
            return Err(e);
        }
    };
    if let Err(e) = fs::rename(&aside, &job.dir) {
        // Another attempt committed the chunk first: its parts hold the same rows.
        let _ = fs::remove_dir_all(&aside);
        return match WrittenChunk::read(&job.dir)? {
            Some(done) => Ok(done),
            None => Err(PipelineError::io(&job.dir, e)),
        };
    }
    if let Some(parent) = job.dir.parent() {
        crate::fsutil::sync_dir(parent)?;
    }
    Ok(written)
}

/// Re-cuts a stream of batches into batches of exactly `rows` rows (the last one shorter), so
/// the batches a stage sees, and the Parquet pages that follow them, do not depend on how a
/// scan cut its output.
struct Recut {
    rows: usize,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
}

impl Recut {
    fn new(rows: usize) -> Self {
        Recut {
            rows: rows.max(1),
            pending: Vec::new(),
            pending_rows: 0,
        }
    }

    fn push(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        let mut out = Vec::new();
        if self.pending_rows < self.rows {
            return Ok(out);
        }
        let schema = self.pending[0].schema();
        let all = arrow::compute::concat_batches(&schema, &self.pending)?;
        let mut offset = 0;
        while all.num_rows() - offset >= self.rows {
            out.push(all.slice(offset, self.rows));
            offset += self.rows;
        }
        let rest = all.slice(offset, all.num_rows() - offset);
        self.pending_rows = rest.num_rows();
        self.pending = vec![rest];
        Ok(out)
    }

    fn finish(self) -> Result<Option<RecordBatch>> {
        if self.pending_rows == 0 {
            return Ok(None);
        }
        let schema = self.pending[0].schema();
        Ok(Some(arrow::compute::concat_batches(
            &schema,
            &self.pending,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::UInt64Array;

    fn batch(values: std::ops::Range<u64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(UInt64Array::from_iter_values(values))],
        )
        .unwrap()
    }

    fn values(batches: &[RecordBatch]) -> Vec<(usize, u64)> {
        batches
            .iter()
            .map(|b| {
                let n = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
                (n.len(), n.value(0))
            })
            .collect()
    }

    #[test]
    fn recut_gives_the_same_batches_however_the_input_was_cut() {
        let cut = |sizes: &[u64]| {
            let mut recut = Recut::new(4);
            let mut out = Vec::new();
            let mut start = 0;
            for size in sizes {
                out.extend(recut.push(batch(start..start + size)).unwrap());
                start += size;
            }
            out.extend(recut.finish().unwrap());
            values(&out)
        };
        let expected = vec![(4, 0), (4, 4), (2, 8)];
        assert_eq!(cut(&[10]), expected);
        assert_eq!(cut(&[1, 1, 1, 1, 1, 5]), expected);
        assert_eq!(cut(&[3, 7]), expected);
        assert_eq!(cut(&[4, 4, 2]), expected);
    }
}
