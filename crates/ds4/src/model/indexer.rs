//! The sparse-attention indexer of ratio-4 layers (spec/model.md §2.4.5, pitfall 7): the query
//! heads from the q latent (RoPE'd, then Hadamard + FP4), the per-head weights from `h`
//! scaled by `1/sqrt(heads·dim)`, and the backend's per-row top-k over `Σ_h w_h·ReLU(q_h·K_c)`.
//! Writes `s.sel`.

use super::config::Config;
use super::rope::Rope;
use super::scratch::Scratch;
use super::weights::IndexerWeights;
use super::Numerics;
use crate::backend::{BResult, Backend, Rows, SessionState};

/// Selects each row's compressed rows in layer `il`.
#[allow(clippy::too_many_arguments)]
pub fn indexer(
    be: &dyn Backend,
    w: &IndexerWeights,
    s: &mut Scratch,
    st: &SessionState,
    il: usize,
    rope: &Rope,
    cfg: &Config,
    num: Numerics,
    rows: &Rows,
) -> BResult<()> {
    let (nh, dh) = (cfg.idx_heads, cfg.idx_head_dim);
    be.matmul(&w.attn_q_b, &s.qr, &mut s.idx_q, num)?;
    be.matmul(&w.proj, &s.h, &mut s.idx_w, num)?;
    be.scale(&mut s.idx_w, 1.0 / ((nh * dh) as f32).sqrt())?;
    be.rope(&mut s.idx_q, dh, rope, rows, false)?;
    be.indexer_qat(&mut s.idx_q, dh, num)?;
    be.indexer_select(st, il, &s.idx_q, &s.idx_w, rows, &mut s.sel)
}
