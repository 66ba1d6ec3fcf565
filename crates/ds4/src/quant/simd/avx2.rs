//! AVX2 + FMA + F16C kernels: one weight row (any stored type) · f32 activations, and the f32
//! dot (spec/model.md §4). Each dequantises 8 weights into a register exactly as `dequant.rs`
//! does (same f32 operations in the same order, no FMA in the dequantisation) and FMAs them
//! into four 8-lane accumulators: element `i` goes to accumulator `(i / 8) % 4`, lane `i % 8`,
//! in increasing `i`; the four are summed at the end. That is the order of [`Avx2::dot_f32`]'s
//! main loop, so a fused row dot equals "dequantise the row, then `dot_f32`" bit for bit, and
//! `matvec` equals `matmul` on this path.
//!
//! The scalar references are in `super::super::dot`; the tests below compare against them.
//! Only [`Avx2::detect`] makes the token that lets safe code reach these kernels.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::super::blocks::{as_blocks, BlockIQ2XXS, BlockQ2K, BlockQ4K, BlockQ8_0, QK8_0, QK_K};
use super::super::dequant::dequantize_unchecked;
use super::super::dot::dot_row_ref;
use super::super::float::{bf16_to_f32, f16_to_f32};
use super::super::iq2_tables::{IQ2XXS_GRID_F32, KSIGNS_MASK};
use crate::gguf::GgmlType;

/// Proof that this CPU has AVX2, FMA and F16C; only [`Avx2::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2(());

impl Avx2 {
    /// The token, if the CPU has AVX2, FMA and F16C.
    pub(super) fn detect() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        ok.then_some(Avx2(()))
    }

    /// `Σ a[i]·b[i]` over `min(a.len(), b.len())` elements.
    pub(super) fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: `self` exists only if `detect` found avx2, fma and f16c on this CPU.
        unsafe { dot_plain_f32(bytemuck::cast_slice(&a[..n]), &b[..n]) }
    }

    /// One weight row of type `ty` · `x`; `row` holds `x.len()` elements (checked by the
    /// caller). Every kernel bounds its loads by the slices it is given, so a short `row` or
    /// `x` only shortens the sum.
    pub(super) fn dot_row(self, ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
        // SAFETY (all calls): `self` exists only if `detect` found avx2, fma and f16c.
        match ty {
            GgmlType::F32 => unsafe { dot_plain_f32(row, x) },
            GgmlType::F16 => unsafe { dot_plain_f16(row, x) },
            GgmlType::BF16 => unsafe { dot_plain_bf16(row, x) },
            GgmlType::Q8_0 => unsafe { dot_q8_0(as_blocks(row), x) },
            GgmlType::Q2_K => unsafe { dot_q2_k(as_blocks(row), x) },
            GgmlType::Q4_K => unsafe { dot_q4_k(as_blocks(row), x) },
            GgmlType::IQ2_XXS => unsafe { dot_iq2_xxs(as_blocks(row), x) },
            GgmlType::Q3_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::IQ2_XS
            | GgmlType::IQ3_XXS
            | GgmlType::MXFP4 => unsafe { dot_dequant(ty, row, x) },
            GgmlType::I32 | GgmlType::Q8_K => dot_row_ref(ty, row, x),
        }
    }
}

/// Expands `$body` four times with `$k` bound to 0, 1, 2, 3, so that accumulator indices are
/// constants and the four accumulators live in registers (a `for k in 0..4` loop nested in
/// other loops is not always unrolled).
macro_rules! unroll4 {
    (|$k:ident| $body:block) => {{
        {
            let $k: usize = 0;
            $body
        }
        {
            let $k: usize = 1;
            $body
        }
        {
            let $k: usize = 2;
            $body
        }
        {
            let $k: usize = 3;
            $body
        }
    }};
}

/// Sums the four accumulators: `(a0 + a1) + (a2 + a3)`, then the 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
fn finish(acc: [__m256; 4]) -> f32 {
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_movehdup_ps(h));
    _mm_cvtss_f32(h)
}

/// f16 bytes → f32 with F16C (exact, as `f16_to_f32` for every non-NaN value).
#[target_feature(enable = "avx2,fma,f16c")]
fn f16c(h: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
        u16::from_le_bytes(h),
    ))))
}

