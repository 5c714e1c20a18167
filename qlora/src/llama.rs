//! A Llama / Mistral decoder whose linear layers are [`LoraLinear`]s: RMSNorm, rotary position
//! embeddings (with Llama 3's frequency scaling), grouped-query attention, SwiGLU, a causal-LM
//! head (tied to the embeddings when the config says so) and a token-classification head.
//!
//! Every operation is differentiable (the norms, rotation, attention softmax and SiLU gate are
//! [`ops`] kernels with their own backward pass), so gradients reach the adapters through all
//! of them. Positions come from the attention mask (a left-padded row starts at position 0 at
//! its first real token), and an optional [`KvCache`] lets generation feed one token at a time.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Embedding;
use serde::Deserialize;

use crate::bert::{Head, LoadOptions};
use crate::error::{QloraError, Result};
use crate::gguf::GgufFile;
use crate::lora::{LoraConfig, LoraLinear, Pass};
use crate::ops;
use crate::weights::{read_config, Bias, Scope, Weights};

/// Module names LoRA can target in a Llama / Mistral decoder (PEFT's names).
pub const LLAMA_TARGETS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Llama 3's rotary frequency scaling (`rope_scaling` with `rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeScaling {
    /// `llama3` (others are refused).
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Scale of the low frequencies.
    pub factor: f64,
    /// Wavelength bound (as a fraction of the original context) below which...
    pub low_freq_factor: f64,
    /// ...and above which frequencies are interpolated.
    pub high_freq_factor: f64,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

fn default_theta() -> f64 {
    10_000.0
}

/// The fields of a Llama / Mistral `config.json` the decoder uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// SwiGLU width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); default: as many as query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head width; default hidden / heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Llama 3 frequency scaling.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Longest context.
    pub max_position_embeddings: usize,
    /// The LM head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Rotary inverse frequencies, Llama 3 scaling applied.
    fn inverse_frequencies(&self) -> Vec<f64> {
        let d = self.head_dim();
        let base: Vec<f64> = (0..d)
            .step_by(2)
            .map(|i| 1.0 / self.rope_theta.powf(i as f64 / d as f64))
            .collect();
        let Some(s) = &self.rope_scaling else {
            return base;
        };
        let original = s.original_max_position_embeddings as f64;
        let (long, short) = (original / s.low_freq_factor, original / s.high_freq_factor);
        base.into_iter()
            .map(|f| {
                let wavelength = std::f64::consts::TAU / f;
                if wavelength < short {
                    f
                } else if wavelength > long {
                    f / s.factor
                } else {
                    // Between the two: blend scaled and unscaled by where the wavelength lies.
                    let t = (original / wavelength - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - t) * f / s.factor + t * f
                }
            })
            .collect()
    }
}

/// Keys and values of the positions seen so far, per layer.
///
/// Each layer's keys and values live in (batch, kv_heads, capacity, d) buffers that new
/// positions are written into in place; the attention reads the filled prefix as a view. A
/// buffer that fills up is reallocated at twice the size, so a cache made with the room a
/// generation needs ([`LlamaDecoder::new_cache_with_capacity`]) is written once per token and
/// never copied.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    capacity: usize,
}

