//! Dedup's state between runs: the first-occurrence tables of normalised-text hashes (each
//! key with the id of the row that had it first; written by the engine, see
//! [`medtune_pipeline::engine::first`]) and the near-duplicate index (every indexed row's
//! MinHash signature, group key, best earlier match and the earlier entries it was joined
//! with). A run over appended rows checks the new rows against the earlier tables and loads
//! the index, so earlier decisions stand and the first occurrence still wins.
//!
//! The state is append-only: each run adds one chunk (the folder `keys-N/`, `near-N.parquet`,
//! `near-N.sig` with the raw little-endian signatures) to the chunks of the output it extends,
//! which are hard-linked, not rewritten.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, ListArray, ListBuilder, StringArray, UInt32Array, UInt32Builder,
};
use arrow::record_batch::RecordBatch;
use medtune_pipeline::fsutil::link_or_copy_tree;
use medtune_pipeline::{PipelineError, Result};

use super::{NearDuplicateConfig, NearState};
use crate::shared::append_state::{read_table, write_table};
use crate::shared::examples::typed_column as column;
use crate::shared::grouping::UnionFind;

/// Folder of the state inside the stage's artifacts.
const DIR: &str = "dedup_state";

/// What starts the name of a first-occurrence table's folder.
const KEYS: &str = "keys-";

/// What dedup carries from one run to the next.
pub(crate) struct DedupState {
    /// The near-duplicate index, when near-duplicates are looked for.
    pub near: Option<NearState>,
    /// Chunks (files and key folders) of the saved state this one extends, sorted.
    earlier: Vec<PathBuf>,
}

impl DedupState {
    /// An empty state (near-duplicate detection with `near`, when given).
    pub(crate) fn new(near: Option<&NearDuplicateConfig>) -> Self {
        DedupState {
            near: near.map(NearState::new),
            earlier: Vec::new(),
        }
    }

    /// The first-occurrence tables of earlier runs, oldest first.
    pub(crate) fn earlier_keys(&self) -> Vec<PathBuf> {
        self.earlier
            .iter()
            .filter(|c| is_keys_folder(c))
            .cloned()
            .collect()
    }

    /// The folder inside `artifacts` that takes this run's first-occurrence table.
    pub(crate) fn keys_folder(&self, artifacts: &Path) -> PathBuf {
        let n = self.earlier.iter().filter(|c| is_keys_folder(c)).count();
        artifacts.join(DIR).join(format!("{KEYS}{n:05}"))
    }

    /// Writes the state's new chunk into `artifacts` (beside this run's first-occurrence
    /// table, which the engine wrote), after links to the chunks it extends.
    pub(crate) fn save(&self, artifacts: &Path) -> Result<()> {
        let dir = artifacts.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|e| PipelineError::io(&dir, e))?;
        for chunk in &self.earlier {
            let name = chunk.file_name().expect("chunk files have names");
            link_or_copy_tree(chunk, &dir.join(name))?;
        }
        // A run over no rows writes no table; its empty folder keeps the chunks numbered.
        let keys = self.keys_folder(artifacts);
        std::fs::create_dir_all(&keys).map_err(|e| PipelineError::io(&keys, e))?;
        let n = self.earlier.iter().filter(|c| is_keys_folder(c)).count();
        if let Some(near) = &self.near {
            save_near_chunk(&dir, n, near)?;
        }
        Ok(())
    }
}

fn save_near_chunk(dir: &Path, n: usize, near: &NearState) -> Result<()> {
    write_table(dir, &format!("near-{n:05}"), &near_chunk(near)?)?;
    let width = near.hasher.permutations();
    let signatures: Vec<u8> = (near.loaded..near.ids.len())
        .flat_map(|e| near.index.signature(e as u32).iter())
        .flat_map(|v| v.to_le_bytes())
        .collect();
    debug_assert_eq!(signatures.len(), (near.ids.len() - near.loaded) * width * 4);
    let path = dir.join(format!("near-{n:05}.sig"));
    std::fs::write(&path, signatures).map_err(|e| PipelineError::io(&path, e))
}

fn is_keys_folder(path: &Path) -> bool {
    path.is_dir()
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(KEYS))
}