/// Plain element types: `$load` makes 8 f32 lanes from the bytes at `$p`, `$scalar` one f32
/// from the bytes `$b` (for the tail). Main loop 32 elements (4 accumulators), then 8 at a time
/// into accumulator 0, then the scalar tail added to the reduced sum.
macro_rules! plain_kernel {
    ($(#[$doc:meta])* $name:ident, $size:expr, |$p:ident| $load:expr, |$b:ident| $scalar:expr) => {
        $(#[$doc])*
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(w: &[u8], x: &[f32]) -> f32 {
            let n = (w.len() / $size).min(x.len());
            let (wp, xp) = (w.as_ptr(), x.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                unroll4!(|k| {
                    let o = i + 8 * k;
                    // SAFETY: o + 8 ≤ n; `w` holds n·$size bytes and `x` n floats.
                    let (wv, xv) = unsafe {
                        let $p = wp.add(o * $size);
                        ($load, _mm256_loadu_ps(xp.add(o)))
                    };
                    acc[k] = _mm256_fmadd_ps(wv, xv, acc[k]);
                });
                i += 32;
            }
            while i + 8 <= n {
                // SAFETY: i + 8 ≤ n, as above.
                let (wv, xv) = unsafe {
                    let $p = wp.add(i * $size);
                    ($load, _mm256_loadu_ps(xp.add(i)))
                };
                acc[0] = _mm256_fmadd_ps(wv, xv, acc[0]);
                i += 8;
            }
            let mut s = finish(acc);
            for (c, &xv) in w[i * $size..n * $size].chunks_exact($size).zip(&x[i..n]) {
                let $b: &[u8] = c;
                s += $scalar * xv;
            }
            s
        }
    };
}

plain_kernel!(
    /// F32 weights (possibly unaligned bytes) · x.
    dot_plain_f32, 4,
    |p| _mm256_loadu_ps(p.cast()),
    |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])
);
plain_kernel!(
    /// F16 weights · x: F16C widens 8 halves at a time.
    dot_plain_f16, 2,
    |p| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
);
plain_kernel!(
    /// BF16 weights · x: zero-extend 8 u16 to u32 and shift into the high half.
    dot_plain_bf16, 2,
    |p| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))),
    |b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))
);

/// Any block type · x: 256 weights at a time dequantised by the scalar `dequant.rs` (bit-exact),
/// then FMA'd 32 at a time into the four accumulators, which persist across chunks, so the
/// result equals `dot_plain_f32` over the dequantised row. Used for the types without a fused
/// kernel (Q3_K, Q5_K, Q6_K, IQ2_XS, IQ3_XXS, MXFP4); every block is a multiple of 32 weights.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_dequant(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    const CHUNK: usize = 256;
    let chunk_bytes = CHUNK / ty.block_elems() * ty.block_bytes();
    let mut buf = [0.0f32; CHUNK];
    let mut acc = [_mm256_setzero_ps(); 4];
    for (wc, xc) in row.chunks(chunk_bytes).zip(x.chunks(CHUNK)) {
        let n = xc.len() - xc.len() % 32;
        let w = &mut buf[..xc.len()];
        dequantize_unchecked(ty, wc, w);
        let mut i = 0;
        while i + 32 <= n {
            unroll4!(|k| {
                // SAFETY: i + 8k + 8 ≤ n ≤ xc.len() = w.len().
                let (wv, xv) = unsafe {
                    (
                        _mm256_loadu_ps(w.as_ptr().add(i + 8 * k)),
                        _mm256_loadu_ps(xc.as_ptr().add(i + 8 * k)),
                    )
                };
                acc[k] = _mm256_fmadd_ps(wv, xv, acc[k]);
            });
            i += 32;
        }
    }
    finish(acc)
}

/// Q8_0 · x (spec §4.2): widen 8 i8 to f32, `w = q·d`, FMA.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(blocks: &[BlockQ8_0], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xc) in blocks.iter().zip(x.chunks_exact(QK8_0)) {
        let d = _mm256_set1_ps(f16c(b.d));
        unroll4!(|k| {
            // SAFETY: 8k + 8 ≤ 32 = b.qs.len() = xc.len().
            let (q, xv) = unsafe {
                (
                    _mm_loadl_epi64(b.qs.as_ptr().add(8 * k).cast()),
                    _mm256_loadu_ps(xc.as_ptr().add(8 * k)),
                )
            };
            let w = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d);
            acc[k] = _mm256_fmadd_ps(w, xv, acc[k]);
        });
    }
    finish(acc)
}

