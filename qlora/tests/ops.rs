//! The fused ops against the candle compositions they replace: equal values and equal input
//! gradients (|Δ| ≤ 1e-5 in f32), on tiny seeded shapes.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use medtune_qlora::ops::{
    attention, composed_attention, composed_cross_entropy, composed_gelu_erf, composed_layer_norm,
    composed_lora_linear, composed_rms_norm, composed_rotary, composed_silu_mul, cross_entropy,
    frozen_linear, gelu_erf, layer_norm, lora_linear, rms_norm, rotary, silu_mul, Adapted, Dropout,
};
use medtune_qlora::rng::stream;

use common::{max_abs_diff, seeded_randn};

/// `loss = Σ c ⊙ f(x)` for a fixed random `c`, so every output element carries its own
/// gradient weight.
fn input_gradient(x: &Var, y: &Tensor, c: &Tensor) -> Tensor {
    let loss = (y * c).unwrap().sum_all().unwrap();
    loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
}

#[test]
fn frozen_linear_equals_matmul_by_the_transposed_weight_in_value_and_gradient() {
    // A 3-D input (batch × length × in), a contiguous weight and a strided view of one.
    let x = Var::from_tensor(&seeded_randn(1, "x", (3, 5, 7), 1.0)).unwrap();
    let w = seeded_randn(2, "w", (4, 7), 0.5);
    let w_view = seeded_randn(3, "w_t", (7, 4), 0.5).t().unwrap();
    for (name, weight) in [("contiguous", &w), ("transposed view", &w_view)] {
        let c = seeded_randn(4, "c", (3, 5, 4), 1.0);
        let fused = frozen_linear(x.as_tensor(), weight).unwrap();
        let composed = x
            .as_tensor()
            .broadcast_matmul(&weight.t().unwrap())
            .unwrap();
        assert_eq!(fused.dims(), [3, 5, 4]);
        let value = max_abs_diff(&fused, &composed);
        let gradient = max_abs_diff(
            &input_gradient(&x, &fused, &c),
            &input_gradient(&x, &composed, &c),
        );
        println!("{name}: |Δ| value {value:.2e}, gradient {gradient:.2e}");
        assert!(value <= 1e-5 && gradient <= 1e-5, "{name}");
    }
}

