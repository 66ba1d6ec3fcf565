//! Hyper-connections on the CPU (spec/model.md §2.3, §2.6): the `pre` step (flat RMSNorm, the
//! `fn` projection, Sinkhorn, the weighted stream sum), the `post` step and the head's
//! weighting. Row-wise over `[tokens × n_hc·E]` HC states.

use rayon::prelude::*;

use super::{f32s, f32s_mut, want, CpuBackend};
use crate::backend::{BResult, Tensor};
use crate::model::config::Config;
use crate::model::hc::sinkhorn;
use crate::model::numerics::{rms_norm, sigmoid};
use crate::model::weights::{HcWeights, TensorRef};

/// `flat = RMSNorm(x_hc)` (no weight) then `mix = fn · flat` for rows `first..first + n`.
fn hc_mix(
    be: &CpuBackend,
    x_hc: &[f32],
    func: &TensorRef,
    first: usize,
    n: usize,
    eps: f32,
) -> BResult<Vec<f32>> {
    let width = func.cols;
    let mut flat = x_hc[first * width..(first + n) * width].to_vec();
    flat.par_chunks_mut(width)
        .for_each(|r| rms_norm(r, None, eps));
    be.matmul_view(func, 0, 0..func.rows, &flat, n)
}

pub(super) fn hc_pre(
    be: &CpuBackend,
    x_hc: &Tensor,
    w: &HcWeights,
    cfg: &Config,
    out: &mut Tensor,
    mix_out: &mut Tensor,
) -> BResult<()> {
    let (hc, e, n) = (cfg.n_hc, cfg.n_embd, x_hc.rows);
    let n_mix = (2 + hc) * hc;
    want(x_hc, n, hc * e, "hc_pre input")?;
    want(out, n, e, "hc_pre output")?;
    want(mix_out, n, hc + hc * hc, "hc_pre mix")?;
    let x = f32s(x_hc)?;
    let mix = hc_mix(be, x, &w.func, 0, n, cfg.rms_eps)?;
    let mut a = vec![0f32; n * e];
    let mut pc = vec![0f32; n * (hc + hc * hc)];
    a.par_chunks_mut(e)
        .zip(pc.par_chunks_mut(hc + hc * hc))
        .enumerate()
        .for_each(|(t, (a_in, pc))| {
            let z: Vec<f32> = (0..n_mix)
                .map(|i| {
                    let k = if i < hc {
                        0
                    } else if i < 2 * hc {
                        1
                    } else {
                        2
                    };
                    mix[t * n_mix + i] * w.scale[k] + w.base[i]
                })
                .collect();
            let pre: Vec<f32> = (0..hc).map(|h| sigmoid(z[h]) + cfg.hc_eps).collect();
            let (post, comb) = pc.split_at_mut(hc);
            (0..hc).for_each(|h| post[h] = 2.0 * sigmoid(z[hc + h]));
            comb.copy_from_slice(&z[2 * hc..]);
            sinkhorn(comb, hc, cfg.sinkhorn_iters, cfg.hc_eps);
            let xt = &x[t * hc * e..(t + 1) * hc * e];
            for (h, &p) in pre.iter().enumerate() {
                a_in.iter_mut()
                    .zip(&xt[h * e..(h + 1) * e])
                    .for_each(|(o, &v)| *o += p * v);
            }
        });
    *f32s_mut(out)? = a;
    *f32s_mut(mix_out)? = pc;
    Ok(())
}

pub(super) fn hc_post(
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
    let (ys, x, m) = (f32s(y)?, f32s(x_hc)?, f32s(mix)?);
    let o = f32s_mut(out)?;
    o.par_chunks_mut(hc * e).enumerate().for_each(|(t, o)| {
        let xt = &x[t * hc * e..(t + 1) * hc * e];
        let yt = &ys[t * e..(t + 1) * e];
        let mt = &m[t * (hc + hc * hc)..(t + 1) * (hc + hc * hc)];
        let (post, comb) = mt.split_at(hc);
        for f in 0..hc {
            let of = &mut o[f * e..(f + 1) * e];
            let p = post[f];
            of.iter_mut().zip(yt).for_each(|(o, &v)| *o = p * v);
            for s in 0..hc {
                let c = comb[f + hc * s];
                of.iter_mut()
                    .zip(&xt[s * e..(s + 1) * e])
                    .for_each(|(o, &v)| *o += c * v);
            }
        }
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn hc_head(
    be: &CpuBackend,
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
    if first + n > x_hc.rows || x_hc.cols != hc * e {
        return Err(super::err(format!(
            "hc_head of rows {first}..{} of {x_hc:?}",
            first + n
        )));
    }
    let x = f32s(x_hc)?;
    let pre = hc_mix(be, x, func, first, n, cfg.rms_eps)?;
    let zs = f32s_mut(z)?;
    zs.iter_mut().for_each(|v| *v = 0.0);
    zs.par_chunks_mut(e).enumerate().for_each(|(t, zt)| {
        let xt = &x[(first + t) * hc * e..(first + t + 1) * hc * e];
        for h in 0..hc {
            let wh = sigmoid(pre[t * hc + h] * scale + base[h]) + cfg.hc_eps;
            zt.iter_mut()
                .zip(&xt[h * e..(h + 1) * e])
                .for_each(|(o, &v)| *o += wh * v);
        }
    });
    Ok(())
}
