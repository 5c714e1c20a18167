//! The trainer: AdamW over the adapters and head, cosine schedule with warm-up, gradient
//! accumulation and clipping, periodic evaluation, atomic checkpoints and exact resume.
//!
//! An optimiser step takes `grad_accum` consecutive batches of an epoch (fewer at an epoch's
//! end); its loss is the mean over all their labelled tokens, so accumulation does not change
//! what is optimised. Every random draw (dropout) is keyed by (seed, step), the loader is
//! positioned by (epoch, batch), and a checkpoint holds the variables, the optimiser moments and
//! the logs, so a run resumed from a checkpoint computes exactly the losses the uninterrupted
//! run computed after it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{QloraError, Result};
use crate::fsutil::write_dir_atomically;
use crate::lora::Pass;
use crate::optim::{clip_grad_norm, cosine_with_warmup, AdamW, AdamWConfig};

/// One padded batch as tensors.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// batch × length token ids (u32).
    pub input_ids: Tensor,
    /// batch × length, 1 over tokens (u32).
    pub attention_mask: Tensor,
    /// batch × length labels, -100 where the loss ignores a position (i64).
    pub labels: Tensor,
    /// Labelled positions (what the loss averages over).
    pub labelled: usize,
    /// Real tokens.
    pub tokens: usize,
}

/// A model the trainer can train.
pub trait TrainModel {
    /// Named trainable variables.
    fn trainable(&self) -> Vec<(String, Var)>;
    /// Mean loss over the batch's labelled positions, and their count.
    fn loss(&self, batch: &TrainBatch, pass: Pass) -> Result<(Tensor, usize)>;
}

/// Where batches come from: resumable at (epoch, batch).
pub trait BatchSource {
    /// The batches of `epoch` from batch `step` on.
    fn batches(&self, epoch: u64, step: u64) -> Box<dyn Iterator<Item = Result<TrainBatch>> + '_>;
    /// Batches in `epoch`.
    fn steps_in_epoch(&self, epoch: u64) -> Result<u64>;
}

fn default_accum() -> u64 {
    1
}
fn default_clip() -> f64 {
    1.0
}

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Passes over the training batches.
    pub epochs: u64,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Warm-up steps (linear from 0).
    #[serde(default)]
    pub warmup_steps: u64,
    /// Batches per optimiser step.
    #[serde(default = "default_accum")]
    pub grad_accum: u64,
    /// Gradient clipping norm.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// Seed of dropout (and of the loader and initialisation, where the caller uses it).
    #[serde(default)]
    pub seed: u64,
    /// Evaluate every this many optimiser steps (0: at the end only).
    #[serde(default)]
    pub eval_every: u64,
    /// Checkpoint every this many optimiser steps (0: at the end only).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Stop after this many optimiser steps (0: no limit).
    #[serde(default)]
    pub max_steps: u64,
    /// AdamW.
    #[serde(default)]
    pub adamw: AdamWConfig,
}

/// What one optimiser step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// Optimiser step, from 1.
    pub step: u64,
    /// Epoch it belongs to.
    pub epoch: u64,
    /// Mean loss over the step's labelled tokens (always finite: a step without labelled
    /// tokens, or with a NaN or infinite loss or gradient, stops training with an error).
    #[serde(with = "exact_f64")]
    pub loss: f64,
    /// Labelled tokens in the step's batches.
    #[serde(default)]
    pub labelled: u64,
    /// Learning rate used.
    #[serde(with = "exact_f64")]
    pub learning_rate: f64,
    /// Gradient norm before clipping.
    #[serde(with = "exact_f64")]
    pub grad_norm: f64,
    /// Real tokens in the step's batches.
    pub tokens: u64,
    /// Wall seconds of the step.
    #[serde(with = "exact_f64")]
    pub seconds: f64,
}

/// An evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLog {
    /// After this optimiser step.
    pub step: u64,
    /// Mean loss over the evaluation set's labelled tokens.
    #[serde(with = "exact_f64")]
    pub loss: f64,
}

/// Everything a checkpoint records besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: u64,
    /// Next batch to read: epoch...
    pub epoch: u64,
    /// ...and batch within it.
    pub batch: u64,
    /// Optimiser steps the run will take.
    pub total_steps: u64,
    /// Per-step logs.
    pub steps: Vec<StepLog>,
    /// Evaluations.
    pub evals: Vec<EvalLog>,
    /// Step with the lowest evaluation loss so far, and that loss.
    pub best: Option<EvalLog>,
    /// The config the run started with, as JSON text (a resume with another is refused;
    /// compared as text, so no float is re-parsed).
    pub config: String,
}

fn config_text(config: &ScheduleConfig) -> String {
    serde_json::to_string(config).expect("config serialises")
}

/// f64 fields of the logs as decimal strings: Rust's shortest round-trip form, parsed back
/// exactly (serde_json's own float parsing may be one ulp off), so logs restored from a
/// checkpoint equal the logs the uninterrupted run wrote, bit for bit.
mod exact_f64 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

const TRAINABLE_FILE: &str = "trainable.safetensors";
const BEST_FILE: &str = "best.safetensors";
const OPTIMISER_FILE: &str = "optimiser.safetensors";
const STATE_FILE: &str = "state.json";

