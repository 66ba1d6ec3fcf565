//! The KV compressors of ratio-4 and ratio-128 layers (spec/model.md §2.4.4, pitfalls 4–6):
//! every token writes its projected KV and gate scores into the frontier; each completed window
//! is pooled by a per-dimension softmax over positions into one row, normed, RoPE'd at the
//! window's first position, rounded as the precision asks, and appended to the layer's rows.
//! Ratio 4 pools overlapping 8-token windows (previous 4 tokens' first half, current 4 tokens'
//! second half).

use super::config::Config;
use super::numerics::rms_norm;
use super::rope::Rope;
use super::weights::CompressorWeights;
use crate::backend::{Backend, BackendError};
use crate::session::Frontier;

/// Scores at or below this count as unwritten: a window of only such scores pools to zero.
const EMPTY_THRESHOLD: f32 = -5e29;

/// Runs the compressor over `n` tokens at positions `pos0..pos0+n` with attn-normed inputs
/// `h` (`[n × E]`). Completed rows (`d` wide, after `finish`) are appended to `rows`. Returns,
/// per token, the row count visible to it (rows completed at or before it).
#[allow(clippy::too_many_arguments)]
pub fn compress(
    be: &dyn Backend,
    w: &CompressorWeights,
    fr: &mut Frontier,
    rows: &mut Vec<f32>,
    h: &[f32],
    n: usize,
    pos0: usize,
    ratio: usize,
    d: usize,
    cfg: &Config,
    rope: &Rope,
    finish: &dyn Fn(&mut [f32]),
) -> Result<Vec<usize>, BackendError> {
    let width = fr.width;
    let kv = be.matmul(&w.kv, h, n)?;
    let sc = be.matmul(&w.gate, h, n)?;
    let mut visible = Vec::with_capacity(n);
    for t in 0..n {
        let p = pos0 + t;
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
            finish(&mut row);
            rows.extend_from_slice(&row);
            if ratio == 4 {
                // The current window becomes the previous one.
                fr.kv.copy_within(4 * width..8 * width, 0);
                fr.score.copy_within(4 * width..8 * width, 0);
            }
        }
        visible.push(rows.len() / d);
    }
    Ok(visible)
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
