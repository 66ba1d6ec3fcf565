//! Quantisation: the formats gguf-py can write (F32, F16, BF16, Q8_0), bit-identical to
//! `gguf.quants.quantize`, and Q8_K activation quantisation (spec/model.md §4.6, ggml's
//! `quantize_row_q8_K_ref`).

use super::blocks::{BlockQ8K, QK8_0, QK_K};
use super::float::{f32_to_bf16, f32_to_f16};
use super::{bytes_for, QuantError};
use crate::gguf::GgmlType;

/// Quantises `x` to `ty` (F32, F16, BF16 or Q8_0), bit-identical to gguf-py's
/// `gguf.quants.quantize`. `x.len()` must be a whole number of blocks.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, QuantError> {
    let mut out = Vec::with_capacity(bytes_for(ty, x.len())?);
    match ty {
        GgmlType::F32 => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|&v| out.extend(f32_to_f16(v).to_le_bytes())),
        GgmlType::BF16 => x
            .iter()
            .for_each(|&v| out.extend(f32_to_bf16(v).to_le_bytes())),
        GgmlType::Q8_0 => x
            .chunks_exact(QK8_0)
            .for_each(|b| quantize_block_q8_0(b, &mut out)),
        _ => return Err(QuantError::Unsupported { ty, op: "quantize" }),
    }
    Ok(out)
}

/// Q8_0 (spec §4.2), as gguf-py `Q8_0.quantize_blocks`: `d = amax/127`, `q = round(x/d)` with
/// halves away from zero, `d` stored as f16 (rounded after computing `q`).
fn quantize_block_q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    out.extend(f32_to_f16(d).to_le_bytes());
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// Quantises a row of activations to Q8_K blocks (spec §4.6): per 256 values, `max` is the
/// signed value of largest magnitude, `iscale = −127/max`, `q = round_ties_even(iscale·x)`
/// clamped to [−128, 127], `d = 1/iscale`, and `bsums[k] = Σ q[16k..16k+16]`. An all-zero block
/// gets `d = 0`. `x.len()` must be a multiple of 256.
pub fn quantize_row_q8_k(x: &[f32]) -> Result<Vec<u8>, QuantError> {
    let mut out = Vec::with_capacity(bytes_for(GgmlType::Q8_K, x.len())?);
    for xb in x.chunks_exact(QK_K) {
        let mut block = <BlockQ8K as bytemuck::Zeroable>::zeroed();
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax != 0.0 {
            let iscale = -127.0 / max;
            for (q, &v) in block.qs.iter_mut().zip(xb) {
                *q = (iscale * v).round_ties_even().clamp(-128.0, 127.0) as i8;
            }
            for (k, qs) in block.qs.chunks_exact(16).enumerate() {
                let s: i16 = qs.iter().map(|&q| i16::from(q)).sum();
                block.bsums[2 * k..2 * k + 2].copy_from_slice(&s.to_le_bytes());
            }
            block.d = (1.0 / iscale).to_le_bytes();
        }
        out.extend_from_slice(bytemuck::bytes_of(&block));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_types_are_rejected() {
        for ty in [
            GgmlType::Q2_K,
            GgmlType::Q4_K,
            GgmlType::IQ2_XXS,
            GgmlType::I32,
        ] {
            let err = quantize(ty, &[0.0; 256]).unwrap_err();
            assert!(matches!(err, QuantError::Unsupported { .. }), "{ty}: {err}");
        }
        let err = quantize(GgmlType::Q8_0, &[0.0; 33]).unwrap_err();
        assert!(matches!(err, QuantError::PartialBlock { .. }));
    }

    #[test]
    fn q8_k_uses_signed_max_and_sums_per_16() {
        let mut x = vec![0.5f32; 256];
        x[3] = -2.0;
        let b = quantize_row_q8_k(&x).unwrap();
        let blk: &BlockQ8K = bytemuck::from_bytes(&b);
        // iscale = -127 / -2 = 63.5; 0.5 · 63.5 = 31.75 → 32; -2 · 63.5 = -127.
        assert_eq!(blk.d(), 1.0 / 63.5);
        assert_eq!(blk.qs[3], -127);
        assert_eq!(blk.qs[0], 32);
        assert_eq!(blk.bsum(0), 15 * 32 - 127);
        assert_eq!(blk.bsum(15), 16 * 32);
    }

    #[test]
    fn q8_k_of_zeros_has_zero_scale() {
        let b = quantize_row_q8_k(&[0.0; 512]).unwrap();
        assert_eq!(b.len(), 2 * 292);
        assert!(b.iter().all(|&v| v == 0));
    }
}
