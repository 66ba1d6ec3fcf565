//! The sparse-attention indexer on the CPU (spec/model.md §2.4.5, pitfall 7): a row that sees
//! more compressed rows than top-k scores every visible indexer row with
//! `Σ_h w_h·ReLU(q_h·K_c)` and keeps the top-k (ties: lowest index). Selection is per row.

use rayon::prelude::*;

use super::{err, f32s, i32s_mut, want};
use crate::backend::{BResult, Rows, Tensor};
use crate::session::KvState;

pub(super) fn select(
    st: &KvState,
    il: usize,
    q: &Tensor,
    wts: &Tensor,
    rows: &Rows,
    sel: &mut Tensor,
) -> BResult<()> {
    let n = rows.n();
    let topk = sel.cols;
    let nh = wts.cols;
    if nh == 0 || !q.cols.is_multiple_of(nh) {
        return Err(err(format!("indexer q {q:?} with {nh} heads")));
    }
    let dh = q.cols / nh;
    want(q, n, nh * dh, "indexer q")?;
    want(wts, n, nh, "indexer weights")?;
    want(sel, n, topk, "indexer selection")?;
    let layer = st
        .layers
        .get(il)
        .ok_or_else(|| err(format!("layer {il} outside the session")))?;
    let idx_rows = &layer.idx;
    let held = idx_rows.len() / dh;
    let (qs, ws) = (f32s(q)?, f32s(wts)?);
    let out = i32s_mut(sel)?;
    out.par_chunks_mut(topk).enumerate().for_each(|(t, o)| {
        let nv = Rows::visible(rows.pos[t], 4).min(held);
        o.iter_mut().for_each(|v| *v = -1);
        if nv <= topk {
            (0..nv).for_each(|c| o[c] = c as i32);
            return;
        }
        let qt = &qs[t * nh * dh..(t + 1) * nh * dh];
        let wt = &ws[t * nh..(t + 1) * nh];
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
        for (o, c) in o.iter_mut().zip(top_k(&scores, topk)) {
            *o = c as i32;
        }
    });
    Ok(())
}

/// Indices of the `k` largest scores, ascending index order; ties prefer the lower index.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
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
