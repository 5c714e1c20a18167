//! A LoRA linear layer as one op: `x Wᵀ + bias + s · (drop(x) Aᵀ) Bᵀ`, with W frozen.
//!
//! Composed, a layer keeps six activation-sized tensors alive for the backward pass (the base
//! output, the dropout mask, the dropped input, the adapter's output, its scaled copy and the
//! sum), and the bias and scale are single-threaded passes. This op keeps its output alone: its
//! backward pass draws the dropout mask again from the same stream and recomputes the rank-r
//! product `drop(x) Aᵀ`, which costs r / out of the base GEMM.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::matmul::{matmul_into, View};
use super::{f32_slice, frozen_linear, fused, with_f32};
use crate::error::Result;

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
    /// The mask for `n` elements: 0 where dropped, 1 / (1 − p) where kept. Drawn in parallel
    /// chunks, each seeking the stream to its first word, so it is the same on any number of
    /// threads.
    pub fn mask(&self, n: usize) -> Vec<f32> {
        const CHUNK: usize = 16_384;
        let keep = 1.0 - self.p;
        let threshold = (keep * 2f64.powi(32)).min(f64::from(u32::MAX)) as u32;
        let scale = (1.0 / keep) as f32;
        let mut mask = vec![0f32; n];
        mask.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut rng = self.rng.clone();
                rng.set_word_pos((c * CHUNK) as u128);
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

    fn mask_like(&self, x: &Tensor) -> Result<Tensor> {
        let mask = Tensor::from_vec(self.mask(x.elem_count()), x.dims(), x.device())?;
        Ok(mask.to_dtype(x.dtype())?)
    }
}

/// The adapter half of a LoRA layer: `s · (drop(x) Aᵀ) Bᵀ` with A (r × in) and B (out × r).
#[derive(Debug, Clone, Copy)]
pub struct Adapted<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
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
        let mut y = vec![0f32; rows * out];
        with_f32(&self.weight, |w| {
            let w = View::row_major(w, out, inp);
            matmul_into(&mut y, View::row_major(x, rows, inp), w.t(), 1.0, false);
            Ok(())
        })?;
        let dropped;
        let input = match &self.dropout {
            Some(dropout) => {
                let mask = dropout.mask(x.len());
                dropped = x
                    .par_iter()
                    .zip(&mask)
                    .map(|(x, m)| x * m)
                    .collect::<Vec<_>>();
                &dropped[..]
            }
            None => x,
        };
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
        if let Some(bias) = &self.bias {
            with_f32(bias, |bias| {
                y.par_chunks_mut(out.max(1)).for_each(|row| {
                    row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
                });
                Ok(())
            })?;
        }
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
        // Nothing here records a graph: the gradients are plain values.
        let (x, a, b, g) = (x.detach(), a.detach(), b.detach(), grad.detach());
        let mask = match &self.dropout {
            Some(dropout) => Some(dropout.mask_like(&x).map_err(candle_core::Error::wrap)?),
            None => None,
        };
        let input = match &mask {
            Some(mask) => (&x * mask)?,
            None => x.clone(),
        };
        let scale = f64::from(self.scale);
        let low = input.matmul(&a.t()?)?;
        let d_b = (g.t()?.matmul(&low)? * scale)?;
        let d_low = (g.matmul(&b)? * scale)?;
        let d_a = d_low.t()?.matmul(&input)?;
        let d_input = d_low.matmul(&a)?;
        let d_input = match &mask {
            Some(mask) => (d_input * mask)?,
            None => d_input,
        };
        let d_x = (g.matmul(&self.weight)? + d_input)?;
        Ok((Some(d_x), Some(d_a), Some(d_b)))
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
