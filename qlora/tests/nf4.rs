//! NF4 against an independent implementation of bitsandbytes' algorithm written here, on random
//! weights and on the real all-MiniLM-L6-v2 weights (scripts/fetch-model.sh fetches them).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use medtune_qlora::nf4::{dynamic_code, Nf4Weight, NF4_CODE};

mod common;
use common::seeded_randn;

/// The reference: bitsandbytes' default (pure torch) backend, step by step, in f32.
mod reference {
    /// `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`.
    pub fn dynamic_map() -> Vec<f32> {
        let mut data = Vec::new();
        for i in 0..7i32 {
            let items = 2usize.pow(i as u32) + 1;
            // torch.linspace(0.1, 1, items) in f32.
            let step = (1.0f32 - 0.1f32) / (items - 1) as f32;
            let boundaries: Vec<f32> = (0..items)
                .map(|k| {
                    if k < items / 2 {
                        0.1f32 + step * k as f32
                    } else {
                        1.0f32 - step * (items - k - 1) as f32
                    }
                })
                .collect();
            let factor = 10f64.powi(-6 + i) as f32;
            for k in 0..items - 1 {
                let mean = (boundaries[k] + boundaries[k + 1]) / 2.0;
                data.push(factor * mean);
            }
            for k in 0..items - 1 {
                let mean = (boundaries[k] + boundaries[k + 1]) / 2.0;
                data.push(-(factor * mean));
            }
        }
        data.push(0.0);
        data.push(1.0);
        data.sort_by(|a, b| a.partial_cmp(b).unwrap());
        data
    }

    /// `torch.bucketize(x, midpoints)`: how many midpoints lie strictly below x.
    fn bucket(code: &[f32], x: f32) -> u8 {
        let mut count = 0;
        for k in 0..code.len() - 1 {
            if (code[k] + code[k + 1]) / 2.0 < x {
                count += 1;
            }
        }
        count
    }

    /// Blockwise quantisation: full blocks multiply by the reciprocal, the tail divides.
    pub fn quantise(values: &[f32], block: usize, code: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let blocks = values.len().div_ceil(block);
        let full = values.len() / block;
        let mut absmax = vec![0f32; blocks];
        for (i, v) in values.iter().enumerate() {
            absmax[i / block] = absmax[i / block].max(v.abs());
        }
        for a in &mut absmax {
            *a = a.max(1e-38);
        }
        let mut q = Vec::with_capacity(values.len());
        for (i, &v) in values.iter().enumerate() {
            let b = i / block;
            let scaled = if b < full {
                v * (1.0 / absmax[b])
            } else {
                v / absmax[b]
            };
            q.push(bucket(code, scaled.clamp(-1.0, 1.0)));
        }
        (q, absmax)
    }

    /// NF4 with double quantisation, dequantised: what `dequantize_4bit` returns, and the
    /// 4-bit indices.
    pub fn nf4_roundtrip(values: &[f32], nf4: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let (q, absmax) = quantise(values, 64, nf4);
        let mean = absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64;
        let offset = mean as f32;
        let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
        let dynamic = dynamic_map();
        let (q2, absmax2) = quantise(&centred, 256, &dynamic);
        let restored: Vec<f32> = q2
            .iter()
            .enumerate()
            .map(|(b, &c)| dynamic[c as usize] * absmax2[b / 256] + offset)
            .collect();
        let out = q
            .iter()
            .enumerate()
            .map(|(i, &c)| nf4[c as usize] * restored[i / 64])
            .collect();
        (q, out)
    }
}

fn unpack(packed: &[u8], n: usize) -> Vec<u8> {
    packed
        .iter()
        .flat_map(|b| [b >> 4, b & 15])
        .take(n)
        .collect()
}

/// Checks `weight` bit for bit against the reference; returns (bits/param, max abs error).
fn check(name: &str, weight: &Tensor) -> (f64, f32) {
    let values: Vec<f32> = weight.flatten_all().unwrap().to_vec1().unwrap();
    let (codes, expected) = reference::nf4_roundtrip(&values, &NF4_CODE);
    let q = Nf4Weight::quantise(name, weight).unwrap();
    let packed: Vec<u8> = q.packed().to_vec1().unwrap();
    assert_eq!(unpack(&packed, values.len()), codes, "{name}: codes");
    let got: Vec<f32> = q
        .dequantise(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(q.dequantise(DType::F32).unwrap().dims(), weight.dims());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.to_bits(), e.to_bits(), "{name}[{i}]: {g} vs {e}");
    }
    let err = values
        .iter()
        .zip(&got)
        .fold(0f32, |m, (v, g)| m.max((v - g).abs()));
    (q.bits_per_parameter(), err)
}

#[test]
fn the_dynamic_code_matches_the_reference_construction() {
    let ours = dynamic_code();
    let theirs = reference::dynamic_map();
    assert_eq!(theirs.len(), 256);
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a.to_bits(), b.to_bits());
    }
}

#[test]
fn random_weights_quantise_identically_to_the_reference() {
    let device = Device::Cpu;
    // Shapes with a partial last block, a partial absmax block, an odd count and a zero block.
    for (i, shape) in [(384, 384), (37, 29), (1, 63), (3, 64 * 256 + 5)]
        .into_iter()
        .enumerate()
    {
        let w = seeded_randn(1, &format!("nf4 {shape:?}"), shape, 0.05);
        let w = if i == 1 {
            // A block of zeros and a huge outlier.
            let mut v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
            v[..64].iter_mut().for_each(|x| *x = 0.0);
            v[100] = 40.0;
            Tensor::from_vec(v, shape, &device).unwrap()
        } else {
            w
        };
        let (bits, err) = check(&format!("random{shape:?}"), &w);
        // Small tensors pay for a whole absmax block and the offset; large ones approach 4.127.
        if w.elem_count() >= 64 * 256 {
            assert!(bits > 4.126 && bits < 4.13, "{shape:?}: {bits}");
        }
        assert!(err.is_finite());
    }
}

#[test]
fn real_minilm_weights_quantise_identically_and_take_4_127_bits() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/all-MiniLM-L6-v2/model.safetensors");
    assert!(
        path.is_file(),
        "run scripts/fetch-model.sh first ({})",
        path.display()
    );
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors
        .keys()
        .filter(|n| n.contains("layer.0.") && n.ends_with(".weight") && tensors[*n].rank() == 2)
        .collect();
    names.sort();
    assert_eq!(names.len(), 6, "{names:?}");
    let (mut stored_bits, mut params) = (0f64, 0usize);
    for name in names {
        let w = &tensors[name];
        let (bits, err) = check(name, w);
        // The error is at most half the widest NF4 gap times the block maximum (plus the
        // double quantisation's error on that maximum, here well under 1%).
        let absmax: f32 = w.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        let widest_gap = NF4_CODE
            .windows(2)
            .map(|p| p[1] - p[0])
            .fold(0f32, f32::max);
        assert!(err <= absmax * widest_gap / 2.0 * 1.01, "{name}: {err}");
        stored_bits += bits * w.elem_count() as f64;
        params += w.elem_count();
    }
    let bits = stored_bits / params as f64;
    println!("all-MiniLM-L6-v2 layer 0: {params} weights at {bits:.4} bits/parameter");
    assert!((bits - 4.127).abs() < 0.001, "{bits}");
}
