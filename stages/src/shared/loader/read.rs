//! Reading one training shard: all of it, or just its `length` column.

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, ListArray, RecordBatch, StringArray, UInt32Array};
use arrow::compute::concat_batches;
use arrow::datatypes::{Int32Type, UInt32Type};
use medtune_pipeline::{PipelineError, Result};
use medtune_schemas::col::{self, LENGTH};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

/// Rows read at a time from a shard file.
const READ_ROWS: usize = 8192;

fn bad(path: &Path, message: impl Into<String>) -> PipelineError {
    PipelineError::bad_input(path, message)
}

fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| PipelineError::io(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(path, format!("not a readable Parquet shard: {e}")))
}

/// The `length` column of a shard, without decoding its tokens.
pub fn shard_lengths(path: &Path) -> Result<Vec<u32>> {
    let builder = open(path)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), [LENGTH]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(READ_ROWS)
        .build()?;
    let mut lengths = Vec::new();
    for batch in reader {
        let batch = batch?;
        let column = batch
            .column_by_name(LENGTH)
            .and_then(|c| c.as_primitive_opt::<UInt32Type>())
            .ok_or_else(|| bad(path, "no UInt32 column `length`"))?;
        lengths.extend(column.values().iter().copied());
    }
    Ok(lengths)
}

/// A shard read into memory, its columns checked.
pub struct ShardRows {
    batch: RecordBatch,
}

impl ShardRows {
    /// Reads the shard at `path`, checking its schema and that every row has one label per
    /// token and the length it claims.
    pub fn read(path: &Path) -> Result<Self> {
        let reader = open(path)?.with_batch_size(READ_ROWS).build()?;
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
        let expected = medtune_schemas::tokenized();
        if let Some(first) = batches.first() {
            if first.schema().fields() != expected.fields() {
                return Err(bad(
                    path,
                    format!(
                        "not a training shard: columns {:?}, expected {:?}",
                        first.schema().fields(),
                        expected.fields()
                    ),
                ));
            }
        }
        let batch = concat_batches(&expected, &batches)?;
        let rows = ShardRows { batch };
        for row in 0..rows.len() {
            let (ids, labels) = (rows.input_ids(row), rows.labels(row));
            let length = rows.length(row) as usize;
            if ids.len() != labels.len() || ids.len() != length {
                return Err(bad(
                    path,
                    format!(
                        "row {row} (id {}): {} tokens, {} labels, length {length}",
                        rows.id(row),
                        ids.len(),
                        labels.len()
                    ),
                ));
            }
        }
        Ok(rows)
    }

    /// Rows in the shard.
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// Whether the shard has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn column(&self, name: &str) -> &dyn Array {
        self.batch
            .column_by_name(name)
            .expect("schema checked on read")
            .as_ref()
    }

    fn list(&self, name: &str) -> &ListArray {
        self.column(name).as_list::<i32>()
    }

    fn uint32(&self, name: &str) -> &UInt32Array {
        self.column(name).as_primitive::<UInt32Type>()
    }

    /// Lengths of all rows.
    pub fn lengths(&self) -> &[u32] {
        self.uint32(LENGTH).values()
    }

    /// The row's token ids.
    pub fn input_ids(&self, row: usize) -> &[u32] {
        let list = self.list("input_ids");
        let (start, end) = (list.value_offsets()[row], list.value_offsets()[row + 1]);
        &list.values().as_primitive::<UInt32Type>().values()[start as usize..end as usize]
    }

    /// The row's labels.
    pub fn labels(&self, row: usize) -> &[i32] {
        let list = self.list("labels");
        let (start, end) = (list.value_offsets()[row], list.value_offsets()[row + 1]);
        &list.values().as_primitive::<Int32Type>().values()[start as usize..end as usize]
    }

    /// The row's length in tokens.
    pub fn length(&self, row: usize) -> u32 {
        self.uint32(LENGTH).value(row)
    }

    /// The row id (the example's id).
    pub fn id(&self, row: usize) -> &str {
        self.column(col::ID).as_string::<i32>().value(row)
    }

    /// The row's task, if it has one.
    pub fn task(&self, row: usize) -> Option<&str> {
        let tasks: &StringArray = self.column(col::TASK).as_string::<i32>();
        tasks.is_valid(row).then(|| tasks.value(row))
    }

    /// Which window of its example the row is (0 unless the example was windowed).
    pub fn window(&self, row: usize) -> u32 {
        self.uint32("window").value(row)
    }

    /// Leading prompt tokens (SFT rows).
    pub fn prompt_tokens(&self, row: usize) -> u32 {
        self.uint32("prompt_tokens").value(row)
    }
}
