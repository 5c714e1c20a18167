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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Builder, RecordBatch, UInt64Builder};
use medtune_pipeline::{
    OutputDecl, OutputRole, PipelineConfig, PipelineError, Result, SourceDecl, Stage, StageContext,
    WorkUnit,
};
use medtune_qlora::auto::{AutoModel, Task};
use medtune_qlora::train::{EvalLog, StepLog, TrainState, Trainer};
use medtune_schemas::dataset::{LABEL_MAP, SHARDS, TRAIN_LOG};

use self::source::ShardBatches;
use crate::shared::loader::{BatchLoader, Batching, LoaderOptions, Padding, ShardSet};
use crate::shared::model::{
    model_error, read_label_names, weight_sources, TrainConfig, ADAPTER_DIR,
};
use crate::shared::plot::Points;

/// The stage name: its `[train]` config section and its cache folder.
pub const NAME: &str = TrainConfig::SECTION;
/// The artifact holding the whole training state (steps, evaluations, the best one).
pub const STATE_FILE: &str = "train_state.json";

/// What a committed training run left in its artifacts folder.
#[derive(Debug, Clone)]
pub struct TrainedAdapter {
    /// The adapter folder (PEFT format).
    pub adapter_dir: PathBuf,
    /// The evaluation whose weights the adapter holds, if the run evaluated.
    pub best: Option<EvalLog>,
}

impl TrainedAdapter {
    /// Reads what the train stage committed into `artifacts` (its cache entry's artifacts).
    pub fn read(artifacts: &Path) -> Result<Self> {
        let path = artifacts.join(STATE_FILE);
        let text = std::fs::read(&path).map_err(|e| PipelineError::io(&path, e))?;
        let state: TrainState = serde_json::from_slice(&text).map_err(|e| {
            PipelineError::Internal(format!("{}: not a training state: {e}", path.display()))
        })?;
        Ok(TrainedAdapter {
            adapter_dir: artifacts.join(ADAPTER_DIR),
            best: state.best,
        })
    }
}

/// The train stage.
pub struct TrainStage {
    config: TrainConfig,
    model_dir: PathBuf,
}

impl TrainStage {
    /// Builds the stage from `[train]`.
    pub fn from_config(config: &PipelineConfig) -> Result<Self> {
        let section: TrainConfig = config.section("train")?;
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
    Ok(RecordBatch::try_new(medtune_schemas::train_log(), columns)?)
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
        NAME
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
            medtune_schemas::train_log(),
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
        let state_path = artifacts.join(STATE_FILE);
        std::fs::write(&state_path, state_json).map_err(|e| PipelineError::io(&state_path, e))?;
        ctx.write(TRAIN_LOG, log_batch(&state)?)?;
        let (train_points, eval_points) = loss_points(&state);
        match crate::shared::plot::loss_curve(
            &train_points,
            &eval_points,
            &artifacts.join("loss.png"),
        ) {
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
