//! LayerNorm and RMSNorm over the last dimension, with frozen affine parameters.
//!
//! The compositions keep five or six activation-sized copies each for the backward pass; these
//! keep nothing but their input and recompute a row's statistics in the backward pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, D};

use super::{f32_slice, fused, map_rows, statistics_dtype};
use crate::error::Result;

/// LayerNorm of `x` (…, n): `(x − mean) / √(var + eps) · weight + bias`. The weight and bias
/// are frozen: they take no gradient.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused(&[x, weight, bias]) {
        return composed_layer_norm(x, weight, bias, eps);
    }
    check_width("layer_norm", x, &[weight, bias])?;
    Ok(x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )?)
}

/// The candle composition [`layer_norm`] replaces (statistics in f32, or f64 for f64).
pub fn composed_layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(statistics_dtype(dtype))?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(variance + eps)?.sqrt()?)?;
    Ok(normed
        .to_dtype(dtype)?
        .broadcast_mul(&weight.to_dtype(dtype)?)?
        .broadcast_add(&bias.to_dtype(dtype)?)?)
}

/// RMSNorm of `x` (…, n): `x / √(mean(x²) + eps) · weight`. The weight is frozen.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused(&[x, weight]) {
        return composed_rms_norm(x, weight, eps);
    }
    check_width("rms_norm", x, &[weight])?;
    Ok(x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })?)
}

/// The candle composition [`rms_norm`] replaces (statistics in f32, or f64 for f64).
pub fn composed_rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let wide = x.to_dtype(statistics_dtype(dtype))?;
    let scale = (wide.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    Ok(wide
        .broadcast_mul(&scale)?
        .to_dtype(dtype)?
        .broadcast_mul(&weight.to_dtype(dtype)?)?)
}

fn check_width(op: &str, x: &Tensor, params: &[&Tensor]) -> Result<()> {
    let n = x.dim(D::Minus1)?;
    for p in params {
        if p.dims() != [n] {
            return Err(candle_core::Error::Msg(format!(
                "{op}: a parameter of shape {:?} does not fit an input of width {n}",
                p.dims()
            ))
            .into());
        }
    }
    Ok(())
}

/// A row's mean and 1 / √(variance + eps). The sums run in f64: a row is hundreds of values
/// summed one after another, whose f32 rounding would be the norm's largest error.
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let variance = x
        .iter()
        .map(|&v| (f64::from(v) - mean) * (f64::from(v) - mean))
        .sum::<f64>()
        / n;
    (
        mean as f32,
        (1.0 / (variance + f64::from(eps)).sqrt()) as f32,
    )
}

/// 1 / √(mean(x²) + eps) of a row, summed in f64 as [`moments`] does.
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let mean_square = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    (1.0 / (mean_square + f64::from(eps)).sqrt()) as f32
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let (w, b) = (
            f32_slice(ws, wl, self.name())?,
            f32_slice(bs, bl, self.name())?,
        );
        let n = w.len();
        let out = map_rows(x.len() / n.max(1), n, |r, out| {
            let x = &x[r * n..][..n];
            let (mean, inverse_std) = moments(x, self.eps);
            for (((o, &x), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
                *o = (x - mean) * inverse_std * w + b;
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormBackward { eps: self.eps },
        )?;
        Ok((Some(dx), None, None))
    }
}

/// With x̂ the normalised row and ĝ = g ⊙ w:
/// dx = (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)) / √(var + eps). Arguments (x, w, g).
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let (w, g) = (
            f32_slice(ws, wl, self.name())?,
            f32_slice(gs, gl, self.name())?,
        );
        let n = w.len();
        let out = map_rows(x.len() / n.max(1), n, |r, out| {
            let (x, g) = (&x[r * n..][..n], &g[r * n..][..n]);
            let (mean, inverse_std) = moments(x, self.eps);
            let (mut sum_g, mut sum_gx) = (0f32, 0f32);
            for ((&x, &g), &w) in x.iter().zip(g).zip(w) {
                let (normed, scaled) = ((x - mean) * inverse_std, g * w);
                sum_g += scaled;
                sum_gx += scaled * normed;
            }
            let (mean_g, mean_gx) = (sum_g / n as f32, sum_gx / n as f32);
            for (((o, &x), &g), &w) in out.iter_mut().zip(x).zip(g).zip(w) {
                let normed = (x - mean) * inverse_std;
                *o = (g * w - mean_g - normed * mean_gx) * inverse_std;
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let w = f32_slice(ws, wl, self.name())?;
        let n = w.len();
        let out = map_rows(x.len() / n.max(1), n, |r, out| {
            let x = &x[r * n..][..n];
            let inverse = inverse_rms(x, self.eps);
            for ((o, &x), &w) in out.iter_mut().zip(x).zip(w) {
                *o = x * inverse * w;
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &RmsNormBackward { eps: self.eps },
        )?;
        Ok((Some(dx), None))
    }
}

/// With r = 1 / √(mean(x²) + eps) and ĝ = g ⊙ w: dx = r ĝ − x r³ mean(ĝ ⊙ x).
/// Arguments (x, w, g).
struct RmsNormBackward {
    eps: f32,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let (w, g) = (
            f32_slice(ws, wl, self.name())?,
            f32_slice(gs, gl, self.name())?,
        );
        let n = w.len();
        let out = map_rows(x.len() / n.max(1), n, |r, out| {
            let (x, g) = (&x[r * n..][..n], &g[r * n..][..n]);
            let inverse = inverse_rms(x, self.eps);
            let mean_gx = x
                .iter()
                .zip(g)
                .zip(w)
                .map(|((&x, &g), &w)| g * w * x)
                .sum::<f32>()
                / n as f32;
            let correction = inverse * inverse * inverse * mean_gx;
            for (((o, &x), &g), &w) in out.iter_mut().zip(x).zip(g).zip(w) {
                *o = inverse * g * w - x * correction;
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}
