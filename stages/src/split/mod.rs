//! The split stage: train / validation / test, seeded and deterministic, stratified by the
//! configured columns and group-aware, followed by hard leakage checks.
//!
//! Rows that share a group key (ChemProt: one article under several tasks; BIO: one document),
//! a normalised text, or a near-duplicate cluster are joined into one group (union-find), and
//! every group lands whole in one split. The stage reads its input twice: once for the keys
//! (the group table is the only state that grows with the input), once to stream the rows out
//! with their `split` column.
//!
//! With `from = "source_file"` the split is not drawn: each input file's rows go to the split
//! the config names for it (a benchmark's own splits). Leaks across those splits are then the
//! benchmark's, not the stage's: they are counted, listed in `split_leaks`, and either kept or
//! dropped from the later split (reason `leak_<kind>` in `split_rejects`).

mod append;
pub mod assign;
pub mod leakage;
pub mod source_files;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, FixedSizeBinaryBuilder, StringArray, StringBuilder,
    StructArray,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use medtune_formats::normalize::{key_hash, Normalization};
use medtune_formats::text::bounded_raw;
use medtune_pipeline::reader::CommittedDataset;
use medtune_pipeline::{
    AppendOptions, InputChange, OutputDecl, OutputRole, PipelineConfig, PipelineError, Result,
    RowFunction, SourceDecl, Stage, StageContext, WorkUnit,
};
use medtune_schemas::col;
use medtune_schemas::dataset::{SPLIT, SPLIT_LEAKS, SPLIT_REJECTS};
use serde::{Deserialize, Serialize};

use self::append::{AppendPlan, NewRows, PlacedRow};
use self::assign::{assign, Group, SPLIT_NAMES};
use self::leakage::{find_leaks, Leak, LeakKind, RowKeys};
use self::source_files::FileSplits;
use crate::shared::examples::{check_text_columns, ExampleRows, TEXT_COLUMNS};
use crate::shared::grouping::UnionFind;
use crate::shared::mapped::{check_rows, field, parse_settings, split_mapped, struct_of};
use crate::shared::rejects::{RejectBatch, RejectRow};

/// The stage name: its `[split]` config section and its cache folder.
pub const NAME: &str = "split";

/// Stratify pseudo-column: the sorted entity types of a BIO sentence (`Chemical+Disease`).
pub const ENTITY_TYPES: &str = "entity_types";

/// Split fractions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fractions {
    /// Training share.
    pub train: f64,
    /// Validation share.
    pub validation: f64,
    /// Test share.
    pub test: f64,
}

impl Default for Fractions {
    fn default() -> Self {
        Fractions {
            train: 0.8,
            validation: 0.1,
            test: 0.1,
        }
    }
}

/// Where each row's split comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitFrom {
    /// Drawn: groups placed by the fractions, stratified and seeded.
    #[default]
    Draw,
    /// The input file each row was read from, through `[split.source_files]`.
    SourceFile,
}

impl SplitFrom {
    fn is_draw(&self) -> bool {
        *self == SplitFrom::Draw
    }
}

/// What happens to a row that leaks into a later split taken from the data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakAction {
    /// Keep it, counted and listed in `split_leaks`: the benchmark is what it is.
    #[default]
    Keep,
    /// Drop it from its (later) split, with a reason in `split_rejects`.
    Drop,
}

/// Raw text kept per reject, in bytes.
const MAX_RAW_BYTES: usize = 4096;

fn default_seed() -> u64 {
    42
}

fn default_stratify() -> Vec<String> {
    vec![col::TASK.to_string()]
}

fn default_text_columns() -> Vec<String> {
    vec![col::PROMPT.to_string()]
}

