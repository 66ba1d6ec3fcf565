//! The raw KV window and sink attention on the CPU (spec/model.md §2.4.3, §2.4.6): each row's
//! heads attend, in one softmax with the head's sink logit, to the raw window ending at the row
//! itself followed by its compressed rows (all visible ones, or the indexer's selection).

use rayon::prelude::*;

use super::{err, f32s, f32s_mut, i32s, want};
use crate::backend::{BResult, Rows, Tensor};
use crate::model::config::Config;
use crate::session::KvState;

/// Appends `kv` (`[n × hd]`) to layer `il`'s raw rows, first dropping rows no longer in any
/// window (the live state holds the last `n_swa` rows before a batch plus the batch).
pub(super) fn raw_push(st: &mut KvState, il: usize, kv: &[f32], hd: usize) -> BResult<()> {
    let n_swa = st.n_swa;
    let layer = st
        .layers
        .get_mut(il)
        .ok_or_else(|| err(format!("layer {il} outside the session")))?;
    let held = layer.raw.len() / hd;
    if held > n_swa {
        layer.raw.drain(..(held - n_swa) * hd);
    }
    layer.raw.extend_from_slice(kv);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    st: &KvState,
    il: usize,
    q: &Tensor,
    sinks: &[f32],
    sel: Option<&Tensor>,
    cfg: &Config,
    rows: &Rows,
    out: &mut Tensor,
) -> BResult<()> {
    let (hd, nh, n) = (cfg.head_dim, cfg.n_head, rows.n());
    want(q, n, nh * hd, "attention q")?;
    want(out, n, nh * hd, "attention output")?;
    let layer = st
        .layers
        .get(il)
        .ok_or_else(|| err(format!("layer {il} outside the session")))?;
    let ratio = cfg.ratio(il);
    let raw = &layer.raw;
    let comp = &layer.comp;
    let held = raw.len() / hd;
    let last_pos = *rows.pos.last().unwrap_or(&0);
    // Raw row index of position p: the newest held row is the batch's last position.
    if held == 0 || (last_pos + 1) < held {
        return Err(err(format!("layer {il}: raw window not pushed")));
    }
    let first_held = last_pos + 1 - held;
    let sel = match sel {
        Some(s) => {
            want(s, n, s.cols, "attention selection")?;
            Some((i32s(s)?, s.cols))
        }
        None => None,
    };
    let scale = 1.0 / (hd as f32).sqrt();
    let qs = f32s(q)?;
    let os = f32s_mut(out)?;
    os.iter_mut().for_each(|v| *v = 0.0);
    os.par_chunks_mut(nh * hd).enumerate().for_each(|(t, ot)| {
        let p = rows.pos[t];
        let first = (p + 1).saturating_sub(cfg.n_swa).max(first_held);
        let mut rr: Vec<&[f32]> = (first..=p)
            .map(|pp| {
                let r = pp - first_held;
                &raw[r * hd..(r + 1) * hd]
            })
            .collect();
        match sel {
            Some((s, k)) => rr.extend(
                s[t * k..(t + 1) * k]
                    .iter()
                    .filter(|&&c| c >= 0 && (c as usize) < comp.len() / hd)
                    .map(|&c| &comp[c as usize * hd..(c as usize + 1) * hd]),
            ),
            None => {
                let vis = Rows::visible(p, ratio).min(comp.len() / hd);
                rr.extend((0..vis).map(|c| &comp[c * hd..(c + 1) * hd]));
            }
        }
        let qt = &qs[t * nh * hd..(t + 1) * nh * hd];
        for (head, oh) in ot.chunks_mut(hd).enumerate() {
            let qh = &qt[head * hd..(head + 1) * hd];
            let s: Vec<f32> = rr
                .iter()
                .map(|r| crate::quant::dot_f32(qh, r) * scale)
                .collect();
            let sink = sinks[head];
            let m = s.iter().fold(sink, |a, &b| a.max(b));
            let den = (sink - m).exp() + s.iter().map(|&v| (v - m).exp()).sum::<f32>();
            for (r, &sv) in rr.iter().zip(&s) {
                let pr = (sv - m).exp() / den;
                oh.iter_mut().zip(*r).for_each(|(o, &v)| *o += pr * v);
            }
        }
    });
    Ok(())
}
