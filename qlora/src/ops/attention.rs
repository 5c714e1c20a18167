//! Attention probabilities: `softmax(scale · q kᵀ + mask)` over the keys.
//!
//! The composition keeps five score-sized copies for the backward pass (the product, scaled,
//! masked, shifted, exponentiated). This op computes the product head by head into its output
//! and keeps the probabilities alone; its backward pass turns them into the gradients of q and
//! k.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::matmul::{matmul_into_serial, View};
use super::{f32_slice, fused, map_rows};
use crate::error::Result;

/// `softmax(scale · q kᵀ + mask)` over the last dimension. `q` is (batch, heads, queries, d),
/// `k` (batch, heads, keys, d); `mask` is (batch, 1, m, keys), additive, with m = 1 (one row
/// for every query) or m = queries. q and k take gradients, the mask none.
pub fn attention_probs(q: &Tensor, k: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if !fused(&[q, k, mask]) {
        return composed_attention_probs(q, k, mask, scale);
    }
    let (b, h, l, d) = q.dims4()?;
    let (kb, kh, t, kd) = k.dims4()?;
    let (mb, one, m, mt) = mask.dims4()?;
    if (kb, kh, kd) != (b, h, d) || mb != b || one != 1 || mt != t || (m != 1 && m != l) {
        return Err(candle_core::Error::Msg(format!(
            "attention_probs: q {:?}, k {:?} and mask {:?} do not fit",
            q.dims(),
            k.dims(),
            mask.dims()
        ))
        .into());
    }
    Ok(q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &mask.contiguous()?,
        AttentionProbs {
            scale: scale as f32,
        },
    )?)
}

/// The candle composition [`attention_probs`] replaces (the softmax in f32).
pub fn composed_attention_probs(
    q: &Tensor,
    k: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
    Ok(candle_nn::ops::softmax(&scores.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype)?)
}

/// Below this, exp underflows to 0 in f32 (the smallest subnormal is e^−103.3).
const UNDERFLOW: f32 = -104.0;

/// `row ← softmax(row + mask)`.
fn masked_softmax_in_place(row: &mut [f32], mask: &[f32]) {
    let mut max = f32::NEG_INFINITY;
    for (o, &m) in row.iter_mut().zip(mask) {
        *o += m;
        max = max.max(*o);
    }
    let mut sum = 0f32;
    for o in row.iter_mut() {
        // Masked keys sit near f32::MIN: their exp is 0, and glibc's expf reaches 0 there
        // only through its slow underflow path (errno included), 7% of a decoder's step.
        let shifted = *o - max;
        *o = if shifted < UNDERFLOW { 0.0 } else { shifted.exp() };
        sum += *o;
    }
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|o| *o *= inverse);
}

struct AttentionProbs {
    scale: f32,
}

impl CustomOp3 for AttentionProbs {
    fn name(&self) -> &'static str {
        "attention-probs"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = f32_slice(qs, ql, self.name())?;
        let k = f32_slice(ks, kl, self.name())?;
        let mask = f32_slice(ms, ml, self.name())?;
        let (b, h, l, d) = ql.shape().dims4()?;
        let t = kl.shape().dims4()?.2;
        let mask_rows = ml.shape().dims4()?.2;
        let mut out = vec![0f32; b * h * l * t];
        // One (batch, head) block a task: its scores, then each row's masked softmax.
        out.par_chunks_mut((l * t).max(1))
            .enumerate()
            .for_each(|(bh, block)| {
                let q = View::row_major(&q[bh * l * d..][..l * d], l, d);
                let k = View::row_major(&k[bh * t * d..][..t * d], t, d);
                matmul_into_serial(block, q, k.t(), self.scale);
                let batch = bh / h;
                for (query, row) in block.chunks_mut(t.max(1)).enumerate() {
                    let m = batch * mask_rows + if mask_rows == 1 { 0 } else { query };
                    masked_softmax_in_place(row, &mask[m * t..][..t]);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, h, l, t))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        _mask: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d_scores =
            probs.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward { scale: self.scale })?;
        let (q, k) = (q.detach(), k.detach());
        let d_q = d_scores.matmul(&k)?;
        let d_k = d_scores.t()?.matmul(&q)?;
        Ok((Some(d_q), Some(d_k), None))
    }
}

/// d (q kᵀ) = scale · p ⊙ (g − Σ p ⊙ g), row by row; arguments (p, g).
struct SoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "attention-probs-backward"
    }

    fn cpu_fwd(
        &self,
        ps: &CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = f32_slice(ps, pl, self.name())?;
        let g = f32_slice(gs, gl, self.name())?;
        let t = pl.shape().dims().last().copied().unwrap_or(1);
        let out = map_rows(p.len() / t.max(1), t, |r, out| {
            let (p, g) = (&p[r * t..][..t], &g[r * t..][..t]);
            let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
            for ((o, &p), &g) in out.iter_mut().zip(p).zip(g) {
                *o = self.scale * p * (g - dot);
            }
        });
        Ok((CpuStorage::F32(out), pl.shape().clone()))
    }
}