/// The `[split]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Shares of train, validation and test; they sum to 1.
    #[serde(default)]
    pub fractions: Fractions,
    /// Seed of the group order.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Columns whose values form the strata (text columns, or `entity_types`).
    #[serde(default = "default_stratify")]
    pub stratify: Vec<String>,
    /// Columns whose normalised text may not repeat across splits.
    #[serde(default = "default_text_columns")]
    pub text_columns: Vec<String>,
    /// How that text is normalised.
    #[serde(default)]
    pub normalize: Normalization,
    /// Where each row's split comes from: `draw` (the default) or `source_file`.
    #[serde(default, skip_serializing_if = "SplitFrom::is_draw")]
    pub from: SplitFrom,
    /// With `from = "source_file"`: each input file (its file name, or its path as in
    /// `[ingest] inputs`) and the split its rows go to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_files: BTreeMap<String, String>,
    /// With `from = "source_file"`: keep (the default) or drop the rows that share a text,
    /// near-duplicate cluster or group with a row of an earlier split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaks: Option<LeakAction>,
}

/// The split stage.
pub struct SplitStage {
    config: SplitConfig,
    input: String,
    near_duplicates: Option<String>,
    /// The split of each input file, with `from = "source_file"`.
    file_splits: Option<FileSplits>,
}

impl SplitStage {
    /// Builds the stage from `[split]`, reading `input` and, when given, the near-duplicate
    /// clusters dataset; `sources` are the pipeline's input files (what `from =
    /// "source_file"` maps).
    pub fn from_config(
        config: &PipelineConfig,
        input: &str,
        near_duplicates: Option<&str>,
        sources: &[SourceDecl],
    ) -> Result<Self> {
        let section: SplitConfig = config.section(NAME)?;
        let file_splits = match section.from {
            SplitFrom::SourceFile => {
                Some(FileSplits::resolve(config, &section.source_files, sources)?)
            }
            SplitFrom::Draw => {
                let set = if !section.source_files.is_empty() {
                    Some("[split.source_files]")
                } else {
                    section.leaks.map(|_| "`leaks`")
                };
                if let Some(set) = set {
                    return Err(config.error(format!(
                        "[split]: {set} is read with from = \"source_file\" only; drawn splits \
                         keep groups whole, so they never leak"
                    )));
                }
                None
            }
        };
        let f = section.fractions;
        let shares = [f.train, f.validation, f.test];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s))
            || ((shares.iter().sum::<f64>()) - 1.0).abs() > 1e-6
        {
            return Err(config.error(format!(
                "[split.fractions]: train, validation and test must be in [0, 1] and sum to 1 \
                 (found {} + {} + {})",
                f.train, f.validation, f.test
            )));
        }
        check_text_columns("split", &section.text_columns).map_err(|m| config.error(m))?;
        for c in &section.stratify {
            if c != ENTITY_TYPES && !TEXT_COLUMNS.contains(&c.as_str()) {
                return Err(config.error(format!(
                    "[split]: cannot stratify by `{c}` (choose from {ENTITY_TYPES}, {})",
                    TEXT_COLUMNS.join(", ")
                )));
            }
        }
        Ok(SplitStage {
            config: section,
            input: input.to_string(),
            near_duplicates: near_duplicates.map(str::to_string),
            file_splits,
        })
    }

    /// Reads the near-duplicate clusters: row id -> cluster.
    fn clusters(&self, ctx: &StageContext<'_>) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        let Some(name) = &self.near_duplicates else {
            return Ok(out);
        };
        for batch in ctx.read(name)? {
            let batch = batch?;
            let strings = |c: &str| -> Result<StringArray> {
                Ok(batch
                    .column_by_name(c)
                    .and_then(|a| a.as_string_opt::<i32>())
                    .ok_or_else(|| PipelineError::Internal(format!("`{name}` lacks `{c}`")))?
                    .clone())
            };
            let (cluster, id) = (strings(col::CLUSTER)?, strings(col::ID)?);
            for i in 0..batch.num_rows() {
                out.insert(id.value(i).to_string(), cluster.value(i).to_string());
            }
        }
        Ok(out)
    }
}

