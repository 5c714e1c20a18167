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

pub mod generation;
mod report;
pub mod tables;
pub mod tagging;

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, UInt64Type};
use medtune_pipeline::{
    OutputDecl, OutputRole, PipelineConfig, PipelineError, Result, SourceDecl, Stage, StageContext,
};
use medtune_qlora::auto::{AutoModel, Task};
use medtune_qlora::generate::GenerateOptions;
use medtune_qlora::gguf::{eos_id_of, is_gguf};
use medtune_qlora::weights::read_config;
use medtune_qlora::Pass;
use medtune_schemas::dataset::{LABEL_MAP, METRICS, PREDICTIONS, SHARDS, SPLIT, TRAIN_LOG};
use serde::{Deserialize, Serialize};

use self::generation::{evaluate_generation, read_references, GenerationSettings};
use self::tables::{metrics_batch, MetricRow};
use crate::shared::loader::{BatchLoader, Batching, LoaderOptions, Padding, ShardSet};
use crate::shared::model::{
    model_error, read_label_names, weight_sources, DeviceChoice, TrainConfig, ADAPTER_DIR,
};
use crate::shared::tokenizer::{eos_id, load_tokenizer, Mode, TokenizeConfig};

/// The stage name: its `[evaluate]` config section and its cache folder.
pub const NAME: &str = "evaluate";
/// The Markdown report artifact.
pub const REPORT_FILE: &str = "report.md";
/// Token classification: predictions as JSON lines.
pub const PREDICTIONS_JSONL: &str = "predictions.jsonl";
/// Token classification: the scores per variant.
pub const SCORES_JSON: &str = "scores.json";

fn default_max_new_tokens() -> usize {
    256
}
fn default_batch_size() -> usize {
    16
}
fn default_samples() -> usize {
    3
}

/// The `[evaluate]` config section. Unset fields come from `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateConfig {
    /// A Hugging Face model directory (default: `[train] model`).
    #[serde(default)]
    pub model: Option<String>,
    /// Token classification or causal LM (default: `[train] task`).
    #[serde(default)]
    pub task: Option<Task>,
    /// A PEFT adapter directory (default: the train stage's adapter; without `[train]`, none:
    /// the base model alone).
    #[serde(default)]
    pub adapter: Option<String>,
    /// The split scored (default: `[train] test_split`, else `test`).
    #[serde(default)]
    pub split: Option<String>,
    /// Score the base model (adapters off) beside the adapted one.
    #[serde(default = "medtune_pipeline::config::default_true")]
    pub compare_base: bool,
    /// Causal LM: the most tokens generated per row.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Causal LM: rows per generation batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Padded tokens per loss / tagging batch (default: `[train] max_tokens`, else 4096).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Causal LM: generate for at most this many rows (the first by id); the loss covers the
    /// whole split.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Causal LM: rows shown in the report.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// NF4 base weights (default: `[train] quantise`, else true).
    #[serde(default)]
    pub quantise: Option<bool>,
    /// CPU or CUDA (default: `[train] device`).
    #[serde(default)]
    pub device: Option<DeviceChoice>,
}

/// Where the adapter comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
enum AdapterSource {
    /// The train stage's committed adapter.
    Trained,
    /// A directory named in the config (as written).
    Directory(String),
    /// None: the base model alone.
    None,
}

/// The resolved settings: the stage's config, as its cache key sees it.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    model: String,
    task: Task,
    adapter: AdapterSource,
    split: String,
    compare_base: bool,
    max_new_tokens: usize,
    batch_size: usize,
    max_tokens: usize,
    limit: Option<usize>,
    samples: usize,
    quantise: bool,
    device: DeviceChoice,
    /// Causal LM: the tokenizer (as written) and EOS token of `[tokenize]`.
    tokenizer: Option<String>,
    eos_token: Option<String>,
}

/// One way of running the model: `base` (adapters off) or `adapter`.
#[derive(Debug, Clone)]
pub struct Variant {
    /// `base` or `adapter`.
    pub name: String,
    /// The forward pass.
    pub pass: Pass,
}

/// A confusion matrix: (row label, column label) → count.
#[derive(Debug, Clone, Default)]
pub struct Confusion {
    /// What rows and columns are.
    pub title: String,
    /// Counts.
    pub counts: BTreeMap<(String, String), u64>,
}

/// Grouped F1 bars: per category, a value per series (variant).
#[derive(Debug, Clone, Default)]
pub struct Bars {
    /// Chart title.
    pub title: String,
    /// Entity types or tasks, then the average.
    pub categories: Vec<String>,
    /// (variant, values in category order).
    pub series: Vec<(String, Vec<f64>)>,
}

/// A row shown in the report: prompt, reference, and each variant's output.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Row id.
    pub id: String,
    /// Task.
    pub task: Option<String>,
    /// Prompt text.
    pub prompt: String,
    /// Reference completion.
    pub reference: String,
    /// (variant, generation).
    pub outputs: Vec<(String, String)>,
}

/// What an evaluation produced, for the datasets and the report.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rows (sequences) scored per variant.
    pub rows: u64,
    /// Every number.
    pub metrics: Vec<MetricRow>,
    /// Confusion matrices.
    pub confusions: Vec<Confusion>,
    /// The F1 chart.
    pub bars: Option<Bars>,
    /// Report samples.
    pub samples: Vec<Sample>,
}

