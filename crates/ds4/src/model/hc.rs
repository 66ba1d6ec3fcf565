//! Hyper-connections (spec/model.md §2.3, §2.6): the `pre` step that mixes the HC streams into
//! one sublayer input (with the Sinkhorn-normalised combine matrix for the `post` step), the
//! `post` step that writes the sublayer output back into the streams, and the head's weighting.
//! Row-wise over `[tokens × n_hc·E]` HC states.

use rayon::prelude::*;

use super::config::Config;
use super::numerics::{rms_norm, sigmoid};
use super::weights::{HcWeights, TensorRef};
use crate::backend::{Backend, BackendError};

/// The per-token outputs of `hc_pre` that `hc_post` needs.
#[derive(Debug, Clone)]
pub struct HcMix {
    /// `[tokens × n_hc]` post gates `2·σ(z)`.
    pub post: Vec<f32>,
    /// `[tokens × n_hc²]` combine coefficients, `comb[f + n_hc·s]` from old stream s to new f.
    pub comb: Vec<f32>,
}

/// `flat = RMSNorm(x_hc)` (no weight) then `mix = fn · flat`, per token: `[tokens × fn.rows]`.
fn hc_mix(
    be: &dyn Backend,
    x_hc: &[f32],
    func: &TensorRef,
    n: usize,
    eps: f32,
) -> Result<Vec<f32>, BackendError> {
    let width = func.cols;
    let mut flat = x_hc.to_vec();
    flat.par_chunks_mut(width)
        .for_each(|r| rms_norm(r, None, eps));
    be.matmul(func, &flat, n)
}

/// Sinkhorn normalisation of one `n_hc × n_hc` combine matrix in place (spec §2.3 step 4):
/// a row softmax (+eps) and a column normalisation, then `iters − 1` row/column rounds.
pub fn sinkhorn(c: &mut [f32], n_hc: usize, iters: usize, eps: f32) {
    for s in 0..n_hc {
        let row = &mut c[s * n_hc..(s + 1) * n_hc];
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        row.iter_mut().for_each(|v| *v = (*v - m).exp());
        let sum: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v = *v / sum + eps);
    }
    let col_norm = |c: &mut [f32]| {
        for f in 0..n_hc {
            let sum: f32 = (0..n_hc).map(|s| c[f + n_hc * s]).sum::<f32>() + eps;
            (0..n_hc).for_each(|s| c[f + n_hc * s] /= sum);
        }
    };
    col_norm(c);
    for _ in 1..iters {
        for s in 0..n_hc {
            let row = &mut c[s * n_hc..(s + 1) * n_hc];
            let sum: f32 = row.iter().sum::<f32>() + eps;
            row.iter_mut().for_each(|v| *v /= sum);
        }
        col_norm(c);
    }
}

/// HC pre step for `n` tokens: returns the sublayer input `[n × E]` and the post/comb mix.
pub fn hc_pre(
    be: &dyn Backend,
    x_hc: &[f32],
    w: &HcWeights,
    cfg: &Config,
    n: usize,
) -> Result<(Vec<f32>, HcMix), BackendError> {
    let (hc, e) = (cfg.n_hc, cfg.n_embd);
    let n_mix = (2 + hc) * hc;
    let mix = hc_mix(be, x_hc, &w.func, n, cfg.rms_eps)?;
    let mut out = vec![0f32; n * e];
    let mut post = vec![0f32; n * hc];
    let mut comb = vec![0f32; n * hc * hc];
    out.par_chunks_mut(e)
        .zip(post.par_chunks_mut(hc))
        .zip(comb.par_chunks_mut(hc * hc))
        .enumerate()
        .for_each(|(t, ((a_in, post), comb))| {
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
            (0..hc).for_each(|h| post[h] = 2.0 * sigmoid(z[hc + h]));
            comb.copy_from_slice(&z[2 * hc..]);
            sinkhorn(comb, hc, cfg.sinkhorn_iters, cfg.hc_eps);
            let x = &x_hc[t * hc * e..(t + 1) * hc * e];
            for (h, &p) in pre.iter().enumerate() {
                a_in.iter_mut()
                    .zip(&x[h * e..(h + 1) * e])
                    .for_each(|(o, &v)| *o += p * v);
            }
        });
    Ok((out, HcMix { post, comb }))
}

/// HC post step: `X_new[f] = post[f]·y + Σ_s comb[f + n_hc·s]·X[s]`, per token.
pub fn hc_post(y: &[f32], x_hc: &[f32], mix: &HcMix, cfg: &Config) -> Vec<f32> {
    let (hc, e) = (cfg.n_hc, cfg.n_embd);
    let mut out = vec![0f32; x_hc.len()];
    out.par_chunks_mut(hc * e).enumerate().for_each(|(t, o)| {
        let x = &x_hc[t * hc * e..(t + 1) * hc * e];
        let yt = &y[t * e..(t + 1) * e];
        for f in 0..hc {
            let of = &mut o[f * e..(f + 1) * e];
            let p = mix.post[t * hc + f];
            of.iter_mut().zip(yt).for_each(|(o, &v)| *o = p * v);
            for s in 0..hc {
                let c = mix.comb[t * hc * hc + f + hc * s];
                of.iter_mut()
                    .zip(&x[s * e..(s + 1) * e])
                    .for_each(|(o, &v)| *o += c * v);
            }
        }
    });
    out
}

/// The output head's HC reduction (spec §2.6): `z = Σ_h (σ(pre_h·scale + base_h) + eps)·X[h]`.
pub fn hc_head(
    be: &dyn Backend,
    x_hc: &[f32],
    func: &TensorRef,
    scale: f32,
    base: &[f32],
    cfg: &Config,
    n: usize,
) -> Result<Vec<f32>, BackendError> {
    let (hc, e) = (cfg.n_hc, cfg.n_embd);
    let pre = hc_mix(be, x_hc, func, n, cfg.rms_eps)?;
    let mut z = vec![0f32; n * e];
    z.par_chunks_mut(e).enumerate().for_each(|(t, zt)| {
        let x = &x_hc[t * hc * e..(t + 1) * hc * e];
        for h in 0..hc {
            let wh = sigmoid(pre[t * hc + h] * scale + base[h]) + cfg.hc_eps;
            zt.iter_mut()
                .zip(&x[h * e..(h + 1) * e])
                .for_each(|(o, &v)| *o += wh * v);
        }
    });
    Ok(z)
}