/// A row's stratum: its values of the `stratify` columns (entity types for `entity_types`).
fn stratum(config: &SplitConfig, rows: &ExampleRows<'_>, row: usize) -> Result<String> {
    let mut parts = Vec::with_capacity(config.stratify.len());
    for name in &config.stratify {
        if name == ENTITY_TYPES {
            let mut types: Vec<&str> = ExampleRows::list(rows.tags, row)
                .into_iter()
                .filter_map(|t| t.split_once('-').map(|(_, kind)| kind))
                .collect();
            types.sort_unstable();
            types.dedup();
            parts.push(if types.is_empty() {
                "none".to_string()
            } else {
                types.join("+")
            });
        } else {
            let column = rows.text_column(name)?;
            parts.push(ExampleRows::text(column, row).unwrap_or("null").to_string());
        }
    }
    Ok(parts.join("/"))
}

/// Split's per-row work as a row function (`medtune_split_keys`): each row's normalised-text
/// hash and stratum. Grouping, assignment and the leakage checks need every row, so the stage
/// does them over what this answers.
pub struct SplitKeys;

/// Struct field: the row's normalised text hash (128 bits, little-endian).
const TEXT_HASH: &str = "text_hash";
/// Struct field: the row's stratum.
const STRATUM: &str = "stratum";

impl RowFunction for SplitKeys {
    const NAME: &'static str = "medtune_split_keys";
    type Prepared = SplitConfig;

    fn output_fields() -> Fields {
        vec![
            Field::new(TEXT_HASH, DataType::FixedSizeBinary(16), false),
            Field::new(STRATUM, DataType::Utf8, false),
        ]
        .into()
    }

    fn prepare(settings: &str) -> Result<SplitConfig> {
        parse_settings(Self::NAME, settings)
    }

    fn map(config: &SplitConfig, batch: &RecordBatch) -> Result<StructArray> {
        let rows = ExampleRows::new(batch)?;
        let mut hashes = FixedSizeBinaryBuilder::with_capacity(rows.len(), 16);
        let mut strata = StringBuilder::new();
        for row in 0..rows.len() {
            let text = rows.normalized_text(&config.text_columns, row, &config.normalize)?;
            hashes.append_value(key_hash(&text).to_le_bytes())?;
            strata.append_value(stratum(config, &rows, row)?);
        }
        let fields = Self::output_fields();
        struct_of(vec![
            (fields[0].clone(), Arc::new(hashes.finish()) as ArrayRef),
            (fields[1].clone(), Arc::new(strata.finish())),
        ])
    }
}

/// Numbers the distinct strata in order of first appearance: (how many, each row's number).
fn index_strata(strata: &[String]) -> (usize, Vec<usize>) {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let row_stratum = strata
        .iter()
        .map(|s| {
            let next = index.len();
            *index.entry(s).or_insert(next)
        })
        .collect();
    (index.len(), row_stratum)
}

/// The split groups of `keys` ([`join_shared_keys`]), each named after its first row and with
/// its rows per stratum, and each row's group.
fn group_rows(keys: &[RowKeys], row_stratum: &[usize]) -> (Vec<Group>, Vec<usize>) {
    let mut components = join_shared_keys(keys);
    let mut group_of_root: HashMap<u32, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut row_group = Vec::with_capacity(keys.len());
    for i in 0..keys.len() as u32 {
        let root = components.find(i);
        let g = *group_of_root.entry(root).or_insert_with(|| {
            groups.push(Group {
                name: keys[root as usize].id.clone(),
                strata: Vec::new(),
            });
            groups.len() - 1
        });
        let k = row_stratum[i as usize];
        match groups[g].strata.iter_mut().find(|(s, _)| *s == k) {
            Some((_, n)) => *n += 1,
            None => groups[g].strata.push((k, 1)),
        }
        row_group.push(g);
    }
    (groups, row_group)
}

