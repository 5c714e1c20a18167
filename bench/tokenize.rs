//! Benchmark: the tokenize stage (SFT mode, all-MiniLM-L6-v2 tokenizer) on a 112,165-row alpaca
//! corpus of HealthCareMagic's size, against a plain `encode_batch` of the same texts with the
//! same tokenizer, both in this one process. Prints both times, tokens/s and the ratio.
//!
//! cargo run --release --example tokenize_bench [-- ROWS]
//! (run scripts/fetch-model.sh first)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use medtune_pipeline::{Dag, PipelineConfig, Quiet, RunOptions, Runner, Workdir};

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

fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::args().nth(1).map_or(Ok(112_165), |a| a.parse())?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tokenizer_path = root.join("models/all-MiniLM-L6-v2/tokenizer.json");
    anyhow::ensure!(tokenizer_path.is_file(), "run scripts/fetch-model.sh first");
    let dir = tempfile::tempdir()?;
    let (input, pairs) = corpus(dir.path(), rows)?;
    let config_path = dir.path().join("bench.toml");
    std::fs::write(
        &config_path,
        format!(
            "[ingest]\nformat = \"alpaca\"\ninputs = [{:?}]\n\n[tokenize]\ntokenizer = {:?}\n\
             mode = \"sft\"\nmax_length = 100000\n",
            input.display().to_string(),
            tokenizer_path.display().to_string()
        ),
    )?;
    let config = PipelineConfig::load(&config_path)?;
    let dag = Dag::new(medtune_stages::build(&config)?)?;
    let runner = Runner::new(
        Workdir::new(dir.path().join("work")),
        dag,
        config.settings().clone(),
        &Quiet,
    );
    let summaries = runner.run(&RunOptions::default())?;
    let stage = summaries
        .iter()
        .find(|s| s.stage == "tokenize")
        .context("no tokenize summary")?;
    let stage_tokens = stage.counters.get("tokens").copied().unwrap_or(0);

    // The reference: one encode_batch over the same texts (prompt and completion as one text,
    // special tokens added), same tokenizer, its own truncation and padding off.
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(anyhow::Error::msg)?;
    tokenizer
        .with_truncation(None)
        .map_err(anyhow::Error::msg)?;
    tokenizer.with_padding(None);
    let texts: Vec<String> = pairs.into_iter().map(|(p, c)| format!("{p} {c}")).collect();
    let started = Instant::now();
    let encodings = tokenizer
        .encode_batch(texts, true)
        .map_err(anyhow::Error::msg)?;
    let plain_seconds = started.elapsed().as_secs_f64();
    let plain_tokens: u64 = encodings.iter().map(|e| e.get_ids().len() as u64).sum();

    println!("rows: {rows}");
    println!(
        "tokenize stage:      {:>8.2} s  {:>12} tokens  {:>10.0} tokens/s  (read, encode, align, write Parquet)",
        stage.seconds,
        stage_tokens,
        stage_tokens as f64 / stage.seconds
    );
    println!(
        "plain encode_batch:  {:>8.2} s  {:>12} tokens  {:>10.0} tokens/s",
        plain_seconds,
        plain_tokens,
        plain_tokens as f64 / plain_seconds
    );
    println!("ratio stage / plain: {:.2}", stage.seconds / plain_seconds);
    Ok(())
}
