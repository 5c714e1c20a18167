//! Writing a dataset as size-bounded, zstd-compressed Parquet parts.
//!
//! [`DatasetWriter`] does the writing; [`OutputSink`] runs one on its own thread behind a
//! bounded channel, so a stage keeps producing batches while the previous ones compress.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use arrow::array::{Array, UInt64Array};
use arrow::compute::{cast, max, min, sum};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::config::Settings;
use crate::error::{IoContext, PipelineError, Result};
use crate::hash::HashingWriter;
use crate::manifest::{ColumnStats, DatasetManifest, PartFile};
use crate::output::OutputDecl;

/// Batches in flight between a stage and the writer thread of one output.
const CHANNEL_BATCHES: usize = 2;

/// A column's dictionary is given up for plain pages once it holds this many bytes. Columns of
/// few distinct values (file names, tasks, instructions) stay far below it; a column of distinct
/// texts falls back early instead of holding a megabyte-sized dictionary per row group.
const DICTIONARY_PAGE_BYTES: usize = 256 << 10;

type PartSink = HashingWriter<BufWriter<File>>;

/// The part being written.
struct OpenPart {
    writer: ArrowWriter<PartSink>,
    path: String,
    rows: u64,
    stats: BTreeMap<String, ColumnStats>,
    /// Arrow bytes handed to the writer since its last row group was closed.
    unflushed_bytes: usize,
}

/// Writes one dataset into `<entry>/<name>/part-NNNNN.parquet` files.
pub struct DatasetWriter {
    name: String,
    entry_dir: PathBuf,
    schema: SchemaRef,
    props: WriterProperties,
    part_max_bytes: u64,
    row_group_max_bytes: usize,
    stat_columns: Vec<String>,
    label: Option<String>,
    current: Option<OpenPart>,
    parts: Vec<PartFile>,
}

