//! Scaled dot-product attention: `softmax(scale · q kᵀ + mask) v`, head by head.
//!
//! The composition keeps five score-sized copies for the backward pass (the product, scaled,
//! masked, shifted, exponentiated), and candle runs its batched products as one small GEMM per
//! (batch, head), each with its own thread hand-off. This op keeps nothing score-sized: forward
//! and backward each run one (batch, head) a task with single-threaded GEMMs, and the backward
//! pass recomputes a head's probabilities from q and k, as flash attention does.
//!
//! Grouped-query attention is native: with fewer key/value heads than query heads, query head
//! `h` reads key/value head `h / groups` in place, so the keys and values are never repeated
//! into query-sized copies. Keys and values may also be views whose positions are a prefix of
//! a longer buffer (a KV cache with room to grow): only their last two dimensions must be
//! row-major.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::math;
use super::matmul::{matmul_add_serial, matmul_into_serial, View};
use super::{f32_slice, fused, statistics_dtype, with_f32};
use crate::error::Result;

/// `softmax(scale · q kᵀ + mask) v`. `q` is (batch, heads, queries, d), `k` and `v` are
/// (batch, kv_heads, keys, d) with `heads` a multiple of `kv_heads` (query head `h` attends
/// with key/value head `h / (heads / kv_heads)`); `mask` is (batch, 1, m, keys), additive,
/// with m = 1 (one row for every query) or m = queries. q, k and v take gradients, the mask
/// none.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    let (kv_heads, t, m) = (k.dim(1)?, k.dim(2)?, mask.dim(2)?);
    if k.dims() != [b, kv_heads, t, d]
        || v.dims() != [b, kv_heads, t, d]
        || kv_heads == 0
        || !h.is_multiple_of(kv_heads)
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
    if !fused(&[q, k, v, mask]) {
        return composed_attention(q, k, v, mask, scale);
    }
    let op = Attention {
        mask: mask.contiguous()?,
        scale: scale as f32,
    };
    Ok(q.contiguous()?
        .apply_op3(&rows_of_heads(k)?, &rows_of_heads(v)?, op)?)
}

/// `t` itself when each of its heads is a row-major (positions × d) block, else a contiguous
/// copy.
fn rows_of_heads(t: &Tensor) -> Result<Tensor> {
    let d = t.dim(3)?;
    let stride = t.stride();
    Ok(if stride[3] == 1 && (stride[2] == d || t.dim(2)? <= 1) {
        t.clone()
    } else {
        t.contiguous()?
    })
}

/// The candle composition [`attention`] replaces (the softmax in f32, or f64 for f64); key/value heads are
/// repeated to the query heads.
pub fn composed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let groups = q.dim(1)? / k.dim(1)?.max(1);
    let repeat = |t: &Tensor| -> Result<Tensor> {
        let t = t.contiguous()?;
        if groups == 1 {
            return Ok(t);
        }
        let (b, n, s, d) = t.dims4()?;
        Ok(t.unsqueeze(2)?
            .expand((b, n, groups, s, d))?
            .reshape((b, n * groups, s, d))?)
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax(&scores.to_dtype(statistics_dtype(dtype))?, D::Minus1)?;
    Ok(probs.to_dtype(dtype)?.matmul(&v)?)
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

/// The shapes of one call: query heads, query heads a key/value head serves, queries, keys,
/// head width, mask rows.
#[derive(Clone, Copy)]
struct Dims {
    heads: usize,
    groups: usize,
    l: usize,
    t: usize,
    d: usize,
    mask_rows: usize,
}

/// Key or value heads in a slice: head `(batch, kv_head)` is the row-major (t × d) block at
/// `start + batch · batch_stride + kv_head · head_stride`.
#[derive(Clone, Copy)]
struct KvHeads<'a> {
    data: &'a [f32],
    start: usize,
    batch_stride: usize,
    head_stride: usize,
    kv_heads: usize,
}

impl<'a> KvHeads<'a> {
    /// The heads of a (batch, kv_heads, t, d) operand whose heads are row-major blocks.
    fn new(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{op}: the CPU kernel takes f32 only");
        };
        let (_, kv_heads, t, d) = layout.shape().dims4()?;
        let stride = layout.stride();
        if stride[3] != 1 || (t > 1 && stride[2] != d) {
            candle_core::bail!("{op}: a key/value head is not a row-major block");
        }
        Ok(KvHeads {
            data,
            start: layout.start_offset(),
            batch_stride: stride[0],
            head_stride: stride[1],
            kv_heads,
        })
    }

    /// The heads of a contiguous (batch, kv_heads, t, d) operand.
    fn contiguous(data: &'a [f32], kv_heads: usize, t: usize, d: usize) -> Self {
        KvHeads {
            data,
            start: 0,
            batch_stride: kv_heads * t * d,
            head_stride: t * d,
            kv_heads,
        }
    }

    /// The block (t × d) that query head `bh` (batch · heads + head) reads.
    fn block(&self, dims: Dims, bh: usize) -> View<'a> {
        let (batch, head) = (bh / dims.heads, bh % dims.heads);
        let kv_head = head / dims.groups;
        debug_assert!(kv_head < self.kv_heads);
        let at = self.start + batch * self.batch_stride + kv_head * self.head_stride;
        View::row_major(&self.data[at..][..dims.t * dims.d], dims.t, dims.d)
    }
}

