//! A LoRA linear layer as one op: `x Wᵀ + bias + s · (drop(x) Aᵀ) Bᵀ`, with W frozen.
//!
//! Composed, a layer keeps six activation-sized tensors alive for the backward pass (the base
//! output, the dropout mask, the dropped input, the adapter's output, its scaled copy and the
//! sum), and the bias and scale are single-threaded passes. This op keeps the rank-r product
//! `drop(x) Aᵀ` (r / in of x) and the dropout mask as one bit an element; the base GEMM
//! accumulates onto the bias, and the backward pass is five GEMMs and two masked passes over
//! plain slices, with no candle op (and so no temporary tensor) between them.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::matmul::{matmul_into, View};
use super::{f32_slice, frozen_linear, fused, with_f32};
use crate::error::Result;

/// Elements a parallel task of the dropout mask draws (a multiple of 64, for the bit mask).
const MASK_CHUNK: usize = 16_384;

/// Inverted dropout on a layer's adapter input: element i is kept (and scaled by
/// 1 / (1 − p)) when word i of `rng` is below (1 − p) · 2³².
#[derive(Debug, Clone)]
pub struct Dropout {
    /// The probability of dropping an element, in [0, 1).
    pub p: f64,
    /// The stream the mask is drawn from, at its first word.
    pub rng: ChaCha8Rng,
}

impl Dropout {
    /// The word below which an element is kept, and the factor a kept element takes.
    fn rule(&self) -> (u32, f32) {
        let keep = 1.0 - self.p;
        let threshold = (keep * 2f64.powi(32)).min(f64::from(u32::MAX)) as u32;
        (threshold, (1.0 / keep) as f32)
    }

    /// The mask for `n` elements: 0 where dropped, 1 / (1 − p) where kept. Drawn in parallel
    /// chunks, each seeking the stream to its first word, so it is the same on any number of
    /// threads.
    pub fn mask(&self, n: usize) -> Vec<f32> {
        let (threshold, scale) = self.rule();
        let mut mask = vec![0f32; n];
        mask.par_chunks_mut(MASK_CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut rng = self.rng.clone();
                rng.set_word_pos((c * MASK_CHUNK) as u128);
                for m in chunk {
                    *m = if rng.next_u32() < threshold {
                        scale
                    } else {
                        0.0
                    };
                }
            });
        mask
    }

    /// `x ⊙ mask` and the mask as bits (bit i of word i / 64 set where element i is kept), in
    /// one parallel pass over the same words [`Dropout::mask`] draws.
    fn apply(&self, x: &[f32]) -> (Vec<f32>, Vec<u64>) {
        let (threshold, scale) = self.rule();
        let mut dropped = vec![0f32; x.len()];
        let mut kept = vec![0u64; x.len().div_ceil(64)];
        dropped
            .par_chunks_mut(MASK_CHUNK)
            .zip(x.par_chunks(MASK_CHUNK))
            .zip(kept.par_chunks_mut(MASK_CHUNK / 64))
            .enumerate()
            .for_each(|(c, ((dropped, x), kept))| {
                let mut rng = self.rng.clone();
                rng.set_word_pos((c * MASK_CHUNK) as u128);
                for ((dropped, x), kept) in dropped.chunks_mut(64).zip(x.chunks(64)).zip(kept) {
                    for (i, (d, &x)) in dropped.iter_mut().zip(x).enumerate() {
                        if rng.next_u32() < threshold {
                            *d = x * scale;
                            *kept |= 1 << i;
                        }
                    }
                }
            });
        (dropped, kept)
    }

    fn mask_like(&self, x: &Tensor) -> Result<Tensor> {
        let mask = Tensor::from_vec(self.mask(x.elem_count()), x.dims(), x.device())?;
        Ok(mask.to_dtype(x.dtype())?)
    }
}

/// The adapter half of a LoRA layer: `s · (drop(x) Aᵀ) Bᵀ` with A (r × in) and B (out × r).
#[derive(Debug, Clone, Copy)]
pub struct Adapted<'a> {
    /// The down projection A (r × in), initialised at random.
    pub a: &'a Tensor,
    /// The up projection B (out × r), initialised to zeros so training starts at the base.
    pub b: &'a Tensor,
    /// `alpha / r` (or `alpha / √r` with rsLoRA).
    pub scale: f64,
    /// Dropout on the adapter's input while training; `None` in evaluation.
    pub dropout: Option<&'a Dropout>,
}

