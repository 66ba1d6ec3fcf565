//! The FFN sublayer (spec/model.md §2.5, pitfalls 10–11): the sqrt-softplus router with a
//! selection-only bias (hash routing from `tid2eid` on the first layers), the routed experts
//! with the clamped SwiGLU and the router weight applied before `down`, and the shared expert.

use rayon::prelude::*;

use super::config::Config;
use super::numerics::{silu, softplus};
use super::weights::{LayerWeights, TensorRef};
use crate::backend::{Backend, BackendError};

/// Floor of the selected scores' sum before normalising (spec §2.5 step 4).
const WEIGHT_SUM_FLOOR: f32 = 6.1035e-5;

/// The experts and weights chosen for one token.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Expert ids, `n_expert_used` of them.
    pub experts: Vec<usize>,
    /// Their weights (normalised to sum 1, times the routed scale).
    pub weights: Vec<f32>,
}

/// Routes each of the `n` tokens (spec §2.5 steps 2–4).
pub fn route(
    be: &dyn Backend,
    u: &[f32],
    lw: &LayerWeights,
    tokens: &[u32],
    cfg: &Config,
) -> Result<Vec<Route>, BackendError> {
    let n = tokens.len();
    let ne = cfg.n_expert;
    let logits = be.matmul(&lw.ffn_gate_inp, u, n)?;
    Ok((0..n)
        .into_par_iter()
        .map(|t| {
            let p: Vec<f32> = logits[t * ne..(t + 1) * ne]
                .iter()
                .map(|&z| softplus(z).sqrt())
                .collect();
            let experts: Vec<usize> = match &lw.ffn_gate_tid2eid {
                Some(table) => {
                    let k = cfg.n_expert_used;
                    let tok = tokens[t] as usize;
                    table[tok * k..(tok + 1) * k]
                        .iter()
                        .map(|&e| e as usize)
                        .collect()
                }
                None => {
                    let sel: Vec<f32> = p.iter().zip(&lw.exp_probs_b).map(|(a, b)| a + b).collect();
                    let mut idx: Vec<usize> = (0..ne).collect();
                    idx.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]).then(a.cmp(&b)));
                    idx.truncate(cfg.n_expert_used);
                    idx
                }
            };
            let sum: f32 = experts.iter().map(|&e| p[e]).sum();
            let denom = sum.max(WEIGHT_SUM_FLOOR);
            let weights = experts
                .iter()
                .map(|&e| p[e] / denom * cfg.expert_weights_scale)
                .collect();
            Route { experts, weights }
        })
        .collect())
}

/// `silu(min(g, c)) · clamp(v, −c, c)` elementwise into `g` (spec §2.5 step 5).
fn swiglu(g: &mut [f32], v: &[f32], clamp: f32) {
    g.iter_mut()
        .zip(v)
        .for_each(|(g, &v)| *g = silu(g.min(clamp)) * v.clamp(-clamp, clamp));
}

/// Routed experts plus the shared expert for `n` tokens of normed input `u` (`[n × E]`).
pub fn moe(
    be: &dyn Backend,
    u: &[f32],
    lw: &LayerWeights,
    tokens: &[u32],
    il: usize,
    cfg: &Config,
) -> Result<Vec<f32>, BackendError> {
    let (n, e, ff) = (tokens.len(), cfg.n_embd, cfg.ff_exp);
    let clamp = cfg.swiglu_clamp[il];
    let routes = route(be, u, lw, tokens, cfg)?;

    // Group the (token, weight) pairs by expert so each expert runs once over its tokens.
    let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); cfg.n_expert];
    for (t, r) in routes.iter().enumerate() {
        for (&ex, &w) in r.experts.iter().zip(&r.weights) {
            by_expert[ex].push((t, w));
        }
    }
    let mut out = vec![0f32; n * e];
    for (ex, list) in by_expert.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        let x: Vec<f32> = list
            .iter()
            .flat_map(|&(t, _)| u[t * e..(t + 1) * e].iter().copied())
            .collect();
        let m = list.len();
        let mut g = be.matmul_expert(&lw.ffn_gate_exps, ex, &x, m)?;
        let v = be.matmul_expert(&lw.ffn_up_exps, ex, &x, m)?;
        swiglu(&mut g, &v, clamp);
        for (i, &(_, w)) in list.iter().enumerate() {
            g[i * ff..(i + 1) * ff].iter_mut().for_each(|x| *x *= w);
        }
        let d = be.matmul_expert(&lw.ffn_down_exps, ex, &g, m)?;
        for (i, &(t, _)) in list.iter().enumerate() {
            out[t * e..(t + 1) * e]
                .iter_mut()
                .zip(&d[i * e..(i + 1) * e])
                .for_each(|(o, &v)| *o += v);
        }
    }
    let sh = shared(be, u, lw, n, clamp)?;
    out.iter_mut().zip(&sh).for_each(|(o, &s)| *o += s);
    Ok(out)
}

/// The shared expert: the same clamped SwiGLU, no router weight (spec §2.5 step 6).
fn shared(
    be: &dyn Backend,
    u: &[f32],
    lw: &LayerWeights,
    n: usize,
    clamp: f32,
) -> Result<Vec<f32>, BackendError> {
    let ffn = |w: &TensorRef| be.matmul(w, u, n);
    let mut g = ffn(&lw.ffn_gate_shexp)?;
    let v = ffn(&lw.ffn_up_shexp)?;
    swiglu(&mut g, &v, clamp);
    be.matmul(&lw.ffn_down_shexp, &g, n)
}
