//! Weight products (kernels/matmul.cu) in three forms: the precise f32 product (any rows),
//! the fast one-row matrix-vector kernels with 8-bit activations, and, for chunks of several
//! rows in the fast mode, cuBLAS GEMMs over weights dequantised to f16 in row slices.

use ds4::backend::{BResult, Tensor};
use ds4::gguf::GgmlType;
use ds4::model::weights::TensorRef;
use ds4::model::Numerics;

use super::{blocks, dp, err, want};
use crate::driver::kargs;
use crate::upload::Dw;
use crate::{be_err, CudaBackend};

/// Warps per block of the matrix-vector kernels (MV_WARPS).
const MV_WARPS: usize = 8;
/// Bytes of the f16 weight slice a GEMM dequantises at a time.
const W16_SLICE: usize = 64 << 20;

/// The name of kernel family `fam` (`mv`, `gu`, `dn`, `mq`) for weights of GGUF type `ty`
/// whose device copy is `dw` (IQ2_XXS may be stored as 4-bit codes: the `*_iq2c` kernels).
pub(crate) fn kname(fam: &str, ty: GgmlType, dw: &Dw) -> BResult<&'static str> {
    use GgmlType as T;
    if dw.coded() {
        return match fam {
            "mv" => Ok("mv_iq2c"),
            "gu" => Ok("gu_iq2c"),
            "dn" => Ok("dn_iq2c"),
            "mq" => Ok("mq_iq2c"),
            _ => Err(err(format!(
                "kernel family {fam} has no IQ2_XXS-code kernel"
            ))),
        };
    }
    Ok(match (fam, ty) {
        ("mv", T::Q8_0) => "mv_q8_0",
        ("mv", T::Q2_K) => "mv_q2_k",
        ("mv", T::Q4_K) => "mv_q4_k",
        ("mv", T::IQ2_XXS) => "mv_iq2_xxs",
        ("mv", T::F16) => "mv_f16",
        ("mv", T::F32) => "mv_f32",
        ("gu", T::Q8_0) => "gu_q8_0",
        ("gu", T::Q2_K) => "gu_q2_k",
        ("gu", T::Q4_K) => "gu_q4_k",
        ("gu", T::IQ2_XXS) => "gu_iq2_xxs",
        ("gu", T::F16) => "gu_f16",
        ("gu", T::F32) => "gu_f32",
        ("dn", T::Q8_0) => "dn_q8_0",
        ("dn", T::Q2_K) => "dn_q2_k",
        ("dn", T::Q4_K) => "dn_q4_k",
        ("dn", T::IQ2_XXS) => "dn_iq2_xxs",
        ("dn", T::F16) => "dn_f16",
        ("dn", T::F32) => "dn_f32",
        ("mq", T::Q8_0) => "mq_q8_0",
        ("mq", T::Q2_K) => "mq_q2_k",
        ("mq", T::Q4_K) => "mq_q4_k",
        ("mq", T::IQ2_XXS) => "mq_iq2_xxs",
        (fam, T::BF16 | T::Q3_K | T::Q5_K | T::Q6_K | T::IQ2_XS | T::IQ3_XXS | T::MXFP4) => {
            match fam {
                "mv" => "mv_deq",
                "gu" => "gu_deq",
                _ => "dn_deq",
            }
        }
        _ => return Err(err(format!("type {ty} has no CUDA kernel"))),
    })
}

/// Whether the fast kernels of type `ty` take 8-bit activation planes (else f32).
pub(crate) fn takes_q8(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q8_0 | GgmlType::Q2_K | GgmlType::Q4_K | GgmlType::IQ2_XXS
    )
}

/// Warps per row of a one-row-per-warp matrix-vector product of `rows` rows of `cols`: enough
/// warps to fill the device (short matrices), never more than the row has 32-lane chunks for.
pub(crate) fn mv_split(rows: usize, cols: usize) -> usize {
    4096usize
        .div_ceil(rows.max(1))
        .next_power_of_two()
        .min(MV_WARPS)
        .min((cols / 256).max(1).next_power_of_two())
}

/// Resident blocks an SM of `mvp_q8_0` (4 of 2, 4, 6, 8 was fastest on the H200's q_b, o_a,
/// o_b and shared-expert down shapes: tools/device/mv-lab.cu).
const MVP_BLOCKS_PER_SM: usize = 4;

/// Rows above which `mv_q8_0` stays faster than `mvp_q8_0` (the 129,280-row output head:
/// 137 against 157 µs in the lab, where a grid of one block per 8 rows keeps more in flight).
const MVP_MAX_ROWS: usize = 65536;

