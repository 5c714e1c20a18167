//! The profile stage: the exploration table a model card reports, computed with Polars over
//! the committed Parquet outputs of the stages before it.
//!
//! Figures: rows per task and split; prompt length in characters (min / median / max) per task;
//! vocabulary size; unique, hyphenated and mentioned entities per task (ChemProt lists) or
//! entity type (BIO spans); the BIO tag distribution; rows dropped per stage and reason;
//! near-duplicate clusters; and leakage between splits (groups, texts, near-duplicate clusters
//! found in more than one split). The output is the `profile` dataset, one figure per row;
//! `medtune profile` prints it and writes it as JSON and Markdown.

pub mod report;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, StringBuilder};
use arrow::record_batch::RecordBatch;
use medtune_pipeline::{
    OutputDecl, OutputRole, PipelineConfig, PipelineError, Result, Stage, StageContext,
};
use medtune_schemas::col;
use medtune_schemas::dataset::PROFILE;
use polars::prelude as pl;
use serde::{Deserialize, Serialize};

use crate::shared::examples::ExampleRows;

/// The stage name: its `[profile]` config section and its cache folder.
pub const NAME: &str = "profile";

/// The `[profile]` config section (no settings yet; the section switches the stage on).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {}

/// The profile stage.
pub struct ProfileStage {
    config: ProfileConfig,
    rows: String,
    rejects: Vec<String>,
    near_duplicates: Option<String>,
}

impl ProfileStage {
    /// Profiles the dataset `rows`, with the drops recorded in `rejects` and the clusters in
    /// `near_duplicates`.
    pub fn from_config(
        config: &PipelineConfig,
        rows: &str,
        rejects: Vec<String>,
        near_duplicates: Option<&str>,
    ) -> Result<Self> {
        Ok(ProfileStage {
            config: config.section(NAME)?,
            rows: rows.to_string(),
            rejects,
            near_duplicates: near_duplicates.map(str::to_string),
        })
    }
}

/// Accumulates profile rows.
#[derive(Default)]
struct Figures {
    section: StringBuilder,
    key: StringBuilder,
    metric: StringBuilder,
    value: Float64Builder,
}

impl Figures {
    fn add(&mut self, section: &str, key: &str, metric: &str, value: f64) {
        self.section.append_value(section);
        self.key.append_value(key);
        self.metric.append_value(metric);
        self.value.append_value(value);
    }

    fn finish(mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.section.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.metric.finish()),
            Arc::new(self.value.finish()),
        ];
        Ok(RecordBatch::try_new(medtune_schemas::profile(), columns)?)
    }
}

fn polars_error(e: pl::PolarsError) -> PipelineError {
    PipelineError::Internal(format!("profile (polars): {e}"))
}

/// A lazy scan over a committed dataset's parts.
fn scan(ctx: &StageContext<'_>, name: &str) -> Result<pl::LazyFrame> {
    let frames = ctx
        .input(name)?
        .part_paths()
        .map(|p| {
            let path = p.display().to_string();
            pl::LazyFrame::scan_parquet(path.as_str().into(), pl::ScanArgsParquet::default())
        })
        .collect::<pl::PolarsResult<Vec<_>>>()
        .map_err(polars_error)?;
    pl::concat(frames, pl::UnionArgs::default()).map_err(polars_error)
}

/// The text of column `name` at `row` of a collected frame ("null" when null).
fn text(df: &pl::DataFrame, name: &str, row: usize) -> Result<String> {
    let value = df
        .column(name)
        .map_err(polars_error)?
        .get(row)
        .map_err(polars_error)?;
    Ok(match value {
        pl::AnyValue::Null => "null".to_string(),
        pl::AnyValue::String(s) => s.to_string(),
        pl::AnyValue::StringOwned(s) => s.to_string(),
        other => other.to_string(),
    })
}

/// The number in column `name` at `row` of a collected frame.
fn number(df: &pl::DataFrame, name: &str, row: usize) -> Result<f64> {
    let value = df
        .column(name)
        .map_err(polars_error)?
        .get(row)
        .map_err(polars_error)?;
    Ok(value.extract::<f64>().unwrap_or(f64::NAN))
}

fn explode(columns: &[&str]) -> (pl::Selector, pl::ExplodeOptions) {
    (
        pl::cols(columns.iter().copied()),
        pl::ExplodeOptions {
            empty_as_null: false,
            keep_nulls: false,
        },
    )
}

impl ProfileStage {
    fn has_column(&self, ctx: &StageContext<'_>, name: &str) -> Result<bool> {
        Ok(ctx
            .input(&self.rows)?
            .manifest
            .schema
            .iter()
            .any(|c| c.name == name))
    }

