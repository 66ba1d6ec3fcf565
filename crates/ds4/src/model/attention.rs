//! The attention sublayer (spec/model.md §2.4): low-rank q with per-head norm, the shared K=V
//! row, partial RoPE, the raw window, the compressors and indexer, attention with sinks over
//! raw ++ compressed rows, inverse RoPE on the output and the grouped output projection.

use rayon::prelude::*;

use super::compressor::compress;
use super::config::Config;
use super::indexer;
use super::numerics::{fp8_e4m3_sim, indexer_qat_sim, rms_norm, round_f16};
use super::rope::Rope;
use super::weights::LayerWeights;
use super::Numerics;
use crate::backend::{Backend, BackendError};
use crate::session::LayerState;

/// Storage rounding of one attention row (raw or compressed): FP8 on the non-RoPE dims, then
/// f16 (spec §7.1, §7.3). Each step only when `num` asks for it.
fn finish_kv_row(row: &mut [f32], n_rot: usize, num: Numerics) {
    if num.fp8_kv {
        let nope = row.len() - n_rot;
        fp8_e4m3_sim(&mut row[..nope]);
    }
    if num.f16_rows {
        round_f16(row);
    }
}

/// Storage rounding of one indexer row or query head: Hadamard + FP4 (spec §7.2), and f16 for
/// stored rows.
fn finish_idx(x: &mut [f32], num: Numerics, stored: bool) {
    if num.indexer_qat {
        indexer_qat_sim(x);
    }
    if stored && num.f16_rows {
        round_f16(x);
    }
}

