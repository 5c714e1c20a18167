//! A BERT encoder (all-MiniLM-L6-v2 is one) whose linear layers are [`LoraLinear`]s, with a
//! token-classification head.
//!
//! Same computation as Hugging Face's `BertModel` in evaluation mode: embeddings (word +
//! absolute position + token type 0) and LayerNorm, then per layer self-attention with an
//! additive padding mask, output projection, residual and LayerNorm, a GELU (erf) feed-forward,
//! residual and LayerNorm. The base model's own dropout is off, in training too: only the LoRA
//! path drops out (see DEVELOPERS notes in the crate docs).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::Embedding;
use rand::Rng;
use serde::Deserialize;

use crate::error::{QloraError, Result};
use crate::lora::{LoraConfig, LoraLinear, Pass};
use crate::ops;
use crate::rng::stream;
use crate::weights::{read_config, Bias, Scope, Weights};

/// The fields of a BERT `config.json` the encoder uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Feed-forward activation (`gelu` is the erf form).
    pub hidden_act: String,
    /// Longest input.
    pub max_position_embeddings: usize,
    /// Token types.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

/// Module names LoRA can target in a BERT encoder (PEFT's names).
pub const BERT_TARGETS: &[&str] = &["query", "key", "value", "dense"];

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Quantise the linear layers' weights to NF4.
    pub quantise: bool,
    /// Compute dtype.
    pub dtype: DType,
    /// Device.
    pub device: Device,
}

impl LoadOptions {
    /// QLoRA on the CPU: NF4 weights, f32 compute.
    pub fn qlora_cpu() -> Self {
        LoadOptions {
            quantise: true,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// LayerNorm with frozen parameters ([`ops::layer_norm`]: candle-nn's fused kernel has no
/// backward pass, and gradients must cross every norm to reach the adapters).
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

fn layer_norm(w: &Scope<'_>, size: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: w.get("weight", &[size])?,
        bias: w.get("bias", &[size])?,
        eps,
    })
}

struct BertLayer {
    query: LoraLinear,
    key: LoraLinear,
    value: LoraLinear,
    attention_out: LoraLinear,
    attention_norm: LayerNorm,
    intermediate: LoraLinear,
    output: LoraLinear,
    output_norm: LayerNorm,
}

impl BertLayer {
    /// Loads the layer whose scope is `w` (`encoder.layer.N`).
    fn load(w: &Scope<'_>, c: &BertConfig, quantise: bool) -> Result<Self> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let linear = |w: Scope<'_>, out, inp| w.linear(out, inp, Bias::Required, quantise);
        let (attention, output) = (w.pp("attention"), w.pp("output"));
        let own = attention.pp("self");
        Ok(BertLayer {
            query: linear(own.pp("query"), h, h)?,
            key: linear(own.pp("key"), h, h)?,
            value: linear(own.pp("value"), h, h)?,
            attention_out: linear(attention.pp("output").pp("dense"), h, h)?,
            attention_norm: layer_norm(&attention.pp("output").pp("LayerNorm"), h, eps)?,
            intermediate: linear(w.pp("intermediate").pp("dense"), i, h)?,
            output: linear(output.pp("dense"), h, i)?,
            output_norm: layer_norm(&output.pp("LayerNorm"), h, eps)?,
        })
    }

    fn linears_mut(&mut self) -> [&mut LoraLinear; 6] {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attention_out,
            &mut self.intermediate,
            &mut self.output,
        ]
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, heads: usize, pass: Pass) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let d = h / heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(self.query.forward(x, pass)?)?;
        let k = split(self.key.forward(x, pass)?)?;
        let v = split(self.value.forward(x, pass)?)?;
        let context = ops::attention(&q, &k, &v, mask, 1.0 / (d as f64).sqrt())?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, h))?;
        let attended = self
            .attention_norm
            .forward(&(self.attention_out.forward(&context, pass)? + x)?)?;
        let hidden = ops::gelu_erf(&self.intermediate.forward(&attended, pass)?)?;
        let out = self.output.forward(&hidden, pass)?;
        self.output_norm.forward(&(out + attended)?)
    }
}

/// A BERT encoder with LoRA-capable linear layers.
pub struct BertEncoder {
    config: BertConfig,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<BertLayer>,
    dtype: DType,
}

