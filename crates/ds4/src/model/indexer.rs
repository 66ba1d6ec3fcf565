//! The sparse-attention indexer of ratio-4 layers (spec/model.md §2.4.5, pitfall 7): the query
//! heads from the q latent (RoPE'd, then Hadamard + FP4), the per-head weights from `h`
//! scaled by `1/sqrt(heads·dim)`; the attention sublayer then asks the backend for each row's
//! top-k over `Σ_h w_h·ReLU(q_h·K_c)` (`indexer_select`). The weights read only `h`, so they
//! run beside the queries, in the compressors' branch.

use super::config::Config;
use super::rope::Rope;
use super::scratch::Scratch;
use super::weights::IndexerWeights;
use super::Numerics;
use crate::backend::{BResult, Backend, Rows};

/// The per-head weights of layer `il`'s indexer from `h`, scaled by `1/sqrt(heads·dim)`: `s.idx_w`.
pub fn indexer_weights(
    be: &dyn Backend,
    w: &IndexerWeights,
    s: &mut Scratch,
    cfg: &Config,
    num: Numerics,
) -> BResult<()> {
    let (nh, dh) = (cfg.idx_heads, cfg.idx_head_dim);
    be.matmul(&w.proj, &s.h, &mut s.idx_w, num)?;
    be.scale(&mut s.idx_w, 1.0 / ((nh * dh) as f32).sqrt())
}

/// The indexer's query heads from the q latent `s.qr`, RoPE'd, then Hadamard + FP4: `s.idx_q`.
pub fn indexer_queries(
    be: &dyn Backend,
    w: &IndexerWeights,
    s: &mut Scratch,
    rope: &Rope,
    cfg: &Config,
    num: Numerics,
    rows: &Rows,
) -> BResult<()> {
    let dh = cfg.idx_head_dim;
    be.matmul(&w.attn_q_b, &s.qr, &mut s.idx_q, num)?;
    be.rope(&mut s.idx_q, dh, rope, rows, false)?;
    be.indexer_qat(&mut s.idx_q, dh, num)
}
