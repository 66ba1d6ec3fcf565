//! Random valid blocks for tests and benchmarks: weights with realistic structure for every
//! format ds4 reads, without a model file.

use rand::Rng;

use super::blocks::{BlockIQ2XXS, BlockQ2K, BlockQ4K};
use super::float::f32_to_f16;
use super::quantize::{quantize, quantize_row_q8_k};
use super::{bytes_for, QuantError};
use crate::gguf::GgmlType;

/// `n_elems` elements of type `ty` whose dequantised values have magnitude about `scale`.
///
/// Q2_K, Q4_K and IQ2_XXS: random bytes (every bit pattern is a valid quant, scale or grid
/// index) with the f16 super-scales set so that values are about `scale`. F32, F16, BF16,
/// Q8_0 and Q8_K: [`quantize`] of random values of standard deviation `scale`. I32 is not
/// supported.
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
        GgmlType::Q2_K => {
            let mut out = vec![0u8; n_bytes];
            rng.fill_bytes(&mut out);
            for b in out.chunks_exact_mut(std::mem::size_of::<BlockQ2K>()) {
                // E[sc·q] ≈ 7.5 · 1.5 ≈ 11; mins up to 15·dmin.
                b[80..82].copy_from_slice(&f16_scale(rng, scale / 11.0));
                b[82..84].copy_from_slice(&f16_scale(rng, scale / 15.0));
            }
            Ok(out)
        }
        GgmlType::Q4_K => {
            let mut out = vec![0u8; n_bytes];
            rng.fill_bytes(&mut out);
            for b in out.chunks_exact_mut(std::mem::size_of::<BlockQ4K>()) {
                // E[sc·q] ≈ 31.5 · 7.5 ≈ 236; mins up to 63·dmin.
                b[0..2].copy_from_slice(&f16_scale(rng, scale / 236.0));
                b[2..4].copy_from_slice(&f16_scale(rng, scale / 126.0));
            }
            Ok(out)
        }
        GgmlType::IQ2_XXS => {
            let mut out = vec![0u8; n_bytes];
            rng.fill_bytes(&mut out);
            for b in out.chunks_exact_mut(std::mem::size_of::<BlockIQ2XXS>()) {
                // E[(0.5 + s)·0.25·grid] ≈ 8 · 0.25 · 20 = 40.
                b[0..2].copy_from_slice(&f16_scale(rng, scale / 40.0));
            }
            Ok(out)
        }
        GgmlType::I32 => Err(QuantError::Unsupported {
            ty,
            op: "random_blocks",
        }),
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
            GgmlType::Q4_K,
            GgmlType::IQ2_XXS,
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
