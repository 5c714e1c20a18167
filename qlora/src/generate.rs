//! Batched greedy generation with a KV cache.
//!
//! Prompts of different lengths are left-padded into one batch, so every row's last prompt
//! token sits in the last column and each step appends one column. Positions come from the
//! attention mask (a row's first real token is position 0), so a padded row computes what it
//! would alone. A row stops at an end-of-sequence id (kept out of its output) or after
//! `max_new_tokens`, or when its next token would be past the model's positions
//! (`max_position_embeddings`); finished rows leave the batch (their cache rows are dropped), so
//! the rest do not pay for them.

use candle_core::{DType, Device, Tensor, D};

use crate::error::{QloraError, Result};
use crate::llama::LlamaDecoder;
use crate::lora::Pass;

/// How to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// The most tokens generated per row.
    pub max_new_tokens: usize,
    /// Ids that end a row.
    pub eos_ids: Vec<u32>,
    /// The id fed in padding positions (masked out; any valid id).
    pub pad_id: u32,
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// It produced an end-of-sequence id.
    Eos,
    /// It reached `max_new_tokens`.
    Length,
    /// It filled the model's context (`max_position_embeddings`).
    Context,
}

impl StopReason {
    /// `eos` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::Length => "length",
            StopReason::Context => "context",
        }
    }
}

/// One row's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Generated ids, the end-of-sequence id excluded.
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: StopReason,
}

/// Greedy continuations of `prompts` (each at least one id), in their order.
pub fn generate_greedy(
    decoder: &LlamaDecoder,
    prompts: &[&[u32]],
    options: &GenerateOptions,
    pass: Pass,
    device: &Device,
) -> Result<Vec<Generation>> {
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(QloraError::Config(format!("prompt {i} is empty")));
    }
    let context = decoder.config().max_position_embeddings;
    if let Some(long) = prompts.iter().find(|p| p.len() > context) {
        return Err(QloraError::Config(format!(
            "a prompt of {} tokens is longer than the model's {context} positions",
            long.len()
        )));
    }
    // Per row: the most tokens it may generate, and why it would stop there.
    let limits: Vec<(usize, StopReason)> = prompts
        .iter()
        .map(|p| {
            let room = context - p.len();
            if room < options.max_new_tokens {
                (room, StopReason::Context)
            } else {
                (options.max_new_tokens, StopReason::Length)
            }
        })
        .collect();
    let mut outputs: Vec<Generation> = limits
        .iter()
        .map(|&(_, stop)| Generation {
            tokens: Vec::new(),
            stop,
        })
        .collect();
    if prompts.is_empty() || limits.iter().all(|&(n, _)| n == 0) {
        return Ok(outputs);
    }
    // Rows with no room at all (a prompt as long as the context) generate nothing.
    let room: Vec<usize> = (0..prompts.len()).filter(|&i| limits[i].0 > 0).collect();
    let batch: Vec<&[u32]> = room.iter().map(|&i| prompts[i]).collect();
    let width = batch.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(batch.len() * width);
    let mut mask = Vec::with_capacity(batch.len() * width);
    for prompt in &batch {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(options.pad_id, pad));
        ids.extend_from_slice(prompt);
        mask.extend(std::iter::repeat_n(0u32, pad));
        mask.extend(std::iter::repeat_n(1u32, prompt.len()));
    }
    let mut mask = Tensor::from_vec(mask, (batch.len(), width), device)?;
    let mut input = Tensor::from_vec(ids, (batch.len(), width), device)?;
    // Batch row -> prompt index, for the rows still generating.
    let mut active = room;
    let most = limits.iter().map(|&(n, _)| n).max().unwrap_or(0);
    // Room for the prompts and every step, so the cache is never reallocated.
    let mut cache = decoder.new_cache_with_capacity(width + most);
    for _ in 0..most {
        let hidden = decoder.forward_hidden(&input, &mask, Some(&mut cache), pass)?;
        let last = hidden.narrow(1, hidden.dim(1)? - 1, 1)?;
        let next: Vec<u32> = decoder
            .lm_logits(&last)?
            .to_dtype(DType::F32)?
            .argmax(D::Minus1)?
            .flatten_all()?
            .to_vec1()?;
        let mut keep = Vec::with_capacity(active.len());
        for (row, &token) in next.iter().enumerate() {
            let index = active[row];
            let out = &mut outputs[index];
            if options.eos_ids.contains(&token) {
                out.stop = StopReason::Eos;
            } else {
                out.tokens.push(token);
                if out.tokens.len() < limits[index].0 {
                    keep.push(row);
                }
            }
        }
        if keep.is_empty() {
            break;
        }
        let mut next = next;
        if keep.len() < active.len() {
            let rows = Tensor::from_vec(
                keep.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                keep.len(),
                device,
            )?;
            cache.retain_rows(&rows)?;
            mask = mask.index_select(&rows, 0)?;
            next = keep.iter().map(|&r| next[r]).collect();
            active = keep.iter().map(|&r| active[r]).collect();
        }
        let n = active.len();
        input = Tensor::from_vec(next, (n, 1), device)?;
        mask = Tensor::cat(&[&mask, &Tensor::ones((n, 1), DType::U32, device)?], 1)?;
    }
    Ok(outputs)
}
