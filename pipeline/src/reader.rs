//! Reading a committed dataset back as a stream of record batches.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{IoContext, Result};
use crate::manifest::{DatasetManifest, Manifest};

/// A committed dataset: its cache entry folder and manifest entry.
#[derive(Debug, Clone)]
pub struct CommittedDataset {
    /// Dataset name.
    pub name: String,
    /// The cache entry folder holding its parts.
    pub entry_dir: PathBuf,
    /// Its manifest entry.
    pub manifest: DatasetManifest,
}

impl CommittedDataset {
    /// The dataset `name` of the stage output committed in `entry_dir` with `manifest`, if the
    /// manifest lists it.
    pub fn in_entry(entry_dir: &Path, manifest: &Manifest, name: &str) -> Option<Self> {
        manifest.datasets.get(name).map(|dataset| CommittedDataset {
            name: name.to_string(),
            entry_dir: entry_dir.to_path_buf(),
            manifest: dataset.clone(),
        })
    }

    /// Every dataset of the stage output committed in `entry_dir` with `manifest`.
    pub fn all_in_entry<'m>(
        entry_dir: &'m Path,
        manifest: &'m Manifest,
    ) -> impl Iterator<Item = Self> + 'm {
        manifest
            .datasets
            .iter()
            .map(move |(name, dataset)| CommittedDataset {
                name: name.clone(),
                entry_dir: entry_dir.to_path_buf(),
                manifest: dataset.clone(),
            })
    }

    /// Paths of its Parquet parts.
    pub fn part_paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.manifest
            .files
            .iter()
            .map(|f| self.entry_dir.join(&f.path))
    }

    /// Checks each of its parts' size and checksum against the manifest (the error names the
    /// first file that fails).
    pub fn verify(&self) -> std::result::Result<(), String> {
        self.manifest
            .files
            .iter()
            .try_for_each(|part| crate::manifest::verify_part(&self.entry_dir, part))
    }

    /// The artifacts folder of the stage output this dataset belongs to (files committed with
    /// it, such as a trained adapter).
    pub fn stage_artifacts_dir(&self) -> PathBuf {
        self.entry_dir.join(crate::manifest::ARTIFACTS_DIR)
    }

    /// Streams its rows, part after part, in batches of at most `batch_rows`.
    pub fn batches(
        &self,
        batch_rows: usize,
    ) -> impl Iterator<Item = Result<RecordBatch>> + Send + 'static {
        let paths: Vec<PathBuf> = self.part_paths().collect();
        paths
            .into_iter()
            .flat_map(move |path| match open_part(&path, batch_rows) {
                Ok(reader) => Box::new(reader.map(|b| b.map_err(Into::into)))
                    as Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
                Err(e) => Box::new(std::iter::once(Err(e))),
            })
    }
}

fn open_part(
    path: &Path,
    batch_rows: usize,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let file = File::open(path).at(path)?;
    Ok(ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(batch_rows.max(1))
        .build()?)
}

/// Batches a stage has not asked for yet that are read ahead of it: Parquet decoding of the
/// next batches overlaps the stage's work on the current one.
const READ_AHEAD_BATCHES: usize = 2;

/// `batches`, read on a thread of their own, at most two batches ahead of the
/// consumer; the thread stops when the consumer drops the iterator.
pub fn read_ahead(
    batches: impl Iterator<Item = Result<RecordBatch>> + Send + 'static,
) -> impl Iterator<Item = Result<RecordBatch>> + Send + 'static {
    let (tx, rx) = sync_channel(READ_AHEAD_BATCHES);
    std::thread::Builder::new()
        .name("medtune-read-ahead".into())
        .spawn(move || {
            for batch in batches {
                if tx.send(batch).is_err() {
                    break;
                }
            }
        })
        .expect("spawning a read-ahead thread");
    rx.into_iter()
}

#[cfg(test)]
mod read_ahead_tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};

    use super::*;

    fn batch(value: i64) -> Result<RecordBatch> {
        let column: ArrayRef = Arc::new(Int64Array::from(vec![value]));
        Ok(RecordBatch::try_from_iter([("v", column)])?)
    }

    #[test]
    fn read_ahead_keeps_order_and_errors_and_stops_when_dropped() {
        let values = |it: &mut dyn Iterator<Item = Result<RecordBatch>>| -> Vec<i64> {
            it.map(|b| {
                let b = b.unwrap();
                let column = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                column.value(0)
            })
            .collect()
        };
        assert_eq!(
            values(&mut read_ahead((0..100).map(batch))),
            (0..100).collect::<Vec<_>>()
        );
        let failing = (0..3).map(|i| {
            if i == 1 {
                Err(crate::PipelineError::Internal("part 2 is corrupt".into()))
            } else {
                batch(i)
            }
        });
        let got: Vec<_> = read_ahead(failing).collect();
        assert_eq!(got.len(), 3);
        assert!(got[1].as_ref().unwrap_err().to_string().contains("corrupt"));
        // An endless source: dropping the consumer ends the thread (the test would hang if a
        // send blocked forever; a failed send ends the loop).
        let mut endless = read_ahead((0..).map(batch));
        assert!(endless.next().is_some());
        drop(endless);
    }
}