/// Trains `model` on `train`, evaluating on `eval`, checkpointing into `out`.
pub struct Trainer<'a, M: TrainModel> {
    model: &'a M,
    config: ScheduleConfig,
    out: PathBuf,
    vars: Vec<(String, Var)>,
    optimiser: AdamW,
    state: TrainState,
    /// Copies of the variables at the best evaluation so far.
    best_vars: Option<HashMap<String, Tensor>>,
}

impl<'a, M: TrainModel> Trainer<'a, M> {
    /// A trainer starting from step 0, or from the latest checkpoint in `out` if there is one
    /// (its config must equal `config`).
    pub fn new(
        model: &'a M,
        train: &dyn BatchSource,
        config: ScheduleConfig,
        out: &Path,
    ) -> Result<Self> {
        if config.grad_accum == 0 || config.epochs == 0 {
            return Err(QloraError::Config(
                "epochs and grad_accum must be at least 1".into(),
            ));
        }
        let mut total_steps = 0;
        for epoch in 0..config.epochs {
            total_steps += train.steps_in_epoch(epoch)?.div_ceil(config.grad_accum);
        }
        if config.max_steps > 0 {
            total_steps = total_steps.min(config.max_steps);
        }
        let vars = model.trainable();
        let optimiser = AdamW::new(vars.clone(), config.adamw)?;
        let mut trainer = Trainer {
            model,
            out: out.to_path_buf(),
            vars,
            optimiser,
            state: TrainState {
                step: 0,
                epoch: 0,
                batch: 0,
                total_steps,
                steps: Vec::new(),
                evals: Vec::new(),
                best: None,
                config: config_text(&config),
            },
            config,
            best_vars: None,
        };
        if let Some(latest) = latest_checkpoint(out)? {
            trainer.restore(&latest)?;
        }
        Ok(trainer)
    }

    /// The state so far.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    fn restore(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read(&path).map_err(|e| QloraError::file(&path, e))?;
        let state: TrainState =
            serde_json::from_slice(&text).map_err(|e| QloraError::file(&path, e))?;
        if state.config != config_text(&self.config) {
            return Err(QloraError::Config(format!(
                "{} was written by a run with another training config; use another output \
                 folder or the same config",
                dir.display()
            )));
        }
        let device = self.vars.first().map(|(_, v)| v.device().clone());
        let device = device.unwrap_or(candle_core::Device::Cpu);
        let saved = candle_core::safetensors::load(dir.join(TRAINABLE_FILE), &device)?;
        for (name, var) in &self.vars {
            let t = saved.get(name).ok_or_else(|| {
                QloraError::file(&dir.join(TRAINABLE_FILE), format!("no tensor `{name}`"))
            })?;
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        let moments = candle_core::safetensors::load(dir.join(OPTIMISER_FILE), &device)?;
        self.optimiser.restore(&moments, state.step, dir)?;
        let best = dir.join(BEST_FILE);
        self.best_vars = if best.is_file() {
            Some(candle_core::safetensors::load(&best, &device)?)
        } else {
            None
        };
        self.state = state;
        Ok(())
    }

    /// Writes a checkpoint of the current state (write aside, fsync, rename).
    pub fn checkpoint(&self) -> Result<PathBuf> {
        let name = format!("checkpoint-{:06}", self.state.step);
        let dir = self.out.join(&name);
        let tensors: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        write_dir_atomically(&dir, |tmp| {
            candle_core::safetensors::save(&tensors, tmp.join(TRAINABLE_FILE))?;
            candle_core::safetensors::save(
                &self.optimiser.state_tensors(),
                tmp.join(OPTIMISER_FILE),
            )?;
            if let Some(best) = &self.best_vars {
                candle_core::safetensors::save(best, tmp.join(BEST_FILE))?;
            }
            let state = serde_json::to_vec_pretty(&self.state).expect("state serialises");
            std::fs::write(tmp.join(STATE_FILE), state).map_err(|e| QloraError::file(tmp, e))
        })?;
        Ok(dir)
    }

    /// Sets the variables to their values at the best evaluation (lowest loss); false when
    /// there was no evaluation.
    pub fn use_best(&self) -> Result<bool> {
        let Some(best) = &self.best_vars else {
            return Ok(false);
        };
        for (name, var) in &self.vars {
            if let Some(t) = best.get(name) {
                var.set(t)?;
            }
        }
        Ok(true)
    }

    /// Mean loss over every labelled token of `source` (epoch 0), adapters on, no dropout.
    pub fn evaluate(&self, source: &dyn BatchSource) -> Result<f64> {
        let (mut sum, mut count) = (0f64, 0usize);
        for batch in source.batches(0, 0) {
            let batch = batch?;
            let (loss, n) = self.model.loss(&batch, Pass::EVAL)?;
            sum += f64::from(loss.to_scalar::<f32>()?) * n as f64;
            count += n;
        }
        if count == 0 {
            return Err(QloraError::Data(
                "the evaluation set has no labelled token, so it has no loss".into(),
            ));
        }
        Ok(sum / count as f64)
    }

