//! Reading a committed dataset back as a stream of record batches.

use std::fs::File;
use std::path::{Path, PathBuf};

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
