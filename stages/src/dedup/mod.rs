//! The dedup stage: drops rows whose normalised key text repeats an earlier row's (or, with
//! `action = "keep"`, counts them), and finds near-duplicate clusters with MinHash + LSH, which
//! split keeps together (or dedup drops).
//!
//! Which row of a normalised key text comes first is an aggregation over every row that the
//! engine runs and writes (in this process or on a cluster; the table is the stage's saved
//! state, see [`append`]). The stage then visits rows in input order and keeps the first
//! occurrence; memory holds only the keys that repeat, plus (with near-duplicate detection)
//! one 32-bit MinHash signature per kept row; the rows themselves stream through.

mod append;
pub mod keys;
pub mod minhash;

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Builder, StringBuilder};
use arrow::compute::filter_record_batch;
use arrow::datatypes::UInt32Type;
use arrow::datatypes::{DataType, UInt64Type};
use arrow::record_batch::RecordBatch;
use medtune_formats::normalize::Normalization;
use medtune_formats::text::bounded_raw;
use medtune_pipeline::engine::first::{self, holds_parquet};
use medtune_pipeline::{
    AppendOptions, FirstOccurrences, OutputDecl, OutputRole, PipelineConfig, PipelineError, Result,
    Stage, StageContext, WorkUnit,
};
use medtune_schemas::dataset::{DEDUPED, DEDUP_REJECTS, NEAR_DUPLICATES};
use serde::{Deserialize, Serialize};

use self::append::DedupState;
use self::keys::DedupKeys;
use self::minhash::{similarity, LshIndex, MinHasher};
use crate::shared::examples::{check_text_columns, ExampleRows};
use crate::shared::grouping::UnionFind;
use crate::shared::mapped::{check_rows, field, split_mapped};
use crate::shared::rejects::{filter_outputs, RejectBatch, RejectRow};

/// The stage name: its `[dedup]` config section and its cache folder.
pub const NAME: &str = "dedup";

/// What happens to a row whose normalised key text repeats an earlier row's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateAction {
    /// Drop it (reason `duplicate`): the first occurrence by row order wins.
    #[default]
    Drop,
    /// Keep it, counted (`duplicates_kept`): a benchmark's own rows stay as they are; split
    /// still keeps rows of one text together, or reports them when the splits are the data's.
    Keep,
}

impl DuplicateAction {
    fn is_drop(&self) -> bool {
        *self == DuplicateAction::Drop
    }
}

/// What happens to a row that is a near-duplicate of an earlier kept row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NearDuplicateAction {
    /// Keep it; its cluster becomes one split group.
    Group,
    /// Drop it (reason `near_duplicate`).
    Drop,
}

/// Near-duplicate detection (`[dedup.near]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NearDuplicateConfig {
    /// Whether to look for near-duplicates at all.
    pub enabled: bool,
    /// Words per shingle.
    pub ngram: usize,
    /// LSH bands.
    pub bands: usize,
    /// Signature slots per band (the signature has `bands × rows` slots).
    pub rows: usize,
    /// Estimated Jaccard similarity at which two rows are near-duplicates.
    pub threshold: f64,
    /// Keep near-duplicates as split groups, or drop them.
    pub action: NearDuplicateAction,
    /// Seed of the MinHash permutations.
    pub seed: u64,
}

impl Default for NearDuplicateConfig {
    fn default() -> Self {
        NearDuplicateConfig {
            enabled: true,
            ngram: 5,
            bands: 16,
            rows: 8,
            threshold: 0.8,
            action: NearDuplicateAction::Group,
            seed: 0x006d_6564_7475_6e65,
        }
    }
}

fn default_columns() -> Vec<String> {
    vec![medtune_schemas::col::PROMPT.to_string()]
}

fn default_max_raw_bytes() -> usize {
    4096
}

/// The `[dedup]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Columns whose normalised text is the row's identity.
    #[serde(default = "default_columns")]
    pub columns: Vec<String>,
    /// How that text is normalised.
    #[serde(default)]
    pub normalize: Normalization,
    /// Drop (the default) or keep exact duplicates.
    #[serde(default, skip_serializing_if = "DuplicateAction::is_drop")]
    pub action: DuplicateAction,
    /// Near-duplicate detection.
    #[serde(default)]
    pub near: NearDuplicateConfig,
    /// Raw text kept per reject, in bytes.
    #[serde(default = "default_max_raw_bytes")]
    pub max_raw_bytes: usize,
}

/// The dedup stage.
pub struct DedupStage {
    config: DedupConfig,
    input: String,
}