    /// Trains to the end (or `max_steps`), calling `on_step` after every optimiser step.
    /// Returns the final state.
    pub fn run(
        &mut self,
        train: &dyn BatchSource,
        eval: Option<&dyn BatchSource>,
        on_step: &mut dyn FnMut(&StepLog, &TrainState),
    ) -> Result<TrainState> {
        let c = self.config.clone();
        while self.state.step < self.state.total_steps && self.state.epoch < c.epochs {
            let (epoch, start) = (self.state.epoch, self.state.batch);
            let mut batches = train.batches(epoch, start);
            let mut position = start;
            let mut exhausted = false;
            while self.state.step < self.state.total_steps {
                let mut group = Vec::new();
                for batch in batches.by_ref().take(c.grad_accum as usize) {
                    group.push(batch?);
                }
                if group.is_empty() {
                    exhausted = true;
                    break;
                }
                position += group.len() as u64;
                let log = self.step(epoch, &group)?;
                self.state.batch = position;
                self.after_step(log, eval, on_step)?;
            }
            if !exhausted {
                break;
            }
            self.state.epoch += 1;
            self.state.batch = 0;
        }
        if c.checkpoint_every == 0 || !self.state.step.is_multiple_of(c.checkpoint_every) {
            self.checkpoint()?;
        }
        Ok(self.state.clone())
    }

    fn after_step(
        &mut self,
        log: StepLog,
        eval: Option<&dyn BatchSource>,
        on_step: &mut dyn FnMut(&StepLog, &TrainState),
    ) -> Result<()> {
        let c = &self.config;
        let step = log.step;
        self.state.steps.push(log.clone());
        let last = step == self.state.total_steps;
        if let Some(eval) = eval {
            if (c.eval_every > 0 && step.is_multiple_of(c.eval_every)) || last {
                let loss = self.evaluate(eval)?;
                let entry = EvalLog { step, loss };
                if self.state.best.as_ref().is_none_or(|b| loss < b.loss) {
                    self.state.best = Some(entry.clone());
                    let mut copies = HashMap::new();
                    for (name, var) in &self.vars {
                        copies.insert(name.clone(), var.as_tensor().copy()?);
                    }
                    self.best_vars = Some(copies);
                }
                self.state.evals.push(entry);
            }
        }
        if c.checkpoint_every > 0 && step.is_multiple_of(c.checkpoint_every) {
            self.checkpoint()?;
        }
        on_step(&log, &self.state);
        Ok(())
    }

    /// One optimiser step over `group`.
    fn step(&mut self, epoch: u64, group: &[TrainBatch]) -> Result<StepLog> {
        let clock = Instant::now();
        let step = self.state.step;
        let labelled: usize = group.iter().map(|b| b.labelled).sum();
        if labelled == 0 {
            // The loss is a mean over labelled tokens: none means no loss and no gradient.
            return Err(QloraError::Data(format!(
                "step {}: its {} batch(es) have no labelled token (the tokenize stage rejects \
                 such rows as `no_labelled_tokens`; were these shards written before it did?)",
                step + 1,
                group.len()
            )));
        }
        let mut grads: HashMap<String, Tensor> = HashMap::new();
        let mut loss_sum = 0f64;
        for (k, batch) in group.iter().enumerate() {
            let pass = Pass::train(self.config.seed, step * self.config.grad_accum + k as u64);
            let (loss, n) = self.model.loss(batch, pass)?;
            if n == 0 {
                continue;
            }
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * n as f64;
            // Weighted so the step's gradient is that of the mean over all its tokens.
            let weighted = (loss * (n as f64 / labelled as f64))?;
            let store = weighted.backward()?;
            for (name, var) in &self.vars {
                if let Some(g) = store.get(var.as_tensor()) {
                    let g = match grads.remove(name) {
                        Some(acc) => (acc + g)?,
                        None => g.clone(),
                    };
                    grads.insert(name.clone(), g);
                }
            }
        }
        let not_finite = |what, value: f64| QloraError::NotFinite {
            step: step + 1,
            what,
            value,
        };
        let loss = loss_sum / labelled as f64;
        if !loss.is_finite() {
            return Err(not_finite("loss", loss));
        }
        let grad_norm = clip_grad_norm(&mut grads, self.config.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(not_finite("gradient norm", grad_norm));
        }
        let lr = cosine_with_warmup(
            self.config.learning_rate,
            step,
            self.config.warmup_steps,
            self.state.total_steps,
        );
        self.optimiser.step(&grads, lr)?;
        self.state.step += 1;
        Ok(StepLog {
            step: self.state.step,
            epoch,
            loss,
            labelled: labelled as u64,
            learning_rate: lr,
            grad_norm,
            tokens: group.iter().map(|b| b.tokens as u64).sum(),
            seconds: clock.elapsed().as_secs_f64(),
        })
    }
}

/// The checkpoint folder in `out` with the highest step, if any.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(None);
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in entries {
        let entry = entry.map_err(|e| QloraError::file(out, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if best.as_ref().is_none_or(|(b, _)| step > *b) {
                best = Some((step, entry.path()));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}