/// Joins rows sharing a group key, a normalised text or a near-duplicate cluster: each set
/// of the result is one split group, rooted at its first row.
fn join_shared_keys(keys: &[RowKeys]) -> UnionFind {
    let mut groups = UnionFind::new(keys.len());
    let indexed = || keys.iter().enumerate().map(|(i, k)| (i as u32, k));
    groups.join_by_key(indexed().map(|(i, k)| (i, k.group.as_str())));
    groups.join_by_key(indexed().map(|(i, k)| (i, k.text_hash)));
    groups.join_by_key(indexed().filter_map(|(i, k)| Some((i, k.cluster.as_deref()?))));
    groups
}

impl Stage for SplitStage {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        2
    }

    fn inputs(&self) -> Vec<String> {
        let mut inputs = vec![self.input.clone()];
        inputs.extend(self.near_duplicates.clone());
        inputs
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![
            OutputDecl::new(SPLIT, medtune_schemas::split_examples(), OutputRole::Kept),
            OutputDecl::new(
                SPLIT_REJECTS,
                medtune_schemas::rejects(),
                OutputRole::Rejects,
            ),
            OutputDecl::new(
                SPLIT_LEAKS,
                medtune_schemas::split_leaks(),
                OutputRole::Side,
            ),
        ]
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let clusters = self.clusters(ctx)?;
        if let Some(files) = &self.file_splits {
            return self.run_from_files(ctx, &clusters, files);
        }
        match self.append_plan(ctx, &clusters)? {
            Some(plan) => self.run_append(ctx, plan),
            None => self.run_full(ctx, &clusters),
        }
    }
}

impl SplitStage {
    /// The keys and strata of every row `dataset` holds, mapped by [`SplitKeys`], with
    /// `clusters` filled in; with `files`, also each row's split by its source file.
    fn read_keys(
        &self,
        dataset: &CommittedDataset,
        clusters: &HashMap<String, String>,
        files: Option<&FileSplits>,
        ctx: &StageContext<'_>,
    ) -> Result<(NewRows, Vec<u8>)> {
        let mut keys = Vec::new();
        let mut strata = Vec::new();
        let mut file_split = Vec::new();
        let settings = serde_json::to_value(&self.config).expect("config serialises");
        for batch in ctx.map_rows_of::<SplitKeys>(dataset, &settings)? {
            let (batch, mapped) = split_mapped(batch?)?;
            check_rows(&mapped, &batch)?;
            let rows = ExampleRows::new(&batch)?;
            let hashes = field(&mapped, TEXT_HASH)?.as_fixed_size_binary();
            let row_strata = field(&mapped, STRATUM)?.as_string::<i32>();
            for row in 0..rows.len() {
                let id = rows.id.value(row).to_string();
                strata.push(row_strata.value(row).to_string());
                if let Some(files) = files {
                    file_split.push(files.split_of(rows.source_file.value(row))?);
                }
                let text_hash =
                    u128::from_le_bytes(hashes.value(row).try_into().map_err(|_| {
                        PipelineError::Internal("a split text hash is not 16 bytes".into())
                    })?);
                keys.push(RowKeys {
                    cluster: clusters.get(&id).cloned(),
                    id,
                    group: rows.group_key.value(row).to_string(),
                    text_hash,
                });
            }
            ctx.report_progress(keys.len() as u64);
        }
        Ok((NewRows { keys, strata }, file_split))
    }

    fn fractions(&self) -> [f64; 3] {
        let f = self.config.fractions;
        [f.train, f.validation, f.test]
    }

