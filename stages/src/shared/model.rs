//! The model a config names, shared by the train stage (which adapts it) and the evaluate
//! stage (which scores it): the `[train]` section (evaluate takes its defaults from it), the
//! device, the files that make a model what it is (stage sources), the label names of a token
//! classifier's head, and how a model error becomes a pipeline error.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::Int32Type;
use candle_core::Device;
use medtune_pipeline::{PipelineError, Result, SourceDecl, StageContext};
use medtune_qlora::auto::Task;
use medtune_qlora::bert::LoadOptions;
use medtune_qlora::gguf::{eos_id_of, is_gguf};
use medtune_qlora::train::ScheduleConfig;
use medtune_qlora::weights::read_config;
use medtune_qlora::{LoraConfig, QloraError};
use medtune_schemas::dataset::LABEL_MAP;
use serde::{Deserialize, Serialize};

/// Artifact folder of the trained adapter (PEFT format) in the train stage's cache entry.
pub const ADAPTER_DIR: &str = "adapter";

fn default_max_tokens() -> usize {
    4096
}
fn default_eval_split() -> String {
    "validation".into()
}
fn default_test_split() -> String {
    "test".into()
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// The CPU, f32.
    #[default]
    Cpu,
    /// The first CUDA GPU, bf16 compute (needs the `cuda` feature).
    Cuda,
}

/// The `[train]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A Hugging Face model directory (config.json + safetensors) or a GGUF file (`.gguf`),
    /// relative to the config.
    pub model: String,
    /// Token classification or causal LM.
    pub task: Task,
    /// NF4 base weights (QLoRA); off trains LoRA over full-precision weights.
    #[serde(default = "medtune_pipeline::config::default_true")]
    pub quantise: bool,
    /// Padded tokens per batch.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Split whose loss is evaluated (and picks the best checkpoint).
    #[serde(default = "default_eval_split")]
    pub eval_split: String,
    /// The held-out split: what the evaluate stage scores unless `[evaluate] split` says
    /// otherwise.
    #[serde(default = "default_test_split")]
    pub test_split: String,
    /// CPU or CUDA.
    #[serde(default)]
    pub device: DeviceChoice,
    /// Optimisation: epochs, learning rate, schedule, accumulation, seed...
    pub schedule: ScheduleConfig,
    /// The adapters.
    pub lora: LoraConfig,
}

impl DeviceChoice {
    /// The candle device (CUDA needs the `cuda` feature and a GPU).
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda => Device::new_cuda(0).map_err(|e| {
                PipelineError::Usage(format!(
                    "device = \"cuda\": {e} (build with `--features cuda` on a machine with a GPU)"
                ))
            }),
        }
    }

    /// How models load on this device: f32 on the CPU, bf16 compute on CUDA.
    pub fn load_options(self, quantise: bool) -> Result<LoadOptions> {
        let device = self.device()?;
        Ok(LoadOptions {
            quantise,
            dtype: if device.is_cuda() {
                candle_core::DType::BF16
            } else {
                candle_core::DType::F32
            },
            device,
        })
    }
}

impl TrainConfig {
    /// The config section it is read from, which is also the train stage's name.
    pub const SECTION: &'static str = "train";
}

/// The files that make a model or adapter what it is, as stage sources: a directory's
/// `config.json` / `adapter_config.json` and safetensors, named `<written>/<file>`, or a model
/// file (GGUF) itself, named `written`.
pub(crate) fn weight_sources(dir: &Path, written: &str) -> Vec<SourceDecl> {
    if dir.is_file() {
        return vec![SourceDecl {
            written: written.to_string(),
            path: dir.to_path_buf(),
        }];
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n == "config.json" || n == "adapter_config.json" || n.ends_with(".safetensors"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| SourceDecl {
            written: format!("{written}/{name}"),
            path: dir.join(name),
        })
        .collect()
}

/// The label names of the `label_map` input, by id.
pub(crate) fn read_label_names(ctx: &StageContext<'_>) -> Result<Vec<String>> {
    let mut names = BTreeMap::new();
    for batch in ctx.read(LABEL_MAP)? {
        let batch = batch?;
        let ids = batch.column(0).as_primitive::<Int32Type>();
        let labels = batch.column(1).as_string::<i32>();
        for row in 0..batch.num_rows() {
            names.insert(ids.value(row), labels.value(row).to_string());
        }
    }
    Ok(names.into_values().collect())
}

/// A qlora error as a pipeline error: bad models and configs are the user's to fix (exit 2).
pub(crate) fn model_error(dir: &Path, e: QloraError) -> PipelineError {
    match e {
        QloraError::Model { path, message } => PipelineError::bad_input(path, message),
        QloraError::Shape { .. } | QloraError::Config(_) | QloraError::Quantise { .. } => {
            PipelineError::bad_input(dir, e.to_string())
        }
        QloraError::Data(m) => PipelineError::Internal(m),
        QloraError::NotFinite { .. } => PipelineError::CheckFailed {
            stage: TrainConfig::SECTION.into(),
            message: e.to_string(),
        },
        QloraError::Candle(e) => PipelineError::Internal(format!("candle: {e}")),
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
pub fn model_eos_ids(dir: &Path) -> Vec<u32> {
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
