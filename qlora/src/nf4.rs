//! NF4 4-bit quantisation with double-quantised scales, following bitsandbytes
//! (`quantize_4bit(..., quant_type="nf4", compress_statistics=True)`, blocksize 64).
//!
//! - The weight is flattened and cut into blocks of 64; each block is divided by its absolute
//!   maximum (a reciprocal multiply; the last, shorter block divides instead) and clamped to
//!   [-1, 1]; each value becomes the index of the nearest of the 16 NF4 code values, a value
//!   exactly half-way between two codes taking the lower one (`torch.bucketize` over the
//!   midpoints). Two indices share a byte, the first in the high nibble; an odd count is padded
//!   with the code of 0.0.
//! - Double quantisation: the f32 block maxima, minus their mean, are quantised the same way in
//!   blocks of 256 against bitsandbytes' signed 8-bit dynamic code (a float-like 256-value map),
//!   keeping one f32 maximum per 256 blocks and the mean.
//! - Storage: 4 bits per weight + 8 bits per 64 weights + 32 bits per 64·256 weights
//!   = 4.127 bits per parameter (plus one f32 mean per tensor).
//!
//! Quantising runs on the CPU once, when a model loads. Dequantising is one parallel pass over
//! the packed bytes on the CPU, and elsewhere a pair of candle gathers and a broadcast multiply,
//! so it runs on whatever device the packed tensors live on.

use candle_core::{DType, Device, Tensor};

use crate::error::{QloraError, Result};

/// The 16 NF4 code values (QLoRA, Dettmers et al. 2023; the table bitsandbytes ships), sorted.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Weights per NF4 block.
pub const BLOCK: usize = 64;
/// Block maxima per block of the double quantisation.
pub const ABSMAX_BLOCK: usize = 256;

/// bitsandbytes' signed 8-bit dynamic code (`create_dynamic_map(signed=True,
/// max_exponent_bits=7, total_bits=8)`), computed in f32 the way its torch code does: for
/// exponent i in 0..7, the midpoints of `linspace(0.1, 1, 2^i + 1)` scaled by 10^(i-6), both
/// signs, plus 0 and 1, sorted.
pub fn dynamic_code() -> [f32; 256] {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..7 {
        let bounds = linspace(0.1, 1.0, (1 << i) + 1);
        let scale = 10f64.powi(i - 6) as f32;
        for pair in bounds.windows(2) {
            let mean = (pair[0] + pair[1]) / 2.0;
            data.push(scale * mean);
            data.push(-(scale * mean));
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data.try_into().expect("254 + 2 code values")
}

/// `torch.linspace` in f32: a float step, the first half counted from the start and the second
/// half from the end.
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// Midpoints between consecutive code values: a value's index is the number of midpoints
/// below it.
fn midpoints(code: &[f32]) -> Vec<f32> {
    code.windows(2).map(|p| (p[0] + p[1]) / 2.0).collect()
}

/// Blockwise absmax quantisation of `values` against a sorted `code`: one code index per value
/// and one f32 maximum per block.
pub fn quantise_blocks(values: &[f32], block: usize, code: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let bounds = midpoints(code);
    let index = |x: f32| bounds.partition_point(|&b| b < x) as u8;
    let full = values.len() - values.len() % block;
    let mut indices = Vec::with_capacity(values.len());
    let mut maxima = Vec::with_capacity(values.len().div_ceil(block));
    for (start, chunk) in (0..values.len()).step_by(block).zip(values.chunks(block)) {
        let absmax = chunk.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-38);
        if start < full {
            let inverse = 1.0 / absmax;
            indices.extend(chunk.iter().map(|&v| index((v * inverse).clamp(-1.0, 1.0))));
        } else {
            indices.extend(chunk.iter().map(|&v| index((v / absmax).clamp(-1.0, 1.0))));
        }
        maxima.push(absmax);
    }
    (indices, maxima)
}

/// A weight quantised to NF4 with double-quantised block maxima.
#[derive(Debug, Clone)]
pub struct Nf4Weight {
    /// Two 4-bit code indices per byte, the first in the high nibble.
    packed: Tensor,
    /// 8-bit dynamic-code index of each block maximum (minus `offset`).
    absmax_codes: Tensor,
    /// f32 maximum of each block of 256 centred block maxima.
    absmax_scales: Tensor,
    /// Mean of the block maxima.
    offset: f32,
    shape: Vec<usize>,
    /// Byte -> its two NF4 values (256 × 2), so one gather unpacks both nibbles. A shared
    /// constant, like the code tables bitsandbytes keeps; not counted as storage.
    nibble_pairs: Tensor,
    /// The 8-bit dynamic code (256), on the same device.
    dynamic: Tensor,
}

/// Packs 4-bit indices two to a byte, the first in the high nibble; an odd count is padded
/// with the index of 0.0.
pub fn pack_nibbles(indices: &[u8]) -> Vec<u8> {
    let zero = NF4_CODE
        .iter()
        .position(|&c| c == 0.0)
        .expect("0 is a code") as u8;
    indices
        .chunks(2)
        .map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(zero))
        .collect()
}

