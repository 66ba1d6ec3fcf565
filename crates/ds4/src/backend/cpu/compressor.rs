//! The KV compressors on the CPU (spec/model.md §2.4.4, pitfalls 4–6): every token writes its
//! projected KV and gate scores into the frontier; each completed window is pooled by a
//! per-dimension softmax over positions into one row, normed, RoPE'd at the window's first
//! position, rounded as the precision asks, and appended to the layer's rows. Ratio 4 pools
//! overlapping 8-token windows (previous 4 tokens' first half, current 4 tokens' second half).

use super::{err, f32s, finish_idx, finish_kv_row, want};
use crate::backend::{BResult, CompStream, Rows, Tensor};
use crate::model::config::Config;
use crate::model::numerics::rms_norm;
use crate::model::rope::Rope;
use crate::model::weights::CompressorWeights;
use crate::model::Numerics;
use crate::session::{Frontier, KvState};

/// Scores at or below this count as unwritten: a window of only such scores pools to zero.
pub(crate) const EMPTY_THRESHOLD: f32 = -5e29;

#[allow(clippy::too_many_arguments)]
pub(super) fn compress(
    st: &mut KvState,
    il: usize,
    stream: CompStream,
    kv_t: &Tensor,
    sc_t: &Tensor,
    w: &CompressorWeights,
    rope: &Rope,
    cfg: &Config,
    num: Numerics,
    rows: &Rows,
) -> BResult<()> {
    let ratio = cfg.ratio(il);
    let layer = st
        .layers
        .get_mut(il)
        .ok_or_else(|| err(format!("layer {il} outside the session")))?;
    let (fr, out, d) = match stream {
        CompStream::Attn => (layer.attn_frontier.as_mut(), &mut layer.comp, cfg.head_dim),
        CompStream::Indexer => (
            layer.idx_frontier.as_mut(),
            &mut layer.idx,
            cfg.idx_head_dim,
        ),
    };
    let fr = fr.ok_or_else(|| err(format!("layer {il} has no {stream:?} compressor")))?;
    let width = fr.width;
    want(kv_t, rows.n(), width, "compressor kv")?;
    want(sc_t, rows.n(), width, "compressor score")?;
    let (kv, sc) = (f32s(kv_t)?, f32s(sc_t)?);
    for (t, &p) in rows.pos.iter().enumerate() {
        let m = p % ratio;
        let slot = if ratio == 4 { 4 + m } else { m };
        let dst = slot * width..(slot + 1) * width;
        fr.kv[dst.clone()].copy_from_slice(&kv[t * width..(t + 1) * width]);
        for (j, s) in fr.score[dst].iter_mut().enumerate() {
            *s = sc[t * width + j] + w.ape[m * width + j];
        }
        if (p + 1).is_multiple_of(ratio) {
            let mut row = pool(fr, ratio, d);
            rms_norm(&mut row, Some(&w.norm), cfg.rms_eps);
            rope.apply(&mut row, p + 1 - ratio, false);
            match stream {
                CompStream::Attn => finish_kv_row(&mut row, cfg.n_rot, num),
                CompStream::Indexer => finish_idx(&mut row, num, true),
            }
            out.extend_from_slice(&row);
            if ratio == 4 {
                // The current window becomes the previous one.
                fr.kv.copy_within(4 * width..8 * width, 0);
                fr.score.copy_within(4 * width..8 * width, 0);
            }
        }
    }
    Ok(())
}

/// Per-dimension softmax pooling of the frontier into one `d`-wide row.
fn pool(fr: &Frontier, ratio: usize, d: usize) -> Vec<f32> {
    let width = fr.width;
    // Candidates for output dim j: (row, column) pairs.
    let cands: Vec<(usize, usize)> = if ratio == 4 {
        (0..4)
            .map(|r| (r, 0))
            .chain((4..8).map(|r| (r, d)))
            .collect()
    } else {
        (0..ratio).map(|r| (r, 0)).collect()
    };
    (0..d)
        .map(|j| {
            let score = |&(r, off): &(usize, usize)| fr.score[r * width + off + j];
            let m = cands.iter().map(score).fold(f32::NEG_INFINITY, f32::max);
            if m <= EMPTY_THRESHOLD {
                return 0.0;
            }
            let (mut num, mut den) = (0f32, 0f32);
            for c in &cands {
                let e = (score(c) - m).exp();
                num += e * fr.kv[c.0 * width + c.1 + j];
                den += e;
            }
            num / den
        })
        .collect()
}
