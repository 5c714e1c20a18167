//! GGUF as a model source. A tiny Llama is written here as a real GGUF file (llama.cpp's tensor
//! names and rotary row permutation, ggml quantisation types, the config and a byte-level BPE
//! tokenizer as metadata) and loads to the model of the directory it was made from; a bad file
//! is an error naming the file and the field. The real SmolLM2-135M GGUF's tokenizer is checked
//! when `scripts/fetch-model.sh` has fetched it.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use medtune_qlora::bert::LoadOptions;
use medtune_qlora::gguf::GgufFile;
use medtune_qlora::llama::LlamaDecoder;
use medtune_qlora::Pass;

mod common;
use common::{max_abs_diff, tiny_decoder};

/// llama.cpp's converter permutation of query/key rows: (heads, 2, d/2, in) → (heads, d/2, 2, in).
fn permute(t: &Tensor, heads: usize) -> Tensor {
    let (out, inp) = t.dims2().unwrap();
    t.reshape((heads, 2, out / heads / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

/// The tiny tokenizer's tokens (byte-level: `Ġ` is a space) and their GGUF token types.
const TOKENS: [(&str, i32); 8] = [
    ("<unk>", 3),
    ("<|im_start|>", 3),
    ("<|im_end|>", 3),
    ("a", 1),
    ("b", 1),
    ("Ġ", 1),
    ("ab", 1),
    ("Ġa", 1),
];

/// Metadata of the tiny model of `config` (tiny_decoder's), with `edits` applied (a `None`
/// value removes the key).
fn metadata(config: &serde_json::Value, edits: &[(&str, Option<Value>)]) -> Vec<(String, Value)> {
    let n = |k: &str| Value::U32(config[k].as_u64().unwrap() as u32);
    let strings =
        |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
    let mut tokens: Vec<&str> = TOKENS.iter().map(|t| t.0).collect();
    // Pad the vocabulary to the model's with unused tokens.
    let vocab = config["vocab_size"].as_u64().unwrap() as usize;
    let padding: Vec<String> = (TOKENS.len()..vocab)
        .map(|i| format!("<unused{i}>"))
        .collect();
    tokens.extend(padding.iter().map(String::as_str));
    let mut types: Vec<Value> = TOKENS.iter().map(|t| Value::I32(t.1)).collect();
    types.resize(vocab, Value::I32(5));
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.context_length".into(), n("max_position_embeddings")),
        ("llama.embedding_length".into(), n("hidden_size")),
        ("llama.feed_forward_length".into(), n("intermediate_size")),
        ("llama.block_count".into(), n("num_hidden_layers")),
        (
            "llama.attention.head_count".into(),
            n("num_attention_heads"),
        ),
        (
            "llama.attention.head_count_kv".into(),
            n("num_key_value_heads"),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), strings(&["a b", "Ġ a"])),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        (
            "tokenizer.chat_template".into(),
            Value::String(
                "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}".into(),
            ),
        ),
    ];
    for (key, value) in edits {
        meta.retain(|(k, _)| k != key);
        if let Some(v) = value {
            meta.push((key.to_string(), v.clone()));
        }
    }
    meta
}

/// Writes the tiny model in `dir` (config.json + safetensors) as GGUF file `out`: linear
/// weights as `linear`, everything else f32.
fn write_gguf(
    dir: &Path,
    config: &serde_json::Value,
    out: &Path,
    linear: GgmlDType,
    edits: &[(&str, Option<Value>)],
) {
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let (heads, kv) = (
        config["num_attention_heads"].as_u64().unwrap() as usize,
        config["num_key_value_heads"].as_u64().unwrap() as usize,
    );
    let mut written: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in &tensors {
        let (gguf, t, dtype) = match name.as_str() {
            "model.embed_tokens.weight" => {
                ("token_embd.weight".to_string(), t.clone(), GgmlDType::F32)
            }
            "model.norm.weight" => ("output_norm.weight".to_string(), t.clone(), GgmlDType::F32),
            "lm_head.weight" => ("output.weight".to_string(), t.clone(), GgmlDType::F32),
            _ => {
                let rest = name.strip_prefix("model.layers.").unwrap();
                let (layer, rest) = rest.split_once('.').unwrap();
                let module = rest.strip_suffix(".weight").unwrap();
                let (short, t) = match module {
                    "self_attn.q_proj" => ("attn_q", permute(t, heads)),
                    "self_attn.k_proj" => ("attn_k", permute(t, kv)),
                    "self_attn.v_proj" => ("attn_v", t.clone()),
                    "self_attn.o_proj" => ("attn_output", t.clone()),
                    "mlp.gate_proj" => ("ffn_gate", t.clone()),
                    "mlp.up_proj" => ("ffn_up", t.clone()),
                    "mlp.down_proj" => ("ffn_down", t.clone()),
                    "input_layernorm" => ("attn_norm", t.clone()),
                    "post_attention_layernorm" => ("ffn_norm", t.clone()),
                    other => panic!("unexpected tensor {other}"),
                };
                let dtype = if short.ends_with("norm") {
                    GgmlDType::F32
                } else {
                    linear
                };
                (format!("blk.{layer}.{short}.weight"), t, dtype)
            }
        };
        written.push((gguf, QTensor::quantize(&t, dtype).unwrap()));
    }
    written.sort_by(|a, b| a.0.cmp(&b.0));
    let meta = metadata(config, edits);
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = written.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut file = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
}

fn dense() -> LoadOptions {
    LoadOptions {
        quantise: false,
        ..LoadOptions::qlora_cpu()
    }
}

/// Logits of `model` at every position of a fixed row.
fn logits(model: &LlamaDecoder) -> Tensor {
    let ids = Tensor::new(&[[5u32, 17, 42, 3, 96, 11, 8, 60]], &Device::Cpu).unwrap();
    let hidden = model
        .forward_hidden(&ids, &ids.ones_like().unwrap(), None, Pass::EVAL)
        .unwrap();
    model.lm_logits(&hidden).unwrap()
}

#[test]
fn a_gguf_file_loads_to_the_model_it_was_written_from() {
    let dir = tempfile::tempdir().unwrap();
    for tie in [true, false] {
        let config = tiny_decoder(dir.path(), serde_json::json!({}), tie);
        let reference = logits(&LlamaDecoder::load(dir.path(), &dense()).unwrap());
        // f32 tensors: the same weights after the rows are un-permuted, so the same logits.
        let path = dir.path().join("tiny.gguf");
        write_gguf(dir.path(), &config, &path, GgmlDType::F32, &[]);
        let file = GgufFile::open(&path).unwrap();
        let loaded = LlamaDecoder::load_gguf(file, &dense()).unwrap();
        assert_eq!(loaded.config().tie_word_embeddings, tie);
        assert_eq!(loaded.config().kv_heads(), 2);
        let diff = max_abs_diff(&logits(&loaded), &reference);
        assert!(diff <= 1e-5, "tie {tie}: f32 GGUF logits differ by {diff}");
        // Quantised linear weights (Q8_0, Q4_1): close, within their rounding (relative to the
        // largest logit).
        let scale = reference
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        for (dtype, bound) in [(GgmlDType::Q8_0, 0.02), (GgmlDType::Q4_1, 0.2)] {
            write_gguf(dir.path(), &config, &path, dtype, &[]);
            let loaded = LlamaDecoder::load_gguf(GgufFile::open(&path).unwrap(), &dense()).unwrap();
            let diff = max_abs_diff(&logits(&loaded), &reference) / scale;
            println!("tie {tie}, {dtype:?}: |Δ logits| / max |logit| = {diff:.4}");
            assert!(diff > 0.0 && diff <= bound, "tie {tie}, {dtype:?}: {diff}");
        }
    }
}

#[test]
fn the_metadata_tokenizer_encodes_with_its_merges_and_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_decoder(dir.path(), serde_json::json!({}), true);
    let path = dir.path().join("tiny.gguf");
    write_gguf(dir.path(), &config, &path, GgmlDType::F32, &[]);
    let file = GgufFile::open(&path).unwrap();
    let tokenizer = file.tokenizer().unwrap();
    let ids = tokenizer
        .encode("<|im_start|>ab a<|im_end|>", false)
        .unwrap();
    // Specials are single ids; "ab" and " a" are merged tokens.
    assert_eq!(ids.get_ids(), [1, 6, 7, 2]);
    assert_eq!(tokenizer.decode(&[6, 7], false).unwrap(), "ab a");
    assert_eq!(file.token_id("tokenizer.ggml.eos_token_id"), Some(2));
    assert!(file.chat_template().unwrap().contains("<|im_start|>"));
}

