//! Hyper-connections (kernels/hc.cu): `hc_pre` as the flat-norm projection plus the Sinkhorn
//! finish, `hc_post`, and the head's weighting.

use ds4::backend::{BResult, Tensor};
use ds4::model::config::Config;
use ds4::model::weights::{HcWeights, TensorRef};

use super::{dp, err, want};
use crate::driver::kargs;
use crate::CudaBackend;

impl CudaBackend {
    /// mix[t][i] = fn_i · RMSNorm(x_hc[first + t]) into a new arena temporary `[n × fn.rows]`.
    fn hc_mix(
        &self,
        x_hc: &Tensor,
        first: usize,
        n: usize,
        func: &TensorRef,
        eps: f32,
    ) -> BResult<u64> {
        if func.cols != x_hc.cols || first + n > x_hc.rows {
            return Err(err(format!("hc mix of {x_hc:?} with `{}`", func.name)));
        }
        let mix = self.scratch(n * func.rows * 4)?;
        let (xp, fw, f0) = (dp(x_hc)?, self.w(func)?, first as i32);
        let grid = (n as u32, func.rows as u32, 1);
        self.launch(
            "hc_mix",
            grid,
            256,
            0,
            &mut kargs![&xp, &f0, &fw, &eps, &mix],
        )?;
        Ok(mix)
    }

    pub(crate) fn op_hc_pre(
        &self,
        x_hc: &Tensor,
        w: &HcWeights,
        cfg: &Config,
        out: &mut Tensor,
        mix_out: &mut Tensor,
    ) -> BResult<()> {
        let (hc, e, n) = (cfg.n_hc, cfg.n_embd, x_hc.rows);
        want(x_hc, n, hc * e, "hc_pre input")?;
        want(out, n, e, "hc_pre output")?;
        want(mix_out, n, hc + hc * hc, "hc_pre mix")?;
        if w.func.rows != (2 + hc) * hc || w.scale.len() < 3 || w.base.len() != (2 + hc) * hc {
            return Err(err("hc_pre weights do not match the HC width"));
        }
        let mark = self.arena.mark();
        let mix = self.hc_mix(x_hc, 0, n, &w.func, cfg.rms_eps)?;
        let (s3, base, xp, op, mo) = (
            self.p(&w.scale)?,
            self.p(&w.base)?,
            dp(x_hc)?,
            dp(out)?,
            dp(mix_out)?,
        );
        let (h, ee, it, eps) = (hc as i32, e as i32, cfg.sinkhorn_iters as i32, cfg.hc_eps);
        self.launch(
            "hc_pre_finish",
            (n as u32, 1, 1),
            256,
            0,
            &mut kargs![&mix, &s3, &base, &xp, &h, &ee, &it, &eps, &op, &mo],
        )?;
        self.arena.release(mark);
        Ok(())
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
        want(x_hc, n, hc * e, "hc_post state")?;
        want(mix, n, hc + hc * hc, "hc_post mix")?;
        want(out, n, hc * e, "hc_post output")?;
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
    ) -> BResult<()> {
        let (hc, e, n) = (cfg.n_hc, cfg.n_embd, z.rows);
        want(z, n, e, "hc_head output")?;
        if base.len() != hc || func.rows != hc {
            return Err(err("hc_head weights do not match the HC width"));
        }
        let mark = self.arena.mark();
        let pre = self.hc_mix(x_hc, first, n, func, cfg.rms_eps)?;
        let (xp, bp, zp) = (dp(x_hc)?, self.p(base)?, dp(z)?);
        let (f0, h, ee, eps) = (first as i32, hc as i32, e as i32, cfg.hc_eps);
        self.launch(
            "hc_head_finish",
            (n as u32, 1, 1),
            256,
            0,
            &mut kargs![&pre, &xp, &f0, &h, &ee, &scale, &bp, &eps, &zp],
        )?;
        self.arena.release(mark);
        Ok(())
    }
}
