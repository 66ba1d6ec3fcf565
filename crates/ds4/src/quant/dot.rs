//! Scalar reference kernels (STYLE §6): plain loops over the spec/model.md §4 formulas, beside
//! which the AVX2 kernels in `simd/avx2.rs` are tested, and which serve as the fallback on CPUs
//! without AVX2.
//!
//! * f32 activations: [`dot_f32_ref`] and [`dot_row_ref`] (a weight row of any type · f32,
//!   computed as "dequantize 256 elements (bit-exact, `dequant.rs`), then f32 dot").
//! * Q8_K activations (spec §4.6): [`vec_dot_q2_k_q8_k`], [`vec_dot_q4_k_q8_k`],
//!   [`vec_dot_iq2_xxs_q8_k`], integer inner sums as in ggml's generic kernels.

use super::blocks::{as_blocks, BlockIQ2XXS, BlockQ2K, BlockQ4K, BlockQ8K, QK_K};
use super::dequant::dequantize_unchecked;
use super::iq2_tables::{IQ2XXS_GRID, KSIGNS_IQ2XS};
use super::QuantError;
use crate::gguf::GgmlType;

/// `Σ a[i]·b[i]` over `min(a.len(), b.len())` elements, f32, eight partial sums (lane `i % 8`)
/// added up at the end, then the tail.
pub(crate) fn dot_f32_ref(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (ca, cb) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

/// Elements dequantised at a time by [`dot_row_ref`]: a whole number of blocks of every type.
const REF_CHUNK: usize = 256;

/// `Σ_c W[c]·x[c]` for one weight row `row` of type `ty` holding `x.len()` elements (the caller
/// checks the lengths): dequantise 256 elements at a time, f32 dot, f32 sum of the chunks.
pub(crate) fn dot_row_ref(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let chunk_bytes = REF_CHUNK / ty.block_elems() * ty.block_bytes();
    let mut buf = [0.0f32; REF_CHUNK];
    let mut sum = 0.0f32;
    for (wc, xc) in row.chunks(chunk_bytes).zip(x.chunks(REF_CHUNK)) {
        let w = &mut buf[..xc.len()];
        dequantize_unchecked(ty, wc, w);
        sum += dot_f32_ref(w, xc);
    }
    sum
}

/// Checks a weight/activation pair for the Q8_K dots and returns the block views.
fn q8_k_pair<'a, B: bytemuck::Pod>(
    ty: GgmlType,
    w: &'a [u8],
    a: &'a [u8],
) -> Result<(&'a [B], &'a [BlockQ8K]), QuantError> {
    let n_blocks = w.len() / ty.block_bytes();
    let n_elems = n_blocks * QK_K;
    if !w.len().is_multiple_of(ty.block_bytes()) {
        return Err(QuantError::DataLength {
            ty,
            n_elems,
            expected: n_blocks * ty.block_bytes(),
            found: w.len(),
        });
    }
    super::check_data(GgmlType::Q8_K, n_elems, a.len())?;
    Ok((as_blocks(w), as_blocks(a)))
}

/// Q2_K weights · Q8_K activations (spec §4.3, ds4 `ds4_vec_dot_q2_K_q8_K`):
/// `Σ_blocks dy·d·Σ_is sc_is·(Σ_16 q·qy) − dy·dmin·Σ_is m_is·bsum_is`.
/// `w` is whole Q2_K blocks, `a` the same number of Q8_K blocks.
pub fn vec_dot_q2_k_q8_k(w: &[u8], a: &[u8]) -> Result<f32, QuantError> {
    let (w, a): (&[BlockQ2K], _) = q8_k_pair(GgmlType::Q2_K, w, a)?;
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let summs: i32 = (0..16)
            .map(|is| i32::from(x.scales[is] >> 4) * i32::from(y.bsum(is)))
            .sum();
        let mut isum = 0i32;
        for is in 0..16 {
            let (n, j, half) = (is / 8, (is % 8) / 2, is % 2);
            let mut s = 0i32;
            for l in 16 * half..16 * half + 16 {
                let q = i32::from((x.qs[32 * n + l] >> (2 * j)) & 3);
                s += q * i32::from(y.qs[128 * n + 32 * j + l]);
            }
            isum += i32::from(x.scales[is] & 15) * s;
        }
        let dall = y.d() * x.d();
        let dmin = y.d() * x.dmin();
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    Ok(sumf)
}

