//! The BERT and Llama / Mistral models against candle-transformers' own implementations on the
//! same weights: the real all-MiniLM-L6-v2, and tiny random Llama / Mistral models written here
//! with the real architecture. Also the NF4 error on the real model, and bad model directories.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use medtune_qlora::bert::{BertEncoder, LoadOptions};
use medtune_qlora::llama::LlamaDecoder;
use medtune_qlora::{LoraConfig, Pass, QloraError};

mod common;
use common::{max_abs_diff, seeded_randn, tiny_decoder};

fn minilm() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "run scripts/fetch-model.sh first"
    );
    dir
}

fn dense() -> LoadOptions {
    LoadOptions {
        quantise: false,
        ..LoadOptions::qlora_cpu()
    }
}

/// Two rows of real-looking ids ([CLS] ... [SEP]); the second padded after 7 tokens.
fn bert_batch() -> (Tensor, Tensor) {
    let ids: [[u32; 10]; 2] = [
        [101, 2023, 7426, 5320, 18856, 1999, 1996, 5968, 1012, 102],
        [101, 12436, 2094, 4295, 1012, 102, 102, 0, 0, 0],
    ];
    let mask: [[u32; 10]; 2] = [[1; 10], [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]];
    (
        Tensor::new(&ids, &Device::Cpu).unwrap(),
        Tensor::new(&mask, &Device::Cpu).unwrap(),
    )
}

fn reference_bert(dir: &Path, ids: &Tensor, mask: &Tensor) -> Tensor {
    use candle_transformers::models::bert::{BertModel, Config};
    let config: Config =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    let model = BertModel::load(vb, &config).unwrap();
    model
        .forward(ids, &ids.zeros_like().unwrap(), Some(mask))
        .unwrap()
}

#[test]
fn bert_matches_candle_transformers_on_real_minilm_weights() {
    let dir = minilm();
    let (ids, mask) = bert_batch();
    let expected = reference_bert(&dir, &ids, &mask);
    let ours = BertEncoder::load(&dir, &dense()).unwrap();
    let got = ours.forward(&ids, &mask, Pass::EVAL).unwrap();
    assert_eq!(got.dims(), &[2, 10, 384]);
    // Compare real tokens only (padded positions are never read).
    let diff = max_abs_diff(&got.i((0, ..)).unwrap(), &expected.i((0, ..)).unwrap()).max(
        max_abs_diff(&got.i((1, ..7)).unwrap(), &expected.i((1, ..7)).unwrap()),
    );
    println!("BERT hidden states vs candle-transformers: max |diff| = {diff:e}");
    assert!(diff < 1e-4, "{diff}");
}