    /// How to place the rows appended since the previous output, when its inputs only grew
    /// and its state is there; `None` (with a warning when the rule cannot place them) means
    /// a full split.
    fn append_plan(
        &self,
        ctx: &mut StageContext<'_>,
        clusters: &HashMap<String, String>,
    ) -> Result<Option<AppendPlan>> {
        let Some(previous) = ctx.previous() else {
            return Ok(None);
        };
        let delta = match previous.inputs.get(&self.input) {
            Some(InputChange::Appended(delta)) => delta.clone(),
            _ => return Ok(None),
        };
        let Some(old) = append::load(&previous.artifacts_dir())? else {
            return Ok(None);
        };
        ctx.set_work_total(2 * delta.manifest.rows, WorkUnit::Rows);
        let (new, _) = self.read_keys(&delta, clusters, None, ctx)?;
        match append::plan(old, new, clusters, self.fractions(), self.config.seed) {
            Ok(plan) => Ok(Some(plan)),
            Err(why) => {
                ctx.warn(format!(
                    "{why}: no placement of the appended rows keeps every earlier row in its \
                     split, so all rows are split afresh"
                ));
                Ok(None)
            }
        }
    }

    /// Extends the previous output with the appended rows placed by `plan`.
    fn run_append(&self, ctx: &mut StageContext<'_>, plan: AppendPlan) -> Result<()> {
        let whole: Vec<&str> = self.near_duplicates.iter().map(String::as_str).collect();
        if !ctx.append_to_previous(AppendOptions {
            whole: &whole,
            ..AppendOptions::default()
        })? {
            return Err(PipelineError::Internal(
                "split planned an append its previous output does not allow".into(),
            ));
        }
        let new_rows = &plan.rows[plan.old_rows..];
        let row_split: Vec<u8> = new_rows.iter().map(|r| r.split).collect();
        let group_names: Vec<&str> = new_rows.iter().map(|r| r.group_name.as_str()).collect();
        self.write_rows(
            ctx,
            &row_split,
            &group_names,
            &HashMap::new(),
            new_rows.len() as u64,
        )?;
        self.count_rows(
            ctx,
            plan.groups,
            plan.strata,
            plan.rows.iter().map(|r| r.split),
        );
        append::save(ctx.artifacts_dir()?, &plan.rows)
    }

    /// Splits every row.
    fn run_full(
        &self,
        ctx: &mut StageContext<'_>,
        clusters: &HashMap<String, String>,
    ) -> Result<()> {
        let total = ctx.input(&self.input)?.manifest.rows;
        ctx.set_work_total(2 * total, WorkUnit::Rows);
        // Pass 1: the keys of every row.
        let input = ctx.input(&self.input)?.clone();
        let (NewRows { keys, strata }, _) = self.read_keys(&input, clusters, None, ctx)?;
        let (strata_count, row_stratum) = index_strata(&strata);
        let (groups, row_group) = group_rows(&keys, &row_stratum);
        let group_split = assign(&groups, strata_count, self.fractions(), self.config.seed);
        let row_split: Vec<u8> = row_group.iter().map(|&g| group_split[g]).collect();
        let group_names: Vec<String> = groups.into_iter().map(|g| g.name).collect();

        let leaks = find_leaks(&keys, &row_split);
        if !leaks.is_empty() {
            let shown: Vec<String> = leaks.iter().take(20).map(|l| format!("  {l}")).collect();
            return Err(PipelineError::CheckFailed {
                stage: NAME.into(),
                message: format!(
                    "{} leaks between splits:\n{}{}",
                    leaks.len(),
                    shown.join("\n"),
                    if leaks.len() > 20 { "\n  ..." } else { "" }
                ),
            });
        }
        self.count_rows(
            ctx,
            group_names.len() as u64,
            strata_count as u64,
            row_split.iter().copied(),
        );
        let placed: Vec<PlacedRow> = keys
            .into_iter()
            .zip(strata)
            .enumerate()
            .map(|(i, (keys, stratum))| PlacedRow {
                keys,
                stratum,
                group_name: group_names[row_group[i]].clone(),
                split: row_split[i],
            })
            .collect();
        append::save(ctx.artifacts_dir()?, &placed)?;
        drop(placed);

        // Pass 2: stream the rows out with their split.
        let row_group_names: Vec<&str> =
            row_group.iter().map(|&g| group_names[g].as_str()).collect();
        self.write_rows(ctx, &row_split, &row_group_names, &HashMap::new(), total)
    }