    fn rows_per_task_and_split(
        &self,
        lf: pl::LazyFrame,
        out: &mut Figures,
        split: bool,
    ) -> Result<()> {
        let split_expr = if split {
            pl::col(col::SPLIT)
        } else {
            pl::lit("all").alias(col::SPLIT)
        };
        let df = lf
            .group_by([pl::col(col::TASK), split_expr])
            .agg([pl::len().alias("rows")])
            .sort([col::TASK, col::SPLIT], Default::default())
            .collect()
            .map_err(polars_error)?;
        for r in 0..df.height() {
            let key = format!("{} {}", text(&df, col::TASK, r)?, text(&df, col::SPLIT, r)?);
            out.add("rows", &key, "rows", number(&df, "rows", r)?);
        }
        Ok(())
    }

    fn prompt_lengths(&self, lf: pl::LazyFrame, out: &mut Figures) -> Result<()> {
        let chars = pl::col(col::PROMPT).str().len_chars();
        let df = lf
            .group_by([pl::col(col::TASK)])
            .agg([
                chars.clone().min().alias("min"),
                chars.clone().median().alias("median"),
                chars.max().alias("max"),
            ])
            .sort([col::TASK], Default::default())
            .collect()
            .map_err(polars_error)?;
        for r in 0..df.height() {
            let task = text(&df, col::TASK, r)?;
            for metric in ["min", "median", "max"] {
                out.add("prompt_chars", &task, metric, number(&df, metric, r)?);
            }
        }
        Ok(())
    }

    fn vocabulary(&self, lf: pl::LazyFrame, out: &mut Figures) -> Result<()> {
        let (selector, options) = explode(&["token"]);
        let df = lf
            .select([pl::col(col::PROMPT)
                .str()
                .to_lowercase()
                .str()
                .replace_all(pl::lit(r"\s+"), pl::lit(" "), false)
                .str()
                .split(pl::lit(" "))
                .alias("token")])
            .explode(selector, options)
            .filter(pl::col("token").neq(pl::lit("")))
            .select([
                pl::col("token").n_unique().alias("types"),
                pl::len().alias("tokens"),
            ])
            .collect()
            .map_err(polars_error)?;
        out.add("vocabulary", "prompts", "types", number(&df, "types", 0)?);
        out.add("vocabulary", "prompts", "tokens", number(&df, "tokens", 0)?);
        Ok(())
    }

    /// Entities of ChemProt completions: `- x` items (relations `- x | y` count as pairs).
    fn listed_entities(&self, lf: pl::LazyFrame, out: &mut Figures) -> Result<()> {
        let (selector, options) = explode(&["item"]);
        let item = pl::col("item");
        let df = lf
            .filter(pl::col(col::COMPLETION).is_not_null())
            .select([
                pl::col(col::TASK),
                pl::col(col::COMPLETION)
                    .str()
                    .split(pl::lit("\n"))
                    .alias("item"),
            ])
            .explode(selector, options)
            .filter(item.clone().str().starts_with(pl::lit("- ")))
            .with_column(item.clone().str().strip_prefix(pl::lit("- ")))
            .group_by([pl::col(col::TASK)])
            .agg([
                item.clone().n_unique().alias("unique"),
                pl::len().alias("mentions"),
                item.clone()
                    .filter(item.str().contains_literal(pl::lit("-")))
                    .n_unique()
                    .alias("hyphenated"),
            ])
            .sort([col::TASK], Default::default())
            .collect()
            .map_err(polars_error)?;
        for r in 0..df.height() {
            let task = text(&df, col::TASK, r)?;
            for metric in ["unique", "hyphenated", "mentions"] {
                out.add("entities", &task, metric, number(&df, metric, r)?);
            }
        }
        Ok(())
    }

    /// BIO tag counts; returns whether the rows carry any tag.
    fn tag_distribution(&self, lf: pl::LazyFrame, out: &mut Figures) -> Result<bool> {
        let (selector, options) = explode(&[col::TAGS]);
        let df = lf
            .filter(pl::col(col::TAGS).is_not_null())
            .select([pl::col(col::TAGS)])
            .explode(selector, options)
            .group_by([pl::col(col::TAGS)])
            .agg([pl::len().alias("tokens")])
            .sort([col::TAGS], Default::default())
            .collect()
            .map_err(polars_error)?;
        for r in 0..df.height() {
            out.add(
                "bio_tags",
                &text(&df, col::TAGS, r)?,
                "tokens",
                number(&df, "tokens", r)?,
            );
        }
        Ok(df.height() > 0)
    }

    fn drops(&self, ctx: &StageContext<'_>, out: &mut Figures) -> Result<()> {
        for name in &self.rejects {
            let df = scan(ctx, name)?
                .group_by([pl::col(col::STAGE), pl::col(col::REASON)])
                .agg([pl::len().alias("rows")])
                .sort([col::STAGE, col::REASON], Default::default())
                .collect()
                .map_err(polars_error)?;
            for r in 0..df.height() {
                let key = format!(
                    "{} {}",
                    text(&df, col::STAGE, r)?,
                    text(&df, col::REASON, r)?
                );
                out.add("dropped", &key, "rows", number(&df, "rows", r)?);
            }
        }
        Ok(())
    }

