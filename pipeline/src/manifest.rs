//! The manifest of a committed stage output: what went in, what came out, and the
//! checksums that let the cache decide whether to trust it.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::datatypes::Schema;
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, PipelineError, Result};
use crate::hash::hash_file;
use crate::output::OutputRole;

/// File name of the manifest inside a cache entry.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Folder of a cache entry holding a stage's artifacts.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// Version of the manifest format; older formats are treated as missing.
pub const MANIFEST_FORMAT: u32 = 1;

/// One Parquet part of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartFile {
    /// Path relative to the cache entry, e.g. `ingested/part-00000.parquet`.
    pub path: String,
    /// Rows in the part.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex BLAKE3 of the file.
    pub blake3: String,
    /// The label the stage gave the part (e.g. the split of a training shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Per-column statistics the output declared (see `OutputDecl::part_stats`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, ColumnStats>,
}

/// Sum, minimum and maximum of an integer column's non-null values over one part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// Sum of the values.
    pub sum: u64,
    /// Smallest value.
    pub min: u64,
    /// Largest value.
    pub max: u64,
}

impl ColumnStats {
    /// Folds the statistics of more rows of the same part into these.
    pub fn merge(&mut self, other: ColumnStats) {
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// One column of a dataset's schema, as recorded for people and tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Arrow data type, displayed.
    pub data_type: String,
    /// Whether nulls are allowed.
    pub nullable: bool,
}

/// One output dataset of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    /// Total rows.
    pub rows: u64,
    /// Total bytes of its parts.
    pub bytes: u64,
    /// Hash over the parts' hashes: the dataset's identity in downstream cache keys.
    pub content_hash: String,
    /// Schema of the parts.
    pub schema: Vec<ColumnInfo>,
    /// The parts, in order.
    pub files: Vec<PartFile>,
    /// What the dataset is for in its stage's row accounting.
    #[serde(default)]
    pub role: OutputRole,
}

impl DatasetManifest {
    /// Builds the entry for `files`, computing totals and the content hash.
    pub fn new(schema: &Schema, files: Vec<PartFile>) -> Self {
        let content_hash =
            crate::hash::hash_parts(files.iter().map(|f| (f.path.as_str(), f.blake3.as_bytes())));
        DatasetManifest {
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            content_hash,
            schema: schema
                .fields()
                .iter()
                .map(|f| ColumnInfo {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                })
                .collect(),
            files,
            role: OutputRole::default(),
        }
    }
}

/// A source file outside the workdir that a stage read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The path as written in the config.
    pub path: String,
    /// Hex BLAKE3 of its content.
    pub blake3: String,
}

/// Rows in, rows kept, rows dropped by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Accounting {
    /// Rows (records) the stage read.
    pub rows_in: u64,
    /// Rows written to its main output.
    pub kept: u64,
    /// Rows dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Whether the stage keeps rows (has a `Kept` output). Stages that only read (profile,
    /// tokenize, train) count the rows they read, and `rows_in = kept + dropped` does not apply.
    #[serde(default = "keeps_rows")]
    pub keeps_rows: bool,
}

fn keeps_rows() -> bool {
    true
}

impl Accounting {
    /// Sum of dropped rows over all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// The rows the stage passed on: its kept output's rows, or, for a stage without one that
    /// drops rows (tokenize), the rows it read less those it dropped. `None` for a stage that
    /// only reads (profile, train): it is not a step of the row funnel.
    pub fn passed_on(&self) -> Option<u64> {
        if self.keeps_rows {
            Some(self.kept)
        } else if self.dropped.is_empty() {
            None
        } else {
            Some(self.rows_in.saturating_sub(self.dropped_total()))
        }
    }
}

/// Everything recorded about one committed stage output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// Stage name.
    pub stage: String,
    /// Stage logic version.
    pub version: u32,
    /// Cache key of this entry.
    pub key: String,
    /// Canonical config subset the stage ran with.
    pub config: serde_json::Value,
    /// Content hash of each input dataset.
    pub inputs: BTreeMap<String, String>,
    /// Source files read, with their content hashes.
    pub sources: Vec<SourceRecord>,
    /// Output datasets.
    pub datasets: BTreeMap<String, DatasetManifest>,
    /// Files the stage wrote besides datasets (a trained adapter, say), under `artifacts/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<PartFile>,
    /// The key of the output this one appends to (stored as `extends`, the name earlier
    /// manifests use): its parts lead this one's and only rows
    /// appended to the inputs since were processed (absent for a full run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "extends")]
    pub appends_to: Option<String>,
    /// Row accounting.
    pub accounting: Accounting,
    /// Stage-specific counts (repairs, truncations, ...).
    pub counters: BTreeMap<String, u64>,
    /// Warnings raised while running.
    pub warnings: Vec<String>,
    /// Unix time the stage started, in seconds.
    pub started_at: u64,
    /// Wall time of the stage, in seconds.
    pub seconds: f64,
    /// Where the stage's mapped rows came from and how long they took (absent when it mapped
    /// none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineTime>,
}

/// Time a stage spent on rows mapped by the engine (`StageContext::map_rows`): what tells
/// the per-row work that scales out from the driver's share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineTime {
    /// Where rows were mapped (`in-process`, `cluster df://HOST:PORT`).
    pub place: String,
    /// Chunk jobs run.
    pub jobs: u64,
    /// Sum of the jobs' wall times, in seconds (jobs overlap: this can exceed the stage's).
    pub job_seconds: f64,
    /// Seconds the stage waited for mapped rows; the rest of its time is the driver's own.
    pub waited_seconds: f64,
}

impl Manifest {
    /// Reads the manifest of the cache entry in `dir`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).at(&path)?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| PipelineError::Internal(format!("{}: {e}", path.display())))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(PipelineError::Internal(format!(
                "{}: manifest format {} (expected {MANIFEST_FORMAT})",
                path.display(),
                manifest.format
            )));
        }
        Ok(manifest)
    }

    /// Checks every part of every dataset: present, of the recorded size and checksum.
    /// Returns a description of the first problem found.
    pub fn verify(&self, dir: &Path) -> std::result::Result<(), String> {
        let parts = self.datasets.values().flat_map(|d| d.files.iter());
        parts
            .chain(&self.artifacts)
            .try_for_each(|part| verify_part(dir, part))
    }
}

/// Checks one committed file under the entry folder `dir` against its manifest record: its
/// size, then its BLAKE3 checksum. The error names the file.
pub fn verify_part(dir: &Path, part: &PartFile) -> std::result::Result<(), String> {
    let path = dir.join(&part.path);
    let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() != part.bytes {
        return Err(format!(
            "{}: {} bytes, manifest says {}",
            path.display(),
            meta.len(),
            part.bytes
        ));
    }
    let actual = hash_file(&path).map_err(|e| e.to_string())?;
    if actual != part.blake3 {
        return Err(format!("{}: checksum mismatch", path.display()));
    }
    Ok(())
}
