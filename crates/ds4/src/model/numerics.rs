//! Scalar numerics of the forward pass (spec/model.md §0, §7): RMSNorm, the activation
//! functions, and the roundings that simulate the official model's storage formats — FP8 E4M3
//! for attention KV rows, Hadamard + FP4 E2M1 for indexer rows and queries, f16 for cache rows.
//! Pure functions on f32 slices; no weights, no state.

/// `x · w / sqrt(mean(x²) + eps)` in place (`w = None`: no weight). The sum of squares is
/// accumulated in f64 and the scale applied in f32, as ds4's CPU reference does (spec §0).
pub fn rms_norm(x: &mut [f32], w: Option<&[f32]>, eps: f32) {
    let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let n = x.len().max(1) as f64;
    let scale = (1.0 / (ss / n + f64::from(eps)).sqrt()) as f32;
    match w {
        Some(w) => x.iter_mut().zip(w).for_each(|(v, &g)| *v = *v * scale * g),
        None => x.iter_mut().for_each(|v| *v *= scale),
    }
}

/// Logistic sigmoid.
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// `z·σ(z)`.
pub fn silu(z: f32) -> f32 {
    z * sigmoid(z)
}

/// `log(1 + e^z)`, with ds4's cut-offs: `z` above 20 and `e^z` below −20 (spec §0).
pub fn softplus(z: f32) -> f32 {
    if z > 20.0 {
        z
    } else if z < -20.0 {
        z.exp()
    } else {
        z.exp().ln_1p()
    }
}

/// Round every value to the nearest f16 and back (cache-row storage, spec §7.3).
pub fn round_f16(x: &mut [f32]) {
    x.iter_mut()
        .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
}

/// The largest finite E4M3FN value.
const E4M3_MAX: f32 = 448.0;
/// FP8 block width along the row (spec §7.1).
const FP8_BLOCK: usize = 64;
/// Floor of a block's absolute maximum before the scale is taken (spec §7.1).
const FP8_AMAX_FLOOR: f32 = 1e-4;

/// Round `v` (|v| ≤ 448) to the nearest E4M3FN value, ties to the even code.
fn e4m3_round(v: f32) -> f32 {
    let a = v.abs();
    if a == 0.0 {
        return v;
    }
    // Normal numbers have 3 mantissa bits: step 2^(e-3). Exponent field 0 is subnormal with
    // step 2^-9 (the smallest normal is 2^-6).
    let e = a.log2().floor().max(-6.0);
    let step = (e - 3.0).exp2();
    // Within one binade the code parity equals the parity of a/step, so ties-to-even on the
    // quotient is ties-to-even on the code.
    let r = (a / step).round_ties_even() * step;
    r.min(E4M3_MAX).copysign(v)
}

/// FP8 E4M3 round trip with power-of-two block scales on `x` (the non-RoPE dims of a KV row),
/// in blocks of 64 (spec §7.1). A last partial block is scaled on its own.
pub fn fp8_e4m3_sim(x: &mut [f32]) {
    for block in x.chunks_mut(FP8_BLOCK) {
        let amax = block
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(FP8_AMAX_FLOOR);
        let scale = (amax / E4M3_MAX).log2().ceil().exp2();
        for v in block.iter_mut() {
            *v = e4m3_round((*v / scale).clamp(-E4M3_MAX, E4M3_MAX)) * scale;
        }
    }
}

/// The eight non-negative E2M1 values, indexed by code.
const E2M1_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
/// FP4 block width (spec §7.2).
const FP4_BLOCK: usize = 32;
/// Floor of the FP4 block amax (spec §7.2).
const FP4_AMAX_FLOOR: f32 = 7.05e-38;

/// Nearest E2M1 value to `a ≥ 0` (a ≤ 6), ties to the even code.
fn e2m1_round(a: f32) -> f32 {
    let mut best = 0usize;
    for (code, &val) in E2M1_VALUES.iter().enumerate().skip(1) {
        let d_best = (a - E2M1_VALUES[best]).abs();
        let d = (a - val).abs();
        if d < d_best || (d == d_best && code % 2 == 0) {
            best = code;
        }
    }
    E2M1_VALUES[best]
}