    /// Splits every row by the file it was read from; reports the leaks across those splits
    /// and, with `leaks = "drop"`, drops each leaking row from its later split.
    fn run_from_files(
        &self,
        ctx: &mut StageContext<'_>,
        clusters: &HashMap<String, String>,
        files: &FileSplits,
    ) -> Result<()> {
        let total = ctx.input(&self.input)?.manifest.rows;
        ctx.set_work_total(2 * total, WorkUnit::Rows);
        // Pass 1: the keys and file split of every row.
        let input = ctx.input(&self.input)?.clone();
        let (NewRows { keys, strata }, row_split) =
            self.read_keys(&input, clusters, Some(files), ctx)?;
        let (_, row_stratum) = index_strata(&strata);
        drop(strata);
        let (groups, row_group) = group_rows(&keys, &row_stratum);
        let group_names: Vec<String> = groups.into_iter().map(|g| g.name).collect();

        let leaks = find_leaks(&keys, &row_split);
        let action = self.config.leaks.unwrap_or_default();
        // Each dropped row with the first of its leaks (text, then cluster, then group).
        let mut dropped: HashMap<usize, &Leak> = HashMap::new();
        if action == LeakAction::Drop {
            for leak in &leaks {
                dropped.entry(leak.later_row).or_insert(leak);
            }
            let kept: Vec<usize> = (0..keys.len())
                .filter(|i| !dropped.contains_key(i))
                .collect();
            let kept_keys: Vec<&RowKeys> = kept.iter().map(|&i| &keys[i]).collect();
            let kept_split: Vec<u8> = kept.iter().map(|&i| row_split[i]).collect();
            if let Some(leak) = find_leaks(&kept_keys, &kept_split).first() {
                return Err(PipelineError::Internal(format!(
                    "a leak is left after the later rows were dropped: {leak}"
                )));
            }
        }
        for kind in LeakKind::ALL {
            let n = leaks.iter().filter(|l| l.kind == kind).count();
            ctx.set_count(&format!("leaks_{}", kind.name()), n as u64);
        }
        self.write_leaks(ctx, &leaks, action)?;
        let kept = |i: &usize| !dropped.contains_key(i);
        let kept_groups: HashSet<usize> =
            (0..keys.len()).filter(kept).map(|i| row_group[i]).collect();
        let kept_strata: HashSet<usize> = (0..keys.len())
            .filter(kept)
            .map(|i| row_stratum[i])
            .collect();
        self.count_rows(
            ctx,
            kept_groups.len() as u64,
            kept_strata.len() as u64,
            (0..keys.len()).filter(kept).map(|i| row_split[i]),
        );
        drop(keys);

        // Pass 2: stream the rows out with their split, the dropped ones to the rejects.
        let row_group_names: Vec<&str> =
            row_group.iter().map(|&g| group_names[g].as_str()).collect();
        self.write_rows(ctx, &row_split, &row_group_names, &dropped, total)
    }

    /// Writes every leak to `split_leaks`.
    fn write_leaks(
        &self,
        ctx: &mut StageContext<'_>,
        leaks: &[Leak],
        action: LeakAction,
    ) -> Result<()> {
        for chunk in leaks.chunks(ctx.batch_rows().max(1)) {
            let strings = |f: &dyn Fn(&Leak) -> &str| -> ArrayRef {
                Arc::new(chunk.iter().map(|l| Some(f(l))).collect::<StringArray>())
            };
            let dropped: BooleanArray = chunk
                .iter()
                .map(|_| Some(action == LeakAction::Drop))
                .collect();
            let batch = RecordBatch::try_new(
                medtune_schemas::split_leaks(),
                vec![
                    strings(&|l| l.kind.name()),
                    strings(&|l| &l.later.0),
                    strings(&|l| l.later.1),
                    strings(&|l| &l.earlier.0),
                    strings(&|l| l.earlier.1),
                    Arc::new(dropped),
                ],
            )?;
            ctx.write(SPLIT_LEAKS, batch)?;
        }
        Ok(())
    }

