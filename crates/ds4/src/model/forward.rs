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
use crate::backend::{BResult, Backend, DType, Greedy, Rows, StepKey, Tensor};
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
    for &t in tokens {
        in_vocab(model, t)?;
    }
    check_room(sess, tokens.len())?;
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
        greedy: None,
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
        layers(
            model,
            be,
            state,
            &rows,
            num,
            key,
            &mut logits,
            &mut |_, _| Ok(()),
        )
    })?;
    let host = be.read(&logits, 0..n_out)?;
    sess.tokens.extend_from_slice(tokens);
    // Into the session's own buffer: a decode step then allocates no fresh 0.5 MB for it (on
    // the GPU machine's sandbox, new pages are a visible part of a token's host time).
    sess.logits.clear();
    sess.logits
        .extend_from_slice(&host[(n_out - 1) * cfg.n_vocab..]);
    Ok(host)
}

/// Decodes `n` greedy tokens (`skip` never chosen) after the session's state: feeds `first`,
/// then each token the backend chose at the end of the step before ([`Backend::argmax_next`]).
/// Each step is issued before the host has the previous step's token, so the host's work and
/// a step's start overlap the steps still running on a device. Returns the `n` chosen tokens;
/// the session advances by `n` (`first` and all but the last chosen one) and its logits are
/// the last step's.
pub fn decode_greedy(
    model: &Model,
    be: &dyn Backend,
    sess: &mut Session,
    first: u32,
    n: usize,
    skip: Option<u32>,
    num: Numerics,
) -> Result<Vec<u32>, ModelError> {
    let cfg = &model.config;
    in_vocab(model, first)?;
    check_room(sess, n)?;
    let (g, pos0) = (Greedy { skip }, sess.pos());
    let mut chosen = Vec::with_capacity(n);
    let mut last = None;
    for i in 0..n {
        let pos = pos0 + i;
        be.begin()?;
        let rows = match i {
            0 => be.rows(&[first], pos)?,
            _ => be.rows_sampled(pos)?,
        };
        let mut logits = be.alloc(1, cfg.n_vocab, DType::F32)?;
        let key = StepKey {
            greedy: Some(g),
            ..step_key(model, &rows, 1, num)
        };
        let state = &mut sess.state;
        be.step(key, state.id, &mut || {
            let noop = &mut |_: Stage, _: &Tensor| Ok(());
            layers(model, be, state, &rows, num, key, &mut logits, noop)?;
            be.argmax_next(&logits, &rows, g)
        })?;
        if i > 0 {
            chosen.push(in_vocab(model, be.take_sampled(pos)?)?);
        }
        last = Some(logits);
    }
    let Some(logits) = last else {
        return Ok(chosen);
    };
    chosen.push(in_vocab(model, be.take_sampled(pos0 + n)?)?);
    let host = be.read(&logits, 0..1)?;
    sess.tokens.push(first);
    sess.tokens.extend_from_slice(&chosen[..n - 1]);
    sess.logits = host;
    Ok(chosen)
}

/// `t`, if it is a token of the model's vocabulary.
fn in_vocab(model: &Model, t: u32) -> Result<u32, ModelError> {
    let vocab = model.config.n_vocab;
    if t as usize >= vocab {
        return Err(ModelError::TokenOutOfRange { token: t, vocab });
    }
    Ok(t)
}

/// Fails unless `n` more tokens fit the session's context.
fn check_room(sess: &Session, n: usize) -> Result<(), ModelError> {
    if sess.pos() + n > sess.state.ctx {
        return Err(ModelError::ContextFull {
            needed: sess.pos() + n,
            ctx: sess.state.ctx,
        });
    }
    Ok(())
}

/// A point of the forward pass whose output [`first_token_check`] inspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The token embedding (§2.2).
    Embedding,
    /// Layer `il`'s attention sublayer output (§2.4).
    Attention(usize),
    /// Layer `il`'s FFN sublayer output (§2.5).
    Ffn(usize),
    /// The output head's logits (§2.6).
    Logits,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Embedding => write!(f, "the token embedding"),
            Stage::Attention(il) => write!(f, "layer {il}'s attention output"),
            Stage::Ffn(il) => write!(f, "layer {il}'s FFN output"),
            Stage::Logits => write!(f, "the output head"),
        }
    }
}

