//! GGUF checkpoints (llama.cpp's single-file format) as a model source.
//!
//! A GGUF file holds the model config as metadata (`llama.embedding_length`, …), the weights
//! under llama.cpp's names (`blk.0.attn_q.weight`, …) in any of ggml's quantisation types, and
//! the tokenizer (`tokenizer.ggml.*`) with the chat template. This module reads all of it with
//! candle's GGUF reader: the config becomes a [`LlamaConfig`], each weight is dequantised to
//! f32 under its Hugging Face name (then quantised to NF4 like any other base weight), and the
//! query and key rows are put back from llama.cpp's rotary layout into the one the Hugging
//! Face Llama code (and [`crate::llama`]) uses.
//!
//! llama.cpp's converter permutes the rows of `q_proj` / `k_proj` so that each head's rotary
//! pairs are adjacent (`(heads, 2, d/2, in)` → `(heads, d/2, 2, in)`); the inverse swaps the two
//! middle axes back.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{DType, Device, Tensor};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

use crate::error::{QloraError, Result};
use crate::llama::LlamaConfig;

/// The end-of-sequence id of the GGUF file at `path`: None when the file cannot be read or
/// names none (callers fall back to their own defaults; loading the model reports a bad file).
pub fn eos_id_of(path: &Path) -> Option<u32> {
    GgufFile::open(path).ok()?.eos_id()
}

/// Whether `path` names a GGUF file (by its extension).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// An open GGUF file: its metadata and tensor directory (the tensors are read on demand).
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

/// `tokenizer.ggml.pre` values candle's converter builds a pre-tokenizer of their own for.
const CANDLE_PRE_TOKENIZERS: &[&str] = &["qwen2", "smaug-bpe", "lfm2", "llama3"];

/// The architectures whose weights [`GgufFile`] maps to [`crate::llama::LlamaDecoder`].
pub const ARCHITECTURES: &[&str] = &["llama"];

