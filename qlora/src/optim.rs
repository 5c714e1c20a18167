//! AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW` update), a cosine learning
//! rate schedule with linear warm-up (transformers' `get_cosine_schedule_with_warmup`) and
//! gradient-norm clipping.
//!
//! Written here rather than taken from candle-nn because a checkpoint must hold the moment
//! estimates, and candle-nn's `AdamW` keeps them private.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{QloraError, Result};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One parameter's state.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    /// Updates this parameter has had (its bias-correction count). Like PyTorch's per-parameter
    /// `state["step"]`, it does not advance on a step that has no gradient for the parameter.
    steps: u64,
}

/// AdamW over named variables.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    steps: u64,
}

impl AdamW {
    /// An optimiser for `vars` (name, variable), moments at zero.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?.to_dtype(DType::F32)?;
                Ok(Slot {
                    name,
                    m: zeros.clone(),
                    v: zeros,
                    var,
                    steps: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            config,
            slots,
            steps: 0,
        })
    }

    /// Calls of [`AdamW::step`] so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with learning rate `lr` from `grads` (one per variable, by name; a variable
    /// without a gradient is left alone: no decay, and its moments and bias correction do not
    /// advance, as in PyTorch).
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.steps += 1;
        let c = self.config;
        for slot in &mut self.slots {
            let Some(g) = grads.get(&slot.name) else {
                continue;
            };
            slot.steps += 1;
            let t = i32::try_from(slot.steps).unwrap_or(i32::MAX);
            let (bias1, bias2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
            let g = g.to_dtype(DType::F32)?;
            slot.m = ((&slot.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            slot.v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let p = slot.var.as_tensor().to_dtype(DType::F32)?;
            let decayed = (&p * (1.0 - lr * c.weight_decay))?;
            let denom = ((slot.v.clone() / bias2)?.sqrt()? + c.eps)?;
            let update = ((&slot.m / bias1)? / denom)?;
            let next = (decayed - (update * lr)?)?;
            slot.var.set(&next.to_dtype(slot.var.dtype())?)?;
        }
        Ok(())
    }

    /// The moments and per-parameter update counts as named tensors (`<name>.exp_avg`,
    /// `<name>.exp_avg_sq`, `<name>.step`), for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for slot in &self.slots {
            out.insert(format!("{}.exp_avg", slot.name), slot.m.clone());
            out.insert(format!("{}.exp_avg_sq", slot.name), slot.v.clone());
            let steps =
                Tensor::new(&[slot.steps as i64], &Device::Cpu).expect("a one-element CPU tensor");
            out.insert(format!("{}.step", slot.name), steps);
        }
        out
    }

    /// Restores moments and step counts saved by [`AdamW::state_tensors`]; `steps` is the
    /// number of [`AdamW::step`] calls, and each parameter's own count where the state has
    /// none (checkpoints written before the counts were saved).
    pub fn restore(
        &mut self,
        state: &HashMap<String, Tensor>,
        steps: u64,
        from: &Path,
    ) -> Result<()> {
        for slot in &mut self.slots {
            let get = |suffix: &str| {
                let key = format!("{}.{suffix}", slot.name);
                state.get(&key).cloned().ok_or_else(|| QloraError::Model {
                    path: from.to_path_buf(),
                    message: format!("the optimiser state has no `{key}`"),
                })
            };
            let (m, v) = (get("exp_avg")?, get("exp_avg_sq")?);
            let device = slot.var.device();
            slot.m = m.to_device(device)?;
            slot.v = v.to_device(device)?;
            slot.steps = match state.get(&format!("{}.step", slot.name)) {
                Some(t) => t
                    .to_dtype(DType::I64)?
                    .flatten_all()?
                    .to_vec1::<i64>()?
                    .first()
                    .map_or(0, |&n| n.max(0) as u64),
                None => steps,
            };
        }
        self.steps = steps;
        Ok(())
    }
}

/// Learning rate at `step` (0-based) of `total`: linear warm-up over `warmup` steps from 0 to
/// `peak`, then half a cosine down to 0 at `total`.
pub fn cosine_with_warmup(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.values() {
        total += f64::from(
            g.to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()?,
        );
    }
    let norm = total.sqrt();
    if norm > max_norm && norm > 0.0 {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(cosine_with_warmup(1.0, 0, 10, 110), 0.0);
        assert_eq!(cosine_with_warmup(1.0, 5, 10, 110), 0.5);
        assert_eq!(cosine_with_warmup(1.0, 10, 10, 110), 1.0);
        assert!((cosine_with_warmup(1.0, 60, 10, 110) - 0.5).abs() < 1e-12);
        assert!(cosine_with_warmup(1.0, 110, 10, 110).abs() < 1e-12);
    }

    #[test]
    fn adamw_matches_the_update_rule_by_hand() {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default()).unwrap();
        let grads = HashMap::from([(
            "w".to_string(),
            Tensor::new(&[0.5f32, -0.25], &Device::Cpu).unwrap(),
        )]);
        opt.step(&grads, 0.1).unwrap();
        // Step 1: m̂ = g, v̂ = g², update = g/(|g| + eps) = sign(g); decay first.
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        let expect = [1.0 * (1.0 - 0.001) - 0.1, -2.0 * (1.0 - 0.001) + 0.1];
        for (g, e) in got.iter().zip(expect) {
            assert!((f64::from(*g) - e).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut grads = HashMap::from([
            (
                "a".to_string(),
                Tensor::new(&[3.0f32], &Device::Cpu).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::new(&[4.0f32], &Device::Cpu).unwrap(),
            ),
        ]);
        assert!((clip_grad_norm(&mut grads, 1.0).unwrap() - 5.0).abs() < 1e-9);
        let a: Vec<f32> = grads["a"].to_vec1().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-5);
    }
}