/// FP4 E2M1 round trip with power-of-two scales in blocks of 32 (spec §7.2).
pub fn fp4_e2m1_sim(x: &mut [f32]) {
    for block in x.chunks_mut(FP4_BLOCK) {
        let amax = block
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(FP4_AMAX_FLOOR);
        let scale = (amax / 6.0).log2().ceil().exp2();
        for v in block.iter_mut() {
            let q = (*v / scale).clamp(-6.0, 6.0);
            *v = e2m1_round(q.abs()).copysign(q) * scale;
        }
    }
}

/// Orthonormal Walsh–Hadamard transform in place: Sylvester butterflies in natural order,
/// scaled by `1/sqrt(n)` (spec §7.2). `x.len()` must be a power of two (the indexer head
/// width, checked by the config).
pub fn hadamard(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let s = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= s);
}

/// The indexer's quantisation-aware simulation of one head or row: Hadamard then FP4
/// (spec §7.2).
pub fn indexer_qat_sim(x: &mut [f32]) {
    hadamard(x);
    fp4_e2m1_sim(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_rounds_to_representable_values_ties_even() {
        // 1 + 1/16 lies halfway between 1 (code m=0) and 1.125 (m=1): even code wins.
        assert_eq!(e4m3_round(1.0625), 1.0);
        // 1.1875 lies between 1.125 (m=1) and 1.25 (m=2): even code m=2.
        assert_eq!(e4m3_round(1.1875), 1.25);
        // Subnormal step is 2^-9.
        assert_eq!(e4m3_round(3.0 * 2f32.powi(-10)), 2.0 * 2f32.powi(-9));
        assert_eq!(e4m3_round(448.0), 448.0);
        assert_eq!(e4m3_round(-0.3), -0.3125 + 0.0);
    }

    #[test]
    fn fp8_sim_uses_power_of_two_block_scale() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.37).collect();
        let orig = x.clone();
        fp8_e4m3_sim(&mut x);
        let amax = orig.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = (amax / 448.0).log2().ceil().exp2();
        for (a, b) in x.iter().zip(&orig) {
            let q = a / scale;
            assert_eq!(
                e4m3_round(q),
                q,
                "value {a} is not an e4m3 multiple of {scale}"
            );
            assert!((a - b).abs() <= b.abs() * 0.0625 + scale * 2f32.powi(-9));
        }
    }

    #[test]
    fn e2m1_ties_go_to_even_code() {
        assert_eq!(e2m1_round(0.25), 0.0);
        assert_eq!(e2m1_round(0.75), 1.0);
        assert_eq!(e2m1_round(1.25), 1.0);
        assert_eq!(e2m1_round(1.75), 2.0);
        assert_eq!(e2m1_round(2.5), 2.0);
        assert_eq!(e2m1_round(3.5), 4.0);
        assert_eq!(e2m1_round(5.0), 4.0);
        assert_eq!(e2m1_round(5.5), 6.0);
    }

    #[test]
    fn hadamard_is_orthonormal_and_self_inverse() {
        let mut x: Vec<f32> = (0..128).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let orig = x.clone();
        hadamard(&mut x);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3 * n0);
        hadamard(&mut x);
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() < 1e-4);
        }
    }

    #[test]
    fn rms_norm_matches_definition() {
        let mut x = vec![1.0f32, -2.0, 3.0, 0.5];
        let w = [1.0f32, 2.0, 0.5, 1.0];
        let ms = (1.0 + 4.0 + 9.0 + 0.25) / 4.0;
        let want: Vec<f32> = [1.0f32, -2.0, 3.0, 0.5]
            .iter()
            .zip(&w)
            .map(|(v, g)| v / (ms + 1e-6f32).sqrt() * g)
            .collect();
        rms_norm(&mut x, Some(&w), 1e-6);
        for (a, b) in x.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
