//! A checked front to the `gemm` crate (the GEMM candle's CPU backend runs) for the fused ops.

use gemm::{gemm, Parallelism};

/// A matrix view into a slice: element (i, j) is `data[i · row_stride + j · col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same elements.
    pub fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element the view names lies inside its slice.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst = lhs · rhs · scale` (or `dst += …` with `accumulate`), dst row-major
/// `lhs.rows × rhs.cols`, on the threads of the rayon pool it runs on. (candle's
/// `get_num_threads` would read /proc/cpuinfo at every call: 7% of a generation step.)
pub(super) fn matmul_into(dst: &mut [f32], lhs: View, rhs: View, scale: f32, accumulate: bool) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    gemm_into(dst, lhs, rhs, scale, accumulate, parallelism);
}

/// [`matmul_into`] on the calling thread alone, for callers that run many small products in
/// parallel themselves.
pub(super) fn matmul_into_serial(dst: &mut [f32], lhs: View, rhs: View, scale: f32) {
    gemm_into(dst, lhs, rhs, scale, false, Parallelism::None);
}

/// `dst += lhs · rhs · scale` on the calling thread alone (see [`matmul_into_serial`]).
pub(super) fn matmul_add_serial(dst: &mut [f32], lhs: View, rhs: View, scale: f32) {
    gemm_into(dst, lhs, rhs, scale, true, Parallelism::None);
}

fn gemm_into(
    dst: &mut [f32],
    lhs: View,
    rhs: View,
    scale: f32,
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul: inner dimensions differ");
    assert_eq!(dst.len(), m * n, "matmul: the output has the wrong size");
    assert!(
        lhs.in_bounds() && rhs.in_bounds(),
        "matmul: a view leaves its slice"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    // SAFETY: the asserts above put every element each view addresses inside its slice, and
    // dst is exactly m × n, row-major (column stride 1, row stride n).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}