/// The entries added since the state was loaded: id, group key, best match, joins.
fn near_chunk(near: &NearState) -> Result<RecordBatch> {
    let new = near.loaded..near.ids.len();
    let ids: StringArray = near.ids[new.clone()].iter().map(Some).collect();
    let groups: StringArray = near.groups[new.clone()].iter().map(Some).collect();
    let matched: UInt32Array = near.matched[new.clone()]
        .iter()
        .map(|m| m.map(|(e, _)| e))
        .collect();
    let similarity: Float64Array = near.matched[new.clone()]
        .iter()
        .map(|m| m.map(|(_, s)| s))
        .collect();
    let mut edges = ListBuilder::new(UInt32Builder::new());
    for joined in &near.edges[new] {
        edges.values().append_slice(joined);
        edges.append(true);
    }
    Ok(RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as ArrayRef),
        ("group_key", Arc::new(groups) as ArrayRef),
        ("matched", Arc::new(matched) as ArrayRef),
        ("similarity", Arc::new(similarity) as ArrayRef),
        ("joined", Arc::new(edges.finish()) as ArrayRef),
    ])?)
}

/// Loads the state saved in `artifacts`; `None` when it is not there (an output made before
/// dedup kept state in this form) or was made without near-duplicate detection while `near`
/// asks for it. The first-occurrence tables stay on disk: the engine reads them.
pub(crate) fn load(
    artifacts: &Path,
    near: Option<&NearDuplicateConfig>,
) -> Result<Option<DedupState>> {
    let dir = artifacts.join(DIR);
    let Ok(listing) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut chunks: Vec<PathBuf> = listing.flatten().map(|e| e.path()).collect();
    chunks.sort();
    let count = chunks.iter().filter(|c| is_keys_folder(c)).count();
    if count == 0 {
        return Ok(None);
    }
    let state = match near {
        None => None,
        Some(cfg) => match load_near(&dir, count, cfg)? {
            Some(state) => Some(state),
            None => return Ok(None),
        },
    };
    Ok(Some(DedupState {
        near: state,
        earlier: chunks,
    }))
}

fn load_near(dir: &Path, chunks: usize, cfg: &NearDuplicateConfig) -> Result<Option<NearState>> {
    let mut state = NearState::new(cfg);
    let width = state.hasher.permutations();
    for n in 0..chunks {
        let name = format!("near-{n:05}");
        let Some(batches) = read_table(dir, &name)? else {
            return Ok(None);
        };
        let path = dir.join(format!("{name}.sig"));
        let bytes = std::fs::read(&path).map_err(|e| PipelineError::io(&path, e))?;
        let values: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if values.len() != rows * width {
            return Ok(None);
        }
        let first = state.ids.len() as u32;
        state.index.insert_many(&values);
        let mut entry = first;
        for batch in &batches {
            let ids = column::<StringArray>(batch, &name, "id")?;
            let groups = column::<StringArray>(batch, &name, "group_key")?;
            let matched = column::<UInt32Array>(batch, &name, "matched")?;
            let similarity = column::<Float64Array>(batch, &name, "similarity")?;
            let joined = column::<ListArray>(batch, &name, "joined")?;
            for row in 0..batch.num_rows() {
                let edges = joined.value(row);
                let edges = edges
                    .as_any()
                    .downcast_ref::<UInt32Array>()
                    .ok_or_else(|| PipelineError::Internal(format!("{name}: bad `joined`")))?;
                state.ids.push(ids.value(row).to_string());
                state.groups.push(groups.value(row).to_string());
                state.clusters.push();
                state.matched.push(
                    (!matched.is_null(row)).then(|| (matched.value(row), similarity.value(row))),
                );
                state.edges.push(edges.values().to_vec());
                for &other in edges.values() {
                    state.clusters.union(entry, other);
                }
                entry += 1;
            }
        }
    }
    state.loaded = state.ids.len();
    Ok(Some(state))
}

impl NearState {
    /// An empty index for `cfg`.
    pub(crate) fn new(cfg: &NearDuplicateConfig) -> Self {
        NearState {
            hasher: super::MinHasher::new(cfg.bands * cfg.rows, cfg.ngram, cfg.seed),
            index: super::LshIndex::new(cfg.bands, cfg.rows),
            ids: Vec::new(),
            groups: Vec::new(),
            clusters: UnionFind::default(),
            matched: Vec::new(),
            edges: Vec::new(),
            loaded: 0,
        }
    }
}