/// The error of loading the tiny model's GGUF with `edits` applied to its metadata.
fn error_with(edits: &[(&str, Option<Value>)]) -> (String, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let config = tiny_decoder(&dir, serde_json::json!({}), true);
    let path = dir.join("bad.gguf");
    write_gguf(&dir, &config, &path, GgmlDType::F32, edits);
    let err = GgufFile::open(&path)
        .and_then(|f| {
            f.tokenizer()?;
            LlamaDecoder::load_gguf(f, &dense()).map(|_| ())
        })
        .expect_err("the file loads");
    (err.to_string(), path)
}

#[test]
fn a_gguf_this_loader_cannot_run_is_an_error_naming_the_file_and_the_field() {
    for (edits, field) in [
        (
            vec![("general.architecture", Some(Value::String("bert".into())))],
            "general.architecture",
        ),
        (
            vec![("tokenizer.ggml.model", Some(Value::String("llama".into())))],
            "tokenizer.ggml.model",
        ),
        (vec![("llama.block_count", None)], "llama.block_count"),
    ] {
        let (message, path) = error_with(&edits);
        println!("{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("`{field}`")), "{message}");
    }
    // Not a GGUF file at all.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.gguf");
    std::fs::write(&path, "not a model").unwrap();
    let message = GgufFile::open(&path).unwrap_err().to_string();
    assert!(
        message.contains(&path.display().to_string()) && message.contains("not a GGUF"),
        "{message}"
    );
}

/// The SmolLM2-135M-Instruct GGUF `scripts/fetch-model.sh` fetches, if it has.
fn smollm2() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else {
        println!("skipped: {} is not fetched", path.display());
        None
    }
}

