//! Hyper-connections (kernels/hc.cu): the `fn` projection of the HC state in column slices (or,
//! for large fast chunks, a split-f16 GEMM) with its sum of squares, then `hc_pre_finish`
//! (flat-norm scale, Sinkhorn, the weighted stream sum), `hc_post`, and the head's weighting;
//! for few rows the whole sublayer boundary (post, pre, the next input norm) is one `hc_step`
//! launch, on sm_90 and newer as one thread-block cluster a row (`hc_step_cl`).

use ds4::backend::{BResult, Tensor};
use ds4::gguf::GgmlType;
use ds4::model::config::Config;
use ds4::model::weights::{HcWeights, TensorRef};
use ds4::model::Numerics;

use super::{dp, err, want};
use crate::driver::kargs;
use crate::CudaBackend;

/// Rows from which the fast mode computes the HC mix as a GEMM.
const GEMM_ROWS: usize = 32;
/// The HC width `hc_step` is compiled for (HC_FUSED).
const HC_FUSED: usize = 4;
/// Threads of an `hc_step` block that post (HC_STEP_THREADS), the columns it posts (a thread
/// per stream and column: HC_STEP_COLS) and the widest row its last block holds (HC_STEP_MAXE).
const HC_STEP_THREADS: usize = 256;
/// Threads of an `hc_step` launch: the posting threads and the Sinkhorn warp (HC_STEP_BLOCK).
const HC_STEP_BLOCK: usize = HC_STEP_THREADS + 32;
const HC_STEP_COLS: usize = HC_STEP_THREADS / HC_FUSED;
const HC_STEP_MAXE: usize = HC_STEP_THREADS * 16;
/// Row widths hc_step takes: whole warps of its last block's float4 groups (128 columns).
const HC_STEP_ALIGN: usize = 128;
/// The most columns an `hc_step_cl` block owns (HC_CL_COLS), its threads (HC_CL_BLOCK: those
/// and the Sinkhorn warp), and the cluster widths it may take (at most 16 blocks).
const HC_CL_COLS: usize = 256;
const HC_CL_BLOCK: usize = HC_CL_COLS + 32;
const HC_CL_WIDTHS: [usize; 4] = [16, 8, 4, 2];

/// The blocks of the `hc_step_cl` cluster of a row of width `e`: the widest whose blocks own
/// whole warps of columns, at most HC_CL_COLS each.
fn hc_cluster_width(e: usize) -> Option<usize> {
    HC_CL_WIDTHS
        .into_iter()
        .find(|&cl| e.is_multiple_of(32 * cl) && e / cl <= HC_CL_COLS)
}

/// Checks the shapes of an HC post's state, gates and output for `n` rows of width `e`.
fn check_hc_post(
    x_hc: &Tensor,
    mix: &Tensor,
    out: &Tensor,
    hc: usize,
    n: usize,
    e: usize,
) -> BResult<()> {
    want(x_hc, n, hc * e, "hc_post state")?;
    want(mix, n, hc + hc * hc, "hc_post mix")?;
    want(out, n, hc * e, "hc_post output")
}

/// Checks the shapes of an HC pre's weights and outputs for `n` rows (the combine matrix is
/// normalised by one warp, a lane per entry: at most 32).
fn check_hc_pre(
    w: &HcWeights,
    cfg: &Config,
    out: &Tensor,
    mix_out: &Tensor,
    n: usize,
) -> BResult<()> {
    let (hc, e) = (cfg.n_hc, cfg.n_embd);
    want(out, n, e, "hc_pre output")?;
    want(mix_out, n, hc + hc * hc, "hc_pre mix")?;
    if w.func.rows != (2 + hc) * hc || w.scale.len() < 3 || w.base.len() != (2 + hc) * hc {
        return Err(err("hc_pre weights do not match the HC width"));
    }
    if hc * hc > 32 {
        return Err(err(format!("HC width {hc}: at most 5 streams")));
    }
    Ok(())
}

