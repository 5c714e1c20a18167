//! State a stage keeps beside its outputs so that a later run over appended rows can pick up
//! where it stopped (dedup's seen hashes and MinHash index, split's group assignment): small
//! uncompressed Parquet tables in the stage's artifacts folder, committed with its outputs.

use std::fs::File;
use std::path::Path;

use arrow::record_batch::RecordBatch;
use medtune_pipeline::{PipelineError, Result};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// Rows per batch when a state table is read back.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// Writes `batch` as the state table `dir/name.parquet`.
pub fn write_table(dir: &Path, name: &str, batch: &RecordBatch) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
    let path = dir.join(format!("{name}.parquet"));
    let file = File::create(&path).map_err(|e| PipelineError::io(&path, e))?;
    // Plain encoding: the tables are read back whole, and MinHash values do not compress.
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(())
}

/// Reads the state table `dir/name.parquet` back; `None` when there is none (an output made
/// before the stage kept state).
pub fn read_table(dir: &Path, name: &str) -> Result<Option<Vec<RecordBatch>>> {
    let path = dir.join(format!("{name}.parquet"));
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PipelineError::io(&path, e)),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(READ_BATCH_ROWS)
        .build()?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PipelineError::Internal(format!("{}: {e}", path.display())))?;
    Ok(Some(batches))
}
