//! The `[evaluate]` section and its resolution against `[train]` and `[tokenize]`.

use medtune_pipeline::{PipelineConfig, Result};
use medtune_qlora::auto::Task;
use serde::{Deserialize, Serialize};

use super::NAME;
use crate::shared::model::{DeviceChoice, TrainConfig};
use crate::shared::tokenizer::{Mode, TokenizeConfig};

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
pub(super) enum AdapterSource {
    /// The train stage's committed adapter.
    Trained,
    /// A directory named in the config (as written).
    Directory(String),
    /// None: the base model alone.
    None,
}

/// The `[evaluate]` section with every default filled in from `[train]` and `[tokenize]`:
/// the stage's config, as its cache key sees it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Resolved {
    pub(super) model: String,
    pub(super) task: Task,
    pub(super) adapter: AdapterSource,
    pub(super) split: String,
    pub(super) compare_base: bool,
    pub(super) max_new_tokens: usize,
    pub(super) batch_size: usize,
    pub(super) max_tokens: usize,
    pub(super) limit: Option<usize>,
    pub(super) samples: usize,
    pub(super) quantise: bool,
    pub(super) device: DeviceChoice,
    /// Causal LM: the tokenizer (as written) and EOS token of `[tokenize]`.
    pub(super) tokenizer: Option<String>,
    pub(super) eos_token: Option<String>,
    /// The seed of `[train.schedule]` (0 without `[train]`); not part of the key, since
    /// evaluation draws nothing at random.
    #[serde(skip)]
    pub(super) seed: u64,
}

impl Resolved {
    /// Reads `[evaluate]`, fills its defaults from `[train]` and `[tokenize]`, and checks
    /// that the three agree (exit 2 naming the key otherwise).
    pub(super) fn from_config(config: &PipelineConfig) -> Result<Self> {
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
            Task::CausalLm => Mode::CausalLm,
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
        Ok(Resolved {
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
            seed: train.as_ref().map_or(0, |t| t.schedule.seed),
        })
    }
}
