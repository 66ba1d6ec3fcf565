//! Random valid blocks for tests and benchmarks: weights with realistic structure for every
//! format ds4 reads, without a model file.

use rand::Rng;

use super::blocks::{
    BlockIQ2XS, BlockIQ2XXS, BlockIQ3XXS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K,
    BlockQ6K,
};
use super::float::f32_to_f16;
use super::quantize::{quantize, quantize_row_q8_k};
use super::{bytes_for, QuantError};
use crate::gguf::GgmlType;

/// `n_elems` elements of type `ty` whose dequantised values have magnitude about `scale`.
///
/// K-quants, i-quants and MXFP4: random bytes (every bit pattern is a valid quant, scale or
/// grid index) with the f16 super-scales (MXFP4: the E8M0 exponent) set so that values are
/// about `scale`. F32, F16, BF16, Q8_0 and Q8_K: [`quantize`] of random values of standard
/// deviation `scale`. I32 is not supported.
pub fn random_blocks(
    ty: GgmlType,
    n_elems: usize,
    scale: f32,
    rng: &mut impl Rng,
) -> Result<Vec<u8>, QuantError> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(QuantError::BadScale { scale });
    }
    let n_bytes = bytes_for(ty, n_elems)?;
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q8_K => {
            let x: Vec<f32> = (0..n_elems).map(|_| scale * normalish(rng)).collect();
            if ty == GgmlType::Q8_K {
                quantize_row_q8_k(&x)
            } else {
                quantize(ty, &x)
            }
        }
        GgmlType::I32 => Err(QuantError::Unsupported {
            ty,
            op: "random_blocks",
        }),
        _ => {
            let mut out = vec![0u8; n_bytes];
            rng.fill_bytes(&mut out);
            for b in out.chunks_exact_mut(ty.block_bytes()) {
                set_block_scales(ty, b, scale, rng);
            }
            Ok(out)
        }
    }
}

/// Sets the scale fields of one random block of `ty` so that its values are about `scale`
/// (the expected magnitude of the rest of the block's formula is in each comment).
pub(crate) fn set_block_scales(ty: GgmlType, b: &mut [u8], scale: f32, rng: &mut impl Rng) {
    use std::mem::offset_of;
    let mut put = |off: usize, s: f32| b[off..off + 2].copy_from_slice(&f16_scale(rng, s));
    match ty {
        // E[sc·q] ≈ 7.5 · 1.5 ≈ 11; mins up to 15·dmin.
        GgmlType::Q2_K => {
            put(offset_of!(BlockQ2K, d), scale / 11.0);
            put(offset_of!(BlockQ2K, dmin), scale / 15.0);
        }
        // E[|sc − 32|·|q − 4·!h|] ≈ 16 · 2.
        GgmlType::Q3_K => put(offset_of!(BlockQ3K, d), scale / 32.0),
        // E[sc·q] ≈ 31.5 · 7.5 ≈ 236; mins up to 63·dmin.
        GgmlType::Q4_K => {
            put(offset_of!(BlockQ4K, d), scale / 236.0);
            put(offset_of!(BlockQ4K, dmin), scale / 126.0);
        }
        // E[sc·q] ≈ 31.5 · 15.5 ≈ 490; mins up to 63·dmin.
        GgmlType::Q5_K => {
            put(offset_of!(BlockQ5K, d), scale / 490.0);
            put(offset_of!(BlockQ5K, dmin), scale / 126.0);
        }
        // E[|sc|·|q − 32|] ≈ 64 · 16.
        GgmlType::Q6_K => put(offset_of!(BlockQ6K, d), scale / 1024.0),
        // E[(0.5 + s)·0.25·grid] ≈ 8 · 0.25 · 20 = 40.
        GgmlType::IQ2_XXS => put(offset_of!(BlockIQ2XXS, d), scale / 40.0),
        GgmlType::IQ2_XS => put(offset_of!(BlockIQ2XS, d), scale / 40.0),
        // E[(0.5 + s)·0.5·grid] ≈ 8 · 0.5 · 30 = 120.
        GgmlType::IQ3_XXS => put(offset_of!(BlockIQ3XXS, d), scale / 120.0),
        // E[|v|] = 4.5 (doubled E2M1 codes): 2^(e − 128) ≈ scale / 4.5, jittered by ±1.
        GgmlType::MXFP4 => {
            let e = 128.0 + (scale / 4.5).log2().round() + f32::from(rng.random_range(-1i8..=1));
            b[offset_of!(BlockMXFP4, e)] = e.clamp(0.0, 254.0) as u8;
        }
        _ => {}
    }
}

/// An f16 scale of about `s` (×0.5..1.5), as little-endian bytes.
fn f16_scale(rng: &mut impl Rng, s: f32) -> [u8; 2] {
    f32_to_f16(s * rng.random_range(0.5f32..1.5)).to_le_bytes()
}

/// A sample of mean 0, variance 1 (scaled sum of three uniforms).
fn normalish(rng: &mut impl Rng) -> f32 {
    let s: f32 = rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>();
    (s - 1.5) * 2.0
}

/// `n` f32 samples of standard deviation about 1 (for tests).
#[cfg(test)]
pub(crate) fn random_f32(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..n).map(|_| normalish(rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;
    use rand::SeedableRng;

    #[test]
    fn random_blocks_have_magnitude_near_scale() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q8_K,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::IQ2_XXS,
            GgmlType::IQ2_XS,
            GgmlType::IQ3_XXS,
            GgmlType::MXFP4,
        ] {
            let n = 4096;
            let data = random_blocks(ty, n, 0.5, &mut rng).unwrap();
            let mut out = vec![0.0; n];
            dequantize(ty, &data, &mut out).unwrap();
            let rms = (out.iter().map(|v| v * v).sum::<f32>() / n as f32).sqrt();
            assert!(rms > 0.1 && rms < 2.5, "{ty}: rms {rms}");
            assert!(out.iter().all(|v| v.is_finite()), "{ty}");
        }
    }

    #[test]
    fn random_blocks_reject_bad_input() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert!(random_blocks(GgmlType::Q2_K, 100, 1.0, &mut rng).is_err());
        assert!(random_blocks(GgmlType::Q2_K, 256, f32::NAN, &mut rng).is_err());
        assert!(random_blocks(GgmlType::I32, 4, 1.0, &mut rng).is_err());
    }
}