#[test]
fn frozen_linear_gives_the_weight_no_gradient() {
    let x = Var::from_tensor(&seeded_randn(5, "x", (6, 3), 1.0)).unwrap();
    // Even a weight that is a variable is treated as frozen.
    let w = Var::from_tensor(&seeded_randn(6, "w", (2, 3), 1.0)).unwrap();
    let y = frozen_linear(x.as_tensor(), w.as_tensor()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    assert!(grads.get(w.as_tensor()).is_none());
}

/// Value and input-gradient differences of `fused` against `composed`, both applied to the
/// variables `inputs` (the other operands are captured by the closures).
fn compare(
    name: &str,
    inputs: &[Var],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
) {
    let args: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let (f, c) = (fused(&args), composed(&args));
    assert_eq!(f.dims(), c.dims(), "{name}: shapes");
    let weights = seeded_randn(99, name, f.dims(), 1.0);
    let (gf, gc) = (
        (&f * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap(),
        (&c * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap(),
    );
    let value = max_abs_diff(&f, &c);
    assert!(value <= 1e-5, "{name}: values differ by {value:e}");
    for (i, input) in inputs.iter().enumerate() {
        let (a, b) = (
            gf.get(input.as_tensor()).expect("fused gradient"),
            gc.get(input.as_tensor()).expect("composed gradient"),
        );
        let gradient = max_abs_diff(a, b);
        println!("{name}: input {i}: |Δ| value {value:.2e}, gradient {gradient:.2e}");
        assert!(
            gradient <= 1e-5,
            "{name}: input {i}'s gradients differ by {gradient:e}"
        );
    }
}

fn var(seed: u64, name: &str, shape: impl Into<candle_core::Shape>, std: f64) -> Var {
    Var::from_tensor(&seeded_randn(seed, name, shape, std)).unwrap()
}

/// An additive mask (batch, 1, queries, keys) where query `i` sees the keys up to the one
/// aligned with it (the last query sees the last key), the others at f32::MIN.
fn causal_mask(batch: usize, queries: usize, keys: usize) -> Tensor {
    let mask: Vec<f32> = (0..batch * queries * keys)
        .map(|i| {
            let (query, key) = ((i / keys) % queries, i % keys);
            if key + queries <= query + keys {
                0.0
            } else {
                f32::MIN
            }
        })
        .collect();
    Tensor::from_vec(mask, (batch, 1, queries, keys), &Device::Cpu).unwrap()
}

#[test]
fn attention_equals_the_composition_for_both_mask_shapes() {
    let q = var(10, "q", (2, 3, 4, 6), 1.0);
    let k = var(11, "k", (2, 3, 5, 6), 1.0);
    let v = var(12, "v", (2, 3, 5, 6), 1.0);
    // A key mask (one row for every query, BERT's padding mask) and a causal mask per query,
    // both with fully masked entries as the models make them.
    let keys = Tensor::new(&[0f32, 0.0, 0.0, f32::MIN, f32::MIN], &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 1, 5))
        .unwrap()
        .repeat((2, 1, 1, 1))
        .unwrap();
    let causal = causal_mask(2, 4, 5);
    for (name, mask) in [("key mask", &keys), ("causal mask", &causal)] {
        compare(
            name,
            &[q.clone(), k.clone(), v.clone()],
            |a| attention(&a[0], &a[1], &a[2], mask, 0.4).unwrap(),
            |a| composed_attention(&a[0], &a[1], &a[2], mask, 0.4).unwrap(),
        );
    }
}

#[test]
fn attention_reads_grouped_heads_and_cache_views_in_place() {
    // Six query heads over two key/value heads, whose keys and values are the first 5
    // positions of 8-position buffers (as a KV cache with room to grow hands them over).
    let q = var(13, "q", (2, 6, 4, 6), 1.0);
    let k = var(14, "k", (2, 2, 8, 6), 1.0);
    let v = var(15, "v", (2, 2, 8, 6), 1.0);
    let mask = causal_mask(2, 4, 5);
    let prefix = |t: &Tensor| t.narrow(2, 0, 5).unwrap();
    compare(
        "grouped heads, cache views",
        &[q, k, v],
        |a| attention(&a[0], &prefix(&a[1]), &prefix(&a[2]), &mask, 0.4).unwrap(),
        |a| composed_attention(&a[0], &prefix(&a[1]), &prefix(&a[2]), &mask, 0.4).unwrap(),
    );
}

#[test]
fn layer_norm_and_rms_norm_equal_their_compositions() {
    let x = var(20, "x", (2, 3, 8), 3.0);
    let weight = seeded_randn(21, "weight", 8, 1.0);
    let bias = seeded_randn(22, "bias", 8, 1.0);
    compare(
        "layer_norm",
        std::slice::from_ref(&x),
        |a| layer_norm(&a[0], &weight, &bias, 1e-12).unwrap(),
        |a| composed_layer_norm(&a[0], &weight, &bias, 1e-12).unwrap(),
    );
    compare(
        "rms_norm",
        std::slice::from_ref(&x),
        |a| rms_norm(&a[0], &weight, 1e-5).unwrap(),
        |a| composed_rms_norm(&a[0], &weight, 1e-5).unwrap(),
    );
}

#[test]
fn gelu_and_the_silu_gate_equal_their_compositions() {
    // Wide enough values to reach both tails of erf and the sigmoid.
    let x = var(30, "x", (3, 70), 3.0);
    compare(
        "gelu_erf",
        std::slice::from_ref(&x),
        |a| gelu_erf(&a[0]).unwrap(),
        |a| composed_gelu_erf(&a[0]).unwrap(),
    );
    let gate = var(31, "gate", (3, 70), 3.0);
    let up = var(32, "up", (3, 70), 1.0);
    compare(
        "silu_mul",
        &[gate, up],
        |a| silu_mul(&a[0], &a[1]).unwrap(),
        |a| composed_silu_mul(&a[0], &a[1]).unwrap(),
    );
}

#[test]
fn rotary_equals_the_rotate_half_composition() {
    let x = var(40, "x", (2, 3, 4, 6), 1.0);
    // Tables per batch row (the decoder's own) and one shared by the batch, with halves that
    // differ, so a kernel that mixed up c₁ and c₂ would show.
    for batches in [2, 1] {
        let angles = seeded_randn(41, "angles", (batches, 1, 4, 6), 2.0);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        compare(
            &format!("rotary, tables for {batches} rows"),
            std::slice::from_ref(&x),
            |a| rotary(&a[0], &cos, &sin).unwrap(),
            |a| composed_rotary(&a[0], &cos, &sin).unwrap(),
        );
    }
}

#[test]
fn cross_entropy_equals_candles_and_rejects_a_target_outside_the_classes() {
    let logits = var(50, "logits", (5, 11), 3.0);
    let targets = Tensor::new(&[0u32, 10, 3, 3, 7], &Device::Cpu).unwrap();
    compare(
        "cross_entropy",
        std::slice::from_ref(&logits),
        |a| cross_entropy(&a[0], &targets).unwrap(),
        |a| composed_cross_entropy(&a[0], &targets).unwrap(),
    );
    let outside = Tensor::new(&[0u32, 11, 3, 3, 7], &Device::Cpu).unwrap();
    let error = cross_entropy(logits.as_tensor(), &outside).unwrap_err();
    assert!(error.to_string().contains("target 11"), "{error}");
}

#[test]
fn lora_linear_equals_the_composition_with_and_without_dropout_and_bias() {
    let x = var(60, "x", (2, 5, 12), 1.0);
    let a = var(61, "a", (4, 12), 0.3);
    let b = var(62, "b", (7, 4), 0.3);
    let weight = seeded_randn(63, "weight", (7, 12), 0.3);
    let bias = seeded_randn(64, "bias", 7, 1.0);
    let dropout = Dropout {
        p: 0.3,
        rng: stream(1, 2, "dropout", "layer"),
    };
    for (name, dropout, bias) in [
        ("plain", None, None),
        ("dropout and bias", Some(&dropout), Some(&bias)),
    ] {
        let layer = |args: &[Tensor], composed: bool| {
            let adapter = Adapted {
                a: &args[1],
                b: &args[2],
                scale: 2.0,
                dropout,
            };
            let f = if composed {
                composed_lora_linear
            } else {
                lora_linear
            };
            f(&args[0], &weight, bias, adapter).unwrap()
        };
        compare(
            &format!("lora_linear, {name}"),
            &[x.clone(), a.clone(), b.clone()],
            |args| layer(args, false),
            |args| layer(args, true),
        );
    }
}

#[test]
fn nf4_linear_equals_the_product_with_the_dequantised_weight() {
    use medtune_qlora::ops::{nf4_linear, TILED_ROWS};
    use medtune_qlora::Nf4Weight;
    // An odd width (tiles and rows start mid-byte and mid-block, several tiles a weight), a
    // width of whole blocks, and row counts on both sides of the tiled kernel's limit.
    for (inp, out) in [(37, 2_000), (576, 130)] {
        let w = seeded_randn(30, "nf4 weight", (out, inp), 0.1);
        let q = Nf4Weight::quantise("w", &w).unwrap();
        let dense = q.dequantise(candle_core::DType::F32).unwrap();
        for rows in [1, 5, TILED_ROWS, TILED_ROWS + 1] {
            let x = seeded_randn(31, "nf4 input", (rows, 1, inp), 1.0);
            let tiled = nf4_linear(&x, &q).unwrap();
            let reference = frozen_linear(&x, &dense).unwrap();
            assert_eq!(tiled.dims(), [rows, 1, out]);
            let diff = max_abs_diff(&tiled, &reference);
            println!("{inp} → {out}, {rows} rows: |Δ| {diff:.2e}");
            assert!(diff <= 1e-5, "{inp} → {out}, {rows} rows: {diff:e}");
        }
    }
}

#[test]
fn nf4_linear_passes_gradients_to_an_input_that_takes_one() {
    use medtune_qlora::ops::nf4_linear;
    use medtune_qlora::Nf4Weight;
    let q = Nf4Weight::quantise("w", &seeded_randn(32, "w", (6, 4), 0.5)).unwrap();
    let dense = q.dequantise(candle_core::DType::F32).unwrap();
    let x = var(33, "x", (3, 4), 1.0);
    let c = seeded_randn(34, "c", (3, 6), 1.0);
    let through_nf4 = input_gradient(&x, &nf4_linear(x.as_tensor(), &q).unwrap(), &c);
    let through_dense = input_gradient(&x, &frozen_linear(x.as_tensor(), &dense).unwrap(), &c);
    assert!(max_abs_diff(&through_nf4, &through_dense) <= 1e-6);
}

#[test]
fn f64_inputs_keep_f64_statistics_and_softmax() {
    // f32 statistics would leave ~1e-7 relative error; f64 throughout leaves ~1e-16.
    let x = seeded_randn(30, "x", (3, 8), 3.0)
        .to_dtype(DType::F64)
        .unwrap();
    let weight = seeded_randn(31, "weight", 8, 1.0)
        .to_dtype(DType::F64)
        .unwrap();
    let normed: Vec<Vec<f64>> = rms_norm(&x, &weight, 1e-5).unwrap().to_vec2().unwrap();
    let (rows, w): (Vec<Vec<f64>>, Vec<f64>) = (x.to_vec2().unwrap(), weight.to_vec1().unwrap());
    for (row, got) in rows.iter().zip(&normed) {
        let scale = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / 8.0 + 1e-5).sqrt();
        for ((v, g), w) in row.iter().zip(got).zip(&w) {
            assert!(
                (v * scale * w - g).abs() < 1e-13,
                "rms_norm: {g} vs {}",
                v * scale * w
            );
        }
    }

    // One head, two queries over three keys, the second key masked for the first query.
    let q = seeded_randn(32, "q", (1, 1, 2, 4), 2.0)
        .to_dtype(DType::F64)
        .unwrap();
    let k = seeded_randn(33, "k", (1, 1, 3, 4), 2.0)
        .to_dtype(DType::F64)
        .unwrap();
    let v = seeded_randn(34, "v", (1, 1, 3, 4), 2.0)
        .to_dtype(DType::F64)
        .unwrap();
    let masked = f32::MIN as f64;
    let mask = Tensor::new(&[0f64, masked, 0.0, 0.0, 0.0, 0.0], &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 2, 3))
        .unwrap();
    let got: Vec<Vec<f64>> = attention(&q, &k, &v, &mask, 0.5)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let rows = |t: &Tensor| -> Vec<Vec<f64>> {
        t.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
    };
    let (q, k, v, mask) = (
        rows(&q),
        rows(&k),
        rows(&v),
        rows(&mask.squeeze(0).unwrap()),
    );
    for (i, query) in q.iter().enumerate() {
        let scores: Vec<f64> = k
            .iter()
            .zip(&mask[i])
            .map(|(key, m)| 0.5 * query.iter().zip(key).map(|(a, b)| a * b).sum::<f64>() + m)
            .collect();
        let top = scores.iter().cloned().fold(f64::MIN, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
        let total: f64 = weights.iter().sum();
        for d in 0..4 {
            let expected: f64 = weights
                .iter()
                .zip(&v)
                .map(|(w, row)| w / total * row[d])
                .sum();
            let diff = (expected - got[i][d]).abs();
            assert!(
                diff < 1e-13,
                "attention [{i}][{d}]: {} vs {expected}",
                got[i][d]
            );
        }
    }
}
