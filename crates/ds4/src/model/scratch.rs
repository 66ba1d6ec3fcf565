//! The activations of one forward chunk (STYLE.md "State lives in plain structs named after
//! spec concepts"): every intermediate of spec §2.1 as a named `[rows × width]` backend tensor,
//! allocated once per chunk and reused by every layer, so a recorded decode step sees the same
//! buffers each time.

use super::config::Config;
use crate::backend::{BResult, Backend, DType, Tensor};

/// Named buffers of one chunk of `n` rows (`n_out` rows for the head).
#[derive(Debug)]
pub struct Scratch {
    /// HC state `[n × n_hc·E]` going into the current sublayer.
    pub x_hc: Tensor,
    /// HC state written by `hc_post` (swapped with `x_hc` after each sublayer).
    pub x_hc_next: Tensor,
    /// `hc_pre` output: post gates and combine matrix `[n × (n_hc + n_hc²)]`.
    pub mix: Tensor,
    /// Sublayer input from `hc_pre` `[n × E]`, normed in place into `h` (attention) or `u`
    /// (FFN).
    pub h: Tensor,
    /// Normalised q latent `[n × q_lora]`.
    pub qr: Tensor,
    /// Query heads `[n × n_head·head_dim]`.
    pub q: Tensor,
    /// K = V row `[n × head_dim]`.
    pub kv: Tensor,
    /// Ratio-4 attention compressor projections `[n × 2·head_dim]`.
    pub comp4_kv: Tensor,
    /// Ratio-4 attention compressor gate scores `[n × 2·head_dim]`.
    pub comp4_score: Tensor,
    /// Ratio-128 compressor projections `[n × head_dim]`.
    pub comp128_kv: Tensor,
    /// Ratio-128 compressor gate scores `[n × head_dim]`.
    pub comp128_score: Tensor,
    /// Indexer compressor projections `[n × 2·idx_head_dim]`.
    pub idx_kv: Tensor,
    /// Indexer compressor gate scores.
    pub idx_score: Tensor,
    /// Indexer query heads `[n × idx_heads·idx_head_dim]`.
    pub idx_q: Tensor,
    /// Indexer head weights `[n × idx_heads]`.
    pub idx_w: Tensor,
    /// Selected compressed rows `[n × idx_topk]` (I32).
    pub sel: Tensor,
    /// Attention output heads `[n × n_head·head_dim]`.
    pub o: Tensor,
    /// Grouped low-rank output `[n × o_groups·o_lora]`.
    pub low: Tensor,
    /// Sublayer output `[n × E]`.
    pub y: Tensor,
    /// Router logits `[n × n_expert]`.
    pub router: Tensor,
    /// Routed expert ids `[n × n_expert_used]` (I32).
    pub expert_ids: Tensor,
    /// Routed expert weights `[n × n_expert_used]`.
    pub expert_w: Tensor,
    /// Shared expert's SwiGLU output `[n × ff_exp]`.
    pub shexp_mid: Tensor,
    /// Shared expert output `[n × E]`.
    pub shexp: Tensor,
    /// Head input `z` `[n_out × E]`.
    pub z: Tensor,
}

impl Scratch {
    /// Allocates the buffers of a chunk of `n` rows whose head computes `n_out` rows.
    pub fn new(be: &dyn Backend, cfg: &Config, n: usize, n_out: usize) -> BResult<Self> {
        let f = |cols: usize| be.alloc(n, cols, DType::F32);
        let (e, hc) = (cfg.n_embd, cfg.n_hc);
        let has_ratio4 = (0..cfg.n_layer).any(|il| cfg.ratio(il) == 4);
        let has_ratio128 = (0..cfg.n_layer).any(|il| cfg.ratio(il) == 128);
        let on = |b: bool, c: usize| if b { c } else { 0 };
        Ok(Scratch {
            x_hc: f(hc * e)?,
            x_hc_next: f(hc * e)?,
            mix: f(hc + hc * hc)?,
            h: f(e)?,
            qr: f(cfg.q_lora)?,
            q: f(cfg.n_head * cfg.head_dim)?,
            kv: f(cfg.head_dim)?,
            comp4_kv: f(on(has_ratio4, 2 * cfg.head_dim))?,
            comp4_score: f(on(has_ratio4, 2 * cfg.head_dim))?,
            comp128_kv: f(on(has_ratio128, cfg.head_dim))?,
            comp128_score: f(on(has_ratio128, cfg.head_dim))?,
            idx_kv: f(on(has_ratio4, 2 * cfg.idx_head_dim))?,
            idx_score: f(on(has_ratio4, 2 * cfg.idx_head_dim))?,
            idx_q: f(on(has_ratio4, cfg.idx_heads * cfg.idx_head_dim))?,
            idx_w: f(on(has_ratio4, cfg.idx_heads))?,
            sel: be.alloc(n, on(has_ratio4, cfg.idx_topk), DType::I32)?,
            o: f(cfg.n_head * cfg.head_dim)?,
            low: f(cfg.o_groups * cfg.o_lora)?,
            y: f(e)?,
            router: f(cfg.n_expert)?,
            expert_ids: be.alloc(n, cfg.n_expert_used, DType::I32)?,
            expert_w: f(cfg.n_expert_used)?,
            shexp_mid: f(cfg.ff_exp)?,
            shexp: f(e)?,
            z: be.alloc(n_out, e, DType::F32)?,
        })
    }
}
