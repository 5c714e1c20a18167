//! `medtune train` end to end on the real ChemProt shards with a tiny random Llama (the real
//! architecture, MiniLM's vocabulary size so the shards' ids fit), and its bad-input errors.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::*;

/// chemprot.toml with absolute paths plus a [train] section for the model in `model`.
fn chemprot_train_config(dir: &Path, model: &Path, lora_targets: &str) -> PathBuf {
    let text = bundled_config("chemprot.toml");
    let text = format!(
        "{text}\n[train]\nmodel = {model:?}\ntask = \"causal_lm\"\nmax_tokens = 512\n\n\
         [train.schedule]\nepochs = 1\nlearning_rate = 1e-2\nwarmup_steps = 2\nseed = 5\n\
         max_steps = 16\n\n[train.lora]\nr = 8\nalpha = 16\ndropout = 0.0\n\
         target_modules = {lora_targets}\n",
        model = model.display().to_string()
    );
    let path = dir.join("chemprot-train.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_tiny_llama_learns_chemprot_completions_and_saves_a_peft_adapter() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("tiny-llama");
    std::fs::create_dir(&model).unwrap();
    tiny_llama(&model, 30522);
    let config = chemprot_train_config(
        work.path(),
        &model,
        "[\"q_proj\", \"v_proj\", \"down_proj\"]",
    );
    let run = medtune(
        work.path(),
        &["train", "--config", config.to_str().unwrap()],
    )
    .expect(0);
    assert!(
        run.stdout.contains("adapter (PEFT format):"),
        "{}",
        run.stdout
    );

    let steps = query_csv(work.path(), "SELECT count(*) FROM train_log");
    assert_eq!(steps.lines().nth(1), Some("16"));
    // Steps whose one row lost its completion to truncation at 512 tokens have no loss.
    let log = query_csv(
        work.path(),
        "SELECT step, loss FROM train_log WHERE labelled_tokens > 0 ORDER BY step",
    );
    let losses: Vec<f64> = log
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(losses.len() >= 12, "{losses:?}");
    let first = losses[..4].iter().sum::<f64>() / 4.0;
    let last = losses[losses.len() - 4..].iter().sum::<f64>() / 4.0;
    println!("tiny Llama on ChemProt SFT shards: loss {first:.3} -> {last:.3}");
    assert!(last < first, "{losses:?}");

    // PEFT's files, names and fields.
    let adapter = PathBuf::from(
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix("adapter (PEFT format): "))
            .unwrap(),
    );
    let peft: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(peft["peft_type"], "LORA");
    assert_eq!(peft["task_type"], "CAUSAL_LM");
    assert_eq!(peft["r"], 8);
    let tensors =
        candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(tensors.len(), 2 * 3 * 2, "A and B of 3 modules in 2 layers");
    let a = &tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"];
    assert_eq!(a.dims(), &[8, 64]);

    // The loss curve, drawn with labels (a font was found) and decodable as a PNG.
    let png = std::fs::read(adapter.parent().unwrap().join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(!run.stderr.contains("without labels"), "{}", run.stderr);

    // Cached: a second `train` does nothing.
    let again = medtune(
        work.path(),
        &["train", "--config", config.to_str().unwrap()],
    )
    .expect(0);
    let train_row = again
        .stdout
        .lines()
        .find(|l| l.contains(" train "))
        .unwrap_or("");
    assert!(train_row.contains("hit"), "{}", again.stdout);
}

#[test]
fn bad_models_and_targets_are_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("tiny-llama");
    std::fs::create_dir(&model).unwrap();
    let expect_error = |targets: &str, needle: &str| {
        let config = chemprot_train_config(work.path(), &model, targets);
        let run = medtune(
            work.path(),
            &["train", "--config", config.to_str().unwrap()],
        )
        .expect(2);
        assert!(run.stderr.contains(needle), "{}", run.stderr);
    };
    // A model directory without weights.
    tiny_llama(&model, 30522);
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    expect_error("[\"q_proj\"]", "model.safetensors");

    // A target module the model does not have.
    tiny_llama(&model, 30522);
    expect_error(
        "[\"q_proj\", \"query\"]",
        "target module `query` is not a linear layer of this model",
    );

    // Weights whose shapes disagree with the config.
    let text = std::fs::read_to_string(model.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\":64", "\"intermediate_size\":48");
    std::fs::write(model.join("config.json"), text).unwrap();
    expect_error(
        "[\"q_proj\"]",
        "model.layers.0.mlp.gate_proj.weight` has shape [64, 32]",
    );
}
