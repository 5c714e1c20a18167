//! LoRA linear layers over a frozen base weight (full precision or NF4).
//!
//! `y = x Wᵀ + b + s · dropout(x) Aᵀ Bᵀ`, with `A` (r × in) drawn kaiming-uniform as PEFT does
//! (bound 1/√in), `B` (out × r) zeros, and `s = alpha / r` (or `alpha / √r` with rsLoRA). Only
//! `A` and `B` are [`Var`]s; the base weight is a plain tensor, so no gradient is kept for it.
//!
//! Dropout masks come from a random stream keyed by (seed, step, module path), not from a
//! device RNG: a run resumed at a step draws exactly the masks the uninterrupted run drew.

use candle_core::{DType, Device, Module, Tensor, Var};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{QloraError, Result};
use crate::nf4::Nf4Weight;
use crate::ops::{frozen_linear, lora_linear, nf4_linear, takes_tiles, Adapted, Dropout};
use crate::rng::stream;

fn default_alpha() -> f64 {
    32.0
}

fn default_dropout() -> f64 {
    0.05
}

/// Adapter hyper-parameters (PEFT's `LoraConfig` fields of the same names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scale numerator.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// Module names to adapt: a module matches when its path equals a name or ends with
    /// `.name` (PEFT's rule for a list of names).
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// The factor the adapter's output is multiplied by.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Whether the module at `path` is adapted.
    pub fn targets(&self, path: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| path == t || path.ends_with(&format!(".{t}")))
    }

    /// Checks the values; `known` are the adaptable module names of the model, so a typo in
    /// `target_modules` is an error instead of an adapter that adapts nothing.
    pub fn validate(&self, known: &[&str]) -> Result<()> {
        if self.r == 0 {
            return Err(QloraError::Config(
                "LoRA rank `r` must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(QloraError::Config(format!(
                "LoRA dropout {} is outside [0, 1)",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(QloraError::Config("`target_modules` is empty".into()));
        }
        for target in &self.target_modules {
            if !known.contains(&target.as_str()) {
                return Err(QloraError::Config(format!(
                    "target module `{target}` is not a linear layer of this model (known: {})",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// What a forward pass is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Use the adapters (off: the base model alone, same weights).
    pub adapters: bool,
    /// Training: dropout keyed by (seed, step), and the adapters take gradients; `None`
    /// evaluates, with the adapters detached (no graph is recorded).
    pub dropout_key: Option<(u64, u64)>,
}

impl Pass {
    /// Evaluation with the adapters on.
    pub const EVAL: Pass = Pass {
        adapters: true,
        dropout_key: None,
    };

    /// Training at `step` of a run seeded with `seed`.
    pub fn train(seed: u64, step: u64) -> Self {
        Pass {
            adapters: true,
            dropout_key: Some((seed, step)),
        }
    }
}

/// A frozen base weight.
#[derive(Debug, Clone)]
pub enum FrozenWeight {
    /// Full precision.
    Dense(Tensor),
    /// NF4 with double-quantised block maxima, dequantised at every use.
    Nf4(Nf4Weight),
}

impl FrozenWeight {
    /// The weight in `dtype`.
    pub fn weight(&self, dtype: DType) -> Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => Ok(w.to_dtype(dtype)?),
            FrozenWeight::Nf4(q) => q.dequantise(dtype),
        }
    }

    /// (out, in).
    pub fn dims(&self) -> (usize, usize) {
        let dims = match self {
            FrozenWeight::Dense(w) => w.dims().to_vec(),
            FrozenWeight::Nf4(q) => q.shape().to_vec(),
        };
        (dims[0], dims[1])
    }
}

/// The trainable low-rank pair of one layer.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// r × in.
    pub a: Var,
    /// out × r.
    pub b: Var,
    /// `alpha / r` or `alpha / √r`.
    pub scale: f64,
    /// Dropout probability on the adapter's input.
    pub dropout: f64,
}

/// A linear layer with a frozen weight and an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    path: String,
    base: FrozenWeight,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

impl LoraLinear {
    /// A layer at module `path` (e.g. `encoder.layer.0.attention.self.query`) with `weight`
    /// (out × in), quantised to NF4 when `quantise` is set.
    pub fn new(path: &str, weight: Tensor, bias: Option<Tensor>, quantise: bool) -> Result<Self> {
        if weight.rank() != 2 {
            return Err(QloraError::Shape {
                name: format!("{path}.weight"),
                expected: vec![0, 0],
                actual: weight.dims().to_vec(),
            });
        }
        let base = if quantise {
            FrozenWeight::Nf4(Nf4Weight::quantise(&format!("{path}.weight"), &weight)?)
        } else {
            FrozenWeight::Dense(weight)
        };
        Ok(LoraLinear {
            path: path.to_string(),
            base,
            bias,
            adapter: None,
        })
    }

    /// Its module path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The frozen weight.
    pub fn base(&self) -> &FrozenWeight {
        &self.base
    }

    /// The adapter, if one is attached.
    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }

    /// Attaches a fresh adapter: A kaiming-uniform from a stream seeded by (seed, path), B zeros.
    /// Adapters are kept in f32 (cast to the compute dtype in the forward pass).
    pub fn attach(&mut self, config: &LoraConfig, seed: u64) -> Result<()> {
        let (out, inp) = self.base.dims();
        let device = self.device();
        let bound = 1.0 / (inp as f64).sqrt();
        let mut rng = stream(seed, 0, "lora_A", &self.path);
        let a: Vec<f32> = (0..config.r * inp)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (config.r, inp), &device)?;
        let b = Tensor::zeros((out, config.r), DType::F32, &device)?;
        self.adapter = Some(Adapter {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale: config.scale(),
            dropout: config.dropout,
        });
        Ok(())
    }

    /// Replaces the adapter's matrices (loading a saved adapter), checking their shapes.
    pub fn set_adapter(&mut self, a: Tensor, b: Tensor, scale: f64, dropout: f64) -> Result<()> {
        let (out, inp) = self.base.dims();
        let r = a.dim(0)?;
        for (name, t, want) in [("lora_A", &a, [r, inp]), ("lora_B", &b, [out, r])] {
            if t.dims() != want {
                return Err(QloraError::Shape {
                    name: format!("{}.{name}.weight", self.path),
                    expected: want.to_vec(),
                    actual: t.dims().to_vec(),
                });
            }
        }
        let device = self.device();
        self.adapter = Some(Adapter {
            a: Var::from_tensor(&a.to_device(&device)?.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_device(&device)?.to_dtype(DType::F32)?)?,
            scale,
            dropout,
        });
        Ok(())
    }

    fn device(&self) -> Device {
        match &self.base {
            FrozenWeight::Dense(w) => w.device().clone(),
            FrozenWeight::Nf4(q) => q.device().clone(),
        }
    }

    /// Folds the adapter into a dense weight (`W + s·B·A`) for inference; the layer then has
    /// no adapter.
    pub fn merge(&mut self) -> Result<()> {
        let Some(adapter) = self.adapter.take() else {
            return Ok(());
        };
        let w = self.base.weight(DType::F32)?;
        let delta = adapter
            .b
            .as_tensor()
            .to_dtype(DType::F32)?
            .matmul(&adapter.a.as_tensor().to_dtype(DType::F32)?)?;
        self.base = FrozenWeight::Dense((w + (delta * adapter.scale)?)?);
        Ok(())
    }

    /// The layer's output for `x` (…, in).
    pub fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let adapter = self.adapter.as_ref().filter(|_| pass.adapters);
        if let (None, FrozenWeight::Nf4(q)) = (pass.dropout_key, &self.base) {
            if takes_tiles(x, q) {
                return self.infer_few_rows(x, q, adapter);
            }
        }
        let w = self.base.weight(x.dtype())?;
        let bias = self
            .bias
            .as_ref()
            .map(|b| b.to_dtype(x.dtype()))
            .transpose()?;
        let Some(adapter) = adapter else {
            let y = frozen_linear(x, &w)?;
            return Ok(match bias {
                Some(bias) => y.broadcast_add(&bias)?,
                None => y,
            });
        };
        let dropout = match pass.dropout_key {
            Some((seed, step)) if adapter.dropout > 0.0 => Some(Dropout {
                p: adapter.dropout,
                rng: stream(seed, step, "dropout", &self.path),
            }),
            _ => None,
        };
        // Outside training nothing takes a gradient: detached adapters keep candle from
        // recording the graph, which would otherwise keep every activation (and, through the
        // KV cache, every generated step) alive.
        let (a, b) = match pass.dropout_key {
            Some(_) => (adapter.a.as_tensor().clone(), adapter.b.as_tensor().clone()),
            None => (
                adapter.a.as_tensor().detach(),
                adapter.b.as_tensor().detach(),
            ),
        };
        let (a, b) = (a.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
        lora_linear(
            x,
            &w,
            bias.as_ref(),
            Adapted {
                a: &a,
                b: &b,
                scale: adapter.scale,
                dropout: dropout.as_ref(),
            },
        )
    }

    /// Inference on a few rows (a generation step) of an NF4 layer: `x Wᵀ` tile by tile
    /// ([`nf4_linear`]), without a dequantised copy of the weight, then the bias and the
    /// detached adapter's `s · (x Aᵀ) Bᵀ`, all row-sized.
    fn infer_few_rows(
        &self,
        x: &Tensor,
        weight: &Nf4Weight,
        adapter: Option<&Adapter>,
    ) -> Result<Tensor> {
        let mut y = nf4_linear(x, weight)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(&bias.to_dtype(x.dtype())?)?;
        }
        if let Some(adapter) = adapter {
            let detached = |v: &Var| v.as_tensor().detach().to_dtype(x.dtype());
            let low = frozen_linear(x, &detached(&adapter.a)?)?;
            let update = frozen_linear(&low, &detached(&adapter.b)?)?;
            y = (y + (update * adapter.scale)?)?;
        }
        Ok(y)
    }
}

impl Module for LoraLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        LoraLinear::forward(self, x, Pass::EVAL).map_err(candle_core::Error::wrap)
    }
}

/// Attaches fresh adapters to the `linears` that `config` targets, after checking `config`
/// against the model's adaptable module names `known`; returns how many were attached.
pub fn attach_adapters<'a>(
    linears: impl Iterator<Item = &'a mut LoraLinear>,
    config: &LoraConfig,
    known: &[&str],
    seed: u64,
) -> Result<usize> {
    config.validate(known)?;
    let mut attached = 0;
    for linear in linears {
        if config.targets(linear.path()) {
            linear.attach(config, seed)?;
            attached += 1;
        }
    }
    Ok(attached)
}
