//! The evaluate stage: scores a model on a split of the shards, the base model and base +
//! adapter side by side.
//!
//! The model is the `[train]` one unless `[evaluate] model` names another; the adapter is the
//! one the train stage committed (or `[evaluate] adapter`, any PEFT adapter directory). Both
//! variants run on the same loaded weights: the adapters switched off, then on.
//!
//! - **Token classification** ([`tagging`]): seqeval entity reports in the default and strict
//!   modes, the token-level report, cross-entropy, a word-level confusion matrix of entity types.
//! - **Causal LM** ([`generation`]): completion loss and perplexity, batched greedy generation
//!   scored with ROUGE-L, BLEU-1 and, for the extraction tasks, set-level P/R/F1.
//!
//! Outputs: `metrics` (long format: model, family, group, metric, value) and `predictions`
//! (per row and variant), and artifacts: `report.md` (the tables, confusion matrices, samples
//! and throughput), `f1.png` (F1 per type or task and variant), `loss.png` (the training loss
//! curve, when the adapter is the train stage's), and for token classification
//! `predictions.jsonl` + `scores.json` (what `bench/seqeval_compare.py` checks against seqeval).

mod config;
pub use self::config::EvaluateConfig;
pub mod generation;
mod outcome;
mod report;
pub mod tables;
pub mod tagging;

use std::path::PathBuf;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, UInt64Type};
use medtune_pipeline::{
    OutputDecl, OutputRole, PipelineConfig, PipelineError, Result, SourceDecl, Stage, StageContext,
};
use medtune_qlora::auto::{AutoModel, Task};
use medtune_qlora::generate::GenerateOptions;
use medtune_qlora::Pass;
use medtune_schemas::dataset::{LABEL_MAP, METRICS, PREDICTIONS, SHARDS, SPLIT, TRAIN_LOG};

use self::config::{AdapterSource, Resolved};
use self::generation::{read_references, GenerationEval, GenerationSettings};
pub use self::outcome::{Bars, Confusion, Outcome, Sample, Variant};
use self::tables::metrics_batch;
use crate::shared::loader::{BatchLoader, Batching, LoaderOptions, Padding, ShardSet};
use crate::shared::model::{
    model_eos_ids, model_error, read_label_names, weight_sources, ADAPTER_DIR,
};
use crate::shared::tokenizer::{eos_id, load_tokenizer};

/// The stage name: its `[evaluate]` config section and its cache folder.
pub const NAME: &str = "evaluate";
/// The Markdown report artifact.
pub const REPORT_FILE: &str = "report.md";
/// Token classification: predictions as JSON lines.
pub const PREDICTIONS_JSONL: &str = "predictions.jsonl";
/// Token classification: the scores per variant.
pub const SCORES_JSON: &str = "scores.json";

/// The evaluate stage.
pub struct EvaluateStage {
    settings: Resolved,
    model_dir: PathBuf,
    adapter_dir: Option<PathBuf>,
    tokenizer_path: Option<PathBuf>,
}

impl EvaluateStage {
    /// Builds the stage from `[evaluate]` (and `[train]`, `[tokenize]`).
    pub fn from_config(config: &PipelineConfig) -> Result<Self> {
        let settings = Resolved::from_config(config)?;
        Ok(EvaluateStage {
            model_dir: config.resolve(&settings.model),
            adapter_dir: match &settings.adapter {
                AdapterSource::Directory(dir) => Some(config.resolve(dir)),
                _ => None,
            },
            tokenizer_path: settings.tokenizer.as_deref().map(|t| config.resolve(t)),
            settings,
        })
    }

    fn variants(&self) -> Vec<Variant> {
        let variant = |name: &str, adapters: bool| Variant {
            name: name.to_string(),
            pass: Pass {
                adapters,
                ..Pass::EVAL
            },
        };
        match (&self.settings.adapter, self.settings.compare_base) {
            (AdapterSource::None, _) => vec![variant("base", false)],
            (_, true) => vec![variant("base", false), variant("adapter", true)],
            (_, false) => vec![variant("adapter", true)],
        }
    }