    /// Writes the rows of `batch` (whose first row is row `first` of the input) that `dropped`
    /// holds to the rejects, each with the leak it was dropped for.
    fn reject_leaks(
        &self,
        ctx: &mut StageContext<'_>,
        batch: &RecordBatch,
        first: usize,
        dropped: &HashMap<usize, &Leak>,
    ) -> Result<()> {
        let rows = ExampleRows::new(batch)?;
        let mut rejects = RejectBatch::default();
        for row in 0..rows.len() {
            let Some(leak) = dropped.get(&(first + row)) else {
                continue;
            };
            let reason = format!("leak_{}", leak.kind.name());
            let detail = format!(
                "shares its {} with {} of the earlier {} split",
                leak.kind.name().replace('_', " "),
                leak.earlier.0,
                leak.earlier.1
            );
            let text =
                rows.normalized_text(&self.config.text_columns, row, &self.config.normalize)?;
            rejects.push(RejectRow {
                stage: NAME,
                source_file: rows.source_file.value(row),
                line: rows.line.value(row),
                id: rows.id.value(row),
                reason: &reason,
                detail: &detail,
                raw: &bounded_raw(text.as_bytes(), MAX_RAW_BYTES),
                duplicate_of: Some(&leak.earlier.0),
            });
            ctx.count_dropped(&reason, 1);
        }
        ctx.write(SPLIT_REJECTS, rejects.finish()?)
    }

    /// Records the group, stratum and per-split row counts.
    fn count_rows(
        &self,
        ctx: &mut StageContext<'_>,
        groups: u64,
        strata: u64,
        splits: impl Iterator<Item = u8>,
    ) {
        let mut per_split = [0u64; 3];
        for s in splits {
            per_split[s as usize] += 1;
        }
        ctx.set_count("groups", groups);
        ctx.set_count("strata", strata);
        for (name, n) in SPLIT_NAMES.iter().zip(per_split) {
            ctx.set_count(&format!("rows_{name}"), n);
        }
    }

    /// Streams the input rows out with their group and split, and the rows in `dropped` to the
    /// rejects (`offset`: the progress already reported by the first pass).
    fn write_rows(
        &self,
        ctx: &mut StageContext<'_>,
        row_split: &[u8],
        row_group: &[&str],
        dropped: &HashMap<usize, &Leak>,
        offset: u64,
    ) -> Result<()> {
        let mut done = 0usize;
        for batch in ctx.read(&self.input)? {
            let batch = batch?;
            let n = batch.num_rows();
            if done + n > row_split.len() {
                return Err(PipelineError::Internal(format!(
                    "split's second pass read more than the {} rows of its first",
                    row_split.len()
                )));
            }
            let split: StringArray = row_split[done..done + n]
                .iter()
                .map(|&s| Some(SPLIT_NAMES[s as usize]))
                .collect();
            let group: StringArray = row_group[done..done + n].iter().map(|&g| Some(g)).collect();
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            columns.push(Arc::new(group));
            columns.push(Arc::new(split));
            ctx.count_in(n as u64);
            let rows = RecordBatch::try_new(medtune_schemas::split_examples(), columns)?;
            let keep: Vec<bool> = (done..done + n)
                .map(|i| !dropped.contains_key(&i))
                .collect();
            if keep.iter().all(|&k| k) {
                ctx.write(SPLIT, rows)?;
            } else {
                self.reject_leaks(ctx, &batch, done, dropped)?;
                ctx.write(
                    SPLIT,
                    filter_record_batch(&rows, &BooleanArray::from(keep))?,
                )?;
            }
            done += n;
            ctx.report_progress(offset + done as u64);
        }
        if done != row_split.len() {
            return Err(PipelineError::Internal(format!(
                "split read {} rows in its second pass, {} in its first",
                done,
                row_split.len()
            )));
        }
        Ok(())
    }
}
