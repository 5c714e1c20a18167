//! Benchmark: batched greedy generation of a causal LM with NF4 base weights and LoRA adapters
//! on every projection, as `medtune eval` runs it. Prints the prompt pass (prefill) time and
//! prompt tokens/s, the time of a decode step and generated tokens/s, and peak RSS.
//!
//! The prompts are fixed ids of lengths spread between `len / 2` and `len`, left-padded into
//! one batch as the evaluation's batches are. The prompt pass and the `new - 1` decode steps
//! after it are timed apart, each step running what `generate_greedy` runs for a batch in
//! which no row has finished (the cache written in place, the last position's logits, the
//! argmax). The model is any Llama-architecture directory (`bench/smollm2_shape.py` writes one
//! of SmolLM2-135M's shape).
//!
//! cargo run --release -p medtune-qlora --example generate_bench -- MODEL_DIR [BATCH LEN NEW]

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use medtune_qlora::auto::{AutoModel, Task};
use medtune_qlora::bert::LoadOptions;
use medtune_qlora::llama::LLAMA_TARGETS;
use medtune_qlora::lora::{LoraConfig, Pass};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    medtune_qlora::allocator::keep_freed_memory();
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .expect("usage: generate_bench MODEL_DIR [BATCH LEN NEW]"),
    );
    let mut number = |default: usize| args.next().and_then(|a| a.parse().ok()).unwrap_or(default);
    let (batch, len, new) = (number(16), number(600), number(32));
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        quantise: true,
    };
    let lora = LoraConfig {
        r: 16,
        alpha: 32.0,
        dropout: 0.05,
        use_rslora: false,
        target_modules: LLAMA_TARGETS.iter().map(|t| t.to_string()).collect(),
    };
    let start = Instant::now();
    let model = AutoModel::load(&dir, Task::CausalLm, 0, &lora, 7, &options).expect("model");
    println!(
        "load + NF4 quantise: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let AutoModel::DecoderLm(lm) = &model else {
        panic!("{} is not a causal LM", dir.display());
    };
    let decoder = &lm.decoder;
    // Prompts of lengths spread over len / 2 ..= len, left-padded into one batch.
    let lengths: Vec<usize> = (0..batch)
        .map(|i| len / 2 + (len - len / 2) * i / (batch - 1).max(1))
        .collect();
    let mut ids = Vec::with_capacity(batch * len);
    let mut mask = Vec::with_capacity(batch * len);
    for (row, &n) in lengths.iter().enumerate() {
        ids.extend(std::iter::repeat_n(0u32, len - n));
        ids.extend((0..n as u32).map(|t| (t * 7 + row as u32 * 13) % 1000 + 3));
        mask.extend(std::iter::repeat_n(0u32, len - n));
        mask.extend(std::iter::repeat_n(1u32, n));
    }
    let device = Device::Cpu;
    let mut input = Tensor::from_vec(ids, (batch, len), &device).expect("ids");
    let mut mask = Tensor::from_vec(mask, (batch, len), &device).expect("mask");
    let mut cache = decoder.new_cache_with_capacity(len + new);
    let mut next_tokens = |input: &Tensor, mask: &Tensor| -> Tensor {
        let hidden = decoder
            .forward_hidden(input, mask, Some(&mut cache), Pass::EVAL)
            .expect("forward");
        let last = hidden
            .narrow(1, hidden.dim(1).expect("dims") - 1, 1)
            .expect("last");
        let logits = decoder.lm_logits(&last).expect("logits");
        logits.argmax(D::Minus1).expect("argmax")
    };
    let start = Instant::now();
    input = next_tokens(&input, &mask);
    let prefill = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 1..new {
        let ones = Tensor::ones((batch, 1), DType::U32, &device).expect("ones");
        mask = Tensor::cat(&[&mask, &ones], 1).expect("mask");
        input = next_tokens(&input, &mask);
    }
    let decode = start.elapsed().as_secs_f64();
    let prompt_tokens: usize = lengths.iter().sum();
    let steps = (new - 1).max(1) as f64;
    println!(
        "batch {batch}, prompts {}..{len} tokens, {new} new: prefill {prefill:.2} s \
         ({:.0} prompt tokens/s), decode {:.0} ms a step ({:.1} generated tokens/s); \
         peak RSS {:.0} MiB",
        len / 2,
        prompt_tokens as f64 / prefill,
        decode * 1e3 / steps,
        batch as f64 * steps / decode,
        peak_rss_mib()
    );
}
