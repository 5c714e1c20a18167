//! The train stage: QLoRA on the training shards.
//!
//! Reads the `shards` dataset (its train split to learn from, its validation split for the
//! evaluation loss) and, for token classification, the `label_map`. Loads the model directory
//! named in the config (BERT, Llama or Mistral), quantises its linear layers to NF4, attaches LoRA
//! adapters and trains them (and a token head) with [`medtune_qlora::train::Trainer`].
//!
//! Outputs: the `train_log` dataset (one row per optimiser step, with the evaluation loss where
//! there was one), and artifacts committed with it: `adapter/` (PEFT's `adapter_config.json` +
//! `adapter_model.safetensors`, the weights of the best evaluation), `train_state.json` and
//! `loss.png`. Scoring the trained model is the evaluate stage's job.
//! Checkpoints live in the stage's scratch folder, so a run that dies resumes where its last
//! checkpoint left off when rerun with the same inputs and config.

mod source;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, AsArray, Float64Builder, RecordBatch, UInt64Builder};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use candle_core::Device;
use medtune_pipeline::{
    OutputDecl, OutputRole, PipelineConfig, PipelineError, Result, SourceDecl, Stage, StageContext,
    WorkUnit,
};
use medtune_qlora::auto::{AutoModel, Task};
use medtune_qlora::bert::LoadOptions;
use medtune_qlora::train::{StepLog, TrainConfig, TrainState, Trainer};
use medtune_qlora::{LoraConfig, QloraError};
use serde::{Deserialize, Serialize};

pub use self::source::{to_tensors, ShardBatches};
use crate::loader::{BatchLoader, Batching, LoaderOptions, Padding, ShardSet};
use crate::plot::Points;
use crate::shard::SHARDS;
use crate::tokenize::LABEL_MAP;

/// Name of the per-step log dataset.
pub const TRAIN_LOG: &str = "train_log";
/// Artifact folder of the trained adapter.
pub const ADAPTER_DIR: &str = "adapter";