/// One layer's buffers and how many positions they hold.
#[derive(Debug, Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerCache {
    /// Appends `k` and `v` (batch, kv_heads, l, d); returns views of all cached positions.
    fn append(
        slot: &mut Option<LayerCache>,
        k: &Tensor,
        v: &Tensor,
        capacity: usize,
    ) -> Result<(Tensor, Tensor)> {
        let l = k.dim(2)?;
        let mut cache = match slot.take() {
            Some(cache) if cache.len + l <= cache.k.dim(2)? => cache,
            old => Self::grown(old, k, l, capacity)?,
        };
        cache.k.slice_set(&k.contiguous()?, 2, cache.len)?;
        cache.v.slice_set(&v.contiguous()?, 2, cache.len)?;
        cache.len += l;
        let views = (
            cache.k.narrow(2, 0, cache.len)?,
            cache.v.narrow(2, 0, cache.len)?,
        );
        *slot = Some(cache);
        Ok(views)
    }

    /// Buffers shaped like `like` with room for `l` positions after what `old` holds (at
    /// least `capacity`, and twice the old room), holding `old`'s positions.
    fn grown(old: Option<LayerCache>, like: &Tensor, l: usize, capacity: usize) -> Result<Self> {
        let (b, heads, _, d) = like.dims4()?;
        let (len, room) = match &old {
            Some(old) => (old.len, old.k.dim(2)?),
            None => (0, 0),
        };
        let room = (len + l).max(capacity).max(2 * room);
        let buffer = || Tensor::zeros((b, heads, room, d), like.dtype(), like.device());
        let (k, v) = (buffer()?, buffer()?);
        if let Some(old) = old.filter(|old| old.len > 0) {
            k.slice_set(&old.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            v.slice_set(&old.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
        }
        Ok(LayerCache { k, v, len })
    }
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |c| c.len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the batch rows `rows` (u32 indices, in the new order).
    pub fn retain_rows(&mut self, rows: &Tensor) -> Result<()> {
        for cache in self.layers.iter_mut().flatten() {
            cache.k = cache.k.index_select(rows, 0)?;
            cache.v = cache.v.index_select(rows, 0)?;
        }
        Ok(())
    }
}

struct DecoderLayer {
    q: LoraLinear,
    k: LoraLinear,
    v: LoraLinear,
    o: LoraLinear,
    gate: LoraLinear,
    up: LoraLinear,
    down: LoraLinear,
    input_norm: Tensor,
    post_norm: Tensor,
}

/// Rotary tables and masks of one forward pass.
struct Positions {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl DecoderLayer {
    /// Loads the layer whose scope is `w` (`model.layers.N`).
    fn load(w: &Scope<'_>, c: &LlamaConfig, quantise: bool) -> Result<Self> {
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (q_out, kv_out) = (c.num_attention_heads * d, c.kv_heads() * d);
        let linear = |w: Scope<'_>, out, inp| w.linear(out, inp, Bias::IfPresent, quantise);
        let (attention, mlp) = (w.pp("self_attn"), w.pp("mlp"));
        Ok(DecoderLayer {
            q: linear(attention.pp("q_proj"), q_out, h)?,
            k: linear(attention.pp("k_proj"), kv_out, h)?,
            v: linear(attention.pp("v_proj"), kv_out, h)?,
            o: linear(attention.pp("o_proj"), h, q_out)?,
            gate: linear(mlp.pp("gate_proj"), i, h)?,
            up: linear(mlp.pp("up_proj"), i, h)?,
            down: linear(mlp.pp("down_proj"), h, i)?,
            input_norm: w.pp("input_layernorm").get("weight", &[h])?,
            post_norm: w.pp("post_attention_layernorm").get("weight", &[h])?,
        })
    }

    fn linears(&self) -> [&LoraLinear; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }

    fn linears_mut(&mut self) -> [&mut LoraLinear; 7] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }

    fn forward(
        &self,
        x: &Tensor,
        c: &LlamaConfig,
        at: &Positions,
        cache: Option<(&mut Option<LayerCache>, usize)>,
        pass: Pass,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let normed = ops::rms_norm(x, &self.input_norm, c.rms_norm_eps)?;
        let shape = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, l, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let rotate = |t: &Tensor| ops::rotary(t, &at.cos, &at.sin);
        let q = rotate(&shape(self.q.forward(&normed, pass)?, heads)?)?;
        let k = rotate(&shape(self.k.forward(&normed, pass)?, kv_heads)?)?;
        let v = shape(self.v.forward(&normed, pass)?, kv_heads)?;
        // Grouped-query attention reads each key/value head for its group of query heads.
        let (k, v) = match cache {
            Some((slot, capacity)) => LayerCache::append(slot, &k, &v, capacity)?,
            None => (k, v),
        };
        let context = ops::attention(&q, &k, &v, &at.mask, 1.0 / (d as f64).sqrt())?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, heads * d))?;
        let x = (x + self.o.forward(&context, pass)?)?;
        let normed = ops::rms_norm(&x, &self.post_norm, c.rms_norm_eps)?;
        let gated = ops::silu_mul(
            &self.gate.forward(&normed, pass)?,
            &self.up.forward(&normed, pass)?,
        )?;
        Ok((&x + self.down.forward(&gated, pass)?)?)
    }
}