impl DedupStage {
    /// Builds the stage from `[dedup]`, reading the dataset `input`.
    pub fn from_config(config: &PipelineConfig, input: &str) -> Result<Self> {
        let section: DedupConfig = config.section(NAME)?;
        check_text_columns("dedup", &section.columns).map_err(|m| config.error(m))?;
        let near = &section.near;
        if near.enabled {
            if near.bands == 0 || near.rows == 0 || near.ngram == 0 {
                return Err(config.error("[dedup.near]: `bands`, `rows` and `ngram` must be > 0"));
            }
            if !(near.threshold > 0.0 && near.threshold <= 1.0) {
                return Err(config.error(format!(
                    "[dedup.near]: `threshold` must be in (0, 1], found {}",
                    near.threshold
                )));
            }
        }
        Ok(DedupStage {
            config: section,
            input: input.to_string(),
        })
    }
}

/// Near-duplicate state: the index of kept rows and their union-find clusters.
struct NearState {
    hasher: MinHasher,
    index: LshIndex,
    ids: Vec<String>,
    groups: Vec<String>,
    /// The clusters; an entry's cluster is named after its first (smallest) entry.
    clusters: UnionFind,
    matched: Vec<Option<(u32, f64)>>,
    /// The earlier entries each entry was joined with.
    edges: Vec<Vec<u32>>,
    /// Entries that came from the saved state of an earlier output.
    loaded: usize,
}

impl NearState {
    /// Earlier entries at or above `threshold`, best first.
    fn matches(&self, signature: &[u32], threshold: f64) -> Vec<(u32, f64)> {
        let mut found: Vec<(u32, f64)> = self
            .index
            .candidates(signature)
            .into_iter()
            .map(|e| (e, similarity(self.index.signature(e), signature)))
            .filter(|&(_, s)| s >= threshold)
            .collect();
        found.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        found
    }

    fn insert(&mut self, signature: &[u32], id: &str, group: &str, matches: &[(u32, f64)]) {
        let entry = self.index.insert(signature);
        self.ids.push(id.to_string());
        self.groups.push(group.to_string());
        let pushed = self.clusters.push();
        debug_assert_eq!(pushed, entry, "one cluster element per index entry");
        self.matched.push(matches.first().copied());
        self.edges
            .push(matches.iter().map(|&(other, _)| other).collect());
        for &(other, _) in matches {
            self.clusters.union(entry, other);
        }
    }

    /// The `near_duplicates` rows: every member of every cluster of two or more.
    fn clusters(&mut self) -> Result<(RecordBatch, u64, u64)> {
        let n = self.ids.len() as u32;
        let roots: Vec<u32> = (0..n).map(|e| self.clusters.find(e)).collect();
        let mut size: HashMap<u32, u32> = HashMap::new();
        for &r in &roots {
            *size.entry(r).or_default() += 1;
        }
        let mut cluster = StringBuilder::new();
        let mut id = StringBuilder::new();
        let mut group = StringBuilder::new();
        let mut matched_id = StringBuilder::new();
        let mut sim = Float64Builder::new();
        let mut rows = 0;
        for e in 0..n {
            let root = roots[e as usize];
            if size[&root] < 2 {
                continue;
            }
            cluster.append_value(&self.ids[root as usize]);
            id.append_value(&self.ids[e as usize]);
            group.append_value(&self.groups[e as usize]);
            match self.matched[e as usize] {
                Some((m, s)) => {
                    matched_id.append_value(&self.ids[m as usize]);
                    sim.append_value(s);
                }
                None => {
                    matched_id.append_null();
                    sim.append_null();
                }
            }
            rows += 1;
        }
        let clusters = size.values().filter(|&&s| s >= 2).count() as u64;
        let columns: Vec<ArrayRef> = vec![
            std::sync::Arc::new(cluster.finish()),
            std::sync::Arc::new(id.finish()),
            std::sync::Arc::new(group.finish()),
            std::sync::Arc::new(matched_id.finish()),
            std::sync::Arc::new(sim.finish()),
        ];
        let batch = RecordBatch::try_new(medtune_schemas::near_duplicates(), columns)?;
        Ok((batch, clusters, rows))
    }
}

impl DedupStage {
    /// Has the engine write the first-occurrence table of the input's key hashes into
    /// `folder` (checked against the `earlier` tables of the output this run extends), and
    /// reads back the keys that repeat.
    fn first_occurrences(
        &self,
        ctx: &StageContext<'_>,
        earlier: &[std::path::PathBuf],
        folder: &std::path::Path,
    ) -> Result<Repeated> {
        // The hashes only: the signatures are computed once, for the rows the stage visits.
        let mut hashing = self.config.clone();
        hashing.near.enabled = false;
        let settings = serde_json::to_value(&hashing).expect("config serialises");
        ctx.write_first_occurrences::<DedupKeys>(&FirstOccurrences {
            dataset: ctx.input(&self.input)?,
            id: medtune_schemas::col::ID,
            settings: &settings,
            key: keys::HASH,
            keyless: Some(keys::EMPTY),
            earlier,
            folder,
        })?;
        if !holds_parquet(folder) {
            return Ok(Repeated::default());
        }
        let sql = format!(
            "SELECT {key}, {first_row}, {first_id}, {earlier_id} FROM keys \
             WHERE {rows} > 1 OR {earlier_id} IS NOT NULL",
            key = first::KEY,
            first_row = first::FIRST_ROW,
            first_id = first::FIRST_ID,
            earlier_id = first::EARLIER_ID,
            rows = first::ROWS,
        );
        let batches = ctx.query_tables(&[("keys", vec![folder.to_path_buf()])], &sql)?;
        Repeated::from_batches(&batches)
    }
}

