//! QLoRA in candle: NF4 double-quantised frozen base weights with trainable LoRA adapters.
//!
//! - [`nf4`]: bitsandbytes-compatible NF4 quantisation with double-quantised block maxima.
//! - [`ops`]: fused CPU kernels with their own backward (frozen linear, norms, softmax,
//!   activations, rotary embedding, cross-entropy).
//! - [`lora`]: linear layers with a frozen (NF4 or dense) weight and a LoRA adapter.
//! - [`bert`]: a BERT encoder built from those layers, with a token-classification head.
//! - [`llama`]: a Llama / Mistral decoder built from those layers, with LM and token heads.
//! - [`optim`] and [`train`]: AdamW, the schedule, and a trainer with exact resume.
//! - [`generate`]: batched greedy generation with a KV cache.
//! - [`export`]: adapters saved and loaded in PEFT's format.
//! - [`auto`]: the model a directory (or GGUF file) holds, for a task, with adapters.
//! - [`weights`]: Hugging Face model directories (config.json + safetensors, sharded too).
//! - [`gguf`]: GGUF files (llama.cpp's format) as a model source: config, weights, tokenizer.

#![warn(missing_docs)]

pub mod allocator;
pub mod auto;
pub mod bert;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod lora;
pub mod nf4;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod tasks;
pub mod train;
pub mod weights;

pub use error::{QloraError, Result};
pub use lora::{LoraConfig, LoraLinear, Pass};
pub use nf4::Nf4Weight;