/// A Llama / Mistral decoder with LoRA-capable projections.
pub struct LlamaDecoder {
    config: LlamaConfig,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Option<Tensor>,
    /// Rotary inverse frequencies, in f64: the angles are computed on the host in f64 and
    /// rounded once, to the model's dtype, as cosines and sines.
    inverse_frequencies: Vec<f64>,
    dtype: DType,
}

impl LlamaDecoder {
    /// Loads `config.json` and the (possibly sharded) safetensors of `dir`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let config: LlamaConfig = read_config(dir)?;
        let w = Weights::open(dir, &options.device, options.dtype)?;
        Self::from_weights(config, &w, &dir.join("config.json"), options)
    }

    /// Loads a Llama-architecture GGUF file: the config from its metadata, its weights
    /// dequantised (then quantised to NF4 when `options.quantise` is set).
    pub fn load_gguf(file: GgufFile, options: &LoadOptions) -> Result<Self> {
        let config = file.llama_config()?;
        let path = file.path().to_path_buf();
        let w = Weights::open_gguf(file, &config, &options.device, options.dtype);
        Self::from_weights(config, &w, &path, options)
    }

    /// Builds the decoder of `config` from `w`; `source` names the config in errors.
    fn from_weights(
        config: LlamaConfig,
        w: &Weights,
        source: &Path,
        options: &LoadOptions,
    ) -> Result<Self> {
        let bad = |message: String| QloraError::Model {
            path: source.to_path_buf(),
            message,
        };
        if let Some(s) = &config.rope_scaling {
            if s.rope_type != "llama3" && s.rope_type != "default" {
                return Err(bad(format!(
                    "rope_scaling type `{}` is not supported",
                    s.rope_type
                )));
            }
        }
        if config.kv_heads() == 0 || !config.num_attention_heads.is_multiple_of(config.kv_heads()) {
            return Err(bad(
                "num_attention_heads is not a multiple of num_key_value_heads".into(),
            ));
        }
        let h = config.hidden_size;
        let model = w.root().pp("model");
        let embed = model
            .pp("embed_tokens")
            .get("weight", &[config.vocab_size, h])?;
        let layers = model.pp("layers");
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::load(&layers.pp(i), &config, options.quantise))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(
                w.root()
                    .pp("lm_head")
                    .get("weight", &[config.vocab_size, h])?,
            )
        };
        Ok(LlamaDecoder {
            embed: Embedding::new(embed, h),
            norm: model.pp("norm").get("weight", &[h])?,
            layers,
            lm_head,
            inverse_frequencies: config.inverse_frequencies(),
            dtype: options.dtype,
            config,
        })
    }

    /// The model config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Every projection, in module order.
    pub fn linears(&self) -> impl Iterator<Item = &LoraLinear> {
        self.layers.iter().flat_map(|l| l.linears())
    }

    /// Every projection, in module order.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut LoraLinear> {
        self.layers.iter_mut().flat_map(|l| l.linears_mut())
    }

    /// Attaches LoRA adapters to the projections `config` targets; returns how many.
    pub fn attach_lora(&mut self, config: &LoraConfig, seed: u64) -> Result<usize> {
        crate::lora::attach_adapters(self.linears_mut(), config, LLAMA_TARGETS, seed)
    }

    /// A fresh, empty cache for generation.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_with_capacity(0)
    }

    /// A fresh, empty cache whose buffers are sized for `positions` positions when first
    /// written (they grow if more come).
    pub fn new_cache_with_capacity(&self, positions: usize) -> KvCache {
        KvCache {
            layers: vec![None; self.layers.len()],
            capacity: positions,
        }
    }

    /// Rotary tables and the additive mask for `l` new tokens after `past` cached ones.
    /// `attention_mask` covers all past + l positions (1 = token, 0 = padding).
    fn positions(
        &self,
        attention_mask: &Tensor,
        past: usize,
        l: usize,
        device: &Device,
    ) -> Result<Positions> {
        let (b, total) = attention_mask.dims2()?;
        if total != past + l {
            return Err(QloraError::Config(format!(
                "attention mask covers {total} positions, the cache and input {}",
                past + l
            )));
        }
        let mask: Vec<u32> = attention_mask
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1()?;
        let mut positions = Vec::with_capacity(b * l);
        let mut additive = Vec::with_capacity(b * l * total);
        for row in mask.chunks(total) {
            // A token's position counts the real tokens before it.
            let mut seen = 0u32;
            let mut position_of = Vec::with_capacity(total);
            for &m in row {
                seen += m;
                position_of.push(seen.saturating_sub(1));
            }
            positions.extend_from_slice(&position_of[past..]);
            for i in 0..l {
                let query = past + i;
                // A padding query attends to itself alone: its row then has a finite
                // entry in any dtype (an all-masked row would softmax to NaN in bf16, where
                // f32::MIN rounds to -inf), and nothing attends to it.
                let padding = row[query] == 0;
                additive.extend(row.iter().enumerate().map(|(j, &m)| {
                    if (j <= query && m == 1 && !padding) || (padding && j == query) {
                        0.0
                    } else {
                        f32::MIN
                    }
                }));
            }
        }
        if let Some(&p) = positions.iter().max() {
            if p as usize >= self.config.max_position_embeddings {
                return Err(QloraError::Config(format!(
                    "position {p} is past the model's {} positions",
                    self.config.max_position_embeddings
                )));
            }
        }
        let (cos, sin) = self.rotary_tables(&positions, (b, l), device)?;
        Ok(Positions {
            cos,
            sin,
            mask: Tensor::from_vec(additive, (b, 1, l, total), device)?.to_dtype(self.dtype)?,
        })
    }

    /// Cosines and sines (batch × 1 × length × head dim, the model's dtype) of the rotary
    /// angles at `positions`. Each angle is a product computed in f64 and rounded once: f32
    /// angles lose up to half an ulp of the position (~1e-4 rad at position 2,000).
    fn rotary_tables(
        &self,
        positions: &[u32],
        (b, l): (usize, usize),
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = &self.inverse_frequencies;
        let d = 2 * half.len();
        let (mut cos, mut sin) = (Vec::with_capacity(b * l * d), Vec::with_capacity(b * l * d));
        for &p in positions {
            let start = cos.len();
            for &f in half {
                let (s, c) = (p as f64 * f).sin_cos();
                cos.push(c);
                sin.push(s);
            }
            // The second half of the head repeats the first (the rotate-half layout).
            cos.extend_from_within(start..);
            sin.extend_from_within(start..);
        }
        let table = |v: Vec<f64>| -> Result<Tensor> {
            let shape = (b, 1, l, d);
            Ok(match self.dtype {
                DType::F64 => Tensor::from_vec(v, shape, device)?,
                dtype => {
                    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
                    Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?
                }
            })
        };
        Ok((table(cos)?, table(sin)?))
    }

    /// Final hidden states (batch × length × hidden) of `input_ids`, after what `cache`
    /// holds (if given; it is extended). `attention_mask` covers cached and new positions.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        pass: Pass,
    ) -> Result<Tensor> {
        let (_, l) = input_ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let at = self.positions(attention_mask, past, l, input_ids.device())?;
        let mut x = self.embed.forward(input_ids)?.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| (&mut c.layers[i], c.capacity));
            x = layer.forward(&x, &self.config, &at, slot, pass)?;
        }
        ops::rms_norm(&x, &self.norm, self.config.rms_norm_eps)
    }

    /// Next-token logits (… × vocab) of hidden states (… × hidden). The head is frozen: it
    /// takes no gradient (a tied head would otherwise cost a vocab × hidden one per step).
    pub fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(self.embed.embeddings());
        ops::frozen_linear(hidden, &head.to_dtype(hidden.dtype())?)
    }

    /// A token-classification head for this decoder (transformers' `score`).
    pub fn new_head(&self, labels: usize, seed: u64) -> Result<Head> {
        Head::new(
            labels,
            self.config.hidden_size,
            seed,
            self.embed.embeddings().device(),
        )
    }
}