/// The keys that more than one row has (or that an earlier run's row had first), each with
/// its first row: what the stage needs to tell a first occurrence from a duplicate.
#[derive(Default)]
struct Repeated {
    first: HashMap<u128, FirstRow>,
    /// First rows of this run's keys the stage has met.
    met: usize,
}

/// Where a repeated key occurred first.
struct FirstRow {
    /// Its number among this run's rows; `None` when a row of an earlier run had it.
    number: Option<u64>,
    id: String,
}

impl Repeated {
    fn from_batches(batches: &[RecordBatch]) -> Result<Self> {
        let mut first = HashMap::new();
        for batch in batches {
            let column = |i: usize| -> Result<ArrayRef> {
                Ok(arrow::compute::cast(batch.column(i), &DataType::Utf8)?)
            };
            let keys = batch.column(0).as_fixed_size_binary();
            let numbers = arrow::compute::cast(batch.column(1), &DataType::UInt64)?;
            let numbers = numbers.as_primitive::<UInt64Type>();
            let (ids, earlier) = (column(2)?, column(3)?);
            let (ids, earlier) = (ids.as_string::<i32>(), earlier.as_string::<i32>());
            for row in 0..batch.num_rows() {
                let key = key_hash(keys.value(row))?;
                let at = if earlier.is_valid(row) {
                    FirstRow {
                        number: None,
                        id: earlier.value(row).to_string(),
                    }
                } else {
                    FirstRow {
                        number: Some(numbers.value(row)),
                        id: ids.value(row).to_string(),
                    }
                };
                first.insert(key, at);
            }
        }
        Ok(Repeated { first, met: 0 })
    }

    /// Checks, once every row was visited, that each repeated key's first row was met:
    /// rows numbered otherwise than the table numbered them would have been taken for
    /// duplicates of themselves.
    fn check_all_met(&self) -> Result<()> {
        let expected = self.first.values().filter(|f| f.number.is_some()).count();
        if self.met != expected {
            return Err(PipelineError::Internal(format!(
                "dedup: met {} of the {expected} first rows the first-occurrence table names",
                self.met
            )));
        }
        Ok(())
    }

    /// The id of the row that had `hash` before row `number` (with id `id`), if one did.
    fn first_of(&mut self, hash: u128, number: u64, id: &str) -> Result<Option<&str>> {
        let Some(first) = self.first.get(&hash) else {
            return Ok(None);
        };
        if first.number != Some(number) {
            return Ok(Some(&first.id));
        }
        if first.id != id {
            return Err(PipelineError::Internal(format!(
                "dedup: the first-occurrence table gives row {number} the id {}, the input {id}",
                first.id
            )));
        }
        self.met += 1;
        Ok(None)
    }
}

/// A key hash from its 16 little-endian bytes.
fn key_hash(bytes: &[u8]) -> Result<u128> {
    let bytes = bytes
        .try_into()
        .map_err(|_| PipelineError::Internal("a dedup key hash is not 16 bytes".into()))?;
    Ok(u128::from_le_bytes(bytes))
}