impl DatasetWriter {
    /// A writer for the output `decl` inside the cache entry folder `entry_dir`.
    pub fn new(entry_dir: PathBuf, decl: &OutputDecl, settings: &Settings) -> Result<Self> {
        let (name, schema) = (decl.name.as_str(), decl.schema.clone());
        for column in &decl.part_stats {
            let integer = schema
                .field_with_name(column)
                .is_ok_and(|f| f.data_type().is_integer());
            if !integer {
                return Err(PipelineError::Internal(format!(
                    "dataset `{name}`: part statistics need an integer column, `{column}` is not one"
                )));
            }
        }
        let level = ZstdLevel::try_new(settings.zstd_level)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(settings.row_group_rows.max(1)))
            .set_max_row_group_bytes(Some(settings.row_group_max_bytes.max(1) as usize))
            .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
            .build();
        let dir = entry_dir.join(name);
        fs::create_dir_all(&dir).at(&dir)?;
        Ok(DatasetWriter {
            name: name.to_string(),
            entry_dir,
            schema,
            props,
            part_max_bytes: settings.part_max_bytes.max(1),
            row_group_max_bytes: settings.row_group_max_bytes.max(1) as usize,
            stat_columns: decl.part_stats.clone(),
            label: None,
            current: None,
            parts: Vec::new(),
        })
    }

    /// Appends a batch, closing the current part once it reaches the size bound.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(PipelineError::Internal(format!(
                "dataset `{}`: batch schema {:?} differs from the declared {:?}",
                self.name,
                batch.schema(),
                self.schema
            )));
        }
        if self.current.is_none() {
            self.open_part()?;
        }
        let stats = self.batch_stats(batch)?;
        let part = self.current.as_mut().expect("a part is open");
        part.writer.write(batch)?;
        for (column, s) in stats {
            part.stats
                .entry(column)
                .and_modify(|acc| acc.merge(s))
                .or_insert(s);
        }
        part.rows += batch.num_rows() as u64;
        part.unflushed_bytes += arrow_bytes(batch);
        let writer = &mut part.writer;
        // The writer buffers a whole row group in memory, and each compressed page keeps a
        // buffer sized for its uncompressed bytes; so the bound counts the Arrow bytes handed
        // over as well as the encoded size, or text that compresses well could hold several
        // times the bound.
        if writer.in_progress_size().max(part.unflushed_bytes) >= self.row_group_max_bytes {
            writer.flush()?;
            part.unflushed_bytes = 0;
        }
        if writer.bytes_written() as u64 + writer.in_progress_size() as u64 >= self.part_max_bytes {
            self.close_part()?;
        }
        Ok(())
    }

    /// Starts the dataset with parts committed before, in the folder `from` (an earlier cache
    /// entry): each is hard-linked (copied where links are not possible) and keeps its
    /// manifest record; parts written afterwards are numbered after them.
    pub fn adopt(&mut self, parts: Vec<PartFile>, from: &Path) -> Result<()> {
        if self.current.is_some() || !self.parts.is_empty() {
            return Err(PipelineError::Internal(format!(
                "dataset `{}`: earlier parts can only lead the dataset",
                self.name
            )));
        }
        for part in parts {
            let source = from.join(&part.path);
            let target = self.entry_dir.join(&part.path);
            if let Some(dir) = target.parent() {
                fs::create_dir_all(dir).at(dir)?;
            }
            crate::fsutil::link_or_copy(&source, &target)?;
            self.parts.push(part);
        }
        Ok(())
    }

    /// Closes the current part, unless it is still empty, and labels the parts that follow.
    pub fn start_part(&mut self, label: &str) -> Result<()> {
        if self.current.as_ref().is_some_and(|p| p.rows > 0) {
            self.close_part()?;
        }
        self.label = Some(label.to_string());
        Ok(())
    }

    /// The declared column statistics of one batch.
    fn batch_stats(&self, batch: &RecordBatch) -> Result<Vec<(String, ColumnStats)>> {
        let mut out = Vec::with_capacity(self.stat_columns.len());
        for column in &self.stat_columns {
            let values = batch.column_by_name(column).ok_or_else(|| {
                PipelineError::Internal(format!("dataset `{}` has no column `{column}`", self.name))
            })?;
            let values = cast(values, &DataType::UInt64)?;
            let values = values
                .as_any()
                .downcast_ref::<UInt64Array>()
                .expect("cast to UInt64");
            // The kernels skip nulls; a batch of nulls only adds nothing.
            if values.null_count() == values.len() {
                continue;
            }
            let stats = ColumnStats {
                sum: sum(values).unwrap_or(0),
                min: min(values).unwrap_or(0),
                max: max(values).unwrap_or(0),
            };
            out.push((column.clone(), stats));
        }
        Ok(out)
    }

    /// Closes the last part and returns the dataset's manifest entry. A dataset with no rows
    /// still gets one (empty) part, so its schema is readable.
    pub fn finish(mut self) -> Result<DatasetManifest> {
        if self.current.is_none() && self.parts.is_empty() {
            self.open_part()?;
        }
        self.close_part()?;
        Ok(DatasetManifest::new(&self.schema, self.parts))
    }

    /// Closes the last part and returns the parts written: none for a writer that got no row
    /// (a chunk's writer, see [`crate::engine::write`]).
    pub fn finish_parts(mut self) -> Result<Vec<PartFile>> {
        self.close_part()?;
        Ok(self.parts)
    }

    /// Appends parts written elsewhere (a chunk's, in the folder `from`), after closing the
    /// current part: each is linked in as the next part (hard link, or copy) and keeps its
    /// record but for its path.
    pub fn take(&mut self, parts: Vec<PartFile>, from: &Path) -> Result<()> {
        self.close_part()?;
        for part in parts {
            let rel = format!("{}/part-{:05}.parquet", self.name, self.parts.len());
            crate::fsutil::link_or_copy(&from.join(&part.path), &self.entry_dir.join(&rel))?;
            self.parts.push(PartFile {
                path: rel,
                label: self.label.clone(),
                ..part
            });
        }
        Ok(())
    }

    fn open_part(&mut self) -> Result<()> {
        let rel = format!("{}/part-{:05}.parquet", self.name, self.parts.len());
        let path = self.entry_dir.join(&rel);
        let file = File::create(&path).at(&path)?;
        let sink = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let writer = ArrowWriter::try_new(sink, self.schema.clone(), Some(self.props.clone()))?;
        self.current = Some(OpenPart {
            writer,
            path: rel,
            rows: 0,
            stats: BTreeMap::new(),
            unflushed_bytes: 0,
        });
        Ok(())
    }

    fn close_part(&mut self) -> Result<()> {
        let Some(OpenPart {
            writer,
            path: rel,
            rows,
            stats,
            ..
        }) = self.current.take()
        else {
            return Ok(());
        };
        let path = self.entry_dir.join(&rel);
        let sink = writer.into_inner()?;
        let (buffered, blake3, bytes) = sink.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| PipelineError::io(&path, e.into_error()))?;
        file.sync_all().at(&path)?;
        self.parts.push(PartFile {
            path: rel,
            rows,
            bytes,
            blake3,
            label: self.label.clone(),
            stats,
        });
        Ok(())
    }
}