/// Q2_K · x (spec §4.3). For each 8 bytes `qs[32n + 8k..]`, the four 2-bit planes `j` are
/// elements `128n + 32j + 8k..`, scale byte `8n + 2j + k/2`; `w = (d·sc)·q − dmin·m`.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q2_k(blocks: &[BlockQ2K], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let three = _mm256_set1_epi32(3);
    for (b, xc) in blocks.iter().zip(x.chunks_exact(QK_K)) {
        let (d, dmin) = (f16c(b.d), f16c(b.dmin));
        let mut dl = [0.0f32; 16];
        let mut ml = [0.0f32; 16];
        for (is, &sc) in b.scales.iter().enumerate() {
            dl[is] = d * f32::from(sc & 15);
            ml[is] = dmin * f32::from(sc >> 4);
        }
        for n in 0..2 {
            unroll4!(|k| {
                // SAFETY: 32n + 8k + 8 ≤ 64 = b.qs.len().
                let q = _mm256_cvtepu8_epi32(unsafe {
                    _mm_loadl_epi64(b.qs.as_ptr().add(32 * n + 8 * k).cast())
                });
                for j in 0..4 {
                    let is = 8 * n + 2 * j + k / 2;
                    let qj = _mm256_and_si256(
                        _mm256_srlv_epi32(q, _mm256_set1_epi32(2 * j as i32)),
                        three,
                    );
                    let w = _mm256_sub_ps(
                        _mm256_mul_ps(_mm256_set1_ps(dl[is]), _mm256_cvtepi32_ps(qj)),
                        _mm256_set1_ps(ml[is]),
                    );
                    // SAFETY: 128n + 32j + 8k + 8 ≤ 256 = xc.len().
                    let xv = unsafe { _mm256_loadu_ps(xc.as_ptr().add(128 * n + 32 * j + 8 * k)) };
                    acc[k] = _mm256_fmadd_ps(w, xv, acc[k]);
                }
            });
        }
    }
    finish(acc)
}

/// Q4_K · x (spec §4.4). Bytes `qs[32c + 8k..]`: low nibbles are elements `64c + 8k..` with
/// pair `2c`, high nibbles `64c + 32 + 8k..` with pair `2c + 1`; `w = (d·sc)·q − dmin·m`.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_k(blocks: &[BlockQ4K], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let fifteen = _mm256_set1_epi32(15);
    for (b, xc) in blocks.iter().zip(x.chunks_exact(QK_K)) {
        let (d, dmin) = (f16c(b.d), f16c(b.dmin));
        for c in 0..4 {
            let (sc0, m0) = b.scale_min(2 * c);
            let (sc1, m1) = b.scale_min(2 * c + 1);
            let (dl0, ml0) = (
                _mm256_set1_ps(d * f32::from(sc0)),
                _mm256_set1_ps(dmin * f32::from(m0)),
            );
            let (dl1, ml1) = (
                _mm256_set1_ps(d * f32::from(sc1)),
                _mm256_set1_ps(dmin * f32::from(m1)),
            );
            unroll4!(|k| {
                // SAFETY: 32c + 8k + 8 ≤ 128 = b.qs.len(); 64c + 32 + 8k + 8 ≤ 256 = xc.len().
                let (q, x0, x1) = unsafe {
                    (
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            b.qs.as_ptr().add(32 * c + 8 * k).cast(),
                        )),
                        _mm256_loadu_ps(xc.as_ptr().add(64 * c + 8 * k)),
                        _mm256_loadu_ps(xc.as_ptr().add(64 * c + 32 + 8 * k)),
                    )
                };
                let lo = _mm256_cvtepi32_ps(_mm256_and_si256(q, fifteen));
                let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(q));
                acc[k] = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_mul_ps(dl0, lo), ml0), x0, acc[k]);
                acc[k] = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_mul_ps(dl1, hi), ml1), x1, acc[k]);
            });
        }
    }
    finish(acc)
}