impl Nf4Weight {
    /// Quantises `weight` (any float dtype, any device). `name` is used in errors.
    pub fn quantise(name: &str, weight: &Tensor) -> Result<Self> {
        let bad = |reason: &str| QloraError::Quantise {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if !weight.dtype().is_float() {
            return Err(bad(&format!(
                "dtype {:?} is not a float type",
                weight.dtype()
            )));
        }
        let values: Vec<f32> = weight.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        if values.is_empty() {
            return Err(bad("the tensor is empty"));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(&format!("element {i} is {}", values[i])));
        }
        let (indices, absmax) = quantise_blocks(&values, BLOCK, &NF4_CODE);
        let offset =
            (absmax.iter().map(|&a| f64::from(a)).sum::<f64>() / absmax.len() as f64) as f32;
        let dynamic = dynamic_code();
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let (absmax_codes, absmax_scales) = quantise_blocks(&centred, ABSMAX_BLOCK, &dynamic);
        let device = weight.device();
        let packed = pack_nibbles(&indices);
        let pairs: Vec<f32> = (0..=255u8)
            .flat_map(|b| [NF4_CODE[usize::from(b >> 4)], NF4_CODE[usize::from(b & 15)]])
            .collect();
        Ok(Nf4Weight {
            nibble_pairs: Tensor::from_vec(pairs, (256, 2), device)?,
            dynamic: Tensor::from_vec(dynamic.to_vec(), 256, device)?,
            packed: Tensor::from_vec(packed.clone(), packed.len(), device)?,
            absmax_codes: Tensor::from_vec(absmax_codes.clone(), absmax_codes.len(), device)?,
            absmax_scales: Tensor::from_vec(absmax_scales.clone(), absmax_scales.len(), device)?,
            offset,
            shape: weight.dims().to_vec(),
        })
    }

    /// The shape of the original weight.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of weights.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The device the packed tensors live on.
    pub fn device(&self) -> &Device {
        self.packed.device()
    }

    /// The packed 4-bit indices.
    pub fn packed(&self) -> &Tensor {
        &self.packed
    }

    /// The 8-bit codes of the block maxima.
    pub fn absmax_codes(&self) -> &Tensor {
        &self.absmax_codes
    }

    /// The f32 scales of the block maxima.
    pub fn absmax_scales(&self) -> &Tensor {
        &self.absmax_scales
    }

    /// The mean the block maxima were centred on.
    pub fn offset(&self) -> f32 {
        self.offset
    }

    /// Bits of storage per weight, counted from the tensors held (packed indices, absmax codes,
    /// absmax scales and the f32 offset).
    pub fn bits_per_parameter(&self) -> f64 {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let total =
            bytes(&self.packed) + bytes(&self.absmax_codes) + bytes(&self.absmax_scales) + 4;
        (total * 8) as f64 / self.elem_count() as f64
    }

