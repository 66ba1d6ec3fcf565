//! Dequantisation to f32 (spec/model.md §4), bit-identical to gguf-py's
//! `gguf.quants.dequantize`: each formula is evaluated in f32 in the same order as gguf-py
//! (`(d·sc)·q − dmin·m`, `((d·(0.5 + s))·0.25·grid)·sign`, `d_half·v`), with no fused
//! multiply-add.
//! The fixtures in `tests/fixtures/quant/` check this bit for bit.

use super::blocks::{
    as_blocks, BlockIQ2XS, BlockIQ2XXS, BlockIQ3XXS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4K,
    BlockQ5K, BlockQ6K, BlockQ8K, BlockQ8_0, QK8_0, QK_K, QK_MXFP4,
};
use super::float::{bf16_to_f32, f16_to_f32};
use super::grids::{IQ2XS_GRID, IQ3XXS_GRID, KVALUES_MXFP4};
use super::iq2_tables::{IQ2XXS_GRID, KSIGNS_IQ2XS};
use super::{check_data, QuantError};
use crate::gguf::GgmlType;

/// Dequantises `out.len()` elements of type `ty` from `data` into `out`.
///
/// `data` must hold exactly `out.len()` elements (a whole number of blocks). I32 values are
/// converted to the nearest f32.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_data(ty, out.len(), data.len())?;
    dequantize_unchecked(ty, data, out);
    Ok(())
}

/// [`dequantize`] without the length check: converts `min(out, data)` whole elements and
/// leaves the rest of `out` alone. Callers check lengths.
pub(crate) fn dequantize_unchecked(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::I32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32;
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        GgmlType::Q8_0 => dequantize_q8_0(as_blocks(data), out),
        GgmlType::Q2_K => dequantize_q2_k(as_blocks(data), out),
        GgmlType::Q3_K => dequantize_q3_k(as_blocks(data), out),
        GgmlType::Q4_K => dequantize_q4_k(as_blocks(data), out),
        GgmlType::Q5_K => dequantize_q5_k(as_blocks(data), out),
        GgmlType::Q6_K => dequantize_q6_k(as_blocks(data), out),
        GgmlType::IQ2_XXS => dequantize_iq2_xxs(as_blocks(data), out),
        GgmlType::IQ2_XS => dequantize_iq2_xs(as_blocks(data), out),
        GgmlType::IQ3_XXS => dequantize_iq3_xxs(as_blocks(data), out),
        GgmlType::MXFP4 => dequantize_mxfp4(as_blocks(data), out),
        GgmlType::Q8_K => dequantize_q8_k(as_blocks(data), out),
    }
}

/// Q8_0 (spec §4.2): `x = qs·d`.
pub(crate) fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK8_0)) {
        let d = b.d();
        for (o, &q) in o.iter_mut().zip(&b.qs) {
            *o = f32::from(q) * d;
        }
    }
}

/// Q2_K (spec §4.3): element `128n + 32j + l` is `(d·sc)·q − dmin·m` of scale byte
/// `8n + 2j + (l ≥ 16)` and `q = (qs[32n + l] >> 2j) & 3`.
pub(crate) fn dequantize_q2_k(blocks: &[BlockQ2K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d(), b.dmin());
        for (is, o16) in o.chunks_exact_mut(16).enumerate() {
            let (n, j, half) = (is / 8, (is % 8) / 2, is % 2);
            let sc = b.scales[is];
            let dl = d * f32::from(sc & 15);
            let ml = dmin * f32::from(sc >> 4);
            let qs = &b.qs[32 * n + 16 * half..][..16];
            for (o, &q) in o16.iter_mut().zip(qs) {
                *o = dl * f32::from((q >> (2 * j)) & 3) - ml;
            }
        }
    }
}

/// Q4_K (spec §4.4): chunk `c`'s low nibbles use pair `2c`, its high nibbles pair `2c + 1`;
/// `x = (d·sc)·q − dmin·m`.
pub(crate) fn dequantize_q4_k(blocks: &[BlockQ4K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d(), b.dmin());
        for (c, o64) in o.chunks_exact_mut(64).enumerate() {
            let qs = &b.qs[32 * c..][..32];
            let (lo, hi) = o64.split_at_mut(32);
            for (half, (o32, shift)) in [(lo, 0), (hi, 4)].into_iter().enumerate() {
                let (sc, m) = b.scale_min(2 * c + half);
                let dl = d * f32::from(sc);
                let ml = dmin * f32::from(m);
                for (o, &q) in o32.iter_mut().zip(qs) {
                    *o = dl * f32::from((q >> shift) & 15) - ml;
                }
            }
        }
    }
}

