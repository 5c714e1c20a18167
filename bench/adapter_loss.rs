//! For the PEFT oracle (bench/peft_oracle.py): loads a model (directory or GGUF file) with
//! full-precision base weights and a PEFT adapter directory, and prints the causal-LM loss
//! medtune's trainer computes on rows of token ids and labels, one row at a time.
//!
//! cargo run --release -p medtune-qlora --example adapter_loss -- MODEL ADAPTER_DIR ROWS.json
//!
//! ROWS.json is a JSON array of `{"input_ids": [...], "labels": [...]}` (labels -100 where the
//! loss ignores a position). Prints one JSON line per row: `{"loss": mean, "labelled": n}`.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use medtune_qlora::auto::{AutoModel, Task};
use medtune_qlora::bert::LoadOptions;
use medtune_qlora::train::{TrainBatch, TrainModel};
use medtune_qlora::Pass;
use serde::Deserialize;

#[derive(Deserialize)]
struct Row {
    input_ids: Vec<u32>,
    labels: Vec<i64>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let usage = "usage: adapter_loss MODEL ADAPTER_DIR ROWS.json";
    let (model, adapter, rows) = (
        args.next().ok_or(usage)?,
        args.next().ok_or(usage)?,
        args.next().ok_or(usage)?,
    );
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        quantise: false,
    };
    let model = AutoModel::load_for_inference(&model, Task::CausalLm, 0, Some(&adapter), &options)?;
    let AutoModel::DecoderLm(lm) = model else {
        return Err("expected a causal LM".into());
    };
    let rows: Vec<Row> = serde_json::from_slice(&std::fs::read(&rows)?)?;
    for row in rows {
        let n = row.input_ids.len();
        let input_ids = Tensor::new(row.input_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let batch = TrainBatch {
            attention_mask: input_ids.ones_like()?,
            input_ids,
            labelled: row.labels.iter().skip(1).filter(|&&l| l != -100).count(),
            labels: Tensor::new(row.labels.as_slice(), &Device::Cpu)?.unsqueeze(0)?,
            tokens: n,
        };
        let (loss, labelled) = lm.loss(&batch, Pass::EVAL)?;
        let loss = loss.to_scalar::<f32>()?;
        println!(
            "{}",
            serde_json::json!({ "loss": loss, "labelled": labelled })
        );
    }
    Ok(())
}
