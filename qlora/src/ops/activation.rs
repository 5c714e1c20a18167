//! The feed-forward activations: BERT's GELU (erf form) and Llama's SiLU gate.
//!
//! candle's GELU backward is nine single-threaded element-wise passes, and SiLU times the up
//! projection keeps three activation-sized copies; these are one parallel pass each way.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::math::{erf_with, exp};
use super::{f32_slice, fused, map_binary, map_ternary, map_unary};
use crate::error::Result;

/// `x · Φ(x)` with Φ the standard normal CDF, `0.5 · (1 + erf(x / √2))`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !fused(&[x]) {
        return composed_gelu_erf(x);
    }
    Ok(x.contiguous()?.apply_op1(GeluErf)?)
}

/// The candle op [`gelu_erf`] replaces.
pub fn composed_gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu_erf()?)
}

/// `silu(gate) ⊙ up`, with `silu(g) = g · σ(g)`: Llama's gated feed-forward.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !fused(&[gate, up]) {
        return composed_silu_mul(gate, up);
    }
    if gate.dims() != up.dims() {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: gate.shape().clone(),
            rhs: up.shape().clone(),
            op: "silu_mul",
        }
        .into());
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)?)
}

/// The candle composition [`silu_mul`] replaces.
pub fn composed_silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(gate)? * up)?)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / √(2π), the standard normal density at 0.
const NORMAL_PEAK: f32 = 0.398_942_3;

/// Φ(x) given `half = exp(−x²/2)` (so that exp(−(x/√2)²) = half).
#[inline(always)]
fn normal_cdf_with(x: f32, half: f32) -> f32 {
    0.5 * (1.0 + erf_with(x * FRAC_1_SQRT_2, half))
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let out = map_unary(x, |x| x * normal_cdf_with(x, exp(-0.5 * x * x)));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfBackward)?,
        ))
    }
}

/// dx = g · (Φ(x) + x · φ(x)), φ the standard normal density. Arguments (x, g).
struct GeluErfBackward;

impl CustomOp2 for GeluErfBackward {
    fn name(&self) -> &'static str {
        "gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, self.name())?;
        let g = f32_slice(gs, gl, self.name())?;
        let out = map_binary(x, g, |x, g| {
            let half = exp(-0.5 * x * x);
            g * (normal_cdf_with(x, half) + x * NORMAL_PEAK * half)
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate = f32_slice(gs, gl, self.name())?;
        let up = f32_slice(us, ul, self.name())?;
        let out = map_binary(gate, up, |gate, up| gate * sigmoid(gate) * up);
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_gate = gate.apply_op3_no_bwd(up, &grad, &SiluMulGateBackward)?;
        let d_up = gate.apply_op2_no_bwd(&grad, &SiluMulUpBackward)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// d gate = g · up · σ(gate) · (1 + gate · (1 − σ(gate))). Arguments (gate, up, g).
struct SiluMulGateBackward;

impl CustomOp3 for SiluMulGateBackward {
    fn name(&self) -> &'static str {
        "silu-mul-gate-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate = f32_slice(gs, gl, self.name())?;
        let up = f32_slice(us, ul, self.name())?;
        let grad = f32_slice(ds, dl, self.name())?;
        let out = map_ternary(gate, up, grad, |gate, up, grad| {
            let s = sigmoid(gate);
            grad * up * s * (1.0 + gate * (1.0 - s))
        });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// d up = g · silu(gate). Arguments (gate, g).
struct SiluMulUpBackward;

impl CustomOp2 for SiluMulUpBackward {
    fn name(&self) -> &'static str {
        "silu-mul-up-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let gate = f32_slice(gs, gl, self.name())?;
        let grad = f32_slice(ds, dl, self.name())?;
        let out = map_binary(gate, grad, |gate, grad| grad * gate * sigmoid(gate));
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}