/// IQ2_XXS (spec §4.5): `x = ((d·(0.5 + s))·0.25·grid[b_k][j])·(±1)`.
pub(crate) fn dequantize_iq2_xxs(blocks: &[BlockIQ2XXS], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (ib, o32) in o.chunks_exact_mut(32).enumerate() {
            let (a0, a1) = b.sub_block(ib);
            let db = d * (0.5 + (a1 >> 28) as f32) * 0.25;
            for (k, o8) in o32.chunks_exact_mut(8).enumerate() {
                let grid = IQ2XXS_GRID[((a0 >> (8 * k)) & 0xff) as usize];
                let signs = KSIGNS_IQ2XS[((a1 >> (7 * k)) & 0x7f) as usize];
                for (j, o) in o8.iter_mut().enumerate() {
                    let g = ((grid >> (8 * j)) & 0xff) as f32;
                    let sign = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
                    *o = db * g * sign;
                }
            }
        }
    }
}

/// Q3_K (ggml `block_q3_K`): element `128n + 32j + l` is `(d·sc)·(q − 4·!h)` with
/// `q = (qs[32n + l] >> 2j) & 3`, `h = (hmask[l] >> (4n + j)) & 1` and the scale of sub-block
/// `8n + 2j + (l ≥ 16)`.
pub(crate) fn dequantize_q3_k(blocks: &[BlockQ3K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (is, o16) in o.chunks_exact_mut(16).enumerate() {
            let (n, j, half) = (is / 8, (is % 8) / 2, is % 2);
            let dl = d * f32::from(b.scale(is));
            for (k, o) in o16.iter_mut().enumerate() {
                let l = 16 * half + k;
                let q = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i8;
                let h = (b.hmask[l] >> (4 * n + j)) & 1;
                *o = dl * f32::from(q - if h == 0 { 4 } else { 0 });
            }
        }
    }
}

/// Q5_K (ggml `block_q5_K`): sub-block `j` is `(d·sc_j)·q − dmin·m_j` with the low nibble (even `j`)
/// or high nibble (odd `j`) of `qs[32·(j/2) + l]` and bit `j` of `qh[l]` as the fifth bit.
pub(crate) fn dequantize_q5_k(blocks: &[BlockQ5K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d(), b.dmin());
        for (j, o32) in o.chunks_exact_mut(32).enumerate() {
            let (sc, m) = b.scale_min(j);
            let dl = d * f32::from(sc);
            let ml = dmin * f32::from(m);
            let (qs, shift) = (&b.qs[32 * (j / 2)..][..32], 4 * (j % 2));
            for (l, o) in o32.iter_mut().enumerate() {
                let q = ((qs[l] >> shift) & 15) | (((b.qh[l] >> j) & 1) << 4);
                *o = dl * f32::from(q) - ml;
            }
        }
    }
}

/// Q6_K (ggml `block_q6_K`): element `128n + 32j + l` is `(d·sc)·(q − 32)` with
/// `q = (ql[64n + 32·(j % 2) + l] >> 4·(j / 2)) & 15 | ((qh[32n + l] >> 2j) & 3) << 4` and the
/// scale `scales[8n + 2j + (l ≥ 16)]`.
pub(crate) fn dequantize_q6_k(blocks: &[BlockQ6K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (is, o16) in o.chunks_exact_mut(16).enumerate() {
            let (n, j, half) = (is / 8, (is % 8) / 2, is % 2);
            let dl = d * f32::from(b.scales[is]);
            for (k, o) in o16.iter_mut().enumerate() {
                let l = 16 * half + k;
                let lo = (b.ql[64 * n + 32 * (j % 2) + l] >> (4 * (j / 2))) & 15;
                let hi = (b.qh[32 * n + l] >> (2 * j)) & 3;
                let q = (lo | (hi << 4)) as i8 - 32;
                *o = dl * f32::from(q);
            }
        }
    }
}