#[test]
fn the_real_smollm2_tokenizer_gives_the_ids_transformers_gives() {
    let Some(path) = smollm2() else { return };
    let file = GgufFile::open(&path).unwrap();
    let tokenizer = file.tokenizer().unwrap();
    // Ids from transformers 5.23 loading the same file
    // (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), special tokens added (none are).
    let cases: [(&str, &[u32]); 2] = [
        (
            "Cisplatin-induced nephrotoxicity in 12 rats.<|im_end|>",
            &[
                51, 271, 439, 4474, 29, 14179, 27878, 291, 22346, 383, 281, 216, 33, 34, 13176, 30,
                2,
            ],
        ),
        (
            "<|im_start|>user\nList the chemicals in: 5-fluorouracil (5-FU) 2024<|im_end|>\n",
            &[
                1, 4093, 198, 6106, 260, 5478, 281, 42, 216, 37, 29, 15860, 270, 279, 8098, 301,
                365, 37, 29, 54, 69, 25, 216, 34, 32, 34, 36, 2, 198,
            ],
        ),
    ];
    for (text, expected) in cases {
        let encoding = tokenizer.encode(text, true).unwrap();
        assert_eq!(encoding.get_ids(), expected, "{text:?}");
        assert_eq!(tokenizer.decode(expected, false).unwrap(), text);
    }
    assert_eq!(file.token_id("tokenizer.ggml.eos_token_id"), Some(2));
    assert_eq!(tokenizer.get_vocab_size(true), 49_152);
    let config = file.llama_config().unwrap();
    assert_eq!(
        (
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.kv_heads()
        ),
        (576, 30, 9, 3)
    );
    assert!(config.tie_word_embeddings);
}
