//! Benchmark: the tokenize stage (SFT mode) on a 112,165-row alpaca corpus of HealthCareMagic's
//! size, for both real tokenizers: all-MiniLM-L6-v2 (WordPiece) and SmolLM2-135M-Instruct
//! (byte-level BPE, from its GGUF file). In this one process, on the same texts the stage
//! encodes (each prompt and each completion, no special tokens), it also times `tokenizers`'
//! `encode_batch` and medtune's `TextEncoder` (fast path, all cores), and checks that the two
//! give the same ids for every text. Prints the times, tokens/s and the ratios.
//!
//! cargo run --release --example tokenize_bench [-- ROWS [minilm|smollm2]]
//! (run scripts/fetch-model.sh first)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use medtune_pipeline::{Dag, PipelineConfig, Quiet, RunOptions, Runner, Workdir};
use medtune_stages::shared::tokenizer::{load_tokenizer, TextEncoder};
use rayon::prelude::*;

/// A HealthCareMagic-sized alpaca array generated from chatdoctor5k.json (each row joins three
/// source rows, as tests/common::big_alpaca does); returns the path and the (prompt, output) pairs.
fn corpus(dir: &Path, rows: usize) -> anyhow::Result<(PathBuf, Vec<(String, String)>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(
        root.join("../shared/data/chatdoctor/chatdoctor5k.json"),
    )?)?;
    let n = source.len();
    let text = |i: usize, f: &str| source[i % n][f].as_str().unwrap_or("").to_string();
    let path = dir.join("corpus.json");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut pairs = Vec::with_capacity(rows);
    out.write_all(b"[\n")?;
    for i in 0..rows {
        let (j, k) = (i.wrapping_mul(7919) + 3, i.wrapping_mul(104_729) + 11);
        let joined = |f: &str| format!("{} {} {}", text(i, f), text(j, f), text(k, f));
        let (instruction, input, output) = (
            text(i, "instruction"),
            format!("{} (#{i})", joined("input")),
            joined("output"),
        );
        if i > 0 {
            out.write_all(b",\n")?;
        }
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"instruction": instruction, "input": input, "output": output}),
        )?;
        // The prompt exactly as ingest builds it for alpaca rows.
        pairs.push((format!("{instruction}\n\n{input}"), output));
    }
    out.write_all(b"\n]\n")?;
    out.flush()?;
    Ok((path, pairs))
}

/// The tokenize stage's seconds and tokens on `input` with the tokenizer at `tokenizer`.
fn run_stage(dir: &Path, input: &Path, tokenizer: &Path) -> anyhow::Result<(f64, u64, u64)> {
    let config_path = dir.join("bench.toml");
    std::fs::write(
        &config_path,
        format!(
            "[ingest]\nformat = \"alpaca\"\ninputs = [{:?}]\n\n[tokenize]\ntokenizer = {:?}\n\
             mode = \"sft\"\nmax_length = 100000\n",
            input.display().to_string(),
            tokenizer.display().to_string()
        ),
    )?;
    let config = PipelineConfig::load(&config_path)?;
    let dag = Dag::new(medtune_stages::build(&config)?)?;
    let work = dir.join(format!(
        "work-{}",
        tokenizer.file_stem().unwrap_or_default().to_string_lossy()
    ));
    let runner = Runner::new(Workdir::new(work), dag, config.settings().clone(), &Quiet);
    let summaries = runner.run(&RunOptions::default())?;
    let stage = summaries
        .iter()
        .find(|s| s.stage == "tokenize")
        .context("no tokenize summary")?;
    let counter = |name: &str| stage.counters.get(name).copied().unwrap_or(0);
    Ok((
        stage.seconds,
        counter("tokens"),
        counter("texts_through_tokenizers"),
    ))
}

fn line(what: &str, seconds: f64, tokens: u64) {
    println!(
        "  {what:<34} {seconds:>8.2} s  {tokens:>12} tokens  {:>11.0} tokens/s",
        tokens as f64 / seconds
    );
}

fn bench(
    name: &str,
    tokenizer_path: &Path,
    dir: &Path,
    input: &Path,
    texts: &[String],
) -> anyhow::Result<()> {
    anyhow::ensure!(tokenizer_path.is_file(), "run scripts/fetch-model.sh first");
    let (stage_seconds, stage_tokens, through_tokenizers) = run_stage(dir, input, tokenizer_path)?;

    let tokenizer = load_tokenizer(tokenizer_path)?;
    let started = Instant::now();
    let reference = tokenizer
        .encode_batch(texts.to_vec(), false)
        .map_err(anyhow::Error::msg)?;
    let reference_seconds = started.elapsed().as_secs_f64();
    let reference_tokens: u64 = reference.iter().map(|e| e.get_ids().len() as u64).sum();

    let encoder = TextEncoder::new(tokenizer);
    let fast_path = encoder
        .fast_path()
        .map_err(|why| anyhow::anyhow!("no fast path: {why}"))?;
    let started = Instant::now();
    let fast: Vec<Vec<u32>> = texts
        .par_iter()
        .map(|text| encoder.encode(text))
        .collect::<Result<_, String>>()
        .map_err(anyhow::Error::msg)?;
    let fast_seconds = started.elapsed().as_secs_f64();
    let fast_tokens: u64 = fast.iter().map(|ids| ids.len() as u64).sum();
    let differing = fast
        .iter()
        .zip(&reference)
        .filter(|(ids, encoding)| ids.as_slice() != encoding.get_ids())
        .count();

    println!("{name} ({fast_path}), {} texts:", texts.len());
    line("tokenize stage (read..write)", stage_seconds, stage_tokens);
    line(
        "tokenizers encode_batch",
        reference_seconds,
        reference_tokens,
    );
    line("TextEncoder (fast path)", fast_seconds, fast_tokens);
    println!(
        "  ids identical: {} of {} texts differ; {} texts went through tokenizers (not ASCII) in the stage",
        differing,
        texts.len(),
        through_tokenizers
    );
    println!(
        "  encode_batch / stage: {:.2}x   encode_batch / TextEncoder: {:.2}x",
        reference_seconds / stage_seconds,
        reference_seconds / fast_seconds
    );
    anyhow::ensure!(
        differing == 0,
        "{name}: {differing} texts got other ids on the fast path"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(Ok(112_165), |a| a.parse())?;
    let only = args.next();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let (input, pairs) = corpus(dir.path(), rows)?;
    let texts: Vec<String> = pairs.into_iter().flat_map(|(p, c)| [p, c]).collect();
    println!("rows: {rows} ({} threads)", rayon::current_num_threads());
    for (name, rel) in [
        ("minilm", "models/all-MiniLM-L6-v2/tokenizer.json"),
        (
            "smollm2",
            "models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ] {
        if only.as_deref().is_none_or(|o| o == name) {
            bench(name, &root.join(rel), dir.path(), &input, &texts)?;
        }
    }
    Ok(())
}