impl CudaBackend {
    /// The mix slices of rows `first..first + n` of `x_hc` against `func` into a new arena
    /// temporary `[n × S × (func.rows + 1)]`; returns (slices, S).
    fn hc_mix(
        &self,
        x_hc: &Tensor,
        first: usize,
        n: usize,
        func: &TensorRef,
        num: Numerics,
    ) -> BResult<(u64, usize)> {
        if func.cols != x_hc.cols || first + n > x_hc.rows {
            return Err(err(format!("hc mix of {x_hc:?} with `{}`", func.name)));
        }
        let (width, n_mix) = (func.cols, func.rows);
        let (xp, fw) = (dp(x_hc)?, self.w(func)?);
        if num.fast && n >= GEMM_ROWS {
            let part = self.scratch(n * (n_mix + 1) * 4)?;
            let mark = self.arena.mark();
            let x0 = xp + (first * width * 4) as u64;
            let x16 = self.to_f16(x0, width, 0, 0, n, width)?;
            self.gemm(fw, 0, 0, n_mix, x16, width, n, n, part, n_mix + 1)?;
            self.arena.release(mark);
            let (w_i, o_s) = (width as i32, (n_mix + 1) as i32);
            let ss = part + (n_mix * 4) as u64;
            self.launch(
                "row_sumsq",
                (n as u32, 1, 1),
                256,
                0,
                &mut kargs![&x0, &w_i, &w_i, &ss, &o_s],
            )?;
            return Ok((part, 1));
        }
        let s = (64 / n.max(1)).clamp(1, 16);
        let part = self.scratch(n * s * (n_mix + 1) * 4)?;
        let (f0, s_i) = (first as i32, s as i32);
        let grid = (n as u32, n_mix as u32, s as u32);
        self.launch(
            "hc_mix",
            grid,
            256,
            0,
            &mut kargs![&xp, &f0, &fw, &s_i, &part],
        )?;
        Ok((part, s))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_hc_pre(
        &self,
        x_hc: &Tensor,
        w: &HcWeights,
        cfg: &Config,
        out: &mut Tensor,
        mix_out: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        let n = x_hc.rows;
        want(x_hc, n, cfg.n_hc * cfg.n_embd, "hc_pre input")?;
        check_hc_pre(w, cfg, out, mix_out, n)?;
        let mark = self.arena.mark();
        let (part, s) = self.hc_mix(x_hc, 0, n, &w.func, num)?;
        self.hc_pre_finish(part, s, x_hc, w, cfg, out, mix_out)?;
        self.arena.release(mark);
        Ok(())
    }

    /// hc_post into `out`, hc_pre of `out` with `w` into `h`, and the RMSNorm of `h` with
    /// `norm`: one `hc_step` launch for fewer than GEMM_ROWS rows in the fast mode, or for any
    /// chunk the ticket buffer covers in the precise mode (and widths it takes); else the three
    /// operations as they are.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_hc_post_pre(
        &self,
        y: &Tensor,
        x_hc: &Tensor,
        mix: &mut Tensor,
        out_hc: &mut Tensor,
        w: &HcWeights,
        norm: &[f32],
        cfg: &Config,
        h: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        let (hc, e, n) = (cfg.n_hc, cfg.n_embd, y.rows);
        let n_mix = w.func.rows;
        let shape = w.func.ty == GgmlType::F16
            && hc == HC_FUSED
            && n_mix == (2 + hc) * hc
            && self.opts_hc_step();
        let cluster = hc_cluster_width(e).filter(|_| shape && self.opts_hc_cluster());
        let fused = shape
            && e.is_multiple_of(HC_STEP_ALIGN)
            && e <= HC_STEP_MAXE
            && n * 4 <= self.tickets.len;
        if (num.fast && n >= GEMM_ROWS) || !(fused || cluster.is_some()) {
            self.op_hc_post(y, x_hc, mix, hc, out_hc)?;
            self.op_hc_pre(out_hc, w, cfg, h, mix, num)?;
            return self.op_rms_norm(h, Some(norm), e, cfg.rms_eps);
        }
        want(y, n, e, "hc_post input")?;
        check_hc_post(x_hc, mix, out_hc, hc, n, e)?;
        check_hc_pre(w, cfg, h, mix, n)?;
        if w.func.cols != hc * e || norm.len() != e {
            return Err(err(format!("hc step of {out_hc:?} with `{}`", w.func.name)));
        }
        if let Some(cl) = cluster {
            return self.hc_step_cl(y, x_hc, mix, out_hc, w, norm, cfg, h, cl);
        }
        let s = e / HC_STEP_COLS;
        let mark = self.arena.mark();
        let part = self.scratch(n * s * (n_mix + 1) * 4)?;
        let (yp, xp, mp, op, fw) = (dp(y)?, dp(x_hc)?, dp(mix)?, dp(out_hc)?, self.w(&w.func)?);
        let (s3, base, np, hp) = (self.p(&w.scale)?, self.p(&w.base)?, self.p(norm)?, dp(h)?);
        // A lone decode row also gets its 8-bit planes, as op_rms_norm gives it.
        let planes = (n == 1).then(|| self.planes_to_write(hp, e, 1)).flatten();
        let (q, qd) = planes.map_or((0, 0), |(q, d, _)| (q, d));
        let (e_i, it, eps, reps) = (e as i32, cfg.sinkhorn_iters as i32, cfg.hc_eps, cfg.rms_eps);
        let tk = self.tickets.ptr;
        self.launch(
            "hc_step",
            (n as u32, s as u32, 1),
            HC_STEP_BLOCK as u32,
            0,
            &mut kargs![
                &yp, &xp, &mp, &e_i, &op, &fw, &part, &s3, &base, &it, &eps, &reps, &np, &hp, &q,
                &qd, &tk
            ],
        )?;
        if let Some((_, _, h)) = planes {
            self.hold_planes(h);
        }
        self.arena.release(mark);
        Ok(())
    }