    /// The adapter directory: the configured one, or the train stage's.
    fn adapter_dir(&self, ctx: &StageContext<'_>) -> Result<Option<PathBuf>> {
        match &self.settings.adapter {
            AdapterSource::None => Ok(None),
            AdapterSource::Directory(_) => Ok(self.adapter_dir.clone()),
            AdapterSource::Trained => {
                let dir = ctx
                    .input(TRAIN_LOG)?
                    .stage_artifacts_dir()
                    .join(ADAPTER_DIR);
                if !dir.is_dir() {
                    return Err(PipelineError::Internal(format!(
                        "the train stage's output has no adapter at {}",
                        dir.display()
                    )));
                }
                Ok(Some(dir))
            }
        }
    }

    fn loader(&self, shards: &ShardSet, batching: Batching) -> Result<BatchLoader> {
        BatchLoader::new(
            shards.split(&self.settings.split)?,
            LoaderOptions {
                batching,
                seed: self.settings.seed,
                shuffle: false,
                pad_id: 0,
                padding: Padding::Right,
            },
        )
    }

    /// The training loss curve from the `train_log` input, drawn into `loss.png`.
    fn loss_curve(&self, ctx: &mut StageContext<'_>) -> Result<Option<&'static str>> {
        if self.settings.adapter != AdapterSource::Trained {
            return Ok(None);
        }
        let (mut train, mut eval) = (Vec::new(), Vec::new());
        for batch in ctx.read(TRAIN_LOG)? {
            let batch: RecordBatch = batch?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| PipelineError::Internal(format!("train_log has no `{name}`")))
            };
            let step = column("step")?.as_primitive::<UInt64Type>().clone();
            let loss = column("loss")?.as_primitive::<Float64Type>().clone();
            let eval_loss = column("eval_loss")?.as_primitive::<Float64Type>().clone();
            for row in 0..batch.num_rows() {
                let x = step.value(row) as f64;
                train.push((x, loss.value(row)));
                if eval_loss.is_valid(row) {
                    eval.push((x, eval_loss.value(row)));
                }
            }
        }
        let path = ctx.artifacts_dir()?.join("loss.png");
        match crate::shared::plot::loss_curve(&train, &eval, &path) {
            Ok(_) => Ok(Some("loss.png")),
            Err(e) => {
                ctx.warn(format!("loss curve not drawn: {e}"));
                Ok(None)
            }
        }
    }
}

