//! Branch-free f32 `exp` and `erf` for the element-wise kernels.
//!
//! libm's `expf` is a call per element that LLVM cannot vectorise, and it was 4% of a BERT step
//! (GELU's forward and backward passes, softmax, cross-entropy). These are plain arithmetic and
//! bit operations on one value, so a loop over a slice that calls them becomes SIMD code on any
//! x86-64 or aarch64 target; written by hand because no well-kept crate offers a scalar,
//! inlinable exp.

/// Below this exp(x) is under f32's smallest normal number: [`exp`] returns 0.
const EXP_MIN: f32 = -87.336_55;
/// Above this exp(x) overflows f32: [`exp`] returns +∞.
const EXP_MAX: f32 = 88.722_83;

/// e^x within 2 ulp of the exact value for normal results; 0 below e^−87.3 (where the result
/// would be subnormal), +∞ above e^88.7, NaN for NaN.
///
/// Range reduction x = n ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 split in two parts so n ln 2 is
/// exact), then e^r ≈ 1 + r + r² P(r) with Cephes' degree-5 minimax P, then a scale by 2ⁿ
/// built in the exponent bits of two factors.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2²³ rounds to the nearest integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    let clamped = x.clamp(EXP_MIN, EXP_MAX);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let exponent = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let poly = P[1..].iter().fold(P[0], |acc, &c| acc * r + c);
    let e_r = 1.0 + r + r * r * poly;
    // n ∈ [−126, 128] and 2¹²⁸ is not an f32: scale by 2^⌊n/2⌋ and 2^⌈n/2⌉, both normal.
    let half = exponent >> 1;
    let power_of_two = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    let y = e_r * power_of_two(half) * power_of_two(exponent - half);
    if x < EXP_MIN {
        0.0
    } else if x > EXP_MAX {
        f32::INFINITY
    } else {
        // NaN fails both comparisons and stays NaN through the arithmetic.
        y
    }
}

/// erf(x) by Abramowitz and Stegun's formula 7.1.26 (absolute error below 1.5e-7, 6e-7 in f32
/// arithmetic), given
/// `e = exp(−x²)`: a rational polynomial in t = 1 / (1 + p|x|) times e. Callers that need
/// exp(−x²/2) as well (GELU's backward pass) compute one exp for both.
#[inline(always)]
pub(super) fn erf_with(x: f32, e: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    ];
    let t = 1.0 / (1.0 + P * x.abs());
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    (1.0 - poly * e).copysign(x)
}

/// Independent accumulators a reduction keeps, so that its additions need not wait on each
/// other and LLVM can keep them in one SIMD register.
const LANES: usize = 8;

/// Σ xs, accumulated in [`LANES`] interleaved partial sums (a different rounding order from
/// a left-to-right sum, which no caller relies on).
pub(super) fn sum(xs: &[f32]) -> f32 {
    sum_of(xs, |x| x)
}

/// Σ f(x) over xs, as [`sum`]; with `f` inlined and branch-free the loop vectorises.
#[inline(always)]
pub(super) fn sum_of(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f(x);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest element of xs (−∞ for none), in [`LANES`] partial maxima. NaN elements are
/// skipped, as `f32::max` does.
pub(super) fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_the_normal_range() {
        let mut worst = (0, 0f32);
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = EXP_MIN + (EXP_MAX - EXP_MIN) * i as f32 / steps as f32;
            let expected = (x as f64).exp() as f32;
            let got = exp(x);
            if expected.is_finite() && expected >= f32::MIN_POSITIVE {
                let d = ulps(got, expected);
                if d > worst.0 {
                    worst = (d, x);
                }
            }
        }
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exp_saturates_and_keeps_exact_points() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!((exp(1.0) - std::f32::consts::E).abs() <= f32::EPSILON * 3.0);
    }

    #[test]
    fn erf_is_within_its_bound_of_the_exact_value() {
        for i in -4000..=4000 {
            let x = i as f32 / 1000.0;
            let got = erf_with(x, exp(-x * x)) as f64;
            let expected = erf_reference(x as f64);
            // The formula's 1.5e-7 plus rounding in f32 arithmetic, where 1 − poly · e cancels
            // near 0: 4.1e-7 there even with a correctly rounded e.
            assert!(
                (got - expected).abs() < 6e-7,
                "erf({x}) = {got}, not {expected}"
            );
        }
    }

    #[test]
    fn lane_reductions_match_the_plain_ones() {
        for n in [0, 1, 7, 8, 9, 100, 1001] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0)
                .collect();
            let plain_sum: f64 = xs.iter().map(|&x| x as f64).sum();
            assert!((sum(&xs) as f64 - plain_sum).abs() < 1e-3, "sum of {n}");
            let plain_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), plain_max, "max of {n}");
        }
        assert_eq!(max(&[1.0, f32::NAN, 3.0]), 3.0);
    }

    /// erf by its Maclaurin series, in f64: exact to ~1e-15 for |x| ≤ 4.
    fn erf_reference(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 5.0 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
