//! Shared test helpers.
#![allow(dead_code)] // each test binary uses some of the helpers

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seed of the tiny models' weights.
pub const TINY_SEED: u64 = 20_241_123;

/// A tensor of normal draws (mean 0, standard deviation `std`) from a seeded generator: the
/// stream is chosen by `seed` and `what`, so the same call gives the same values on every run
/// and does not depend on which other tensors were drawn before it. (candle's `Tensor::randn`
/// cannot be seeded on the CPU, so a test drawing with it has a different outcome each run.)
pub fn seeded_randn(seed: u64, what: &str, shape: impl Into<Shape>, std: f64) -> Tensor {
    let shape = shape.into();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // FNV-1a of the name picks one of ChaCha's 2^64 independent streams.
    let stream = what.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    rng.set_stream(stream);
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            // Box-Muller: u1 in (0, 1], so the logarithm is finite.
            let u1 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (z * std) as f32
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A tiny random Llama-architecture model: config.json + model.safetensors in `dir`. The
/// weights are seeded ([`TINY_SEED`], one stream per tensor name): the same model on every run.
pub fn tiny_decoder(dir: &Path, extra: serde_json::Value, tie: bool) -> serde_json::Value {
    let (vocab, h, inter, layers, heads, kv, d) = (97, 64, 96, 2, 4, 2, 16);
    let mut config = serde_json::json!({
        "vocab_size": vocab, "hidden_size": h, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
        "tie_word_embeddings": tie, "bos_token_id": 1, "eos_token_id": 2,
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f64| {
        let w = seeded_randn(TINY_SEED, &name, shape, scale);
        t.insert(name, w);
    };
    put("model.embed_tokens.weight".into(), &[vocab, h], 0.5);
    if !tie {
        put("lm_head.weight".into(), &[vocab, h], 0.1);
    }
    put("model.norm.weight".into(), &[h], 0.1);
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.self_attn.q_proj.weight"), &[heads * d, h], 0.1);
        put(format!("{p}.self_attn.k_proj.weight"), &[kv * d, h], 0.1);
        put(format!("{p}.self_attn.v_proj.weight"), &[kv * d, h], 0.1);
        put(format!("{p}.self_attn.o_proj.weight"), &[h, heads * d], 0.1);
        put(format!("{p}.mlp.gate_proj.weight"), &[inter, h], 0.1);
        put(format!("{p}.mlp.up_proj.weight"), &[inter, h], 0.1);
        put(format!("{p}.mlp.down_proj.weight"), &[h, inter], 0.1);
        put(format!("{p}.input_layernorm.weight"), &[h], 0.1);
        put(format!("{p}.post_attention_layernorm.weight"), &[h], 0.1);
    }
    // Norm weights around 1, as trained models have.
    for (name, w) in t.iter_mut() {
        if name.ends_with("norm.weight") {
            *w = (w.clone() + 1.0).unwrap();
        }
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    config
}

/// Largest absolute element-wise difference of two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}