    /// The block maxima, dequantised: `dynamic[code] · scale + offset`, in f32.
    pub fn block_maxima(&self) -> Result<Tensor> {
        let values = self
            .dynamic
            .index_select(&self.absmax_codes.to_dtype(DType::U32)?, 0)?;
        let blocks = self.absmax_codes.elem_count();
        let padded = blocks.div_ceil(ABSMAX_BLOCK) * ABSMAX_BLOCK;
        let values = values.pad_with_zeros(0, 0, padded - blocks)?;
        let scaled = values
            .reshape((padded / ABSMAX_BLOCK, ABSMAX_BLOCK))?
            .broadcast_mul(&self.absmax_scales.unsqueeze(1)?)?
            .flatten_all()?
            .narrow(0, 0, blocks)?;
        Ok((scaled + f64::from(self.offset))?)
    }

    /// The weight, dequantised to `dtype` on the packed tensors' device:
    /// `nf4[index] · block maximum`, computed in f32.
    pub fn dequantise(&self, dtype: DType) -> Result<Tensor> {
        if self.packed.device().is_cpu() {
            return Ok(self.dequantise_cpu()?.to_dtype(dtype)?);
        }
        self.dequantise_gathered(dtype)
    }

    /// [`Nf4Weight::dequantise`] as candle gathers and a broadcast multiply, for any device.
    fn dequantise_gathered(&self, dtype: DType) -> Result<Tensor> {
        let n = self.elem_count();
        let values = self
            .nibble_pairs
            .index_select(&self.packed.to_dtype(DType::U32)?, 0)?
            .flatten_all()?;
        let blocks = n.div_ceil(BLOCK);
        let values = values
            .narrow(0, 0, n)?
            .pad_with_zeros(0, 0, blocks * BLOCK - n)?
            .reshape((blocks, BLOCK))?
            .broadcast_mul(&self.block_maxima()?.unsqueeze(1)?)?
            .flatten_all()?
            .narrow(0, 0, n)?;
        Ok(values.reshape(self.shape.as_slice())?.to_dtype(dtype)?)
    }

    /// [`Nf4Weight::dequantise`] on the CPU in one parallel pass over the packed bytes (the
    /// tensor composition makes five weight-sized copies, on one thread, at every forward).
    fn dequantise_cpu(&self) -> Result<Tensor> {
        use rayon::prelude::*;
        let mut values = vec![0f32; self.elem_count()];
        self.with_cpu_codes(|codes| {
            values
                .par_chunks_mut(BLOCK)
                .enumerate()
                .for_each(|(i, out)| codes.dequantise(i * BLOCK, out));
            Ok(())
        })?;
        Ok(Tensor::from_vec(
            values,
            self.shape.as_slice(),
            self.packed.device(),
        )?)
    }

    /// Runs `f` on the packed codes and block maxima of a weight on the CPU. The maxima are
    /// computed as [`Nf4Weight::block_maxima`] computes them, in a plain loop: a generation
    /// step asks for them ~200 times, too often for a chain of candle ops.
    pub(crate) fn with_cpu_codes<T>(&self, f: impl FnOnce(CpuCodes) -> Result<T>) -> Result<T> {
        let scales: Vec<f32> = self.absmax_scales.to_vec1()?;
        let dynamic: Vec<f32> = self.dynamic.to_vec1()?;
        let maxima: Vec<f32> = with_cpu_bytes(&self.absmax_codes, |codes| {
            Ok(codes
                .iter()
                .enumerate()
                .map(|(i, &code)| {
                    dynamic[usize::from(code)] * scales[i / ABSMAX_BLOCK] + self.offset
                })
                .collect())
        })?;
        with_cpu_bytes(&self.packed, |bytes| {
            f(CpuCodes {
                bytes,
                maxima: &maxima,
            })
        })
    }
}