/// `x Wᵀ + bias + s · (drop(x) Aᵀ) Bᵀ` for x (… × in) and a frozen W (out × in) and bias.
/// x, A and B take gradients.
pub fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    adapter: Adapted,
) -> Result<Tensor> {
    let mut operands = vec![x, weight, adapter.a, adapter.b];
    operands.extend(bias);
    if !fused(&operands) {
        return composed_lora_linear(x, weight, bias, adapter);
    }
    let (out, inp) = weight.dims2()?;
    let r = adapter.a.dim(0)?;
    if adapter.a.dims() != [r, inp]
        || adapter.b.dims() != [out, r]
        || bias.is_some_and(|b| b.dims() != [out])
        || x.dim(candle_core::D::Minus1)? != inp
    {
        return Err(candle_core::Error::Msg(format!(
            "lora_linear: x {:?}, W {:?}, A {:?}, B {:?} and bias {:?} do not fit",
            x.dims(),
            weight.dims(),
            adapter.a.dims(),
            adapter.b.dims(),
            bias.map(|b| b.dims())
        ))
        .into());
    }
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = out;
    }
    let rows = x.elem_count() / inp.max(1);
    let op = LoraLinear {
        weight: weight.contiguous()?,
        bias: bias.map(Tensor::contiguous).transpose()?,
        scale: adapter.scale as f32,
        dropout: adapter.dropout.cloned(),
        saved: OnceLock::new(),
    };
    let y = x.contiguous()?.reshape((rows, inp))?.apply_op3(
        &adapter.a.contiguous()?,
        &adapter.b.contiguous()?,
        op,
    )?;
    Ok(y.reshape(shape)?)
}

/// The candle composition [`lora_linear`] replaces.
pub fn composed_lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    adapter: Adapted,
) -> Result<Tensor> {
    let mut y = frozen_linear(x, weight)?;
    if let Some(bias) = bias {
        y = y.broadcast_add(&bias.to_dtype(x.dtype())?)?;
    }
    let input = match adapter.dropout {
        Some(dropout) => (x * dropout.mask_like(x)?)?,
        None => x.clone(),
    };
    let (a, b) = (
        adapter.a.to_dtype(x.dtype())?,
        adapter.b.to_dtype(x.dtype())?,
    );
    // As rows × in matrices: a broadcast A or B would make their gradients batch-sized.
    let inp = a.dim(1)?;
    let rows = x.elem_count() / inp.max(1);
    let low = input.reshape((rows, inp))?.matmul(&a.t()?)?;
    let lora = low.matmul(&b.t()?)?.reshape(y.shape())?;
    Ok((y + (lora * adapter.scale)?)?)
}

/// The op behind [`lora_linear`]: arguments (x: rows × in, A: r × in, B: out × r).
struct LoraLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    scale: f32,
    dropout: Option<Dropout>,
    /// What the forward pass leaves for the backward pass.
    saved: OnceLock<Saved>,
}

/// The rank-r product `drop(x) Aᵀ` (rows × r, 1/48th of x for MiniLM's r = 16) and, with
/// dropout, which elements of x were kept (a bit each), so that the backward pass neither
/// repeats the product nor draws the mask again.
struct Saved {
    low: Vec<f32>,
    kept: Option<Vec<u64>>,
}