/// Runs attention for `n` tokens at positions `pos0..` with sublayer input `a_in` (`[n × E]`),
/// updating the layer's cache; returns the sublayer output `[n × E]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    be: &dyn Backend,
    a_in: &[f32],
    lw: &LayerWeights,
    st: &mut LayerState,
    il: usize,
    pos0: usize,
    n: usize,
    cfg: &Config,
    num: Numerics,
) -> Result<Vec<f32>, BackendError> {
    let (e, hd, nh) = (cfg.n_embd, cfg.head_dim, cfg.n_head);
    let rope = Rope::for_layer(cfg, il);
    let eps = cfg.rms_eps;

    // §2.4.1 projections.
    let mut h = a_in.to_vec();
    h.par_chunks_mut(e)
        .for_each(|r| rms_norm(r, Some(&lw.attn_norm), eps));
    let mut qr = be.matmul(&lw.attn_q_a, &h, n)?;
    qr.par_chunks_mut(cfg.q_lora)
        .for_each(|r| rms_norm(r, Some(&lw.attn_q_a_norm), eps));
    let mut q = be.matmul(&lw.attn_q_b, &qr, n)?;
    let mut kv = be.matmul(&lw.attn_kv, &h, n)?;
    q.par_chunks_mut(nh * hd).enumerate().for_each(|(t, qt)| {
        for head in qt.chunks_mut(hd) {
            rms_norm(head, None, eps);
            rope.apply(head, pos0 + t, false);
        }
    });
    kv.par_chunks_mut(hd).enumerate().for_each(|(t, row)| {
        rms_norm(row, Some(&lw.attn_kv_a_norm), eps);
        rope.apply(row, pos0 + t, false);
        finish_kv_row(row, cfg.n_rot, num);
    });

    // §2.4.3 raw window: earlier rows followed by this batch's rows.
    let n_prev = st.raw.len() / hd;
    let mut raw_all = std::mem::take(&mut st.raw);
    raw_all.extend_from_slice(&kv);

    // §2.4.4 compressors and §2.4.5 indexer.
    let ratio = cfg.ratio(il);
    let mut visible = vec![0usize; n];
    if let (Some(cw), Some(fr)) = (&lw.attn_compressor, st.attn_frontier.as_mut()) {
        let fin = |r: &mut [f32]| finish_kv_row(r, cfg.n_rot, num);
        visible = compress(
            be,
            cw,
            fr,
            &mut st.comp,
            &h,
            n,
            pos0,
            ratio,
            hd,
            cfg,
            &rope,
            &fin,
        )?;
    }
    let mut selected = vec![None; n];
    if let (Some(iw), Some(fr)) = (&lw.indexer, st.idx_frontier.as_mut()) {
        let fin = |r: &mut [f32]| finish_idx(r, num, true);
        let dh = cfg.idx_head_dim;
        compress(
            be,
            &iw.compressor,
            fr,
            &mut st.idx,
            &h,
            n,
            pos0,
            ratio,
            dh,
            cfg,
            &rope,
            &fin,
        )?;
        let qat = |x: &mut [f32]| finish_idx(x, num, false);
        selected = indexer::select(be, iw, &st.idx, &visible, &qr, &h, pos0, cfg, &rope, &qat)?;
    }

    // §2.4.6 attention with sinks, per token and head; then §2.4.7 inverse RoPE.
    let scale = 1.0 / (hd as f32).sqrt();
    let comp = &st.comp;
    let mut o = vec![0f32; n * nh * hd];
    o.par_chunks_mut(nh * hd).enumerate().for_each(|(t, ot)| {
        let last = n_prev + t;
        let first = (last + 1).saturating_sub(cfg.n_swa);
        let mut rows: Vec<&[f32]> = (first..=last)
            .map(|r| &raw_all[r * hd..(r + 1) * hd])
            .collect();
        match &selected[t] {
            Some(sel) => rows.extend(sel.iter().map(|&c| &comp[c * hd..(c + 1) * hd])),
            None => rows.extend((0..visible[t]).map(|c| &comp[c * hd..(c + 1) * hd])),
        }
        let qt = &q[t * nh * hd..(t + 1) * nh * hd];
        for (head, oh) in ot.chunks_mut(hd).enumerate() {
            let qh = &qt[head * hd..(head + 1) * hd];
            let s: Vec<f32> = rows
                .iter()
                .map(|r| crate::quant::dot_f32(qh, r) * scale)
                .collect();
            let sink = lw.attn_sinks[head];
            let m = s.iter().fold(sink, |a, &b| a.max(b));
            let den = (sink - m).exp() + s.iter().map(|&v| (v - m).exp()).sum::<f32>();
            for (r, &sv) in rows.iter().zip(&s) {
                let p = (sv - m).exp() / den;
                oh.iter_mut().zip(*r).for_each(|(o, &v)| *o += p * v);
            }
            rope.apply(oh, pos0 + t, true);
        }
    });

    // Keep the last n_swa rows (the window as of the last token; spec §6).
    let keep = (n_prev + n).min(cfg.n_swa);
    st.raw = raw_all[(n_prev + n - keep) * hd..].to_vec();

    // §2.4.7 grouped output projection: group g's heads through rows g·o_lora.. of output_a.
    let hpg = cfg.heads_per_group();
    let gw = hpg * hd;
    let mut low = vec![0f32; n * cfg.o_groups * cfg.o_lora];
    for g in 0..cfg.o_groups {
        let xg: Vec<f32> = o
            .chunks(nh * hd)
            .flat_map(|ot| ot[g * gw..(g + 1) * gw].iter().copied())
            .collect();
        let yg = be.matmul_rows(
            &lw.attn_output_a,
            g * cfg.o_lora..(g + 1) * cfg.o_lora,
            &xg,
            n,
        )?;
        for t in 0..n {
            let dst = &mut low
                [(t * cfg.o_groups + g) * cfg.o_lora..(t * cfg.o_groups + g + 1) * cfg.o_lora];
            dst.copy_from_slice(&yg[t * cfg.o_lora..(t + 1) * cfg.o_lora]);
        }
    }
    be.matmul(&lw.attn_output_b, &low, n)
}