/// Called with each [`Stage`]'s output tensor; a no-op in normal runs.
type Inspect<'a> = dyn FnMut(Stage, &Tensor) -> BResult<()> + 'a;

/// Evaluates `token` alone in `sess` (precise numerics, no recording) and returns the first
/// stage whose output holds a NaN or an infinity, or `None` when the logits are finite: the
/// load-time check that a model computes something (issue: broken files that load but return
/// NaN logits). The session advances by one token; callers reset it.
pub fn first_token_check(
    model: &Model,
    be: &dyn Backend,
    sess: &mut Session,
    token: u32,
    num: Numerics,
) -> Result<Option<Stage>, ModelError> {
    let cfg = &model.config;
    in_vocab(model, token)?;
    be.begin()?;
    let rows = be.rows(&[token], sess.pos())?;
    let mut logits = be.alloc(1, cfg.n_vocab, DType::F32)?;
    let key = step_key(model, &rows, 1, num);
    let mut bad = None;
    let mut inspect = |stage: Stage, t: &Tensor| -> BResult<()> {
        if bad.is_none() && be.read(t, 0..t.rows)?.iter().any(|v| !v.is_finite()) {
            bad = Some(stage);
        }
        Ok(())
    };
    layers(
        model,
        be,
        &mut sess.state,
        &rows,
        num,
        key,
        &mut logits,
        &mut inspect,
    )?;
    sess.tokens.push(token);
    Ok(bad)
}

/// Spec §2.1 for one chunk: embedding, the layers, the head. `inspect` sees each [`Stage`]'s
/// output.
#[allow(clippy::too_many_arguments)]
fn layers(
    model: &Model,
    be: &dyn Backend,
    st: &mut crate::backend::SessionState,
    rows: &Rows,
    num: Numerics,
    key: StepKey,
    logits: &mut Tensor,
    inspect: &mut Inspect<'_>,
) -> BResult<()> {
    let (cfg, w) = (&model.config, &model.weights);
    let n = rows.n();
    let mut s = Scratch::new(be, cfg, n, logits.rows)?;
    be.embed(&w.token_embd, rows, cfg.n_hc, &mut s.x_hc)?; // §2.2
    inspect(Stage::Embedding, &s.x_hc)?;
    // §2.3: each sublayer's HC post is followed by the next sublayer's HC pre and its input
    // RMSNorm (one backend operation, `hc_post_pre`); the first pre and the last post stand
    // alone.
    if let Some(l0) = w.layers.first() {
        be.hc_pre(&s.x_hc, &l0.hc_attn, cfg, &mut s.h, &mut s.mix, num)?;
        be.rms_norm(&mut s.h, Some(&l0.attn_norm), cfg.n_embd, cfg.rms_eps)?;
    }
    for (il, lw) in w.layers.iter().enumerate() {
        attention(be, &mut s, lw, st, il, rows, cfg, num, key.indexer)?; // §2.4
        inspect(Stage::Attention(il), &s.y)?;
        let (y, x_hc, h) = (&s.y, &s.x_hc, &mut s.h);
        be.hc_post_pre(
            y,
            x_hc,
            &mut s.mix,
            &mut s.x_hc_next,
            &lw.hc_ffn,
            &lw.ffn_norm,
            cfg,
            h,
            num,
        )?;
        std::mem::swap(&mut s.x_hc, &mut s.x_hc_next);
        moe(be, &mut s, lw, rows, il, cfg, num)?; // §2.5
        inspect(Stage::Ffn(il), &s.y)?;
        let (y, x_hc, h) = (&s.y, &s.x_hc, &mut s.h);
        match w.layers.get(il + 1) {
            Some(next) => {
                let (nw, nn) = (&next.hc_attn, &next.attn_norm);
                be.hc_post_pre(y, x_hc, &mut s.mix, &mut s.x_hc_next, nw, nn, cfg, h, num)?
            }
            None => be.hc_post(y, x_hc, &s.mix, cfg.n_hc, &mut s.x_hc_next)?,
        }
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
    be.matmul(&w.output, &s.z, logits, num)?;
    inspect(Stage::Logits, logits)
}
