//! Scaled dot-product attention: `softmax(scale · q kᵀ + mask) v`, head by head.
//!
//! The composition keeps five score-sized copies for the backward pass (the product, scaled,
//! masked, shifted, exponentiated), and candle runs its batched products as one small GEMM per
//! (batch, head), each with its own thread hand-off. This op keeps nothing score-sized: forward
//! and backward each run one (batch, head) a task with single-threaded GEMMs, and the backward
//! pass recomputes a head's probabilities from q and k, as flash attention does.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::math;
use super::matmul::{matmul_into_serial, View};
use super::{f32_slice, fused, with_f32};
use crate::error::Result;

/// `softmax(scale · q kᵀ + mask) v`. `q` is (batch, heads, queries, d), `k` and `v` are
/// (batch, heads, keys, d); `mask` is (batch, 1, m, keys), additive, with m = 1 (one row for
/// every query) or m = queries. q, k and v take gradients, the mask none.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if !fused(&[q, k, v, mask]) {
        return composed_attention(q, k, v, mask, scale);
    }
    let (b, h, l, d) = q.dims4()?;
    let (t, m) = (k.dim(2)?, mask.dim(2)?);
    if k.dims() != [b, h, t, d]
        || v.dims() != [b, h, t, d]
        || mask.dims() != [b, 1, m, t]
        || (m != 1 && m != l)
    {
        return Err(candle_core::Error::Msg(format!(
            "attention: q {:?}, k {:?}, v {:?} and mask {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims(),
            mask.dims()
        ))
        .into());
    }
    let op = Attention {
        mask: mask.contiguous()?,
        scale: scale as f32,
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// The candle composition [`attention`] replaces (the softmax in f32).
pub fn composed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax(&scores.to_dtype(DType::F32)?, D::Minus1)?;
    Ok(probs.to_dtype(dtype)?.matmul(&v.contiguous()?)?)
}

/// `row ← softmax(row + mask)`. Masked keys sit near f32::MIN, where [`math::exp`] is 0.
fn masked_softmax_in_place(row: &mut [f32], mask: &[f32]) {
    for (o, &m) in row.iter_mut().zip(mask) {
        *o += m;
    }
    let max = math::max(row);
    row.iter_mut().for_each(|o| *o = math::exp(*o - max));
    let inverse = 1.0 / math::sum(row);
    row.iter_mut().for_each(|o| *o *= inverse);
}

struct Attention {
    mask: Tensor,
    scale: f32,
}

/// The shapes of one call: batch, heads, queries, keys, head width, mask rows.
#[derive(Clone, Copy)]
struct Dims {
    heads: usize,
    l: usize,
    t: usize,
    d: usize,
    mask_rows: usize,
}

impl Attention {
    /// Head `bh`'s probabilities (l × t) into `probs`.
    fn probs(&self, dims: Dims, bh: usize, q: &[f32], k: &[f32], mask: &[f32], probs: &mut [f32]) {
        let Dims {
            heads,
            l,
            t,
            d,
            mask_rows,
        } = dims;
        let q = View::row_major(&q[bh * l * d..][..l * d], l, d);
        let k = View::row_major(&k[bh * t * d..][..t * d], t, d);
        matmul_into_serial(probs, q, k.t(), self.scale);
        let batch = bh / heads;
        for (query, row) in probs.chunks_mut(t.max(1)).enumerate() {
            let m = batch * mask_rows + if mask_rows == 1 { 0 } else { query };
            masked_softmax_in_place(row, &mask[m * t..][..t]);
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            f32_slice(qs, ql, self.name())?,
            f32_slice(ks, kl, self.name())?,
            f32_slice(vs, vl, self.name())?,
        );
        let (_, heads, l, d) = ql.shape().dims4()?;
        let t = kl.shape().dims4()?.2;
        let dims = Dims {
            heads,
            l,
            t,
            d,
            mask_rows: self.mask.dim(2)?,
        };
        let mut out = vec![0f32; q.len()];
        with_f32(&self.mask, |mask| {
            out.par_chunks_mut((l * d).max(1))
                .enumerate()
                .for_each(|(bh, out)| {
                    let mut probs = vec![0f32; l * t];
                    self.probs(dims, bh, q, k, mask, &mut probs);
                    let v = View::row_major(&v[bh * t * d..][..t * d], t, d);
                    matmul_into_serial(out, View::row_major(&probs, l, t), v, 1.0);
                });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, heads, l, d) = q.dims4()?;
        let t = k.dim(2)?;
        let dims = Dims {
            heads,
            l,
            t,
            d,
            mask_rows: self.mask.dim(2)?,
        };
        let read = |x: &Tensor| -> candle_core::Result<Vec<f32>> { x.flatten_all()?.to_vec1() };
        let (q_, k_, v_, g) = (read(q)?, read(k)?, read(v)?, read(&grad)?);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q_.len()],
            vec![0f32; k_.len()],
            vec![0f32; v_.len()],
        );
        with_f32(&self.mask, |mask| {
            dq.par_chunks_mut((l * d).max(1))
                .zip(dk.par_chunks_mut((t * d).max(1)))
                .zip(dv.par_chunks_mut((t * d).max(1)))
                .enumerate()
                .for_each(|(bh, ((dq, dk), dv))| {
                    let mut probs = vec![0f32; l * t];
                    self.probs(dims, bh, &q_, &k_, mask, &mut probs);
                    let p = View::row_major(&probs, l, t);
                    let g = View::row_major(&g[bh * l * d..][..l * d], l, d);
                    let v = View::row_major(&v_[bh * t * d..][..t * d], t, d);
                    // dV = Pᵀ dO; dP = dO Vᵀ.
                    matmul_into_serial(dv, p.t(), g, 1.0);
                    let mut d_scores = vec![0f32; l * t];
                    matmul_into_serial(&mut d_scores, g, v.t(), 1.0);
                    // dS = scale · P ⊙ (dP − Σ P ⊙ dP), row by row.
                    for (row, p) in d_scores.chunks_mut(t.max(1)).zip(probs.chunks(t.max(1))) {
                        let dot: f32 = row.iter().zip(p).map(|(g, p)| g * p).sum();
                        for (g, &p) in row.iter_mut().zip(p) {
                            *g = self.scale * p * (*g - dot);
                        }
                    }
                    // dQ = dS K; dK = dSᵀ Q.
                    let s = View::row_major(&d_scores, l, t);
                    let q = View::row_major(&q_[bh * l * d..][..l * d], l, d);
                    let k = View::row_major(&k_[bh * t * d..][..t * d], t, d);
                    matmul_into_serial(dq, s, k, 1.0);
                    matmul_into_serial(dk, s.t(), q, 1.0);
                });
            Ok(())
        })?;
        let device = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), device)?),
            Some(Tensor::from_vec(dk, k.shape(), device)?),
            Some(Tensor::from_vec(dv, v.shape(), device)?),
        ))
    }
}
