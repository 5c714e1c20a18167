//! `x Wᵀ` for an NF4 weight, at inference.
//!
//! Training dequantises a weight once per forward pass and spends thousands of rows of GEMM
//! on it. A generation step has one row per sequence: dequantising the whole weight to f32
//! then costs more than the product, and writes and reads back eight times the bytes of the
//! packed weight. For few rows this op dequantises the weight a tile of rows at a time into a
//! buffer that stays in cache and multiplies each tile at once, so the f32 weight never exists
//! whole and the memory traffic is the packed weight's.

use candle_core::Tensor;
use rayon::prelude::*;

use super::matmul::{matmul_into_serial, View};
use super::{frozen_linear, fused, with_f32};
use crate::error::Result;
use crate::nf4::Nf4Weight;

/// Inputs of at most this many rows take the tiled kernel; more rows amortise one
/// dequantisation over a full-width GEMM.
pub const TILED_ROWS: usize = 64;

/// f32 weights in one tile (128 KiB, well inside a core's L2 cache).
const TILE: usize = 32 * 1024;

/// Whether [`nf4_linear`] multiplies `x` by `weight` tile by tile: a CPU f32 input of at most
/// [`TILED_ROWS`] rows that takes no gradient.
pub fn takes_tiles(x: &Tensor, weight: &Nf4Weight) -> bool {
    let inp = weight.shape().last().copied().unwrap_or(0).max(1);
    fused(&[x]) && weight.device().is_cpu() && !x.track_op() && x.elem_count() / inp <= TILED_ROWS
}

/// `x Wᵀ` (x: … × in, W: out × in, NF4). Inputs that take a gradient, that are not CPU f32, or
/// that have more than [`TILED_ROWS`] rows are multiplied by the dequantised weight through
/// [`frozen_linear`]; the others by the tiled kernel.
pub fn nf4_linear(x: &Tensor, weight: &Nf4Weight) -> Result<Tensor> {
    let &[out, inp] = weight.shape() else {
        return Err(candle_core::Error::Msg(format!(
            "nf4_linear: the weight has shape {:?}, not out × in",
            weight.shape()
        ))
        .into());
    };
    if !takes_tiles(x, weight) {
        return frozen_linear(x, &weight.dequantise(x.dtype())?);
    }
    let rows = x.elem_count() / inp.max(1);
    if x.dims().last() != Some(&inp) {
        return Err(candle_core::Error::Msg(format!(
            "nf4_linear: the input {:?} does not end in the weight's {inp} features",
            x.dims()
        ))
        .into());
    }
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = out;
    }
    // yᵀ (out × rows), a task per tile of weight rows, so tasks own disjoint output rows.
    let tile_rows = (TILE / inp.max(1)).max(1);
    let mut transposed = vec![0f32; out * rows];
    let x = x.contiguous()?;
    with_f32(&x, |xs| {
        let x = View::row_major(xs, rows, inp);
        weight
            .with_cpu_codes(|codes| {
                transposed
                    .par_chunks_mut((tile_rows * rows).max(1))
                    .enumerate()
                    .for_each_init(
                        || vec![0f32; tile_rows * inp],
                        |tile, (i, yt)| {
                            let n = yt.len() / rows.max(1);
                            let tile = &mut tile[..n * inp];
                            codes.dequantise(i * tile_rows * inp, tile);
                            matmul_into_serial(yt, View::row_major(tile, n, inp), x.t(), 1.0);
                        },
                    );
                Ok(())
            })
            .map_err(candle_core::Error::wrap)
    })?;
    let mut y = vec![0f32; rows * out];
    for (j, column) in transposed.chunks(rows.max(1)).enumerate() {
        for (i, &v) in column.iter().enumerate() {
            y[i * out + j] = v;
        }
    }
    Ok(Tensor::from_vec(y, shape, x.device())?)
}
