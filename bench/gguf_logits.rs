//! For the GGUF oracle (bench/gguf_oracle.py): loads a Llama-architecture GGUF file with
//! dequantised weights (no NF4) in f32 or f64, runs rows of token ids through it and writes
//! every position's logits.
//!
//! cargo run --release -p medtune-qlora --example gguf_logits -- MODEL.gguf ROWS.json OUT.f64 [f32|f64]
//!
//! ROWS.json is a JSON array of arrays of ids; OUT.f64 gets, row after row, length × vocab
//! little-endian f64 logits (f32 ones widened exactly; the oracle knows the lengths and reads
//! them back with numpy). f64 runs the same model with every rounding error ~1e-9 times
//! smaller, which tells an implementation difference from f32 rounding.

use std::io::Write;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use medtune_qlora::bert::LoadOptions;
use medtune_qlora::gguf::GgufFile;
use medtune_qlora::llama::LlamaDecoder;
use medtune_qlora::Pass;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(PathBuf::from);
    let usage = "usage: gguf_logits MODEL.gguf ROWS.json OUT.f64 [f32|f64]";
    let (model, rows, out) = (
        args.next().ok_or(usage)?,
        args.next().ok_or(usage)?,
        args.next().ok_or(usage)?,
    );
    let dtype = match args.next().as_deref().and_then(|a| a.to_str()) {
        None | Some("f32") => DType::F32,
        Some("f64") => DType::F64,
        Some(other) => return Err(format!("dtype {other}: f32 or f64; {usage}").into()),
    };
    let options = LoadOptions {
        device: Device::Cpu,
        dtype,
        quantise: false,
    };
    let decoder = LlamaDecoder::load_gguf(GgufFile::open(&model)?, &options)?;
    let rows: Vec<Vec<u32>> = serde_json::from_slice(&std::fs::read(&rows)?)?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
    for ids in &rows {
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let hidden = decoder.forward_hidden(&input, &input.ones_like()?, None, Pass::EVAL)?;
        let logits = decoder.lm_logits(&hidden)?.to_dtype(DType::F64)?;
        let logits: Vec<f64> = logits.flatten_all()?.to_vec1()?;
        for v in logits {
            file.write_all(&v.to_le_bytes())?;
        }
    }
    file.flush()?;
    println!("{} rows of logits in {}", rows.len(), out.display());
    Ok(())
}