/// The bytes of `batch`'s own rows (a slice counts its part of the buffers, not all of them).
fn arrow_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|column| {
            let data = column.to_data();
            data.get_slice_memory_size()
                .unwrap_or_else(|_| data.get_array_memory_size())
        })
        .sum()
}

/// What the stage side sends to a writer thread.
enum SinkMessage {
    Batch(RecordBatch),
    StartPart(String),
    Adopt(Vec<PartFile>, PathBuf),
    Take(Vec<PartFile>, PathBuf),
}

/// A [`DatasetWriter`] running on its own thread; the stage side sends batches to it.
pub struct OutputSink {
    name: String,
    rows: u64,
    tx: Option<SyncSender<SinkMessage>>,
    handle: Option<JoinHandle<Result<DatasetManifest>>>,
}

impl OutputSink {
    /// Starts the writer thread.
    pub fn spawn(writer: DatasetWriter) -> Self {
        let name = writer.name.clone();
        let (tx, rx) = sync_channel::<SinkMessage>(CHANNEL_BATCHES);
        let handle = std::thread::Builder::new()
            .name(format!("write-{name}"))
            .spawn(move || {
                let mut writer = writer;
                for message in rx {
                    match message {
                        SinkMessage::Batch(batch) => writer.write(&batch)?,
                        SinkMessage::StartPart(label) => writer.start_part(&label)?,
                        SinkMessage::Adopt(parts, from) => writer.adopt(parts, &from)?,
                        SinkMessage::Take(parts, from) => writer.take(parts, &from)?,
                    }
                }
                writer.finish()
            })
            .expect("spawning a writer thread");
        OutputSink {
            name,
            rows: 0,
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Rows sent so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Sends a batch to the writer; fails with the writer's own error if it has stopped.
    pub fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = batch.num_rows() as u64;
        self.send(SinkMessage::Batch(batch))?;
        self.rows += rows;
        Ok(())
    }

    /// Closes the current part and labels the parts that follow (see
    /// [`DatasetWriter::start_part`]).
    pub fn start_part(&mut self, label: &str) -> Result<()> {
        self.send(SinkMessage::StartPart(label.to_string()))
    }

    /// Starts the dataset with earlier parts (see [`DatasetWriter::adopt`]).
    pub fn adopt(&mut self, parts: Vec<PartFile>, from: PathBuf) -> Result<()> {
        let rows: u64 = parts.iter().map(|p| p.rows).sum();
        self.send(SinkMessage::Adopt(parts, from))?;
        self.rows += rows;
        Ok(())
    }

    /// Appends parts written elsewhere (see [`DatasetWriter::take`]).
    pub fn take(&mut self, parts: Vec<PartFile>, from: PathBuf) -> Result<()> {
        let rows: u64 = parts.iter().map(|p| p.rows).sum();
        self.send(SinkMessage::Take(parts, from))?;
        self.rows += rows;
        Ok(())
    }

    fn send(&mut self, message: SinkMessage) -> Result<()> {
        let tx = self.tx.as_ref().expect("sink used after finish");
        if tx.send(message).is_err() {
            self.tx = None;
            return Err(self.join().err().unwrap_or_else(|| {
                PipelineError::Internal(format!("writer of `{}` stopped early", self.name))
            }));
        }
        Ok(())
    }

    /// Waits for the writer to flush everything and returns the dataset's manifest entry.
    pub fn finish(mut self) -> Result<DatasetManifest> {
        self.tx = None;
        self.join()
    }

    fn join(&mut self) -> Result<DatasetManifest> {
        let handle = self.handle.take().ok_or_else(|| {
            PipelineError::Internal(format!("writer of `{}` joined twice", self.name))
        })?;
        handle.join().unwrap_or_else(|_| {
            Err(PipelineError::Internal(format!(
                "writer thread of `{}` panicked",
                self.name
            )))
        })
    }
}