impl BertEncoder {
    /// Loads `config.json` and the safetensors of `dir` (with or without a `bert.` prefix).
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let config: BertConfig = read_config(dir)?;
        if config.hidden_act != "gelu" {
            return Err(QloraError::Model {
                path: dir.join("config.json"),
                message: format!("hidden_act `{}` is not supported (gelu)", config.hidden_act),
            });
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            return Err(QloraError::Model {
                path: dir.join("config.json"),
                message: "hidden_size is not a multiple of num_attention_heads".into(),
            });
        }
        let w = Weights::open(dir, &options.device, options.dtype)?
            .with_prefix_if_present("bert.", "embeddings.word_embeddings.weight");
        let h = config.hidden_size;
        let embeddings = w.root().pp("embeddings");
        let embedding = |name: &str, rows: usize| -> Result<Embedding> {
            Ok(Embedding::new(
                embeddings.pp(name).get("weight", &[rows, h])?,
                h,
            ))
        };
        let encoder = w.root().pp("encoder").pp("layer");
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::load(&encoder.pp(i), &config, options.quantise))
            .collect::<Result<Vec<_>>>()?;
        Ok(BertEncoder {
            word: embedding("word_embeddings", config.vocab_size)?,
            position: embedding("position_embeddings", config.max_position_embeddings)?,
            token_type: embedding("token_type_embeddings", config.type_vocab_size)?,
            embedding_norm: layer_norm(&embeddings.pp("LayerNorm"), h, config.layer_norm_eps)?,
            layers,
            dtype: options.dtype,
            config,
        })
    }

    /// The model config.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Every linear layer, in module order.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut LoraLinear> {
        self.layers.iter_mut().flat_map(|l| l.linears_mut())
    }

    /// Every linear layer, in module order.
    pub fn linears(&self) -> impl Iterator<Item = &LoraLinear> {
        self.layers.iter().flat_map(|l| {
            [
                &l.query,
                &l.key,
                &l.value,
                &l.attention_out,
                &l.intermediate,
                &l.output,
            ]
        })
    }

    /// Attaches LoRA adapters to the layers `config` targets; returns how many.
    pub fn attach_lora(&mut self, config: &LoraConfig, seed: u64) -> Result<usize> {
        crate::lora::attach_adapters(self.linears_mut(), config, BERT_TARGETS, seed)
    }

    /// Last hidden states (batch × length × hidden) for `input_ids` and `attention_mask`
    /// (batch × length, 1 over tokens, 0 over padding).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        pass: Pass,
    ) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        if l > self.config.max_position_embeddings {
            return Err(QloraError::Config(format!(
                "sequence of {l} tokens is longer than the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let device = input_ids.device();
        let positions = Tensor::arange(0u32, l as u32, device)?.unsqueeze(0)?;
        let types = Tensor::zeros((b, l), DType::U32, device)?;
        let embedded = self
            .word
            .forward(input_ids)?
            .broadcast_add(&self.position.forward(&positions)?)?
            .add(&self.token_type.forward(&types)?)?;
        let mut x = self.embedding_norm.forward(&embedded)?;
        // 0 where attended, the dtype's minimum where padded (as transformers does).
        let mask = attention_mask.to_dtype(self.dtype)?;
        let mask = ((mask.ones_like()? - mask)? * f64::from(f32::MIN))?
            .unsqueeze(1)?
            .unsqueeze(1)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask, self.config.num_attention_heads, pass)?;
        }
        Ok(x)
    }
}

/// A trainable linear head (not quantised, no adapter): PEFT's `modules_to_save`.
pub struct Head {
    /// labels × hidden.
    pub weight: Var,
    /// labels.
    pub bias: Var,
}

impl Head {
    /// A fresh head: normal(0, 0.02) weights from a stream of `seed`, zero bias (transformers'
    /// initialisation).
    pub fn new(labels: usize, hidden: usize, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = stream(seed, 0, "head", "classifier");
        let values: Vec<f32> = (0..labels * hidden)
            .map(|_| {
                // Box-Muller from two uniforms.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                (0.02 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Ok(Head {
            weight: Var::from_tensor(&Tensor::from_vec(values, (labels, hidden), device)?)?,
            bias: Var::zeros(labels, DType::F32, device)?,
        })
    }

    /// Logits for hidden states (… × hidden).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.as_tensor().to_dtype(x.dtype())?;
        let b = self.bias.as_tensor().to_dtype(x.dtype())?;
        // As a rows × hidden matrix: a broadcast weight would make its gradient batch-sized.
        let (labels, hidden) = w.dims2()?;
        let mut shape = x.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = labels;
        }
        let rows = x.reshape(((), hidden))?;
        Ok(rows.matmul(&w.t()?)?.broadcast_add(&b)?.reshape(shape)?)
    }
}

/// BERT with a token-classification head.
pub struct BertTokenClassifier {
    /// The encoder.
    pub encoder: BertEncoder,
    /// The classifier over the last hidden states.
    pub head: Head,
}

impl BertTokenClassifier {
    /// Logits (batch × length × labels).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        pass: Pass,
    ) -> Result<Tensor> {
        let hidden = self.encoder.forward(input_ids, attention_mask, pass)?;
        self.head.forward(&hidden)
    }
}