/// IQ2_XS (ggml `block_iq2_xs`): group `g` of 8 is `((d·(0.5 + s))·0.25·grid[qs[g] & 511][j])·(±1)`
/// with the signs `ksigns_iq2xs[qs[g] >> 9]` and the scale of weights `16·(g/2)..`.
pub(crate) fn dequantize_iq2_xs(blocks: &[BlockIQ2XS], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (g, o8) in o.chunks_exact_mut(8).enumerate() {
            let db = d * (0.5 + f32::from(b.scale(g / 2))) * 0.25;
            let (gi, si) = b.group(g);
            let grid = IQ2XS_GRID[gi];
            let signs = KSIGNS_IQ2XS[si];
            for (j, o) in o8.iter_mut().enumerate() {
                let v = ((grid >> (8 * j)) & 0xff) as f32;
                let sign = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
                *o = db * v * sign;
            }
        }
    }
}

/// IQ3_XXS (ggml `block_iq3_xxs`): weight `8k + 4h + j` of sub-block `ib` is
/// `((d·(0.5 + s))·0.5·grid[qs[8ib + 2k + h]][j])·(±1)`, the signs `ksigns_iq2xs` of bits
/// `7k..7k+6` of the sub-block's word `a`, `s = a >> 28`.
pub(crate) fn dequantize_iq3_xxs(blocks: &[BlockIQ3XXS], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (ib, o32) in o.chunks_exact_mut(32).enumerate() {
            let a = b.aux(ib);
            let db = d * (0.5 + (a >> 28) as f32) * 0.5;
            for (k, o8) in o32.chunks_exact_mut(8).enumerate() {
                let signs = KSIGNS_IQ2XS[((a >> (7 * k)) & 0x7f) as usize];
                for (j, o) in o8.iter_mut().enumerate() {
                    let gi = b.qs[8 * ib + 2 * k + j / 4];
                    let v = ((IQ3XXS_GRID[usize::from(gi)] >> (8 * (j % 4))) & 0xff) as f32;
                    let sign = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
                    *o = db * v * sign;
                }
            }
        }
    }
}

/// MXFP4 (ggml `block_mxfp4`): `x = d_half·v` with `v = KVALUES_MXFP4[code]`; codes of elements 0..16
/// are the low nibbles of `qs`, of 16..32 the high nibbles.
pub(crate) fn dequantize_mxfp4(blocks: &[BlockMXFP4], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_MXFP4)) {
        let d = b.d_half();
        let (lo, hi) = o.split_at_mut(QK_MXFP4 / 2);
        for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b.qs) {
            *l = d * f32::from(KVALUES_MXFP4[usize::from(q & 15)]);
            *h = d * f32::from(KVALUES_MXFP4[usize::from(q >> 4)]);
        }
    }
}

/// Q8_K (spec §4.6): `x = d·qs`.
pub(crate) fn dequantize_q8_k(blocks: &[BlockQ8K], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (o, &q) in o.iter_mut().zip(&b.qs) {
            *o = f32::from(q) * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i32_converts_to_nearest_f32() {
        let data: Vec<u8> = [7i32, -3, 16_777_217]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = [0.0; 3];
        dequantize(GgmlType::I32, &data, &mut out).unwrap();
        assert_eq!(out, [7.0, -3.0, 16_777_216.0]);
    }

    #[test]
    fn rejects_partial_block_and_wrong_byte_count() {
        let mut out = vec![0.0; 48];
        let err = dequantize(GgmlType::Q8_0, &[0; 34], &mut out).unwrap_err();
        assert!(matches!(err, QuantError::PartialBlock { .. }), "{err}");
        let mut out = vec![0.0; 32];
        let err = dequantize(GgmlType::Q8_0, &[0; 35], &mut out).unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::DataLength {
                    expected: 34,
                    found: 35,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn q2_k_element_uses_its_scale_nibbles() {
        let mut b = <BlockQ2K as bytemuck::Zeroable>::zeroed();
        b.d = half::f16::from_f32(0.5).to_bits().to_le_bytes();
        b.dmin = half::f16::from_f32(0.25).to_bits().to_le_bytes();
        // Element 128 + 32·2 + 17 = 209: byte qs[32 + 17], shift 4, scale byte 8 + 4 + 1 = 13.
        b.qs[49] = 0b11 << 4;
        b.scales[13] = (2 << 4) | 3;
        let mut out = vec![0.0; 256];
        dequantize_q2_k(&[b], &mut out);
        assert_eq!(out[209], 0.5 * 3.0 * 3.0 - 0.25 * 2.0);
        assert_eq!(out[208], -0.5);
    }
}