impl Attention {
    /// Head `bh`'s probabilities (l × t) into `probs`.
    fn probs(&self, dims: Dims, bh: usize, q: &[f32], k: View, mask: &[f32], probs: &mut [f32]) {
        let Dims {
            heads,
            l,
            t,
            d,
            mask_rows,
            ..
        } = dims;
        let q = View::row_major(&q[bh * l * d..][..l * d], l, d);
        matmul_into_serial(probs, q, k.t(), self.scale);
        let batch = bh / heads;
        for (query, row) in probs.chunks_mut(t.max(1)).enumerate() {
            let m = batch * mask_rows + if mask_rows == 1 { 0 } else { query };
            masked_softmax_in_place(row, &mask[m * t..][..t]);
        }
    }

    fn dims(&self, q: &Shape, k: &Shape) -> candle_core::Result<Dims> {
        let (_, heads, l, d) = q.dims4()?;
        let (_, kv_heads, t, _) = k.dims4()?;
        Ok(Dims {
            heads,
            groups: heads / kv_heads.max(1),
            l,
            t,
            d,
            mask_rows: self.mask.dim(2)?,
        })
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
        let q = f32_slice(qs, ql, self.name())?;
        let (k, v) = (
            KvHeads::new(ks, kl, self.name())?,
            KvHeads::new(vs, vl, self.name())?,
        );
        let dims = self.dims(ql.shape(), kl.shape())?;
        let (l, t, d) = (dims.l, dims.t, dims.d);
        let mut out = vec![0f32; q.len()];
        with_f32(&self.mask, |mask| {
            out.par_chunks_mut((l * d).max(1))
                .enumerate()
                .for_each(|(bh, out)| {
                    let mut probs = vec![0f32; l * t];
                    self.probs(dims, bh, q, k.block(dims, bh), mask, &mut probs);
                    let p = View::row_major(&probs, l, t);
                    matmul_into_serial(out, p, v.block(dims, bh), 1.0);
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
        let dims = self.dims(q.shape(), k.shape())?;
        let Dims {
            groups, l, t, d, ..
        } = dims;
        let read = |x: &Tensor| -> candle_core::Result<Vec<f32>> { x.flatten_all()?.to_vec1() };
        let (q_, k_, v_, g) = (read(q)?, read(k)?, read(v)?, read(grad)?);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q_.len()],
            vec![0f32; k_.len()],
            vec![0f32; v_.len()],
        );
        let kv_heads = k.dim(1)?;
        let (ks, vs) = (
            KvHeads::contiguous(&k_, kv_heads, t, d),
            KvHeads::contiguous(&v_, kv_heads, t, d),
        );
        // One task a key/value head: it owns that head's dK and dV, which sum over the query
        // heads of its group, and those heads' dQ (consecutive query heads).
        with_f32(&self.mask, |mask| {
            dq.par_chunks_mut((groups * l * d).max(1))
                .zip(dk.par_chunks_mut((t * d).max(1)))
                .zip(dv.par_chunks_mut((t * d).max(1)))
                .enumerate()
                .for_each(|(kv, ((dq, dk), dv))| {
                    let mut probs = vec![0f32; l * t];
                    let mut d_scores = vec![0f32; l * t];
                    for (member, dq) in dq.chunks_mut((l * d).max(1)).enumerate() {
                        let bh = kv * groups + member;
                        let (k, v) = (ks.block(dims, bh), vs.block(dims, bh));
                        self.probs(dims, bh, &q_, k, mask, &mut probs);
                        let p = View::row_major(&probs, l, t);
                        let grad = View::row_major(&g[bh * l * d..][..l * d], l, d);
                        // dV += Pᵀ dO; dP = dO Vᵀ.
                        matmul_add_serial(dv, p.t(), grad, 1.0);
                        matmul_into_serial(&mut d_scores, grad, v.t(), 1.0);
                        // dS = scale · P ⊙ (dP − Σ P ⊙ dP), row by row.
                        for (row, p) in d_scores.chunks_mut(t.max(1)).zip(probs.chunks(t.max(1))) {
                            let dot: f32 = row.iter().zip(p).map(|(g, p)| g * p).sum();
                            for (g, &p) in row.iter_mut().zip(p) {
                                *g = self.scale * p * (*g - dot);
                            }
                        }
                        // dQ = dS K; dK += dSᵀ Q.
                        let s = View::row_major(&d_scores, l, t);
                        let q = View::row_major(&q_[bh * l * d..][..l * d], l, d);
                        matmul_into_serial(dq, s, k, 1.0);
                        matmul_add_serial(dk, s.t(), q, 1.0);
                    }
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
