//! Weight matrix × f32 activations (spec/model.md §0 conventions: `y[o] = Σ_i row_o[i]·x[i]`,
//! rows are sequences of blocks along `ne[0]`). Weights are dequantised on the fly and
//! accumulated in f32; activations are never quantised here (spec §4.6 says activation
//! quantisation is a backend detail; ds4-rs's precise mode needs f32).

use rayon::prelude::*;

use super::dequant::dequantize_unchecked;
use super::simd::{dot_f32, dot_row};
use super::{bytes_for, check_len, QuantError};
use crate::gguf::GgmlType;

/// Work (rows × cols multiply-adds) below which `matvec` / `matmul` stay on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 18;
/// Rows per rayon task in `matvec`.
const MATVEC_ROWS_PER_TASK: usize = 16;
/// Rows dequantised together in `matmul` and reused across all tokens (8 rows × 4096 f32 =
/// 128 KiB, an L2-sized tile).
const MATMUL_TILE_ROWS: usize = 8;

/// A weight matrix view: `rows` rows of `cols` elements each, row-major, `ty` blocks along
/// `cols` (a GGUF tensor `[cols, rows]`).
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    /// Element type.
    pub ty: GgmlType,
    /// Output rows.
    pub rows: usize,
    /// Elements per row (input width).
    pub cols: usize,
    /// `rows · row_bytes()` bytes.
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Checks that `cols` is a whole number of blocks and `data` holds exactly `rows` rows.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        let row_bytes = bytes_for(ty, cols)?;
        let expected =
            rows.checked_mul(row_bytes)
                .ok_or(QuantError::TooLarge { ty, rows, cols })?;
        if data.len() != expected {
            return Err(QuantError::DataLength {
                ty,
                n_elems: rows.saturating_mul(cols),
                expected,
                found: data.len(),
            });
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// The bytes of row `r`; empty if `r ≥ rows`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        self.data.get(r * rb..(r + 1) * rb).unwrap_or(&[])
    }

    /// Rows `r0..r0 + n` as one byte slice (clamped to the matrix).
    fn rows_bytes(&self, r0: usize, n: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        let end = (r0 + n).min(self.rows);
        self.data.get(r0 * rb..end * rb).unwrap_or(&[])
    }
}

/// `y[r] = Σ_c W[r][c]·x[c]`: weights dequantised on the fly, f32 accumulation (AVX2 when
/// available). `x.len() == cols`, `y.len() == rows`. Parallel over rows with rayon when
/// `rows · cols` is large.
pub fn matvec(w: &QMatrix, x: &[f32], y: &mut [f32]) -> Result<(), QuantError> {
    check_len("matvec x", w.cols, x.len())?;
    check_len("matvec y", w.rows, y.len())?;
    let task = |(i, ys): (usize, &mut [f32])| {
        for (j, y) in ys.iter_mut().enumerate() {
            *y = dot_row(w.ty, w.row(i * MATVEC_ROWS_PER_TASK + j), x);
        }
    };
    if w.rows.saturating_mul(w.cols) >= PARALLEL_MIN_WORK {
        y.par_chunks_mut(MATVEC_ROWS_PER_TASK)
            .enumerate()
            .for_each(task);
    } else {
        y.chunks_mut(MATVEC_ROWS_PER_TASK)
            .enumerate()
            .for_each(task);
    }
    Ok(())
}

