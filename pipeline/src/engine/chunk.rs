//! Chunks: a committed dataset cut into runs of whole Parquet row groups, the unit of work the
//! engine hands to one task, and the table a chunk is read through.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::reader::CommittedDataset;

/// Rows a chunk holds at least (whole row groups are added until it does), unless its part
/// ends first.
pub const CHUNK_MIN_ROWS: u64 = 16 * 1024;

/// Contiguous row groups of one Parquet part: the rows a task reads, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The part file (absolute: every process of a cluster reads it at this path).
    pub path: PathBuf,
    /// Its size in bytes.
    pub file_size: u64,
    /// The byte range that holds the first page of each of the chunk's row groups (and of no
    /// other): Parquet readers select row groups by where their first page starts.
    pub byte_range: (u64, u64),
    /// Rows in the chunk.
    pub rows: u64,
}

/// A dataset cut into chunks.
#[derive(Debug, Clone)]
pub struct Chunked {
    /// Its Arrow schema (`None` when it has no parts).
    pub schema: Option<SchemaRef>,
    /// Its chunks, in row order.
    pub chunks: Vec<Chunk>,
}

/// Cuts `dataset` into chunks of whole row groups, each at least [`CHUNK_MIN_ROWS`] rows unless
/// its part ends first, in the dataset's row order. Only part footers are read.
pub fn chunks(dataset: &CommittedDataset) -> Result<Chunked> {
    let mut chunks = Vec::new();
    let mut schema = None;
    for path in dataset.part_paths() {
        let path = path.canonicalize().at(&path)?;
        let file = File::open(&path).at(&path)?;
        let file_size = file.metadata().at(&path)?.len();
        let reader = ArrowReaderMetadata::load(&file, ArrowReaderOptions::default())?;
        schema.get_or_insert_with(|| reader.schema().clone());
        let groups: Vec<(u64, u64)> = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|group| {
                let column = group.column(0);
                let first_page = column
                    .dictionary_page_offset()
                    .unwrap_or_else(|| column.data_page_offset());
                (first_page as u64, group.num_rows() as u64)
            })
            .collect();
        let mut start = 0;
        while start < groups.len() {
            let mut end = start;
            let mut rows = 0;
            while end < groups.len() && (rows < CHUNK_MIN_ROWS || end == start) {
                rows += groups[end].1;
                end += 1;
            }
            let until = groups.get(end).map_or(file_size, |g| g.0);
            chunks.push(Chunk {
                path: path.clone(),
                file_size,
                byte_range: (groups[start].0, until),
                rows,
            });
            start = end;
        }
    }
    Ok(Chunked { schema, chunks })
}

/// The Arrow schema of the Parquet part at `path` (read from its footer).
pub fn part_schema(path: &std::path::Path) -> Result<SchemaRef> {
    let file = File::open(path).at(path)?;
    let reader = ArrowReaderMetadata::load(&file, ArrowReaderOptions::default())?;
    Ok(reader.schema().clone())
}

/// A chunk as a DataFusion table: one partition that yields the chunk's rows in file order.
#[derive(Debug, Clone)]
pub struct ChunkTable {
    /// The rows it reads.
    pub chunk: Chunk,
    /// The dataset's schema.
    pub schema: SchemaRef,
}

#[async_trait]
impl TableProvider for ChunkTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let path = self.chunk.path.to_string_lossy().into_owned();
        let (start, end) = self.chunk.byte_range;
        let file =
            PartitionedFile::new(path, self.chunk.file_size).with_range(start as i64, end as i64);
        let source = Arc::new(ParquetSource::new(self.schema.clone()));
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
            .with_file(file)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