    fn near_duplicates(&self, ctx: &StageContext<'_>, out: &mut Figures) -> Result<()> {
        let Some(name) = &self.near_duplicates else {
            return Ok(());
        };
        let df = scan(ctx, name)?
            .select([
                pl::col(col::CLUSTER).n_unique().alias("clusters"),
                pl::len().alias("rows"),
            ])
            .collect()
            .map_err(polars_error)?;
        out.add(
            "near_duplicates",
            "all",
            "clusters",
            number(&df, "clusters", 0)?,
        );
        out.add("near_duplicates", "all", "rows", number(&df, "rows", 0)?);
        Ok(())
    }

    /// Keys found in more than one split: group keys, prompt texts, near-duplicate clusters.
    fn leakage(&self, ctx: &StageContext<'_>, lf: pl::LazyFrame, out: &mut Figures) -> Result<()> {
        let shared = |lf: pl::LazyFrame, key: pl::Expr| -> Result<f64> {
            let df = lf
                .group_by([key.alias("key")])
                .agg([pl::col(col::SPLIT).n_unique().alias("splits")])
                .filter(pl::col("splits").gt(pl::lit(1)))
                .select([pl::len().alias("shared")])
                .collect()
                .map_err(polars_error)?;
            number(&df, "shared", 0)
        };
        let normalised_prompt = pl::col(col::PROMPT).str().to_lowercase().str().replace_all(
            pl::lit(r"\s+"),
            pl::lit(" "),
            false,
        );
        out.add(
            "leakage",
            "groups",
            "shared_across_splits",
            shared(lf.clone(), pl::col(col::GROUP_KEY))?,
        );
        out.add(
            "leakage",
            "prompts",
            "shared_across_splits",
            shared(lf.clone(), normalised_prompt)?,
        );
        if let Some(name) = &self.near_duplicates {
            let clusters = scan(ctx, name)?.select([pl::col(col::CLUSTER), pl::col(col::ID)]);
            let joined = lf.inner_join(clusters, pl::col(col::ID), pl::col(col::ID));
            out.add(
                "leakage",
                "near_duplicate_clusters",
                "shared_across_splits",
                shared(joined, pl::col(col::CLUSTER))?,
            );
        }
        Ok(())
    }

    /// BIO entities: maximal B-X I-X... spans, per type, as lower-cased text.
    fn bio_entities(&self, ctx: &StageContext<'_>, out: &mut Figures) -> Result<()> {
        let mut spans: BTreeMap<String, (HashSet<String>, u64)> = BTreeMap::new();
        for batch in ctx.read(&self.rows)? {
            let batch = batch?;
            let rows = ExampleRows::new(&batch)?;
            for row in 0..rows.len() {
                let words = ExampleRows::list(rows.words, row);
                let tags = ExampleRows::list(rows.tags, row);
                let mut current: Option<(String, Vec<&str>)> = None;
                let mut close = |span: Option<(String, Vec<&str>)>| {
                    if let Some((kind, words)) = span {
                        let entry = spans.entry(kind).or_default();
                        entry.0.insert(words.join(" ").to_lowercase());
                        entry.1 += 1;
                    }
                };
                for (word, tag) in words.iter().zip(&tags) {
                    match tag.split_once('-') {
                        Some(("I", kind)) if current.as_ref().is_some_and(|(k, _)| k == kind) => {
                            current.as_mut().expect("checked").1.push(word);
                        }
                        Some((_, kind)) => {
                            close(current.take());
                            current = Some((kind.to_string(), vec![word]));
                        }
                        None => close(current.take()),
                    }
                }
                close(current.take());
            }
        }
        for (kind, (unique, mentions)) in spans {
            let hyphenated = unique.iter().filter(|e| e.contains('-')).count();
            out.add("entities", &kind, "unique", unique.len() as f64);
            out.add("entities", &kind, "hyphenated", hyphenated as f64);
            out.add("entities", &kind, "mentions", mentions as f64);
        }
        Ok(())
    }
}

impl Stage for ProfileStage {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<String> {
        let mut inputs = vec![self.rows.clone()];
        inputs.extend(self.rejects.iter().cloned());
        inputs.extend(self.near_duplicates.clone());
        inputs
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl::new(
            PROFILE,
            medtune_schemas::profile(),
            OutputRole::Side,
        )]
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let mut out = Figures::default();
        let read = ctx.input(&self.rows)?.manifest.rows;
        ctx.count_in(read);
        let rows = scan(ctx, &self.rows)?;
        let split = self.has_column(ctx, col::SPLIT)?;
        self.rows_per_task_and_split(rows.clone(), &mut out, split)?;
        self.prompt_lengths(rows.clone(), &mut out)?;
        self.vocabulary(rows.clone(), &mut out)?;
        self.listed_entities(rows.clone(), &mut out)?;
        // Entity spans need a pass over the rows: only when they are BIO rows.
        if self.tag_distribution(rows.clone(), &mut out)? {
            self.bio_entities(ctx, &mut out)?;
        }
        self.drops(ctx, &mut out)?;
        self.near_duplicates(ctx, &mut out)?;
        if split {
            self.leakage(ctx, rows, &mut out)?;
        }
        ctx.write(PROFILE, out.finish()?)
    }
}