/// Q4_K weights · Q8_K activations (spec §4.4):
/// `Σ_blocks dy·d·Σ_j sc_j·(Σ_32 q·qy) − dy·dmin·Σ_j m_j·(bsum_2j + bsum_2j+1)`.
pub fn vec_dot_q4_k_q8_k(w: &[u8], a: &[u8]) -> Result<f32, QuantError> {
    let (w, a): (&[BlockQ4K], _) = q8_k_pair(GgmlType::Q4_K, w, a)?;
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let (mut isum, mut summs) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = x.scale_min(j);
            let (c, shift) = (j / 2, 4 * (j % 2));
            let mut s = 0i32;
            for l in 0..32 {
                let q = i32::from((x.qs[32 * c + l] >> shift) & 15);
                s += q * i32::from(y.qs[32 * j + l]);
            }
            isum += i32::from(sc) * s;
            summs += i32::from(m) * (i32::from(y.bsum(2 * j)) + i32::from(y.bsum(2 * j + 1)));
        }
        sumf += y.d() * x.d() * isum as f32 - y.d() * x.dmin() * summs as f32;
    }
    Ok(sumf)
}

/// IQ2_XXS weights · Q8_K activations (spec §4.5, the scalar `0.125·d·ls·Σ` form):
/// `0.125·Σ_blocks d·dy·Σ_ib (2s+1)·Σ_32 grid·sign·qy`.
pub fn vec_dot_iq2_xxs_q8_k(w: &[u8], a: &[u8]) -> Result<f32, QuantError> {
    let (w, a): (&[BlockIQ2XXS], _) = q8_k_pair(GgmlType::IQ2_XXS, w, a)?;
    let mut sumf = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut bsum = 0i32;
        for ib in 0..8 {
            let (a0, a1) = x.sub_block(ib);
            let ls = 2 * (a1 >> 28) as i32 + 1;
            let mut sumi = 0i32;
            for k in 0..4 {
                let grid = IQ2XXS_GRID[((a0 >> (8 * k)) & 0xff) as usize];
                let signs = KSIGNS_IQ2XS[((a1 >> (7 * k)) & 0x7f) as usize];
                for j in 0..8 {
                    let g = ((grid >> (8 * j)) & 0xff) as i32;
                    let q = i32::from(y.qs[32 * ib + 8 * k + j]);
                    sumi += if signs & (1 << j) != 0 { -g * q } else { g * q };
                }
            }
            bsum += sumi * ls;
        }
        sumf += x.d() * y.d() * bsum as f32;
    }
    Ok(0.125 * sumf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, quantize_row_q8_k, random_blocks};
    use rand::SeedableRng;

    /// The Q8_K dots differ from the f64 dot of the dequantised operands only by a few f32
    /// roundings of the per-block scale products (integer inner sums are exact).
    const Q8_K_DOT_REL_TOL: f64 = 1e-5;

    fn deq(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n];
        dequantize(ty, data, &mut out).unwrap();
        out
    }

    #[test]
    fn q8_k_dots_match_dequantized_dot() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        type Dot = fn(&[u8], &[u8]) -> Result<f32, QuantError>;
        let kernels: [(GgmlType, Dot); 3] = [
            (GgmlType::Q2_K, vec_dot_q2_k_q8_k),
            (GgmlType::Q4_K, vec_dot_q4_k_q8_k),
            (GgmlType::IQ2_XXS, vec_dot_iq2_xxs_q8_k),
        ];
        for (ty, dot) in kernels {
            for n_blocks in [1, 3, 16] {
                let n = n_blocks * QK_K;
                let w = random_blocks(ty, n, 0.1, &mut rng).unwrap();
                let xs = crate::quant::random::random_f32(n, &mut rng);
                let a = quantize_row_q8_k(&xs).unwrap();
                let (wf, af) = (deq(ty, &w, n), deq(GgmlType::Q8_K, &a, n));
                let want: f64 = wf
                    .iter()
                    .zip(&af)
                    .map(|(&p, &q)| f64::from(p) * f64::from(q))
                    .sum();
                let scale: f64 = wf
                    .iter()
                    .zip(&af)
                    .map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs())
                    .sum();
                let got = f64::from(dot(&w, &a).unwrap());
                assert!(
                    (got - want).abs() <= Q8_K_DOT_REL_TOL * scale,
                    "{ty} × Q8_K, {n_blocks} blocks: got {got}, want {want}, tol {}",
                    Q8_K_DOT_REL_TOL * scale
                );
            }
        }
    }

    #[test]
    fn q8_k_dot_rejects_mismatched_block_counts() {
        let err = vec_dot_q2_k_q8_k(&[0; 84], &[0; 2 * 292]).unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::DataLength {
                    expected: 292,
                    found: 584,
                    ..
                }
            ),
            "{err}"
        );
        let err = vec_dot_q4_k_q8_k(&[0; 145], &[0; 292]).unwrap_err();
        assert!(matches!(err, QuantError::DataLength { .. }), "{err}");
    }

    #[test]
    fn dot_row_ref_handles_rows_shorter_than_a_chunk() {
        let x = [1.0f32, 2.0, 3.0];
        let w: Vec<u8> = [0.5f32, -1.0, 2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(dot_row_ref(GgmlType::F32, &w, &x), 0.5 - 2.0 + 6.0);
    }
}
