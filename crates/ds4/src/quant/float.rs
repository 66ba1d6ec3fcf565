//! Scalar f16 and bf16 conversions (spec/model.md §4.1), bit-exact with the numpy/gguf-py
//! conversions our fixtures come from: f16 → f32 is exact and keeps NaN payloads (signalling
//! NaNs stay signalling); f32 → f16 rounds to nearest even, overflows to ±inf, and maps a NaN
//! whose payload would vanish to 0x7c01 (numpy's `npy_floatbits_to_halfbits`); f32 → bf16
//! rounds to nearest even after quieting NaNs (gguf-py `BF16.quantize_blocks`).

/// IEEE binary16 bits → f32, exactly (subnormals included; NaN payload kept).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = (u32::from(h) & 0x8000) << 16;
    let exp = u32::from(h >> 10) & 0x1f;
    let man = u32::from(h) & 0x3ff;
    if exp == 0x1f {
        return f32::from_bits(sign | 0x7f80_0000 | (man << 13));
    }
    if exp == 0 {
        // man · 2^-24 is exact in f32; covers ±0.
        let v = man as f32 * (1.0 / 16_777_216.0);
        return if sign != 0 { -v } else { v };
    }
    f32::from_bits(sign | ((exp + 112) << 23) | (man << 13))
}

/// f32 → IEEE binary16 bits, round to nearest even (as numpy's `astype(np.float16)`).
pub fn f32_to_f16(x: f32) -> u16 {
    let f = x.to_bits();
    let sign = ((f >> 16) & 0x8000) as u16;
    let abs = f & 0x7fff_ffff;
    if abs >= 0x7f80_0000 {
        if abs == 0x7f80_0000 {
            return sign | 0x7c00;
        }
        let h = 0x7c00 | ((abs & 0x007f_ffff) >> 13) as u16;
        return sign | if h == 0x7c00 { 0x7c01 } else { h };
    }
    if abs >= 0x477f_f000 {
        // ≥ 65520 rounds (ties to even) past 65504.
        return sign | 0x7c00;
    }
    if abs >= 0x3880_0000 {
        // Normal f16: rebias the exponent, round the 13 dropped mantissa bits.
        let mut h = ((abs >> 13) - (112 << 10)) as u16;
        let rem = abs & 0x1fff;
        if rem > 0x1000 || (rem == 0x1000 && h & 1 == 1) {
            h += 1;
        }
        return sign | h;
    }
    if abs <= 0x3300_0000 {
        // ≤ 2^-25 (half the smallest subnormal, a tie that goes to even 0).
        return sign;
    }
    // Subnormal f16: value / 2^-24 = m >> shift, rounded to nearest even.
    let e = abs >> 23;
    let m = (abs & 0x007f_ffff) | 0x0080_0000;
    let shift = 126 - e;
    let mut h = (m >> shift) as u16;
    let rem = m & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    if rem > half || (rem == half && h & 1 == 1) {
        h += 1;
    }
    sign | h
}

/// bfloat16 bits → f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// f32 → bfloat16 bits: NaNs forced quiet, then round to nearest even (ggml
/// `ggml_compute_fp32_to_bf16`, gguf-py `BF16.quantize_blocks`).
pub fn f32_to_bf16(x: f32) -> u16 {
    let mut n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trip_is_identity_for_every_non_nan_pattern() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f32_to_f16(f) & 0x7fff > 0x7c00, "{h:#06x} lost its NaN");
                continue;
            }
            assert_eq!(f32_to_f16(f), h, "{h:#06x} -> {f:e}");
        }
    }

    #[test]
    fn f16_conversions_agree_with_half_crate_on_finite_values() {
        // A second implementation as a cross-check; the fixtures are the reference.
        let mut x = 1.0e-9f32;
        while x < 1.0e6 {
            for v in [x, -x, x * 1.000_061, x * 0.999_97] {
                assert_eq!(f32_to_f16(v), half::f16::from_f32(v).to_bits(), "{v:e}");
            }
            x *= 1.013;
        }
    }

    #[test]
    fn bf16_rounds_ties_to_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }
}
