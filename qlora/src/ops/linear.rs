//! `x Wᵀ` for a weight that is never trained.
//!
//! candle's matmul backward computes the gradient of both operands; for a frozen weight that is
//! a whole wasted GEMM, and when the weight was broadcast over a batch (`broadcast_matmul`) it
//! also materialises a batch × in × out gradient (118 MB a layer for MiniLM's 384 × 1536 at 50
//! rows). This op's backward returns the input's gradient `g W` and nothing for the weight.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use super::matmul::{matmul_into, View};
use crate::error::Result;

/// `x Wᵀ` (x: … × in, W: out × in) where W takes no gradient.
///
/// On the CPU in f32 this is one GEMM forward and one backward. Elsewhere (CUDA, half
/// precision) it is candle's matmul over a detached weight: the same values, but its backward
/// still computes the weight's gradient and then drops it.
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (out, inp) = weight.dims2()?;
    let mut shape = x.dims().to_vec();
    let last = shape.last_mut().ok_or_else(|| {
        candle_core::Error::Msg("frozen_linear: the input has no dimensions".into())
    })?;
    *last = out;
    let rows = x.elem_count() / inp.max(1);
    let x = x.reshape((rows, inp))?;
    let y = if x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        x.apply_op2(weight, FrozenMatmul)?
    } else {
        x.matmul(&weight.detach().t()?)?
    };
    Ok(y.reshape(shape)?)
}

/// The CPU f32 op behind [`frozen_linear`]: arguments (x: rows × in, W: out × in).
struct FrozenMatmul;

/// A 2-D CPU f32 operand as a [`View`].
fn view<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<View<'a>> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("frozen_linear: the CPU kernel takes f32 only");
    };
    let (rows, cols) = layout.shape().dims2()?;
    let stride = layout.stride();
    if stride.len() != 2 {
        candle_core::bail!("frozen_linear: {what} is not a matrix");
    }
    Ok(View {
        data: &data[layout.start_offset()..],
        rows,
        cols,
        row_stride: stride[0],
        col_stride: stride[1],
    })
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = view(xs, xl, "the input")?;
        let w = view(ws, wl, "the weight")?;
        if x.cols != w.cols {
            candle_core::bail!(
                "frozen_linear: the input has {} features, the weight {}",
                x.cols,
                w.cols
            );
        }
        let mut y = vec![0f32; x.rows * w.rows];
        matmul_into(&mut y, x, w.t(), 1.0, false);
        Ok((CpuStorage::F32(y), Shape::from((x.rows, w.rows))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // dL/dx = dL/dy · W; the weight is frozen, so no gradient for it.
        Ok((Some(grad_y.matmul(weight)?), None))
    }
}
