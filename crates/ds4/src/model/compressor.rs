//! The KV compressors of ratio-4 and ratio-128 layers (spec/model.md §2.4.4, pitfalls 4–6): the
//! projections of the attn-normed input `h`, then the backend's frontier update, which pools
//! each completed window (overlapping 8-token windows for ratio 4), norms it, RoPEs it at the
//! window's first position, rounds it and appends it to the layer's rows.

use super::config::Config;
use super::rope::Rope;
use super::weights::CompressorWeights;
use super::Numerics;
use crate::backend::{BResult, Backend, CompStream, Rows, SessionState, Tensor};

/// Runs compressor `stream` of layer `il` over the chunk's rows.
#[allow(clippy::too_many_arguments)]
pub fn compressor(
    be: &dyn Backend,
    w: &CompressorWeights,
    h: &Tensor,
    kv: &mut Tensor,
    score: &mut Tensor,
    st: &mut SessionState,
    il: usize,
    stream: CompStream,
    rope: &Rope,
    cfg: &Config,
    num: Numerics,
    rows: &Rows,
) -> BResult<()> {
    be.matmuls(&[&w.kv, &w.gate], h, &mut [kv, score], num)?;
    be.compress(st, il, stream, kv, score, w, rope, cfg, num, rows)
}
