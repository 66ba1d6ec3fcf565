//! The FFN sublayer's kernels on the CPU (spec/model.md §2.5, pitfalls 10–11): the
//! sqrt-softplus router with a selection-only bias (hash routing from `tid2eid` on the first
//! layers), the clamped SwiGLU, and the routed experts with the router weight applied before
//! `down`, each expert run once over the rows that chose it.

use rayon::prelude::*;

use super::{err, f32s, f32s_mut, i32s, i32s_mut, want, CpuBackend};
use crate::backend::{BResult, Rows, Tensor};
use crate::model::numerics::{silu, softplus};
use crate::model::weights::TensorRef;

/// Floor of the selected scores' sum before normalising (spec §2.5 step 4).
pub(crate) const WEIGHT_SUM_FLOOR: f32 = 6.1035e-5;

pub(super) fn route(
    logits: &Tensor,
    bias: &[f32],
    tid2eid: Option<&[u32]>,
    scale: f32,
    rows: &Rows,
    ids: &mut Tensor,
    wts: &mut Tensor,
) -> BResult<()> {
    let (n, ne, k) = (rows.n(), logits.cols, ids.cols);
    want(logits, n, ne, "router logits")?;
    want(ids, n, k, "expert ids")?;
    want(wts, n, k, "expert weights")?;
    if bias.len() != ne || k > ne {
        return Err(err(format!(
            "router: {ne} experts, bias {}, k {k}",
            bias.len()
        )));
    }
    let lg = f32s(logits)?;
    if let Some(table) = tid2eid {
        if rows
            .tokens
            .iter()
            .any(|&t| (t as usize + 1) * k > table.len())
        {
            return Err(err("a token lies outside the tid2eid table"));
        }
    }
    let picked: Vec<(Vec<usize>, Vec<f32>)> = (0..n)
        .into_par_iter()
        .map(|t| {
            let p: Vec<f32> = lg[t * ne..(t + 1) * ne]
                .iter()
                .map(|&z| softplus(z).sqrt())
                .collect();
            let experts: Vec<usize> = match tid2eid {
                Some(table) => {
                    let tok = rows.tokens[t] as usize;
                    table[tok * k..(tok + 1) * k]
                        .iter()
                        .map(|&e| e as usize)
                        .collect()
                }
                None => {
                    let sel: Vec<f32> = p.iter().zip(bias).map(|(a, b)| a + b).collect();
                    let mut idx: Vec<usize> = (0..ne).collect();
                    idx.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]).then(a.cmp(&b)));
                    idx.truncate(k);
                    idx
                }
            };
            let sum: f32 = experts.iter().map(|&e| p[e]).sum();
            let denom = sum.max(WEIGHT_SUM_FLOOR);
            let weights = experts.iter().map(|&e| p[e] / denom * scale).collect();
            (experts, weights)
        })
        .collect();
    let io = i32s_mut(ids)?;
    for (t, (e, _)) in picked.iter().enumerate() {
        for (j, &x) in e.iter().enumerate() {
            io[t * k + j] = x as i32;
        }
    }
    let wv = f32s_mut(wts)?;
    for (t, (_, w)) in picked.iter().enumerate() {
        wv[t * k..(t + 1) * k].copy_from_slice(w);
    }
    Ok(())
}

/// `silu(min(g, c)) · clamp(v, −c, c)` elementwise into `g` (spec §2.5 step 5).
fn swiglu(g: &mut [f32], v: &[f32], clamp: f32) {
    g.iter_mut()
        .zip(v)
        .for_each(|(g, &v)| *g = silu(g.min(clamp)) * v.clamp(-clamp, clamp));
}

pub(super) fn swiglu_ffn(
    be: &CpuBackend,
    gate: &TensorRef,
    up: &TensorRef,
    x: &Tensor,
    clamp: f32,
    mid: &mut Tensor,
) -> BResult<()> {
    let n = x.rows;
    want(x, n, gate.cols, "swiglu input")?;
    want(mid, n, gate.rows, "swiglu output")?;
    let xs = f32s(x)?;
    let mut g = be.matmul_view(gate, 0, 0..gate.rows, xs, n)?;
    let v = be.matmul_view(up, 0, 0..up.rows, xs, n)?;
    swiglu(&mut g, &v, clamp);
    *f32s_mut(mid)? = g;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn experts(
    be: &CpuBackend,
    gate: &TensorRef,
    up: &TensorRef,
    down: &TensorRef,
    x: &Tensor,
    ids: &Tensor,
    wts: &Tensor,
    clamp: f32,
    out: &mut Tensor,
) -> BResult<()> {
    let (n, e, ff, k) = (x.rows, x.cols, gate.rows, ids.cols);
    want(x, n, gate.cols, "experts input")?;
    want(ids, n, k, "expert ids")?;
    want(wts, n, k, "expert weights")?;
    want(out, n, down.rows, "experts output")?;
    let (xs, is, ws) = (f32s(x)?, i32s(ids)?, f32s(wts)?);
    // Group the (row, weight) pairs by expert so each expert runs once over its rows.
    let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); gate.n_mats];
    for t in 0..n {
        for j in 0..k {
            let ex = usize::try_from(is[t * k + j])
                .ok()
                .filter(|&ex| ex < gate.n_mats)
                .ok_or_else(|| err(format!("expert id {} out of range", is[t * k + j])))?;
            by_expert[ex].push((t, ws[t * k + j]));
        }
    }
    let mut acc = vec![0f32; n * down.rows];
    for (ex, list) in by_expert.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        let xg: Vec<f32> = list
            .iter()
            .flat_map(|&(t, _)| xs[t * e..(t + 1) * e].iter().copied())
            .collect();
        let m = list.len();
        let mut g = be.matmul_view(gate, ex, 0..gate.rows, &xg, m)?;
        let v = be.matmul_view(up, ex, 0..up.rows, &xg, m)?;
        swiglu(&mut g, &v, clamp);
        for (i, &(_, w)) in list.iter().enumerate() {
            g[i * ff..(i + 1) * ff].iter_mut().for_each(|x| *x *= w);
        }
        let d = be.matmul_view(down, ex, 0..down.rows, &g, m)?;
        let dr = down.rows;
        for (i, &(t, _)) in list.iter().enumerate() {
            acc[t * dr..(t + 1) * dr]
                .iter_mut()
                .zip(&d[i * dr..(i + 1) * dr])
                .for_each(|(o, &v)| *o += v);
        }
    }
    *f32s_mut(out)? = acc;
    Ok(())
}