/// Products per `mvn_*` launch (MVN_MAX).
const MVN_MAX: usize = 4;

/// The job list of an `mvn_*` launch (struct MvJobs in kernels/matmul.cu).
#[repr(C)]
#[derive(Clone, Copy)]
struct MvJobs {
    w: [Dw; MVN_MAX],
    y: [u64; MVN_MAX],
    first_block: [i32; MVN_MAX + 1],
    kspl: [i32; MVN_MAX],
    n: i32,
}

impl CudaBackend {
    /// `y += W·x`: for a decode row in the fast mode the product accumulates into `y` (the
    /// kernel's `beta`: the same addition as the `add` kernel), else into `tmp`, then `add`.
    pub(crate) fn op_matmul_add(
        &self,
        w: &TensorRef,
        x: &Tensor,
        tmp: &mut Tensor,
        y: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        if !num.fast || x.rows != 1 {
            self.op_matmul(w, x, tmp, num)?;
            return self.op_add(y, tmp);
        }
        want(x, 1, w.cols, &format!("{} input", w.name))?;
        want(y, 1, w.rows, &format!("{} output", w.name))?;
        let (dw, xp, yp) = (self.w(w)?, dp(x)?, dp(y)?);
        self.forget_planes(yp);
        self.mv_fast(dw, w.ty, 0, xp, w.rows, yp, true)
    }

    /// Several products of one activation (`op_matmuls`): for a decode row in the fast mode,
    /// weights of one type (Q8_0 or F16) and width run as one `mvn_*` launch over one
    /// activation preparation; anything else as one product each.
    pub(crate) fn op_matmuls(
        &self,
        ws: &[&TensorRef],
        x: &Tensor,
        ys: &mut [&mut Tensor],
        num: Numerics,
    ) -> BResult<()> {
        if ws.len() != ys.len() {
            return Err(err(format!(
                "{} weights for {} outputs",
                ws.len(),
                ys.len()
            )));
        }
        let one = |w: &&TensorRef| w.ty == ws[0].ty && w.cols == ws[0].cols && w.n_mats == 1;
        let kernel = match ws.first().map(|w| w.ty) {
            Some(GgmlType::Q8_0) => "mvn_q8_0",
            Some(GgmlType::F16) => "mvn_f16",
            _ => "",
        };
        if !num.fast
            || x.rows != 1
            || ws.len() < 2
            || ws.len() > MVN_MAX
            || kernel.is_empty()
            || !ws.iter().all(one)
        {
            for (w, y) in ws.iter().zip(ys.iter_mut()) {
                self.op_matmul(w, x, y, num)?;
            }
            return Ok(());
        }
        let cols = ws[0].cols;
        want(x, 1, cols, &format!("{} input", ws[0].name))?;
        // SAFETY (of the zeroed job list): Dw and the integers are plain data; unused slots are
        // never read (n bounds them).
        let mut jobs: MvJobs = unsafe { std::mem::zeroed() };
        let mut blocks = 0usize;
        for (j, (w, y)) in ws.iter().zip(ys.iter_mut()).enumerate() {
            want(y, 1, w.rows, &format!("{} output", w.name))?;
            let yp = dp(y)?;
            self.forget_planes(yp);
            let kspl = mv_split(w.rows, cols);
            jobs.w[j] = self.w(w)?;
            jobs.y[j] = yp;
            jobs.kspl[j] = kspl as i32;
            jobs.first_block[j] = blocks as i32;
            blocks += w.rows.div_ceil(MV_WARPS / kspl);
        }
        jobs.first_block[ws.len()] = blocks as i32;
        jobs.n = ws.len() as i32;
        let xp = dp(x)?;
        let mark = self.arena.mark();
        let (xq, xd) = self.quant_q8(ws[0].ty, xp, cols, cols, 1)?;
        self.launch(
            kernel,
            (blocks as u32, 1, 1),
            256,
            0,
            &mut kargs![&jobs, &xp, &xq, &xd],
        )?;
        self.arena.release(mark);
        Ok(())
    }