/// Calls `f(out[i], src[i], m[i])` for every element, `m` the dropout mask `kept`: `scale`
/// where bit i is set, else 0.
fn zip_masked(
    out: &mut [f32],
    src: &[f32],
    kept: &[u64],
    scale: f32,
    f: impl Fn(&mut f32, f32, f32) + Sync + Send,
) {
    assert_eq!(
        out.len(),
        src.len(),
        "zip_masked: the operands differ in length"
    );
    out.par_chunks_mut(MASK_CHUNK)
        .zip(src.par_chunks(MASK_CHUNK))
        .zip(kept.par_chunks(MASK_CHUNK / 64))
        .for_each(|((out, src), kept)| {
            for ((out, src), &word) in out.chunks_mut(64).zip(src.chunks(64)).zip(kept) {
                for (i, (o, &v)) in out.iter_mut().zip(src).enumerate() {
                    f(o, v, ((word >> i) & 1) as f32 * scale);
                }
            }
        });
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let (a, b) = (
            f32_slice(as_, al, self.name())?,
            f32_slice(bs, bl, self.name())?,
        );
        let (rows, inp) = xl.shape().dims2()?;
        let (out, r) = bl.shape().dims2()?;
        // The bias, row by row, is where the base GEMM accumulates.
        let mut y = match &self.bias {
            Some(bias) => with_f32(bias, |bias| Ok(bias.repeat(rows)))?,
            None => vec![0f32; rows * out],
        };
        with_f32(&self.weight, |w| {
            let w = View::row_major(w, out, inp);
            let x = View::row_major(x, rows, inp);
            matmul_into(&mut y, x, w.t(), 1.0, self.bias.is_some());
            Ok(())
        })?;
        let (dropped, kept) = match &self.dropout {
            Some(dropout) => {
                let (dropped, kept) = dropout.apply(x);
                (Some(dropped), Some(kept))
            }
            None => (None, None),
        };
        let input = dropped.as_deref().unwrap_or(x);
        let mut low = vec![0f32; rows * r];
        let a = View::row_major(a, r, inp);
        matmul_into(
            &mut low,
            View::row_major(input, rows, inp),
            a.t(),
            1.0,
            false,
        );
        let b = View::row_major(b, out, r);
        matmul_into(
            &mut y,
            View::row_major(&low, rows, r),
            b.t(),
            self.scale,
            true,
        );
        // A second forward pass of one op (there is none) would keep the first's values.
        let _ = self.saved.set(Saved { low, kept });
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(Saved { low, kept }) = self.saved.get() else {
            candle_core::bail!("lora-linear: a backward pass without its forward pass");
        };
        let (rows, inp) = x.dims2()?;
        let (out, r) = b.dims2()?;
        let grad = grad.contiguous()?;
        let scale = self.scale;
        let keep_scale = self
            .dropout
            .as_ref()
            .map_or(1.0, |dropout| dropout.rule().1);
        let mut d_low = vec![0f32; rows * r];
        let mut d_b = vec![0f32; out * r];
        let mut d_a = vec![0f32; r * inp];
        let mut d_x = vec![0f32; rows * inp];
        with_f32(&grad, |g| {
            let g = View::row_major(g, rows, out);
            with_f32(b, |b| {
                matmul_into(&mut d_low, g, View::row_major(b, out, r), scale, false);
                Ok(())
            })?;
            let low = View::row_major(low, rows, r);
            matmul_into(&mut d_b, g.t(), low, scale, false);
            with_f32(&self.weight, |w| {
                matmul_into(&mut d_x, g, View::row_major(w, out, inp), 1.0, false);
                Ok(())
            })
        })?;
        let d_low_view = View::row_major(&d_low, rows, r);
        with_f32(x, |x| {
            let dropped = kept.as_ref().map(|kept| {
                let mut dropped = vec![0f32; x.len()];
                zip_masked(&mut dropped, x, kept, keep_scale, |d, x, m| *d = x * m);
                dropped
            });
            let input = View::row_major(dropped.as_deref().unwrap_or(x), rows, inp);
            matmul_into(&mut d_a, d_low_view.t(), input, 1.0, false);
            Ok(())
        })?;
        with_f32(a, |a| {
            let a = View::row_major(a, r, inp);
            match kept {
                Some(kept) => {
                    let mut d_input = vec![0f32; rows * inp];
                    matmul_into(&mut d_input, d_low_view, a, 1.0, false);
                    zip_masked(&mut d_x, &d_input, kept, keep_scale, |d, g, m| *d += g * m);
                }
                None => matmul_into(&mut d_x, d_low_view, a, 1.0, true),
            }
            Ok(())
        })?;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(d_x, (rows, inp), device)?),
            Some(Tensor::from_vec(d_a, (r, inp), device)?),
            Some(Tensor::from_vec(d_b, (out, r), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    #[test]
    fn the_parallel_dropout_mask_is_the_streams_words_in_order() {
        // Three chunks and a bit, so chunks past the first must seek to their words.
        let n = 3 * 16_384 + 100;
        let rng = stream(7, 3, "dropout", "layer.0.q");
        let dropout = Dropout {
            p: 0.25,
            rng: rng.clone(),
        };
        let mut sequential = rng;
        let threshold = (0.75 * 2f64.powi(32)) as u32;
        let expected: Vec<f32> = (0..n)
            .map(|_| {
                if sequential.next_u32() < threshold {
                    1.0 / 0.75
                } else {
                    0.0
                }
            })
            .collect();
        let mask = dropout.mask(n);
        assert_eq!(mask, expected);
        let kept = mask.iter().filter(|&&v| v > 0.0).count() as f64 / n as f64;
        assert!((kept - 0.75).abs() < 0.01, "{kept}");
    }
}
