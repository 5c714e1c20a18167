//! Rotary position embedding, in the `rotate_half` layout Hugging Face's Llama uses: dimension
//! i < d/2 pairs with i + d/2.
//!
//! The composition (two narrows, a negation, a concatenation, two products and a sum) keeps
//! four head-sized copies for the backward pass; this op keeps none beyond the tables.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::{f32_slice, fused, map_rows};
use crate::error::Result;

/// `x ⊙ cos + rotate_half(x) ⊙ sin` with `rotate_half([a, b]) = [−b, a]`. `x` is (batch,
/// heads, length, d); `cos` and `sin` are (batch or 1, 1, length, d). The tables take no
/// gradient.
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !fused(&[x, cos, sin]) {
        return composed_rotary(x, cos, sin);
    }
    let (b, _, l, d) = x.dims4()?;
    for table in [cos, sin] {
        let (tb, one, tl, td) = table.dims4()?;
        if (tb != b && tb != 1) || one != 1 || tl != l || td != d || d % 2 != 0 {
            return Err(candle_core::Error::Msg(format!(
                "rotary: a table of shape {:?} does not fit x of shape {:?}",
                table.dims(),
                x.dims()
            ))
            .into());
        }
    }
    Ok(x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rotary { inverse: false },
    )?)
}

/// The candle composition [`rotary`] replaces.
pub fn composed_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(candle_core::D::Minus1)? / 2;
    let first = x.narrow(candle_core::D::Minus1, 0, half)?;
    let second = x.narrow(candle_core::D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&second.neg()?, &first], candle_core::D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// The rotation (`inverse: false`) or its transpose, which is its backward pass: with
/// [a, b] the halves of a row and [c₁, c₂], [s₁, s₂] those of the tables, forward
/// [a c₁ − b s₁, b c₂ + a s₂], transposed [a c₁ + b s₂, b c₂ − a s₁].
struct Rotary {
    inverse: bool,
}

impl CustomOp3 for Rotary {
    fn name(&self) -> &'static str {
        if self.inverse {
            "rotary-backward"
        } else {
            "rotary"
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let (cos, sin) = (
            f32_slice(cs, cl, self.name())?,
            f32_slice(ss, sl, self.name())?,
        );
        let (_, heads, l, d) = xl.shape().dims4()?;
        let table_batches = cl.shape().dims4()?.0;
        let half = d / 2;
        let out = map_rows(x.len() / d.max(1), d, |r, out| {
            let (batch, position) = (r / (heads * l), r % l);
            let t = (if table_batches == 1 { 0 } else { batch }) * l + position;
            let (x, c, s) = (&x[r * d..][..d], &cos[t * d..][..d], &sin[t * d..][..d]);
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                if self.inverse {
                    out[i] = a * c[i] + b * s[i + half];
                    out[i + half] = b * c[i + half] - a * s[i];
                } else {
                    out[i] = a * c[i] - b * s[i];
                    out[i + half] = b * c[i + half] + a * s[i + half];
                }
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, sin, &Rotary { inverse: true })?;
        Ok((Some(dx), None, None))
    }
}