/// `Y[t][r] = Σ_c W[r][c]·X[t][c]`: `x` is `n_tok × cols` row-major, `y` is `n_tok × rows`
/// row-major. Each tile of rows is dequantised once and reused for every token; rayon runs
/// tiles in parallel. Results equal `n_tok` calls of [`matvec`] up to f32 summation order
/// (bit for bit on the AVX2 path).
pub fn matmul(w: &QMatrix, x: &[f32], n_tok: usize, y: &mut [f32]) -> Result<(), QuantError> {
    let x_len = n_tok.checked_mul(w.cols).ok_or(QuantError::TooLarge {
        ty: w.ty,
        rows: n_tok,
        cols: w.cols,
    })?;
    let y_len = n_tok.checked_mul(w.rows).ok_or(QuantError::TooLarge {
        ty: w.ty,
        rows: n_tok,
        cols: w.rows,
    })?;
    check_len("matmul x", x_len, x.len())?;
    check_len("matmul y", y_len, y.len())?;
    if n_tok == 1 {
        return matvec(w, x, y);
    }
    if n_tok == 0 || w.rows == 0 {
        return Ok(());
    }
    // Tile-major output (rows × n_tok), transposed into y at the end.
    let mut yt = vec![0.0f32; y_len];
    let tile_len = MATMUL_TILE_ROWS * n_tok;
    let task = |buf: &mut Vec<f32>, (ti, yts): (usize, &mut [f32])| {
        let r0 = ti * MATMUL_TILE_ROWS;
        let nr = yts.len() / n_tok;
        buf.resize(nr * w.cols, 0.0);
        dequantize_unchecked(w.ty, w.rows_bytes(r0, nr), buf);
        for (t, xt) in x.chunks_exact(w.cols).enumerate() {
            for (r, wr) in buf.chunks_exact(w.cols).enumerate() {
                yts[r * n_tok + t] = dot_f32(wr, xt);
            }
        }
    };
    let work = w.rows.saturating_mul(w.cols).saturating_mul(n_tok);
    if work >= PARALLEL_MIN_WORK {
        yt.par_chunks_mut(tile_len)
            .enumerate()
            .for_each_init(Vec::new, task);
    } else {
        let mut buf = Vec::new();
        yt.chunks_mut(tile_len)
            .enumerate()
            .for_each(|c| task(&mut buf, c));
    }
    for (r, ytr) in yt.chunks_exact(n_tok).enumerate() {
        for (t, &v) in ytr.iter().enumerate() {
            y[t * w.rows + r] = v;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::random::random_f32;
    use crate::quant::{dequantize, random_blocks};
    use rand::SeedableRng;

    /// matvec vs an f64 naive dot of the dequantised weights: only f32 accumulation error,
    /// well under 1e-5 of Σ|w·x| for these widths.
    const MATVEC_REL_TOL: f64 = 1e-5;
    /// matmul vs matvec: same products, summation order may differ on the scalar path.
    const MATMUL_REL_TOL: f64 = 1e-5;

    const TYPES: [GgmlType; 14] = [
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
        GgmlType::Q8_K,
    ];

    fn cols_for(ty: GgmlType) -> usize {
        if ty.block_elems() == 1 {
            77
        } else if ty.block_elems() == 32 {
            96
        } else {
            768
        }
    }

    fn abs_dot(w: &[f32], x: &[f32]) -> f64 {
        w.iter()
            .zip(x)
            .map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs())
            .sum()
    }

    #[test]
    fn matvec_equals_dequantize_then_naive_dot() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for ty in TYPES {
            let (rows, cols) = (7, cols_for(ty));
            let data = random_blocks(ty, rows * cols, 0.2, &mut rng).unwrap();
            let w = QMatrix::new(ty, rows, cols, &data).unwrap();
            let x = random_f32(cols, &mut rng);
            let mut y = vec![0.0; rows];
            matvec(&w, &x, &mut y).unwrap();
            let mut wf = vec![0.0; rows * cols];
            dequantize(ty, &data, &mut wf).unwrap();
            for (r, (wr, &got)) in wf.chunks_exact(cols).zip(&y).enumerate() {
                let want: f64 = wr
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let tol = MATVEC_REL_TOL * abs_dot(wr, &x);
                assert!(
                    (f64::from(got) - want).abs() <= tol,
                    "{ty} row {r}: got {got}, want {want}, tol {tol}"
                );
            }
        }
    }

    #[test]
    fn matmul_equals_repeated_matvec() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for ty in TYPES {
            let (rows, cols, n_tok) = (19, cols_for(ty), 5);
            let data = random_blocks(ty, rows * cols, 0.2, &mut rng).unwrap();
            let w = QMatrix::new(ty, rows, cols, &data).unwrap();
            let x = random_f32(n_tok * cols, &mut rng);
            let mut y = vec![0.0; n_tok * rows];
            matmul(&w, &x, n_tok, &mut y).unwrap();
            let mut wf = vec![0.0; rows * cols];
            dequantize(ty, &data, &mut wf).unwrap();
            for (t, xt) in x.chunks_exact(cols).enumerate() {
                let mut yv = vec![0.0; rows];
                matvec(&w, xt, &mut yv).unwrap();
                for r in 0..rows {
                    let (got, want) = (y[t * rows + r], yv[r]);
                    let tol = MATMUL_REL_TOL * abs_dot(&wf[r * cols..(r + 1) * cols], xt);
                    assert!(
                        f64::from(got - want).abs() <= tol,
                        "{ty} token {t} row {r}: matmul {got}, matvec {want}, tol {tol}"
                    );
                }
            }
        }
    }

    #[test]
    fn parallel_paths_match_serial_results() {
        // 67 × 4096 = 274k ≥ PARALLEL_MIN_WORK: rayon path; compare row by row with dot_row.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (ty, rows, cols) = (GgmlType::IQ2_XXS, 67, 4096);
        let data = random_blocks(ty, rows * cols, 0.2, &mut rng).unwrap();
        let w = QMatrix::new(ty, rows, cols, &data).unwrap();
        let x = random_f32(2 * cols, &mut rng);
        let mut y = vec![0.0; rows];
        matvec(&w, &x[..cols], &mut y).unwrap();
        for (r, &v) in y.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                dot_row(ty, w.row(r), &x[..cols]).to_bits(),
                "row {r}"
            );
        }
        let mut y2 = vec![0.0; 2 * rows];
        matmul(&w, &x, 2, &mut y2).unwrap();
        let mut wf = vec![0.0; cols];
        for r in [0, 33, 66] {
            dequantize(ty, w.row(r), &mut wf).unwrap();
            for t in 0..2 {
                let want = dot_f32(&wf, &x[t * cols..(t + 1) * cols]);
                assert_eq!(
                    y2[t * rows + r].to_bits(),
                    want.to_bits(),
                    "token {t} row {r}"
                );
            }
        }
    }

    #[test]
    fn qmatrix_rejects_bad_shapes() {
        let data = vec![0u8; 2 * 84];
        assert!(QMatrix::new(GgmlType::Q2_K, 2, 256, &data).is_ok());
        let err = QMatrix::new(GgmlType::Q2_K, 3, 256, &data).unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::DataLength {
                    expected: 252,
                    found: 168,
                    ..
                }
            ),
            "{err}"
        );
        let err = QMatrix::new(GgmlType::Q2_K, 1, 300, &data).unwrap_err();
        assert!(matches!(err, QuantError::PartialBlock { .. }), "{err}");
        assert!(QMatrix::new(GgmlType::F32, usize::MAX, 2, &data).is_err());
        let w = QMatrix::new(GgmlType::Q2_K, 2, 256, &data).unwrap();
        assert_eq!(w.row(1).len(), 84);
        assert!(w.row(2).is_empty());
    }

    #[test]
    fn matvec_and_matmul_reject_wrong_buffer_lengths() {
        let data = vec![0u8; 4 * 34];
        let w = QMatrix::new(GgmlType::Q8_0, 2, 64, &data).unwrap();
        let err = matvec(&w, &[0.0; 63], &mut [0.0; 2]).unwrap_err();
        assert_eq!(
            err,
            QuantError::BufferLength {
                what: "matvec x",
                expected: 64,
                found: 63
            }
        );
        let err = matvec(&w, &[0.0; 64], &mut [0.0; 3]).unwrap_err();
        assert_eq!(
            err,
            QuantError::BufferLength {
                what: "matvec y",
                expected: 2,
                found: 3
            }
        );
        let err = matmul(&w, &[0.0; 128], 2, &mut [0.0; 2]).unwrap_err();
        assert_eq!(
            err,
            QuantError::BufferLength {
                what: "matmul y",
                expected: 4,
                found: 2
            }
        );
        assert!(matmul(&w, &[], 0, &mut []).is_ok());
    }
}
