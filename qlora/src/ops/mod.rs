//! Fused CPU kernels with their own backward pass, for the training hot path.
//!
//! candle composes these layers from element-wise ops that each make a full copy, keep it alive
//! for the backward pass and run on one thread; their backward passes are compositions again.
//! Each op here is one parallel pass forward and one backward, keeps only what its backward
//! needs, and gives frozen operands (norm weights, masks, rotary tables) no gradient.
//!
//! Every op takes CPU f32 tensors on its fused path; anything else (CUDA, half precision) runs
//! the `composed_*` candle composition it replaces, which is also what the tests check the
//! fused kernels against.

mod activation;
mod attention;
mod cross_entropy;
mod linear;
mod lora_linear;
mod math;
mod matmul;
mod nf4_linear;
mod norm;
mod rotary;

pub use activation::{composed_gelu_erf, composed_silu_mul, gelu_erf, silu_mul};
pub use attention::{attention, composed_attention};
pub use cross_entropy::{composed_cross_entropy, cross_entropy};
pub use linear::frozen_linear;
pub use lora_linear::{composed_lora_linear, lora_linear, Adapted, Dropout};
pub use nf4_linear::{nf4_linear, takes_tiles, TILED_ROWS};
pub use norm::{composed_layer_norm, composed_rms_norm, layer_norm, rms_norm};
pub use rotary::{composed_rotary, rotary};

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use rayon::prelude::*;

/// Whether every tensor can take a fused CPU kernel: on the CPU, in f32.
fn fused(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The dtype a composition computes statistics and softmax in for inputs of `dtype`: f32 for
/// half precision and f32, f64 for f64 (so an f64 run is f64 throughout).
fn statistics_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// The f32 elements of a contiguous CPU operand of op `op`.
fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: the CPU kernel takes f32 only");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: an operand is not contiguous"),
    }
}

/// Runs `f` on the f32 elements of a contiguous CPU tensor that an op holds besides its
/// arguments (a frozen weight, a mask).
fn with_f32<T>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<T>,
) -> candle_core::Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("a CPU kernel got a tensor on another device");
    };
    f(f32_slice(cpu, layout, "a CPU kernel")?)
}

/// A `rows × width` output whose row `i` is written by `f(i, row)`, rows in parallel.
fn map_rows(rows: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; rows * width];
    if width == 0 {
        return out;
    }
    // Enough rows a task that a narrow row does not cost more to schedule than to compute.
    let min_rows = (16_384 / width).max(1);
    out.par_chunks_mut(width)
        .with_min_len(min_rows)
        .enumerate()
        .for_each(|(i, row)| f(i, row));
    out
}

/// Elements a parallel task of an element-wise map takes.
const MAP_CHUNK: usize = 16_384;

/// `f(a[i])` for every element, in parallel chunks. With `f` inlined, each chunk's loop is
/// straight-line arithmetic over slices, which LLVM vectorises (given a branch-free `f`, such
/// as [`math::exp`]'s callers).
fn map_unary(a: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(MAP_CHUNK)
        .zip(a.par_chunks(MAP_CHUNK))
        .for_each(|(out, a)| {
            for (o, &a) in out.iter_mut().zip(a) {
                *o = f(a);
            }
        });
    out
}

/// `f(a[i], b[i])` for every element of two slices of one length, as [`map_unary`].
fn map_binary(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(
        a.len(),
        b.len(),
        "map_binary: the operands differ in length"
    );
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(MAP_CHUNK)
        .zip(a.par_chunks(MAP_CHUNK).zip(b.par_chunks(MAP_CHUNK)))
        .for_each(|(out, (a, b))| {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        });
    out
}

/// `f(a[i], b[i], c[i])` for every element of three slices of one length, as [`map_unary`].
fn map_ternary(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    assert!(
        a.len() == b.len() && a.len() == c.len(),
        "map_ternary: the operands differ in length"
    );
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(MAP_CHUNK)
        .zip(a.par_chunks(MAP_CHUNK))
        .zip(b.par_chunks(MAP_CHUNK).zip(c.par_chunks(MAP_CHUNK)))
        .for_each(|((out, a), (b, c))| {
            for (((o, &a), &b), &c) in out.iter_mut().zip(a).zip(b).zip(c) {
                *o = f(a, b, c);
            }
        });
    out
}