impl Stage for EvaluateStage {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<String> {
        let mut inputs = vec![SHARDS.to_string()];
        match self.settings.task {
            Task::TokenClassification => inputs.push(LABEL_MAP.to_string()),
            Task::CausalLm => inputs.push(SPLIT.to_string()),
        }
        if self.settings.adapter == AdapterSource::Trained {
            inputs.push(TRAIN_LOG.to_string());
        }
        inputs
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        let predictions = match self.settings.task {
            Task::TokenClassification => medtune_schemas::tag_predictions(),
            Task::CausalLm => medtune_schemas::generation_predictions(),
        };
        vec![
            OutputDecl::new(PREDICTIONS, predictions, OutputRole::Side),
            OutputDecl::new(METRICS, medtune_schemas::metrics(), OutputRole::Side),
        ]
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.settings).expect("settings serialise")
    }

    fn sources(&self) -> Vec<SourceDecl> {
        // The model's and the adapter's files, and the tokenizer: any change is a new
        // evaluation.
        let mut sources = weight_sources(&self.model_dir, &self.settings.model);
        if let (Some(dir), AdapterSource::Directory(written)) =
            (&self.adapter_dir, &self.settings.adapter)
        {
            sources.extend(weight_sources(dir, written));
        }
        if let (Some(path), Some(written)) = (&self.tokenizer_path, &self.settings.tokenizer) {
            sources.push(SourceDecl {
                written: written.clone(),
                path: path.clone(),
            });
        }
        sources
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        medtune_qlora::allocator::keep_freed_memory();
        let s = &self.settings;
        let options = s.device.load_options(s.quantise)?;
        let device = options.device.clone();
        let labels = match s.task {
            Task::TokenClassification => read_label_names(ctx)?,
            Task::CausalLm => Vec::new(),
        };
        let adapter = self.adapter_dir(ctx)?;
        let error_dir = adapter.clone().unwrap_or_else(|| self.model_dir.clone());
        let model = AutoModel::load_for_inference(
            &self.model_dir,
            s.task,
            labels.len(),
            adapter.as_deref(),
            &options,
        )
        .map_err(|e| model_error(&error_dir, e))?;
        let shards = ShardSet::from_dataset(ctx.input(SHARDS)?)?;
        if !shards.splits().contains(&s.split.as_str()) {
            return Err(PipelineError::Usage(format!(
                "[evaluate]: the shards have no `{}` split (they have: {})",
                s.split,
                shards.splits().join(", ")
            )));
        }
        let variants = self.variants();
        let tokens = Batching::Tokens {
            max_tokens: s.max_tokens,
        };
        let outcome = match s.task {
            Task::TokenClassification => {
                let loader = self.loader(&shards, tokens)?;
                tagging::evaluate_tags(ctx, &model, &loader, &labels, &device, &variants)?
            }
            Task::CausalLm => {
                let path = self
                    .tokenizer_path
                    .as_ref()
                    .expect("a causal LM evaluation has a tokenizer");
                let tokenizer = load_tokenizer(path)?;
                let mut eos_ids = vec![eos_id(&tokenizer, path, s.eos_token.as_deref())?];
                eos_ids.extend(model_eos_ids(&self.model_dir));
                eos_ids.sort_unstable();
                eos_ids.dedup();
                let references = read_references(ctx, SPLIT, &s.split)?;
                let generation = GenerationSettings {
                    options: GenerateOptions {
                        max_new_tokens: s.max_new_tokens,
                        eos_ids,
                        pad_id: 0,
                    },
                    batch_size: s.batch_size,
                    limit: s.limit,
                    samples: s.samples,
                };
                GenerationEval {
                    model: &model,
                    device: &device,
                    tokenizer: &tokenizer,
                    loss_batches: &self.loader(&shards, tokens)?,
                    prompt_batches: &self.loader(&shards, Batching::Rows { batch_size: 256 })?,
                    references: &references,
                    settings: &generation,
                    variants: &variants,
                }
                .run(ctx)?
            }
        };
        ctx.write(METRICS, metrics_batch(&outcome.metrics)?)?;
        let artifacts = ctx.artifacts_dir()?.to_path_buf();
        let mut images = Vec::new();
        if let Some(bars) = &outcome.bars {
            match crate::shared::plot::grouped_bars(
                &bars.title,
                &bars.categories,
                &bars.series,
                &artifacts.join("f1.png"),
            ) {
                Ok(_) => images.push(("F1", "f1.png")),
                Err(e) => ctx.warn(format!("F1 chart not drawn: {e}")),
            }
        }
        if let Some(file) = self.loss_curve(ctx)? {
            images.push(("Training loss", file));
        }
        let header = report::Header {
            model: &s.model,
            adapter: match &s.adapter {
                AdapterSource::Trained => "the train stage's adapter".to_string(),
                AdapterSource::Directory(d) => d.clone(),
                AdapterSource::None => "none (base model)".to_string(),
            },
            task: s.task,
            split: &s.split,
            rows: outcome.rows,
            variants: variants.iter().map(|v| v.name.as_str()).collect(),
            quantised: s.quantise,
        };
        let text = report::render(&header, &outcome, &images);
        let path = artifacts.join(REPORT_FILE);
        std::fs::write(&path, text).map_err(|e| PipelineError::io(&path, e))?;
        ctx.count("metrics", outcome.metrics.len() as u64);
        Ok(())
    }
}
