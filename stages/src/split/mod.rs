//! The split stage: train / validation / test, seeded and deterministic, stratified by the
//! configured columns and group-aware, followed by hard leakage checks.
//!
//! Rows that share a group key (ChemProt: one article under several tasks; BIO: one document),
//! a normalised text, or a near-duplicate cluster are joined into one group (union-find), and
//! every group lands whole in one split. The stage reads its input twice: once for the keys
//! (the group table is the only state that grows with the input), once to stream the rows out
//! with their `split` column.

mod append;
pub mod assign;
pub mod leakage;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, FixedSizeBinaryBuilder, StringArray, StringBuilder, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use medtune_formats::normalize::{key_hash, Normalization};
use medtune_pipeline::reader::CommittedDataset;
use medtune_pipeline::{
    AppendOptions, InputChange, OutputDecl, OutputRole, PipelineConfig, PipelineError, Result,
    RowFunction, Stage, StageContext, WorkUnit,
};
use medtune_schemas::col;
use medtune_schemas::dataset::SPLIT;
use serde::{Deserialize, Serialize};

use self::append::{AppendPlan, NewRows, PlacedRow};
use self::assign::{assign, Group, SPLIT_NAMES};
use self::leakage::{find_leaks, RowKeys};
use crate::shared::examples::{check_text_columns, ExampleRows, TEXT_COLUMNS};
use crate::shared::grouping::UnionFind;
use crate::shared::mapped::{check_rows, field, parse_settings, split_mapped, struct_of};

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
}

/// The split stage.
pub struct SplitStage {
    config: SplitConfig,
    input: String,
    near_duplicates: Option<String>,
}

impl SplitStage {
    /// Builds the stage from `[split]`, reading `input` and, when given, the near-duplicate
    /// clusters dataset.
    pub fn from_config(
        config: &PipelineConfig,
        input: &str,
        near_duplicates: Option<&str>,
    ) -> Result<Self> {
        let section: SplitConfig = config.section(NAME)?;
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
        1
    }

    fn inputs(&self) -> Vec<String> {
        let mut inputs = vec![self.input.clone()];
        inputs.extend(self.near_duplicates.clone());
        inputs
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl::new(
            SPLIT,
            medtune_schemas::split_examples(),
            OutputRole::Kept,
        )]
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let clusters = self.clusters(ctx)?;
        match self.append_plan(ctx, &clusters)? {
            Some(plan) => self.run_append(ctx, plan),
            None => self.run_full(ctx, &clusters),
        }
    }
}

impl SplitStage {
    /// The keys and strata of every row `dataset` holds, mapped by [`SplitKeys`], with
    /// `clusters` filled in.
    fn read_keys(
        &self,
        dataset: &CommittedDataset,
        clusters: &HashMap<String, String>,
        ctx: &StageContext<'_>,
    ) -> Result<NewRows> {
        let mut keys = Vec::new();
        let mut strata = Vec::new();
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
        Ok(NewRows { keys, strata })
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
        let new = self.read_keys(&delta, clusters, ctx)?;
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
        self.write_rows(ctx, &row_split, &group_names, new_rows.len() as u64)?;
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
        let NewRows { keys, strata } = self.read_keys(&input, clusters, ctx)?;
        let mut stratum_index: HashMap<&str, usize> = HashMap::new();
        let row_stratum: Vec<usize> = strata
            .iter()
            .map(|s| {
                let next = stratum_index.len();
                *stratum_index.entry(s).or_insert(next)
            })
            .collect();

        let mut components = join_shared_keys(&keys);
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
        let group_split = assign(
            &groups,
            stratum_index.len(),
            self.fractions(),
            self.config.seed,
        );
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
            stratum_index.len() as u64,
            row_split.iter().copied(),
        );
        drop(stratum_index);
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
        self.write_rows(ctx, &row_split, &row_group_names, total)
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

    /// Streams the input rows out with their group and split (`offset`: the progress already
    /// reported by the first pass).
    fn write_rows(
        &self,
        ctx: &mut StageContext<'_>,
        row_split: &[u8],
        row_group: &[&str],
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
            ctx.write(
                SPLIT,
                RecordBatch::try_new(medtune_schemas::split_examples(), columns)?,
            )?;
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