impl GgufFile {
    /// Reads the header, metadata and tensor directory of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| QloraError::file(path, e))?;
        let content = Content::read(&mut BufReader::new(file)).map_err(|e| {
            QloraError::file(path, format!("not a GGUF file this reader takes: {e}"))
        })?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about metadata field `key`.
    fn bad(&self, key: &str, message: impl std::fmt::Display) -> QloraError {
        QloraError::Model {
            path: self.path.clone(),
            message: format!("`{key}`: {message}"),
        }
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.bad(key, "missing from the metadata"))
    }

    /// Metadata string `key`.
    pub fn string(&self, key: &str) -> Result<&str> {
        self.value(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| self.bad(key, e))
    }

    fn number(&self, key: &str) -> Result<f64> {
        let value = self.value(key)?;
        Ok(match value {
            Value::U8(v) => f64::from(*v),
            Value::I8(v) => f64::from(*v),
            Value::U16(v) => f64::from(*v),
            Value::I16(v) => f64::from(*v),
            Value::U32(v) => f64::from(*v),
            Value::I32(v) => f64::from(*v),
            Value::U64(v) => *v as f64,
            Value::I64(v) => *v as f64,
            Value::F32(v) => f64::from(*v),
            Value::F64(v) => *v,
            other => return Err(self.bad(key, format!("{other:?} is not a number"))),
        })
    }

    fn count(&self, key: &str) -> Result<usize> {
        let n = self.number(key)?;
        if n < 0.0 || n.fract() != 0.0 {
            return Err(self.bad(key, format!("{n} is not a count")));
        }
        Ok(n as usize)
    }

    /// `general.architecture`, checked against the ones this crate runs.
    pub fn architecture(&self) -> Result<&str> {
        let key = "general.architecture";
        let arch = self.string(key)?;
        if !ARCHITECTURES.contains(&arch) {
            return Err(self.bad(
                key,
                format!(
                    "architecture `{arch}` is not supported (supported: {})",
                    ARCHITECTURES.join(", ")
                ),
            ));
        }
        Ok(arch)
    }

    /// The model config, from the `<architecture>.*` metadata and the tensor directory.
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(self.bad(
                "rope_freqs.weight",
                "per-frequency rotary factors (Llama 3.1 scaling) are not supported",
            ));
        }
        let embed = self.shape("token_embd.weight")?;
        let heads = self.count(&key("attention.head_count"))?;
        let kv_heads = match self.count(&key("attention.head_count_kv")) {
            Ok(n) => n,
            Err(_) if !self.has(&key("attention.head_count_kv")) => heads,
            Err(e) => return Err(e),
        };
        let hidden = self.count(&key("embedding_length"))?;
        let head_dim = if self.has(&key("attention.key_length")) {
            Some(self.count(&key("attention.key_length"))?)
        } else {
            None
        };
        Ok(LlamaConfig {
            vocab_size: embed[0],
            hidden_size: hidden,
            intermediate_size: self.count(&key("feed_forward_length"))?,
            num_hidden_layers: self.count(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim,
            rms_norm_eps: self.number(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: if self.has(&key("rope.freq_base")) {
                self.number(&key("rope.freq_base"))?
            } else {
                10_000.0
            },
            rope_scaling: None,
            max_position_embeddings: self.count(&key("context_length"))?,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
        })
    }

    fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    /// The chat template (`tokenizer.chat_template`), if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.string("tokenizer.chat_template").ok()
    }

    /// Token id metadata `key` (`tokenizer.ggml.eos_token_id`, …), if present.
    pub fn token_id(&self, key: &str) -> Option<u32> {
        self.count(key).ok().and_then(|n| u32::try_from(n).ok())
    }

    /// The end-of-sequence token id (`tokenizer.ggml.eos_token_id`), if the metadata names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.token_id("tokenizer.ggml.eos_token_id")
    }

    /// The tokenizer the metadata describes: byte-level BPE from `tokenizer.ggml.tokens` and
    /// `merges`, the pre-tokenizer `tokenizer.ggml.pre` names, control and user-defined tokens
    /// special (built by candle's GGUF tokenizer converter).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let key = "tokenizer.ggml.model";
        let model = self.string(key)?;
        if model != "gpt2" {
            return Err(self.bad(
                key,
                format!(
                    "tokenizer model `{model}` is not supported (supported: gpt2, byte-level BPE)"
                ),
            ));
        }
        let mut tokenizer =
            Tokenizer::from_gguf(&self.content).map_err(|e| self.bad("tokenizer.ggml", e))?;
        // For pre-tokenizers outside its own list (SmolLM2's `smollm`, GPT-2's) candle falls
        // back to GPT-2's byte-level split with a space added in front of the text; transformers
        // (the tokenizer these files are used with) adds none, so "Cisplatin" is `C` + … and
        // not `ĠC` + ….
        let pre = self.string("tokenizer.ggml.pre").unwrap_or("gpt2");
        if !CANDLE_PRE_TOKENIZERS.contains(&pre) {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
        Ok(tokenizer)
    }

    /// The (row-major) shape of tensor `name`.
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|info| info.shape.dims().to_vec())
            .ok_or_else(|| self.bad(name, "no such tensor"))
    }

    /// Whether the file holds tensor `name` (llama.cpp's name).
    pub fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Tensor `name` (llama.cpp's name), dequantised to f32 on `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let file = File::open(&self.path).map_err(|e| QloraError::file(&self.path, e))?;
        let quantised = self
            .content
            .tensor(&mut BufReader::new(file), name, device)
            .map_err(|e| self.bad(name, e))?;
        quantised
            .dequantize(device)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| {
                self.bad(
                    name,
                    format!("cannot dequantise its {:?} data: {e}", quantised.dtype()),
                )
            })
    }
}

/// Maps Hugging Face Llama weight names to a GGUF file's, and back into the HF layout.
pub(crate) struct GgufNames {
    heads: usize,
    kv_heads: usize,
    names: HashMap<&'static str, &'static str>,
}

impl GgufNames {
    pub(crate) fn new(config: &LlamaConfig) -> Self {
        let names = HashMap::from([
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
        ]);
        GgufNames {
            heads: config.num_attention_heads,
            kv_heads: config.kv_heads(),
            names,
        }
    }

    /// The GGUF name of HF tensor `name`, and the heads its rows are permuted over (query
    /// and key weights and biases), if any.
    pub(crate) fn gguf_name(&self, name: &str) -> Option<(String, Option<usize>)> {
        match name {
            "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
            "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
            "lm_head.weight" => return Some(("output.weight".into(), None)),
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let (module, kind) = rest.rsplit_once('.')?;
        let gguf = self.names.get(module)?;
        let heads = match module {
            "self_attn.q_proj" => Some(self.heads),
            "self_attn.k_proj" => Some(self.kv_heads),
            _ => None,
        };
        Some((format!("blk.{layer}.{gguf}.{kind}"), heads))
    }
}

/// Undoes llama.cpp's rotary row permutation of a query or key weight (out × in) or bias
/// (out) over `heads` heads.
pub(crate) fn unpermute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let out = t.dim(0)?;
    if heads == 0 || !out.is_multiple_of(2 * heads) {
        return Err(QloraError::Config(format!(
            "{out} query/key rows do not split into {heads} heads of rotary pairs"
        )));
    }
    let half = out / heads / 2;
    let rest: usize = t.dims()[1..].iter().product();
    Ok(t.reshape((heads, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(t.shape())?)
}
