//! The forward pass (spec/model.md §2.1), written once for prefill (many tokens of one session)
//! and decode (one token) in terms of backend operations: embedding → per layer HC-pre /
//! attention / HC-post / HC-pre / MoE / HC-post → HC head → logits. Layer-major: each layer
//! runs over all the chunk's rows, and the caches are updated in token order inside the layer
//! (spec §2.7). Long inputs go through in chunks of [`PREFILL_CHUNK`] rows, so the memory of a
//! prefill beyond the KV state does not grow with the prompt.

use super::attention::attention;
use super::moe::moe;
use super::scratch::Scratch;
use super::{Model, ModelError, Numerics};
use crate::backend::{BResult, Backend, DType, Rows, StepKey, Tensor};
use crate::session::Session;

/// Rows per forward chunk (ds4's GPU ubatch, spec §2.7).
pub const PREFILL_CHUNK: usize = 2048;

/// Which rows' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// After every token: `[n × n_vocab]` (diagnostics, reference tests).
    All,
    /// After the last token only: `[n_vocab]` (generation).
    Last,
}

/// Evaluates `tokens` after the session's current state and returns the logits `which` asks
/// for. The session advances past all of them.
pub fn forward(
    model: &Model,
    be: &dyn Backend,
    sess: &mut Session,
    tokens: &[u32],
    num: Numerics,
    which: Logits,
) -> Result<Vec<f32>, ModelError> {
    let cfg = &model.config;
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.n_vocab) {
        return Err(ModelError::TokenOutOfRange {
            token: bad,
            vocab: cfg.n_vocab,
        });
    }
    if sess.pos() + tokens.len() > sess.state.ctx {
        return Err(ModelError::ContextFull {
            needed: sess.pos() + tokens.len(),
            ctx: sess.state.ctx,
        });
    }
    let mut out = Vec::new();
    for chunk in tokens.chunks(PREFILL_CHUNK) {
        let logits = forward_chunk(model, be, sess, chunk, num, which)?;
        match which {
            Logits::All => out.extend(logits),
            Logits::Last => out = logits,
        }
    }
    Ok(out)
}

/// What a recording of this chunk's step depends on (see [`Backend::step`]).
fn step_key(model: &Model, rows: &Rows, out_rows: usize, num: Numerics) -> StepKey {
    let cfg = &model.config;
    let has_indexer = model.weights.layers.iter().any(|l| l.indexer.is_some());
    let indexer = has_indexer && rows.max_visible(4) > cfg.idx_topk;
    StepKey {
        rows: rows.n(),
        out_rows,
        fast: num.fast,
        indexer,
        idx_cap: if indexer { rows.visible_cap(4) } else { 0 },
    }
}

fn forward_chunk(
    model: &Model,
    be: &dyn Backend,
    sess: &mut Session,
    tokens: &[u32],
    num: Numerics,
    which: Logits,
) -> Result<Vec<f32>, ModelError> {
    let (cfg, n) = (&model.config, tokens.len());
    be.begin()?;
    let rows = be.rows(tokens, sess.pos())?;
    let n_out = match which {
        Logits::All => n,
        Logits::Last => 1,
    };
    let mut logits = be.alloc(n_out, cfg.n_vocab, DType::F32)?;
    let key = step_key(model, &rows, n_out, num);
    let state = &mut sess.state;
    let id = state.id;
    be.step(key, id, &mut || {
        layers(model, be, state, &rows, num, key, &mut logits)
    })?;
    let host = be.read(&logits, 0..n_out)?;
    sess.tokens.extend_from_slice(tokens);
    sess.logits = host[(n_out - 1) * cfg.n_vocab..].to_vec();
    Ok(host)
}

/// Spec §2.1 for one chunk: embedding, the layers, the head.
fn layers(
    model: &Model,
    be: &dyn Backend,
    st: &mut crate::backend::SessionState,
    rows: &Rows,
    num: Numerics,
    key: StepKey,
    logits: &mut Tensor,
) -> BResult<()> {
    let (cfg, w) = (&model.config, &model.weights);
    let n = rows.n();
    let mut s = Scratch::new(be, cfg, n, logits.rows)?;
    be.embed(&w.token_embd, rows, cfg.n_hc, &mut s.x_hc)?; // §2.2
    for (il, lw) in w.layers.iter().enumerate() {
        be.hc_pre(&s.x_hc, &lw.hc_attn, cfg, &mut s.h, &mut s.mix, num)?; // §2.3
        attention(be, &mut s, lw, st, il, rows, cfg, num, key.indexer)?; // §2.4
        be.hc_post(&s.y, &s.x_hc, &s.mix, cfg.n_hc, &mut s.x_hc_next)?;
        std::mem::swap(&mut s.x_hc, &mut s.x_hc_next);
        be.hc_pre(&s.x_hc, &lw.hc_ffn, cfg, &mut s.h, &mut s.mix, num)?;
        moe(be, &mut s, lw, rows, il, cfg, num)?; // §2.5
        be.hc_post(&s.y, &s.x_hc, &s.mix, cfg.n_hc, &mut s.x_hc_next)?;
        std::mem::swap(&mut s.x_hc, &mut s.x_hc_next);
    }

    // §2.6 head, over the last `logits.rows` rows.
    let scale = w.output_hc_scale.first().copied().unwrap_or(1.0);
    let first = n - logits.rows;
    be.hc_head(
        &s.x_hc,
        first,
        &w.output_hc_fn,
        scale,
        &w.output_hc_base,
        cfg,
        &mut s.z,
        num,
    )?;
    be.rms_norm(&mut s.z, Some(&w.output_norm), cfg.n_embd, cfg.rms_eps)?;
    be.matmul(&w.output, &s.z, logits, num)
}