/// Runs `f` on the bytes of a contiguous u8 tensor on the CPU.
fn with_cpu_bytes<T>(t: &Tensor, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let (candle_core::Storage::Cpu(candle_core::CpuStorage::U8(bytes)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    else {
        return Err(candle_core::Error::Msg("NF4: packed codes are not CPU bytes".into()).into());
    };
    f(&bytes[start..end])
}

/// Byte -> the NF4 values of its high and low nibble.
const NIBBLE_PAIRS: [[f32; 2]; 256] = {
    let mut pairs = [[0f32; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [NF4_CODE[byte >> 4], NF4_CODE[byte & 15]];
        byte += 1;
    }
    pairs
};

/// A CPU weight's packed codes and dequantised block maxima, for kernels that dequantise
/// parts of it.
#[derive(Clone, Copy)]
pub(crate) struct CpuCodes<'a> {
    bytes: &'a [u8],
    maxima: &'a [f32],
}

impl CpuCodes<'_> {
    /// Writes weights `start .. start + out.len()` (in flattened order) into `out`.
    pub(crate) fn dequantise(&self, start: usize, out: &mut [f32]) {
        let value = |e: usize| {
            let byte = self.bytes[e / 2];
            let nibble = if e.is_multiple_of(2) {
                byte >> 4
            } else {
                byte & 15
            };
            NF4_CODE[usize::from(nibble)] * self.maxima[e / BLOCK]
        };
        let (mut e, mut out) = (start, out);
        // From an even element on, a byte's two values share a block (blocks are even-sized).
        if !e.is_multiple_of(2) {
            let Some((first, rest)) = out.split_first_mut() else {
                return;
            };
            *first = value(e);
            (e, out) = (e + 1, rest);
        }
        while !out.is_empty() {
            let n = (BLOCK - e % BLOCK).min(out.len());
            let max = self.maxima[e / BLOCK];
            let (segment, rest) = out.split_at_mut(n);
            let mut pairs = segment.chunks_exact_mut(2);
            for (pair, &byte) in (&mut pairs).zip(&self.bytes[e / 2..]) {
                let [high, low] = NIBBLE_PAIRS[usize::from(byte)];
                pair[0] = high * max;
                pair[1] = low * max;
            }
            if let [last] = pairs.into_remainder() {
                *last = value(e + n - 1);
            }
            (e, out) = (e + n, rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_code_is_sorted_signed_and_spans_minus_one_to_one() {
        let code = dynamic_code();
        assert!(code.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(code[255], 1.0);
        assert!((code[0] + 0.9928).abs() < 1e-3, "{}", code[0]);
        assert_eq!(code.iter().filter(|&&c| c == 0.0).count(), 1);
        // The smallest magnitudes sit at 10^-6 scale.
        let smallest = code
            .iter()
            .filter(|&&c| c > 0.0)
            .fold(f32::MAX, |a, &b| a.min(b));
        assert!((smallest - 0.55e-6).abs() < 1e-9, "{smallest}");
    }

    #[test]
    fn ties_take_the_lower_code_and_values_snap_to_the_nearest() {
        let mid = (NF4_CODE[7] + NF4_CODE[8]) / 2.0;
        let (q, m) = quantise_blocks(&[1.0, mid, mid + 1e-6, -0.7, 0.0], 64, &NF4_CODE);
        assert_eq!(m, vec![1.0]);
        assert_eq!(q, vec![15, 7, 8, 1, 7]);
    }

    #[test]
    fn the_cpu_pass_dequantises_exactly_as_the_gathers_do() {
        // 201 weights: an odd count and a last block of 9.
        let values: Vec<f32> = (0..201)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let weight = Tensor::from_vec(values, (3, 67), &Device::Cpu).unwrap();
        let q = Nf4Weight::quantise("w", &weight).unwrap();
        let fast: Vec<f32> = q
            .dequantise_cpu()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let gathered: Vec<f32> = q
            .dequantise_gathered(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(fast, gathered);
        assert_eq!(q.dequantise(DType::F32).unwrap().dims(), [3, 67]);
    }

    #[test]
    fn nibbles_pack_first_value_high() {
        assert_eq!(pack_nibbles(&[1, 2, 15]), vec![0x12, 0xF7]);
    }
}