    /// `op_hc_post_pre`'s boundary as `hc_step_cl`: a cluster of `cl` blocks a row (shapes
    /// checked by the caller).
    #[allow(clippy::too_many_arguments)]
    fn hc_step_cl(
        &self,
        y: &Tensor,
        x_hc: &Tensor,
        mix: &mut Tensor,
        out_hc: &mut Tensor,
        w: &HcWeights,
        norm: &[f32],
        cfg: &Config,
        h: &mut Tensor,
        cl: usize,
    ) -> BResult<()> {
        let (e, n) = (cfg.n_embd, y.rows);
        let (yp, xp, mp, op, fw) = (dp(y)?, dp(x_hc)?, dp(mix)?, dp(out_hc)?, self.w(&w.func)?);
        let (s3, base, np, hp) = (self.p(&w.scale)?, self.p(&w.base)?, self.p(norm)?, dp(h)?);
        // A lone decode row also gets its 8-bit planes, as op_rms_norm gives it.
        let planes = (n == 1).then(|| self.planes_to_write(hp, e, 1)).flatten();
        let (q, qd) = planes.map_or((0, 0), |(q, d, _)| (q, d));
        let (e_i, it, eps, reps) = (e as i32, cfg.sinkhorn_iters as i32, cfg.hc_eps, cfg.rms_eps);
        self.launch_cluster(
            "hc_step_cl",
            (n as u32, cl as u32, 1),
            (1, cl as u32, 1),
            HC_CL_BLOCK as u32,
            &mut kargs![
                &yp, &xp, &mp, &e_i, &op, &fw, &s3, &base, &it, &eps, &reps, &np, &hp, &q, &qd
            ],
        )?;
        if let Some((_, _, h)) = planes {
            self.hold_planes(h);
        }
        Ok(())
    }

    /// The pre weights, post gates and combine matrix of HC pre from the mix slices `part`.
    #[allow(clippy::too_many_arguments)]
    fn hc_pre_finish(
        &self,
        part: u64,
        s: usize,
        x_hc: &Tensor,
        w: &HcWeights,
        cfg: &Config,
        out: &mut Tensor,
        mix_out: &mut Tensor,
    ) -> BResult<()> {
        let (hc, e, n) = (cfg.n_hc, cfg.n_embd, x_hc.rows);
        let (s3, base, xp, op, mo) = (
            self.p(&w.scale)?,
            self.p(&w.base)?,
            dp(x_hc)?,
            dp(out)?,
            dp(mix_out)?,
        );
        let (s_i, reps, h, ee, it, eps) = (
            s as i32,
            cfg.rms_eps,
            hc as i32,
            e as i32,
            cfg.sinkhorn_iters as i32,
            cfg.hc_eps,
        );
        // Few rows: spread each row's output columns over blocks (the gates are recomputed
        // per block, a few hundred cycles); many rows fill the device by themselves.
        let col_blocks = if n < 64 { e.div_ceil(256) } else { 1 };
        self.launch(
            "hc_pre_finish",
            (n as u32, col_blocks as u32, 1),
            256,
            0,
            &mut kargs![&part, &s_i, &reps, &s3, &base, &xp, &h, &ee, &it, &eps, &op, &mo],
        )
    }

    pub(crate) fn op_hc_post(
        &self,
        y: &Tensor,
        x_hc: &Tensor,
        mix: &Tensor,
        hc: usize,
        out: &mut Tensor,
    ) -> BResult<()> {
        let (n, e) = (y.rows, y.cols);
        check_hc_post(x_hc, mix, out, hc, n, e)?;
        let (yp, xp, mp, op) = (dp(y)?, dp(x_hc)?, dp(mix)?, dp(out)?);
        let (h, ee) = (hc as i32, e as i32);
        let grid = (n as u32, e.div_ceil(256) as u32, 1);
        self.launch(
            "hc_post",
            grid,
            256,
            0,
            &mut kargs![&yp, &xp, &mp, &h, &ee, &op],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_hc_head(
        &self,
        x_hc: &Tensor,
        first: usize,
        func: &TensorRef,
        scale: f32,
        base: &[f32],
        cfg: &Config,
        z: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        let (hc, e, n) = (cfg.n_hc, cfg.n_embd, z.rows);
        want(z, n, e, "hc_head output")?;
        if base.len() != hc || func.rows != hc {
            return Err(err("hc_head weights do not match the HC width"));
        }
        let mark = self.arena.mark();
        let (part, s) = self.hc_mix(x_hc, first, n, func, num)?;
        let (xp, bp, zp) = (dp(x_hc)?, self.p(base)?, dp(z)?);
        let (s_i, reps, f0, h, ee, eps) = (
            s as i32,
            cfg.rms_eps,
            first as i32,
            hc as i32,
            e as i32,
            cfg.hc_eps,
        );
        self.launch(
            "hc_head_finish",
            (n as u32, 1, 1),
            256,
            0,
            &mut kargs![&part, &s_i, &reps, &xp, &f0, &h, &ee, &scale, &bp, &eps, &zp],
        )?;
        self.arena.release(mark);
        Ok(())
    }
}