fn default_max_tokens() -> usize {
    4096
}
fn default_eval_split() -> String {
    "validation".into()
}
fn yes() -> bool {
    true
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
pub struct TrainSection {
    /// A Hugging Face model directory (config.json + safetensors) or a GGUF file (`.gguf`),
    /// relative to the config.
    pub model: String,
    /// Token classification or causal LM.
    pub task: Task,
    /// NF4 base weights (QLoRA); off trains LoRA over full-precision weights.
    #[serde(default = "yes")]
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
    pub schedule: TrainConfig,
    /// The adapters.
    pub lora: LoraConfig,
}

/// The train stage.
pub struct TrainStage {
    config: TrainSection,
    model_dir: PathBuf,
}

impl TrainStage {
    /// Builds the stage from `[train]`.
    pub fn from_config(config: &PipelineConfig) -> Result<Self> {
        let section: TrainSection = config.section("train")?;
        if section.max_tokens == 0 {
            return Err(config.error("[train]: `max_tokens` must be positive"));
        }
        let schedule = &section.schedule;
        config.check_range("train.schedule", "epochs", schedule.epochs, 1..=u64::MAX)?;
        config.check_range(
            "train.schedule",
            "grad_accum",
            schedule.grad_accum,
            1..=u64::MAX,
        )?;
        config.check_range("train.lora", "r", section.lora.r, 1..=usize::MAX)?;
        let real = |section: &str, key: &str, value: f64, ok: bool, range: &str| {
            if ok {
                Ok(())
            } else {
                Err(config.error(format!(
                    "[{section}] {key} = {value} is out of range: it must be {range}"
                )))
            }
        };
        let rate = schedule.learning_rate;
        real(
            "train.schedule",
            "learning_rate",
            rate,
            rate > 0.0 && rate.is_finite(),
            "above 0",
        )?;
        let norm = schedule.max_grad_norm;
        real(
            "train.schedule",
            "max_grad_norm",
            norm,
            norm > 0.0,
            "above 0 (inf: no clipping)",
        )?;
        let dropout = section.lora.dropout;
        real(
            "train.lora",
            "dropout",
            dropout,
            (0.0..1.0).contains(&dropout),
            "in [0, 1)",
        )?;
        Ok(TrainStage {
            model_dir: config.resolve(&section.model),
            config: section,
        })
    }

    fn loader(
        &self,
        shards: &ShardSet,
        split: &str,
        shuffle: bool,
        pad_id: u32,
    ) -> Result<BatchLoader> {
        BatchLoader::new(
            shards.split(split)?,
            LoaderOptions {
                batching: Batching::Tokens {
                    max_tokens: self.config.max_tokens,
                },
                seed: self.config.schedule.seed,
                shuffle,
                pad_id,
                padding: Padding::Right,
            },
        )
    }
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

/// The files that make a model or adapter what it is, as stage sources: a directory's
/// `config.json` / `adapter_config.json` and safetensors, named `<written>/<file>`, or a model
/// file (GGUF) itself, named `written`.
pub(crate) fn weight_sources(dir: &std::path::Path, written: &str) -> Vec<SourceDecl> {
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
pub(crate) fn model_error(dir: &std::path::Path, e: QloraError) -> PipelineError {
    match e {
        QloraError::Model { path, message } => PipelineError::bad_input(path, message),
        QloraError::Shape { .. } | QloraError::Config(_) | QloraError::Quantise { .. } => {
            PipelineError::bad_input(dir, e.to_string())
        }
        QloraError::Data(m) => PipelineError::Internal(m),
        QloraError::NotFinite { .. } => PipelineError::CheckFailed {
            stage: "train".into(),
            message: e.to_string(),
        },
        QloraError::Candle(e) => PipelineError::Internal(format!("candle: {e}")),
    }
}

/// The `train_log` schema.
pub fn train_log_schema() -> SchemaRef {
    let u = |n: &str| Field::new(n, DataType::UInt64, false);
    let f = |n: &str, null: bool| Field::new(n, DataType::Float64, null);
    Arc::new(Schema::new(vec![
        u("step"),
        u("epoch"),
        f("loss", false),
        u("labelled_tokens"),
        f("learning_rate", false),
        f("grad_norm", false),
        u("tokens"),
        f("seconds", false),
        f("eval_loss", true),
    ]))
}

fn log_batch(state: &TrainState) -> Result<RecordBatch> {
    let (mut step, mut epoch, mut tokens) = (
        UInt64Builder::new(),
        UInt64Builder::new(),
        UInt64Builder::new(),
    );
    let mut labelled = UInt64Builder::new();
    let mut floats: Vec<Float64Builder> = (0..5).map(|_| Float64Builder::new()).collect();
    for s in &state.steps {
        step.append_value(s.step);
        epoch.append_value(s.epoch);
        tokens.append_value(s.tokens);
        labelled.append_value(s.labelled);
        floats[0].append_value(s.loss);
        floats[1].append_value(s.learning_rate);
        floats[2].append_value(s.grad_norm);
        floats[3].append_value(s.seconds);
        floats[4].append_option(
            state
                .evals
                .iter()
                .find(|e| e.step == s.step)
                .map(|e| e.loss),
        );
    }
    let mut f = floats
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut next = || f.next().expect("five float columns");
    let (loss, lr, norm, secs, eval) = (next(), next(), next(), next(), next());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(step.finish()),
        Arc::new(epoch.finish()),
        loss,
        Arc::new(labelled.finish()),
        lr,
        norm,
        Arc::new(tokens.finish()),
        secs,
        eval,
    ];
    Ok(RecordBatch::try_new(train_log_schema(), columns)?)
}

/// (step, loss) of the training steps and of the evaluations.
fn loss_points(state: &TrainState) -> (Points, Points) {
    (
        state
            .steps
            .iter()
            .map(|s| (s.step as f64, s.loss))
            .collect(),
        state
            .evals
            .iter()
            .map(|e| (e.step as f64, e.loss))
            .collect(),
    )
}

/// Resident memory of this process, in MiB (Linux), for the progress line.
fn rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

impl Stage for TrainStage {
    fn name(&self) -> &str {
        "train"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<String> {
        let mut inputs = vec![SHARDS.to_string()];
        if self.config.task == Task::TokenClassification {
            inputs.push(LABEL_MAP.to_string());
        }
        inputs
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl::new(
            TRAIN_LOG,
            train_log_schema(),
            OutputRole::Side,
        )]
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn sources(&self) -> Vec<SourceDecl> {
        // The model's files: a different model (or changed weights) is another training run.
        weight_sources(&self.model_dir, &self.config.model)
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        medtune_qlora::allocator::keep_freed_memory();
        let cfg = &self.config;
        let options = cfg.device.load_options(cfg.quantise)?;
        let device = options.device.clone();
        let labels = match cfg.task {
            Task::CausalLm => Vec::new(),
            Task::TokenClassification => read_label_names(ctx)?,
        };
        let model = AutoModel::load(
            &self.model_dir,
            cfg.task,
            labels.len(),
            &cfg.lora,
            cfg.schedule.seed,
            &options,
        )
        .map_err(|e| model_error(&self.model_dir, e))?;
        if let Some(bits) = model.base_bits_per_parameter() {
            ctx.count(
                "base_bits_per_parameter_x1000",
                (bits * 1000.0).round() as u64,
            );
        }
        let shards = ShardSet::from_dataset(ctx.input(SHARDS)?)?;
        let pad_id = 0;
        let train = ShardBatches::new(self.loader(&shards, "train", true, pad_id)?, device.clone());
        // What the stage reads: the training sequences (once per epoch).
        ctx.count_in(train.loader().shards().rows());
        let eval = ShardBatches::new(
            self.loader(&shards, &cfg.eval_split, false, pad_id)?,
            device.clone(),
        );
        let checkpoints = ctx.scratch_dir()?.join("checkpoints");
        let mut trainer = Trainer::new(&model, &train, cfg.schedule.clone(), &checkpoints)
            .map_err(|e| model_error(&self.model_dir, e))?;
        let resumed_at = trainer.state().step;
        if resumed_at > 0 {
            ctx.warn(format!("resuming from the checkpoint at step {resumed_at}"));
        }
        ctx.set_work_total(trainer.state().total_steps, WorkUnit::Steps);
        let clock = Instant::now();
        let mut tokens_seen = 0u64;
        let state = trainer
            .run(
                &train,
                Some(&eval),
                &mut |log: &StepLog, _state: &TrainState| {
                    tokens_seen += log.tokens;
                    let rate = tokens_seen as f64 / clock.elapsed().as_secs_f64().max(1e-9);
                    ctx.report_progress(log.step);
                    ctx.report_message(&format!(
                        "loss {:.4} | {:.0} tok/s | {} MiB",
                        log.loss,
                        rate,
                        rss_mib().unwrap_or(0)
                    ));
                },
            )
            .map_err(|e| model_error(&self.model_dir, e))?;
        trainer
            .use_best()
            .map_err(|e| model_error(&self.model_dir, e))?;
        let artifacts = ctx.artifacts_dir()?.to_path_buf();
        model
            .save_adapter(&artifacts.join(ADAPTER_DIR), &cfg.lora, &cfg.model)
            .map_err(|e| model_error(&self.model_dir, e))?;
        let state_json = serde_json::to_vec_pretty(&state).expect("state serialises");
        let state_path = artifacts.join("train_state.json");
        std::fs::write(&state_path, state_json).map_err(|e| PipelineError::io(&state_path, e))?;
        ctx.write(TRAIN_LOG, log_batch(&state)?)?;
        let (train_points, eval_points) = loss_points(&state);
        match crate::plot::loss_curve(&train_points, &eval_points, &artifacts.join("loss.png")) {
            Ok(true) => {}
            Ok(false) => ctx.warn("no TrueType font found: loss.png is drawn without labels"),
            Err(e) => ctx.warn(format!("loss curve not drawn: {e}")),
        }
        ctx.count("steps", state.step);
        ctx.count("tokens", state.steps.iter().map(|s| s.tokens).sum());
        if let Some(best) = &state.best {
            ctx.count("best_step", best.step);
        }
        Ok(())
    }
}