fn cosine(a: &Tensor, b: &Tensor) -> f32 {
    let dot = (a * b).unwrap().sum(D::Minus1).unwrap();
    let na = a.sqr().unwrap().sum(D::Minus1).unwrap().sqrt().unwrap();
    let nb = b.sqr().unwrap().sum(D::Minus1).unwrap().sqrt().unwrap();
    (dot / (na * nb).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .min(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn nf4_minilm_stays_close_to_full_precision_and_adapters_start_as_identity() {
    let dir = minilm();
    let (ids, mask) = bert_batch();
    let ids = ids.i(0..1).unwrap();
    let mask = mask.i(0..1).unwrap();
    let full = BertEncoder::load(&dir, &dense()).unwrap();
    let mut nf4 = BertEncoder::load(&dir, &LoadOptions::qlora_cpu()).unwrap();
    let reference = full.forward(&ids, &mask, Pass::EVAL).unwrap();
    let quantised = nf4.forward(&ids, &mask, Pass::EVAL).unwrap();
    // The bound we state: every token's last hidden state keeps cosine similarity >= 0.95
    // with the full-precision one after all 36 linear layers are NF4 (measured: 0.969).
    let similarity = cosine(&reference, &quantised);
    println!("NF4 MiniLM vs f32: min cosine similarity of hidden states = {similarity}");
    assert!(similarity >= 0.95, "{similarity}");
    // B = 0, so a fresh adapter changes nothing.
    let lora = LoraConfig {
        r: 16,
        alpha: 32.0,
        dropout: 0.1,
        use_rslora: false,
        target_modules: vec!["query".into(), "value".into()],
    };
    assert_eq!(nf4.attach_lora(&lora, 1).unwrap(), 12);
    let adapted = nf4.forward(&ids, &mask, Pass::EVAL).unwrap();
    assert_eq!(max_abs_diff(&adapted, &quantised), 0.0);
}

#[test]
fn an_unknown_target_module_is_a_clear_error() {
    let mut model = BertEncoder::load(&minilm(), &dense()).unwrap();
    let lora = LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        use_rslora: false,
        target_modules: vec!["query".into(), "q_proj".into()],
    };
    let err = model.attach_lora(&lora, 0).unwrap_err().to_string();
    assert!(
        err.contains("`q_proj` is not a linear layer of this model"),
        "{err}"
    );
}

#[test]
fn bad_model_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = BertEncoder::load(dir.path(), &dense()).err().unwrap();
    assert!(missing.to_string().contains("config.json"), "{missing}");
    std::fs::copy(minilm().join("config.json"), dir.path().join("config.json")).unwrap();
    let no_weights = BertEncoder::load(dir.path(), &dense()).err().unwrap();
    assert!(
        no_weights.to_string().contains("model.safetensors"),
        "{no_weights}"
    );
    // Weights whose shapes disagree with the config.
    let config = std::fs::read_to_string(minilm().join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    std::os::unix::fs::symlink(
        minilm().join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    match BertEncoder::load(dir.path(), &dense()) {
        Err(QloraError::Shape {
            name,
            expected,
            actual,
        }) => {
            assert_eq!(name, "encoder.layer.0.intermediate.dense.weight");
            assert_eq!((expected, actual), (vec![1024, 384], vec![1536, 384]));
        }
        other => panic!("expected a shape error, got {:?}", other.err()),
    }
}

const IDS: [u32; 12] = [1, 17, 5, 88, 42, 3, 64, 9, 23, 71, 50, 2];

/// Our next-token logits at every position of IDS.
fn our_logits(dir: &Path) -> Tensor {
    let model = LlamaDecoder::load(dir, &dense()).unwrap();
    let ids = Tensor::new(&[IDS], &Device::Cpu).unwrap();
    let hidden = model
        .forward_hidden(&ids, &ids.ones_like().unwrap(), None, Pass::EVAL)
        .unwrap();
    model.lm_logits(&hidden).unwrap().i(0).unwrap()
}

#[test]
fn llama_matches_candle_transformers_at_every_position() {
    use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};
    for (extra, tie) in [
        (serde_json::json!({}), false),
        // Llama 3.2's rotary scaling, and tied embeddings as in Llama-3.2-3B.
        (
            serde_json::json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3",
                "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}}),
            true,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_decoder(dir.path(), extra, tie);
        let ours = our_logits(dir.path());
        let cfg: LlamaConfig = serde_json::from_value(config).unwrap();
        let cfg = cfg.into_config(false);
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.path().join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let reference = Llama::load(vb, &cfg).unwrap();
        let mut worst = 0f32;
        for t in 1..=IDS.len() {
            let mut cache = Cache::new(false, DType::F32, &cfg, &Device::Cpu).unwrap();
            let ids = Tensor::new(&IDS[..t], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let expected = reference
                .forward(&ids, 0, &mut cache)
                .unwrap()
                .i(0)
                .unwrap();
            worst = worst.max(max_abs_diff(&ours.i(t - 1).unwrap(), &expected));
        }
        println!("Llama (tied {tie}) logits vs candle-transformers: max |diff| = {worst:e}");
        assert!(worst < 1e-4, "{worst}");
    }
}

#[test]
fn mistral_matches_candle_transformers_at_every_position() {
    use candle_transformers::models::mistral::{Config, Model};
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_decoder(
        dir.path(),
        serde_json::json!({"hidden_act": "silu", "sliding_window": 4096, "head_dim": 16}),
        false,
    );
    let ours = our_logits(dir.path());
    let cfg: Config = serde_json::from_value(config).unwrap();
    let mut worst = 0f32;
    for t in 1..=IDS.len() {
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.path().join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let mut reference = Model::new(&cfg, vb).unwrap();
        let ids = Tensor::new(&IDS[..t], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let expected = reference.forward(&ids, 0).unwrap().i((0, 0)).unwrap();
        worst = worst.max(max_abs_diff(&ours.i(t - 1).unwrap(), &expected));
    }
    println!("Mistral logits vs candle-transformers: max |diff| = {worst:e}");
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn the_kv_cache_and_left_padding_give_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    tiny_decoder(dir.path(), serde_json::json!({}), false);
    let model = LlamaDecoder::load(dir.path(), &LoadOptions::qlora_cpu()).unwrap();
    let dev = Device::Cpu;
    let full = {
        let ids = Tensor::new(&[IDS], &dev).unwrap();
        let h = model
            .forward_hidden(&ids, &ids.ones_like().unwrap(), None, Pass::EVAL)
            .unwrap();
        model.lm_logits(&h).unwrap().i(0).unwrap()
    };
    // Token by token through the cache.
    let mut cache = model.new_cache();
    for (t, &id) in IDS.iter().enumerate() {
        let ids = Tensor::new(&[[id]], &dev).unwrap();
        let mask = Tensor::ones((1, t + 1), DType::U32, &dev).unwrap();
        let h = model
            .forward_hidden(&ids, &mask, Some(&mut cache), Pass::EVAL)
            .unwrap();
        let step = model.lm_logits(&h).unwrap().i((0, 0)).unwrap();
        assert!(max_abs_diff(&step, &full.i(t).unwrap()) < 1e-4, "step {t}");
    }
    // The same row left-padded by three in a batch.
    let mut padded = vec![0u32; 3];
    padded.extend_from_slice(&IDS);
    let ids = Tensor::new(padded.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut mask = vec![0u32; 3];
    mask.extend(std::iter::repeat_n(1u32, IDS.len()));
    let mask = Tensor::new(mask.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let h = model.forward_hidden(&ids, &mask, None, Pass::EVAL).unwrap();
    let left = model.lm_logits(&h).unwrap().i((0, 3..)).unwrap();
    assert!(max_abs_diff(&left, &full) < 1e-4);
}

#[test]
fn merging_an_adapter_gives_the_adapted_outputs() {
    use medtune_qlora::LoraLinear;
    let w = seeded_randn(2, "merge weight", (48, 64), 0.1);
    let bias = seeded_randn(2, "merge bias", 48, 0.1);
    let mut layer = LoraLinear::new("layers.0.q_proj", w, Some(bias), true).unwrap();
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: true,
        target_modules: vec!["q_proj".into()],
    };
    layer.attach(&lora, 9).unwrap();
    // A trained-looking B (fresh B is zero, which would make the check vacuous).
    let adapter = layer.adapter().unwrap().clone();
    adapter
        .b
        .set(&seeded_randn(2, "merge lora_B", (48, 4), 0.1))
        .unwrap();
    assert_eq!(adapter.scale, 8.0 / 2.0, "rsLoRA: alpha / sqrt(r)");
    let x = seeded_randn(2, "merge input", (2, 5, 64), 1.0);
    let adapted = layer.forward(&x, Pass::EVAL).unwrap();
    let base = layer
        .forward(
            &x,
            Pass {
                adapters: false,
                dropout_key: None,
            },
        )
        .unwrap();
    assert!(max_abs_diff(&adapted, &base) > 1e-3);
    layer.merge().unwrap();
    assert!(layer.adapter().is_none());
    let merged = layer.forward(&x, Pass::EVAL).unwrap();
    assert!(max_abs_diff(&merged, &adapted) < 1e-4);
}

#[test]
fn a_decoder_with_a_token_head_gives_per_token_label_logits_and_a_loss() {
    use medtune_qlora::auto::{AutoModel, Task};
    use medtune_qlora::train::{TrainBatch, TrainModel};
    let dir = tempfile::tempdir().unwrap();
    tiny_decoder(
        dir.path(),
        serde_json::json!({"model_type": "mistral"}),
        false,
    );
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    };
    let model = AutoModel::load(
        dir.path(),
        Task::TokenClassification,
        5,
        &lora,
        1,
        &LoadOptions::qlora_cpu(),
    )
    .unwrap();
    let ids = Tensor::new(&[IDS], &Device::Cpu).unwrap();
    let mask = ids.ones_like().unwrap();
    let logits = model.logits(&ids, &mask, Pass::EVAL).unwrap();
    assert_eq!(logits.dims(), &[1, IDS.len(), 5]);
    let labels: Vec<i64> = (0..IDS.len() as i64)
        .map(|i| if i % 3 == 0 { -100 } else { i % 5 })
        .collect();
    let batch = TrainBatch {
        labels: Tensor::new(labels.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap(),
        input_ids: ids,
        attention_mask: mask,
        labelled: 8,
        tokens: IDS.len(),
    };
    let (loss, n) = model.loss(&batch, Pass::EVAL).unwrap();
    assert_eq!(n, 8);
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    // The head is trained too (PEFT's modules_to_save `score`).
    let names: Vec<String> = model.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"score.weight".to_string()), "{names:?}");
    assert_eq!(names.len(), 2 * 2 * 2 + 2);
}
