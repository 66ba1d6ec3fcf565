//! The sparse-attention indexer of ratio-4 layers (spec/model.md §2.4.5, pitfall 7): when a
//! query token sees more compressed rows than top-k, it scores every visible indexer row with
//! `Σ_h w_h·ReLU(q_h·K_c)` and keeps the top-k (ties: lowest index). Selection is per token.

use rayon::prelude::*;

use super::config::Config;
use super::rope::Rope;
use super::weights::IndexerWeights;
use crate::backend::{Backend, BackendError};

/// For each of the `n` tokens, the compressed rows it may attend to: `None` = all visible rows.
#[allow(clippy::too_many_arguments)]
pub fn select(
    be: &dyn Backend,
    w: &IndexerWeights,
    idx_rows: &[f32],
    visible: &[usize],
    qr: &[f32],
    h: &[f32],
    pos0: usize,
    cfg: &Config,
    rope: &Rope,
    qat: &(dyn Fn(&mut [f32]) + Sync),
) -> Result<Vec<Option<Vec<usize>>>, BackendError> {
    let n = visible.len();
    let topk = cfg.idx_topk;
    if visible.iter().all(|&v| v <= topk) {
        return Ok(vec![None; n]);
    }
    let (nh, dh) = (cfg.idx_heads, cfg.idx_head_dim);
    let mut q = be.matmul(&w.attn_q_b, qr, n)?;
    let mut wts = be.matmul(&w.proj, h, n)?;
    let wscale = 1.0 / ((nh * dh) as f32).sqrt();
    wts.iter_mut().for_each(|v| *v *= wscale);
    q.par_chunks_mut(nh * dh).enumerate().for_each(|(t, qt)| {
        for head in qt.chunks_mut(dh) {
            rope.apply(head, pos0 + t, false);
            qat(head);
        }
    });
    Ok((0..n)
        .into_par_iter()
        .map(|t| {
            let nv = visible[t];
            if nv <= topk {
                return None;
            }
            let qt = &q[t * nh * dh..(t + 1) * nh * dh];
            let wt = &wts[t * nh..(t + 1) * nh];
            let scores: Vec<f32> = (0..nv)
                .map(|c| {
                    let k = &idx_rows[c * dh..(c + 1) * dh];
                    (0..nh)
                        .map(|hh| {
                            let d = crate::quant::dot_f32(&qt[hh * dh..(hh + 1) * dh], k);
                            wt[hh] * d.max(0.0)
                        })
                        .sum()
                })
                .collect();
            Some(top_k(&scores, topk))
        })
        .collect())
}

/// Indices of the `k` largest scores, ascending index order; ties prefer the lower index.
fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_prefers_lower_index_on_ties() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0, 3.0], 2), vec![1, 2]);
        assert_eq!(top_k(&[0.0, 0.0, 0.0], 2), vec![0, 1]);
    }
}