impl Stage for DedupStage {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        // 2: first occurrences come from the engine's aggregation, saved as its tables.
        2
    }

    fn inputs(&self) -> Vec<String> {
        vec![self.input.clone()]
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        let mut outputs = filter_outputs(DEDUPED, DEDUP_REJECTS);
        outputs.push(OutputDecl::new(
            NEAR_DUPLICATES,
            medtune_schemas::near_duplicates(),
            OutputRole::Side,
        ));
        outputs
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let cfg = &self.config;
        let near_cfg = cfg.near.enabled.then_some(&cfg.near);
        // Rows appended since the previous output are checked against its saved state; the
        // near-duplicate clusters are written whole again (a new row can join two).
        let mut kept_state = None;
        if let Some(previous) = ctx.previous() {
            kept_state = append::load(&previous.artifacts_dir(), near_cfg)?;
        }
        if kept_state.is_some()
            && !ctx.append_to_previous(AppendOptions {
                rewrite: &[NEAR_DUPLICATES],
                ..AppendOptions::default()
            })?
        {
            kept_state = None;
        }
        let mut dedup = kept_state.unwrap_or_else(|| DedupState::new(near_cfg));
        ctx.set_work_total(ctx.input(&self.input)?.manifest.rows, WorkUnit::Rows);
        let keys_folder = dedup.keys_folder(ctx.artifacts_dir()?);
        let mut repeated = self.first_occurrences(ctx, &dedup.earlier_keys(), &keys_folder)?;
        let near = &mut dedup.near;
        let key_name = cfg.columns.join("+");
        let mut rows_done = 0u64;
        // Rows numbered as the first-occurrence table numbers them: from 0, in input order.
        let mut row_number = 0u64;
        let settings = serde_json::to_value(cfg).expect("config serialises");
        for batch in ctx.map_rows::<DedupKeys>(&self.input, &settings)? {
            let (batch, mapped) = split_mapped(batch?)?;
            check_rows(&mapped, &batch)?;
            let rows = ExampleRows::new(&batch)?;
            let hashes = field(&mapped, keys::HASH)?.as_fixed_size_binary();
            let empty = field(&mapped, keys::EMPTY)?.as_boolean();
            let signatures = field(&mapped, keys::SIGNATURE)?.as_list::<i32>();
            let mut keep = Vec::with_capacity(rows.len());
            let mut rejects = RejectBatch::default();
            for row in 0..rows.len() {
                let id = rows.id.value(row);
                let hash = key_hash(hashes.value(row))?;
                let first_of = repeated.first_of(hash, row_number, id)?;
                row_number += 1;
                let signature = signatures.is_valid(row).then(|| signatures.value(row));
                let signature = signature
                    .as_ref()
                    .map(|s| s.as_primitive::<UInt32Type>().values().as_ref());
                // The key text, for a reject's raw column (rejects are the few).
                let reject = |reason: &str, detail: String, of: &str| -> Result<_> {
                    let text = rows.normalized_text(&cfg.columns, row, &cfg.normalize)?;
                    let raw = bounded_raw(text.as_bytes(), cfg.max_raw_bytes);
                    Ok((reason.to_string(), detail, of.to_string(), raw))
                };
                let dropped = if empty.value(row) {
                    // Nothing to compare: an empty key is no one's duplicate (clean drops it).
                    ctx.count("empty_key_rows", 1);
                    None
                } else if let Some(first) = first_of {
                    if cfg.action == DuplicateAction::Keep {
                        // Its first occurrence stands for it in the near-duplicate index.
                        ctx.count("duplicates_kept", 1);
                        None
                    } else {
                        Some(reject(
                            "duplicate",
                            format!("same normalised {key_name} as {first}"),
                            first,
                        )?)
                    }
                } else {
                    match (near.as_mut(), signature) {
                        (Some(state), Some(sig)) => {
                            let matches = state.matches(sig, cfg.near.threshold);
                            match (cfg.near.action, matches.first()) {
                                (NearDuplicateAction::Drop, Some(&(m, s))) => {
                                    let of = state.ids[m as usize].clone();
                                    Some(reject(
                                        "near_duplicate",
                                        format!(
                                            "{key_name} is a near-duplicate of {of} \
                                             (estimated Jaccard {s:.3} >= {})",
                                            cfg.near.threshold
                                        ),
                                        &of,
                                    )?)
                                }
                                _ => {
                                    state.insert(sig, id, rows.group_key.value(row), &matches);
                                    None
                                }
                            }
                        }
                        _ => None,
                    }
                };
                keep.push(dropped.is_none());
                if let Some((reason, detail, of, raw)) = dropped {
                    ctx.count_dropped(&reason, 1);
                    rejects.push(RejectRow {
                        stage: NAME,
                        source_file: rows.source_file.value(row),
                        line: rows.line.value(row),
                        id,
                        reason: &reason,
                        detail: &detail,
                        raw: &raw,
                        duplicate_of: Some(&of),
                    });
                }
            }
            ctx.count_in(rows.len() as u64);
            // Written here, not where the rows were mapped: which rows are kept is decided by
            // the first-occurrence table and the near-duplicate state, both on this side.
            ctx.write(
                DEDUPED,
                filter_record_batch(&batch, &BooleanArray::from(keep))?,
            )?;
            if rejects.rows() > 0 {
                ctx.write(DEDUP_REJECTS, rejects.finish()?)?;
            }
            rows_done += rows.len() as u64;
            ctx.report_progress(rows_done);
        }
        repeated.check_all_met()?;
        if let Some(state) = near.as_mut() {
            let (batch, clusters, members) = state.clusters()?;
            ctx.set_count("near_duplicate_clusters", clusters);
            ctx.set_count("near_duplicate_rows", members);
            ctx.write(NEAR_DUPLICATES, batch)?;
        }
        dedup.save(ctx.artifacts_dir()?)
    }
}