    /// `y[t][yoff + r] = Σ_c W[mat][r0 + r][c]·x[t][xoff + c]` in f32 over exactly dequantised
    /// weights, r < rows, t < n.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mm_precise(
        &self,
        w: Dw,
        mat: usize,
        r0: usize,
        rows: usize,
        x: u64,
        x_stride: usize,
        xoff: usize,
        n: usize,
        y: u64,
        y_stride: usize,
        yoff: usize,
    ) -> BResult<()> {
        let (m, r0, nr) = (mat as i32, r0 as i32, rows as i32);
        let (xs, xo, nt, ys, yo) = (
            x_stride as i32,
            xoff as i32,
            n as i32,
            y_stride as i32,
            yoff as i32,
        );
        let grid = (rows as u32, n.div_ceil(8) as u32, 1);
        self.launch(
            "mm_f32",
            grid,
            256,
            0,
            &mut kargs![&w, &m, &r0, &nr, &x, &xs, &xo, &nt, &y, &ys, &yo],
        )
    }

    /// The three-stage 8-bit planes of `rows` activation rows of `cols` (row r at
    /// x + r·x_stride floats) into new arena temporaries: (planes, scales); (0, 0) for weight
    /// types that take f32 activations.
    pub(crate) fn quant_q8(
        &self,
        ty: GgmlType,
        x: u64,
        x_stride: usize,
        cols: usize,
        rows: usize,
    ) -> BResult<(u64, u64)> {
        if !takes_q8(ty) {
            return Ok((0, 0));
        }
        // One token's row: a norm's planes (one group) or the attention output's (its groups).
        if x_stride == cols || rows == 1 {
            if let Some(held) = self.held_planes(x, cols, rows) {
                return Ok(held);
            }
        }
        if !cols.is_multiple_of(32) {
            return Err(err(format!(
                "8-bit activations need a multiple of 32 columns (found {cols})"
            )));
        }
        let q = self.scratch(rows * 3 * cols)?;
        let d = self.scratch(rows * cols / 32 * 4)?;
        let (xs, c, r) = (x_stride as i32, cols as i32, rows as i32);
        let grid = (rows * cols / 32).div_ceil(8) as u32;
        self.launch(
            "quant_q8",
            (grid, 1, 1),
            256,
            0,
            &mut kargs![&x, &xs, &c, &r, &q, &d],
        )?;
        Ok((q, d))
    }

    /// One activation row: `y[r] (+)= W[mat][r]·x_{g(r)}` with the rows in groups of
    /// `rows_per_group` taking consecutive `cols`-wide slices of x.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mv_fast(
        &self,
        w: Dw,
        ty: GgmlType,
        mat: usize,
        x: u64,
        rows_per_group: usize,
        y: u64,
        beta: bool,
    ) -> BResult<()> {
        let cols = w.cols as usize;
        let groups = (w.rows as usize).div_ceil(rows_per_group);
        let mark = self.arena.mark();
        let (xq, xd) = self.quant_q8(ty, x, cols, cols, groups)?;
        let rows = w.rows as usize;
        let kspl = mv_split(rows, cols);
        let (m, rpg, ks, b) = (mat as i32, rows_per_group as i32, kspl as i32, beta as i32);
        let pipelined = (self.opts_mvp_min_rows()..=MVP_MAX_ROWS).contains(&rows);
        if ty == GgmlType::Q8_0 && pipelined {
            let grid = (MVP_BLOCKS_PER_SM * self.sm_count()).min(rows.div_ceil(MV_WARPS));
            self.launch(
                "mvp_q8_0",
                (grid as u32, 1, 1),
                256,
                0,
                &mut kargs![&w, &m, &xq, &xd, &rpg, &y, &b],
            )?;
            self.arena.release(mark);
            return Ok(());
        }
        let grid = rows.div_ceil(MV_WARPS / kspl) as u32;
        self.launch(
            kname("mv", ty, &w)?,
            (grid, 1, 1),
            256,
            0,
            &mut kargs![&w, &m, &x, &xq, &xd, &rpg, &y, &ks, &b],
        )?;
        self.arena.release(mark);
        Ok(())
    }

    /// f16 (hi, lo) pair copy of `n` rows of `cols` of x (row i from x[idx[i]] when idx is
    /// given) into a new arena temporary: hi `[n × cols]`, then lo.
    pub(crate) fn to_f16(
        &self,
        x: u64,
        x_stride: usize,
        xoff: usize,
        idx: u64,
        n: usize,
        cols: usize,
    ) -> BResult<u64> {
        let out = self.scratch(2 * n * cols * 2)?;
        let (xs, xo, nn, c) = (x_stride as i32, xoff as i32, n as i32, cols as i32);
        self.launch(
            "to_f16",
            (blocks(n * cols), 1, 1),
            256,
            0,
            &mut kargs![&x, &xs, &xo, &idx, &nn, &c, &out],
        )?;
        Ok(out)
    }

    /// `y[t][r0 + r] = Σ_c W[mat][r0 + r][c]·x16[t][c]` for r < rows, t < n: rows dequantised to
    /// f16 pairs a slice at a time, then per slice three cuBLAS GEMMs, W_hi·x_hi + W_hi·x_lo +
    /// W_lo·x_hi, accumulated in f32 (x16 from [`CudaBackend::to_f16`] of `n_x` rows, rows
    /// `ldx` apart; y rows `ldy` apart). The dropped lo·lo term is about 2^-22 relative.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        &self,
        w: Dw,
        mat: usize,
        r0: usize,
        rows: usize,
        x16: u64,
        ldx: usize,
        n_x: usize,
        n: usize,
        y: u64,
        ldy: usize,
    ) -> BResult<()> {
        let cols = w.cols as usize;
        let slice_rows = (W16_SLICE / (cols * 4)).clamp(1, rows.max(1));
        let x_lo = x16 + (n_x * ldx * 2) as u64;
        let mut guard = self.gemm.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(crate::gemm::Gemm::new(self.dev.stream).map_err(be_err)?);
        }
        let g = guard.as_ref().expect("just set");
        let mark = self.arena.mark();
        let w16 = self.scratch(2 * slice_rows * cols * 2)?;
        let mut s = 0;
        while s < rows {
            let nr = slice_rows.min(rows - s);
            let (m, rr, nn) = (mat as i32, (r0 + s) as i32, nr as i32);
            self.launch(
                "deq_f16",
                (blocks(nr * cols / 8), 1, 1),
                256,
                0,
                &mut kargs![&w, &m, &rr, &nn, &w16],
            )?;
            let c = y + ((r0 + s) * 4) as u64;
            let w_lo = w16 + (nr * cols * 2) as u64;
            self.timed("cublas_f16", || {
                g.f16(nr, n, cols, w16, cols, x16, ldx, c, ldy, false)?;
                g.f16(nr, n, cols, w16, cols, x_lo, ldx, c, ldy, true)?;
                g.f16(nr, n, cols, w_lo, cols, x16, ldx, c, ldy, true)
            })?;
            s += nr;
        }
        self.arena.release(mark);
        Ok(())
    }

    pub(crate) fn op_matmul(
        &self,
        w: &TensorRef,
        x: &Tensor,
        y: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        let n = x.rows;
        want(x, n, w.cols, &format!("{} input", w.name))?;
        want(y, n, w.rows, &format!("{} output", w.name))?;
        let (dw, xp, yp) = (self.w(w)?, dp(x)?, dp(y)?);
        self.forget_planes(yp);
        if !num.fast {
            return self.mm_precise(dw, 0, 0, w.rows, xp, w.cols, 0, n, yp, w.rows, 0);
        }
        if n == 1 {
            return self.mv_fast(dw, w.ty, 0, xp, w.rows, yp, false);
        }
        let mark = self.arena.mark();
        let x16 = self.to_f16(xp, w.cols, 0, 0, n, w.cols)?;
        self.gemm(dw, 0, 0, w.rows, x16, w.cols, n, n, yp, w.rows)?;
        self.arena.release(mark);
        Ok(())
    }

    pub(crate) fn op_matmul_grouped(
        &self,
        w: &TensorRef,
        groups: usize,
        x: &Tensor,
        y: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        let n = x.rows;
        if groups == 0 || !w.rows.is_multiple_of(groups) {
            return Err(err(format!("{}: {groups} groups", w.name)));
        }
        want(x, n, groups * w.cols, &format!("{} input", w.name))?;
        want(y, n, w.rows, &format!("{} output", w.name))?;
        let (dw, xp, yp) = (self.w(w)?, dp(x)?, dp(y)?);
        self.forget_planes(yp);
        let (gw, gr) = (w.cols, w.rows / groups);
        if !num.fast {
            for g in 0..groups {
                self.mm_precise(
                    dw,
                    0,
                    g * gr,
                    gr,
                    xp,
                    groups * gw,
                    g * gw,
                    n,
                    yp,
                    w.rows,
                    g * gr,
                )?;
            }
            return Ok(());
        }
        if n == 1 {
            return self.mv_fast(dw, w.ty, 0, xp, gr, yp, false);
        }
        let mark = self.arena.mark();
        let x16 = self.to_f16(xp, groups * gw, 0, 0, n, groups * gw)?;
        for g in 0..groups {
            self.gemm(
                dw,
                0,
                g * gr,
                gr,
                x16 + (g * gw * 2) as u64,
                groups * gw,
                n,
                n,
                yp,
                w.rows,
            )?;
        }
        self.arena.release(mark);
        Ok(())
    }
}