/// IQ2_XXS · x (spec §4.5): per 8-group, load the grid row as f32, scale by
/// `db = d·(0.5 + s)·0.25`, flip signs by XOR with the `ksigns` lane mask, FMA.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq2_xxs(blocks: &[BlockIQ2XXS], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, xc) in blocks.iter().zip(x.chunks_exact(QK_K)) {
        let d = f16c(b.d);
        for ib in 0..8 {
            let (a0, a1) = b.sub_block(ib);
            let db = _mm256_set1_ps(d * (0.5 + (a1 >> 28) as f32) * 0.25);
            unroll4!(|k| {
                let grid = &IQ2XXS_GRID_F32[((a0 >> (8 * k)) & 0xff) as usize];
                let signs = &KSIGNS_MASK[((a1 >> (7 * k)) & 0x7f) as usize];
                // SAFETY: grid and signs are 8-lane rows; 32ib + 8k + 8 ≤ 256 = xc.len().
                let (g, s, xv) = unsafe {
                    (
                        _mm256_loadu_ps(grid.as_ptr()),
                        _mm256_loadu_si256(signs.as_ptr().cast()),
                        _mm256_loadu_ps(xc.as_ptr().add(32 * ib + 8 * k)),
                    )
                };
                let w = _mm256_xor_ps(_mm256_mul_ps(g, db), _mm256_castsi256_ps(s));
                acc[k] = _mm256_fmadd_ps(w, xv, acc[k]);
            });
        }
    }
    finish(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dot::dot_f32_ref;
    use crate::quant::random::random_f32;
    use crate::quant::{dequantize, random_blocks};
    use rand::SeedableRng;

    /// AVX2 and scalar kernels add the same products in different orders (4×8 lanes vs
    /// 8 lanes per 256-element chunk); for rows up to ~4k elements the f32 rounding difference
    /// stays far below 1e-5 of Σ|w·x|.
    const KERNEL_REL_TOL: f64 = 1e-5;

    fn sizes(ty: GgmlType) -> &'static [usize] {
        match ty {
            GgmlType::Q8_0 | GgmlType::MXFP4 => &[32, 96, 544, 4096],
            t if t.block_elems() == 256 => &[256, 768, 4352],
            _ => &[1, 7, 8, 31, 32, 33, 100, 4101],
        }
    }

    const TYPES: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::MXFP4,
    ];

    #[test]
    fn avx2_row_kernels_match_scalar_reference() {
        let Some(t) = Avx2::detect() else {
            eprintln!("no AVX2+FMA+F16C on this CPU; AVX2 kernels not tested");
            return;
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        for ty in TYPES {
            for &n in sizes(ty) {
                let w = random_blocks(ty, n, 0.3, &mut rng).unwrap();
                let x = random_f32(n, &mut rng);
                let mut wf = vec![0.0; n];
                dequantize(ty, &w, &mut wf).unwrap();
                let scale: f64 = wf.iter().zip(&x).map(|(a, b)| f64::from(a * b).abs()).sum();
                let want = dot_row_ref(ty, &w, &x);
                let got = t.dot_row(ty, &w, &x);
                let tol = KERNEL_REL_TOL * scale;
                assert!(
                    f64::from(got - want).abs() <= tol,
                    "{ty} n={n}: got {got}, want {want}, tolerance {tol}"
                );
            }
        }
    }

    #[test]
    fn avx2_row_kernels_equal_dequantize_then_dot_f32_exactly() {
        let Some(t) = Avx2::detect() else { return };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(43);
        for ty in TYPES {
            for &n in sizes(ty) {
                let w = random_blocks(ty, n, 0.3, &mut rng).unwrap();
                let x = random_f32(n, &mut rng);
                let mut wf = vec![0.0; n];
                dequantize(ty, &w, &mut wf).unwrap();
                let (fused, split) = (t.dot_row(ty, &w, &x), t.dot_f32(&wf, &x));
                assert_eq!(
                    fused.to_bits(),
                    split.to_bits(),
                    "{ty} n={n}: {fused} vs {split}"
                );
            }
        }
    }

    #[test]
    fn avx2_dot_f32_matches_scalar_at_awkward_lengths() {
        let Some(t) = Avx2::detect() else { return };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(44);
        for n in [0, 1, 5, 8, 9, 31, 32, 33, 63, 65, 1000, 4099] {
            let (a, b) = (random_f32(n, &mut rng), random_f32(n, &mut rng));
            let scale: f64 = a.iter().zip(&b).map(|(p, q)| f64::from(p * q).abs()).sum();
            let (got, want) = (t.dot_f32(&a, &b), dot_f32_ref(&a, &b));
            assert!(
                f64::from(got - want).abs() <= KERNEL_REL_TOL * scale,
                "n={n}: got {got}, want {want}"
            );
        }
    }

    #[test]
    fn avx2_kernels_read_unaligned_rows() {
        let Some(t) = Avx2::detect() else { return };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(45);
        for ty in TYPES {
            let n = sizes(ty)[1];
            let w = random_blocks(ty, n, 0.3, &mut rng).unwrap();
            let mut shifted = vec![0u8; 1];
            shifted.extend_from_slice(&w);
            let x = random_f32(n, &mut rng);
            assert_eq!(
                t.dot_row(ty, &w, &x).to_bits(),
                t.dot_row(ty, &shifted[1..], &x).to_bits(),
                "{ty}"
            );
        }
    }
}