/// The evaluate stage.
pub struct EvaluateStage {
    settings: Settings,
    model_dir: PathBuf,
    adapter_dir: Option<PathBuf>,
    tokenizer_path: Option<PathBuf>,
    seed: u64,
}

impl EvaluateStage {
    /// Builds the stage from `[evaluate]` (and `[train]`, `[tokenize]`).
    pub fn from_config(config: &PipelineConfig) -> Result<Self> {
        let section: EvaluateConfig = config.section(NAME)?;
        let train: Option<TrainConfig> = if config.has_section(TrainConfig::SECTION) {
            Some(config.section(TrainConfig::SECTION)?)
        } else {
            None
        };
        let need = |what: &str| {
            config.error(format!(
                "[evaluate] needs `{what}` (or a [train] section to take it from)"
            ))
        };
        let model = match (&section.model, &train) {
            (Some(m), _) => m.clone(),
            (None, Some(t)) => t.model.clone(),
            (None, None) => return Err(need("model")),
        };
        let task = match (section.task, &train) {
            (Some(t), _) => t,
            (None, Some(t)) => t.task,
            (None, None) => return Err(need("task")),
        };
        let adapter = match (&section.adapter, &train) {
            (Some(dir), _) => AdapterSource::Directory(dir.clone()),
            (None, Some(_)) => AdapterSource::Trained,
            (None, None) => AdapterSource::None,
        };
        if task == Task::TokenClassification && adapter == AdapterSource::None {
            return Err(config.error(
                "[evaluate]: a token classifier needs an adapter with its trained head \
                 (`adapter = \"...\"`, or a [train] section)",
            ));
        }
        if section.batch_size == 0 || section.max_tokens == Some(0) {
            return Err(config.error("[evaluate]: `batch_size` and `max_tokens` must be positive"));
        }
        if section.limit.is_some() && task == Task::TokenClassification {
            return Err(config.error(
                "[evaluate]: `limit` applies to generation (causal LM); a token classifier is \
                 scored on the whole split",
            ));
        }
        if !config.has_section(TokenizeConfig::SECTION) {
            return Err(config.error(
                "[evaluate] scores the tokenized shards, but the config has no [tokenize] section",
            ));
        }
        let tokenize: TokenizeConfig = config.section(TokenizeConfig::SECTION)?;
        let wanted = match task {
            Task::TokenClassification => Mode::TokenClassification,
            Task::CausalLm => Mode::Sft,
        };
        if tokenize.mode != wanted {
            return Err(config.error(format!(
                "[evaluate]: task `{}` needs [tokenize] mode = \"{}\" shards",
                serde_json::to_value(task)
                    .expect("task serialises")
                    .as_str()
                    .unwrap_or(""),
                serde_json::to_value(wanted)
                    .expect("mode serialises")
                    .as_str()
                    .unwrap_or(""),
            )));
        }
        let tokenize = (task == Task::CausalLm).then_some(tokenize);
        let settings = Settings {
            split: section
                .split
                .clone()
                .or_else(|| train.as_ref().map(|t| t.test_split.clone()))
                .unwrap_or_else(|| "test".into()),
            compare_base: section.compare_base,
            max_new_tokens: section.max_new_tokens,
            batch_size: section.batch_size,
            max_tokens: section
                .max_tokens
                .or(train.as_ref().map(|t| t.max_tokens))
                .unwrap_or(4096),
            limit: section.limit,
            samples: section.samples,
            quantise: section
                .quantise
                .or(train.as_ref().map(|t| t.quantise))
                .unwrap_or(true),
            device: section
                .device
                .or(train.as_ref().map(|t| t.device))
                .unwrap_or_default(),
            tokenizer: tokenize.as_ref().map(|t| t.tokenizer.clone()),
            eos_token: tokenize.as_ref().and_then(|t| t.eos_token.clone()),
            model,
            task,
            adapter,
        };
        Ok(EvaluateStage {
            model_dir: config.resolve(&settings.model),
            adapter_dir: match &settings.adapter {
                AdapterSource::Directory(dir) => Some(config.resolve(dir)),
                _ => None,
            },
            tokenizer_path: settings.tokenizer.as_deref().map(|t| config.resolve(t)),
            seed: train.as_ref().map_or(0, |t| t.schedule.seed),
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
                seed: self.seed,
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
                eos_ids.extend(config_eos_ids(&self.model_dir));
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
                evaluate_generation(
                    ctx,
                    &model,
                    &device,
                    &self.loader(&shards, tokens)?,
                    &self.loader(&shards, Batching::Rows { batch_size: 256 })?,
                    &tokenizer,
                    &references,
                    &generation,
                    &variants,
                )?
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

/// The `eos_token_id` of a model's `config.json`: a number, a list, or absent.
#[derive(Deserialize)]
struct EosConfig {
    #[serde(default)]
    eos_token_id: Option<EosIds>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EosIds {
    One(u32),
    Many(Vec<u32>),
}

/// The end-of-sequence ids a model's `config.json` (or GGUF metadata) names (none when it
/// names none; the model loaded from the same file, so a broken one has failed already).
fn config_eos_ids(dir: &std::path::Path) -> Vec<u32> {
    if is_gguf(dir) {
        return eos_id_of(dir).into_iter().collect();
    }
    match read_config::<EosConfig>(dir)
        .ok()
        .and_then(|c| c.eos_token_id)
    {
        Some(EosIds::One(id)) => vec![id],
        Some(EosIds::Many(ids)) => ids,
        None => Vec::new(),
    }
}
