//! The attention sublayer (spec/model.md §2.4) as backend operations: low-rank q with per-head
//! norm, the shared K=V row, partial RoPE, the raw window, the compressors and indexer,
//! attention with sinks over raw ++ compressed rows, inverse RoPE on the output and the grouped
//! output projection. Reads `s.h` (the HC pre output after the layer's attn_norm, which the
//! forward pass applies with the HC pre: spec §2.4.1), writes `s.y`.

use super::compressor::compressor;
use super::config::Config;
use super::indexer::{indexer_queries, indexer_weights};
use super::rope::Rope;
use super::scratch::Scratch;
use super::weights::LayerWeights;
use super::Numerics;
use crate::backend::{BResult, Backend, CompStream, Lane, Rows, SessionState};

/// Runs layer `il`'s attention for the chunk's rows, updating the layer's cache. `indexer_on`
/// says whether some row sees more compressed rows than top-k (spec §2.4.5).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    be: &dyn Backend,
    s: &mut Scratch,
    lw: &LayerWeights,
    st: &mut SessionState,
    il: usize,
    rows: &Rows,
    cfg: &Config,
    num: Numerics,
    indexer_on: bool,
) -> BResult<()> {
    let (hd, eps) = (cfg.head_dim, cfg.rms_eps);
    let rope = Rope::for_layer(cfg, il);

    // §2.4.1 projections (of `s.h`, already attn-normed by the HC boundary).
    let compressed4 = lw.attn_compressor.is_some() && cfg.ratio(il) == 4;
    let selecting = lw.indexer.as_ref().filter(|_| indexer_on && compressed4);
    let (wq, wkv) = (&lw.attn_q_a, &lw.attn_kv);
    be.matmuls(&[wq, wkv], &s.h, &mut [&mut s.qr, &mut s.kv], num)?;

    // The KV row (§2.4.2 norm and RoPE, §2.4.3 the raw window, before attention: a token
    // attends to itself) with the indexer's head weights (§2.4.5), and the §2.4.4 compressors,
    // read nothing the queries need: two branches beside them.
    be.lane(Lane::Branch)?;
    be.head_norm_rope(&mut s.kv, Some(&lw.attn_kv_a_norm), hd, eps, &rope, rows)?;
    be.kv_round(&mut s.kv, cfg.n_rot, num)?;
    be.raw_push(st, il, &s.kv, rows)?;
    if let Some(iw) = selecting {
        indexer_weights(be, iw, s, cfg, num)?;
    }
    be.lane(Lane::Branch)?;
    if let Some(cw) = &lw.attn_compressor {
        let (kv, sc) = if compressed4 {
            (&mut s.comp4_kv, &mut s.comp4_score)
        } else {
            (&mut s.comp128_kv, &mut s.comp128_score)
        };
        let stream = CompStream::Attn;
        compressor(be, cw, &s.h, kv, sc, st, il, stream, &rope, cfg, num, rows)?;
    }
    if let Some(iw) = lw.indexer.as_ref().filter(|_| compressed4) {
        let (kv, sc) = (&mut s.idx_kv, &mut s.idx_score);
        let (cw, stream) = (&iw.compressor, CompStream::Indexer);
        compressor(be, cw, &s.h, kv, sc, st, il, stream, &rope, cfg, num, rows)?;
    }

    // The queries: q norm, q_b, per-head norm and §2.4.2 RoPE; the indexer's queries.
    be.lane(Lane::Main)?;
    be.rms_norm(&mut s.qr, Some(&lw.attn_q_a_norm), cfg.q_lora, eps)?;
    be.matmul(&lw.attn_q_b, &s.qr, &mut s.q, num)?;
    be.head_norm_rope(&mut s.q, None, hd, eps, &rope, rows)?; // per head, no weight
    if let Some(iw) = selecting {
        indexer_queries(be, iw, s, &rope, cfg, num, rows)?;
    }
    be.lane(Lane::Join)?;
    if selecting.is_some() {
        be.indexer_select(st, il, &s.idx_q, &s.idx_w, rows, &mut s.sel)?; // §2.4.5 top-k
    }

    // §2.4.6 attention with sinks and §2.4.7's inverse RoPE, then the grouped projection.
    let sel = selecting.is_some().then_some(&s.sel);
    be.attention(
        st,
        il,
        &s.q,
        &lw.attn_sinks,
        sel,
        cfg,
        &rope,
        rows,
        num,
        &mut s.o,
    )?;
    be.matmul_grouped(&lw.attn_output_a, cfg.o_groups, &s.o, &mut s.low, num)?;
    be.matmul(&lw.attn_output_b, &s.low, &mut s.y, num)
}
