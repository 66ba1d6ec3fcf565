//! The forward pass (spec/model.md §2.1), written once for prefill (many tokens of one session)
//! and decode (one token): embedding → per layer HC-pre / attention / HC-post / HC-pre / MoE /
//! HC-post → HC head → logits. Layer-major: each layer runs over all the batch's tokens, and the
//! caches are updated in token order inside the layer (spec §2.7).

use rayon::prelude::*;

use super::attention::attention;
use super::hc::{hc_head, hc_post, hc_pre};
use super::moe::moe;
use super::numerics::rms_norm;
use super::{Model, ModelError, Numerics};
use crate::backend::Backend;
use crate::session::Session;

/// Evaluates `tokens` after the session's current state and returns the logits after each of
/// them, `[tokens.len() × n_vocab]`. The session advances past all of them.
pub fn forward(
    model: &Model,
    be: &dyn Backend,
    sess: &mut Session,
    tokens: &[u32],
    num: Numerics,
) -> Result<Vec<f32>, ModelError> {
    let cfg = &model.config;
    let w = &model.weights;
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.n_vocab) {
        return Err(ModelError::TokenOutOfRange {
            token: bad,
            vocab: cfg.n_vocab,
        });
    }
    let (n, e, hc) = (tokens.len(), cfg.n_embd, cfg.n_hc);
    if n == 0 {
        return Ok(Vec::new());
    }
    let pos0 = sess.pos();

    // §2.2 embedding, copied into every HC stream.
    let emb = be.embed(&w.token_embd, tokens)?;
    let mut x_hc = vec![0f32; n * hc * e];
    x_hc.par_chunks_mut(hc * e).enumerate().for_each(|(t, xt)| {
        xt.chunks_mut(e)
            .for_each(|s| s.copy_from_slice(&emb[t * e..(t + 1) * e]));
    });

    for (il, lw) in w.layers.iter().enumerate() {
        let (a_in, mix) = hc_pre(be, &x_hc, &lw.hc_attn, cfg, n)?; // §2.3
        let y = attention(be, &a_in, lw, &mut sess.layers[il], il, pos0, n, cfg, num)?; // §2.4
        x_hc = hc_post(&y, &x_hc, &mix, cfg);
        let (mut f_in, mix) = hc_pre(be, &x_hc, &lw.hc_ffn, cfg, n)?;
        f_in.par_chunks_mut(e)
            .for_each(|r| rms_norm(r, Some(&lw.ffn_norm), cfg.rms_eps));
        let y = moe(be, &f_in, lw, tokens, il, cfg)?; // §2.5
        x_hc = hc_post(&y, &x_hc, &mix, cfg);
    }

    // §2.6 head.
    let scale = w.output_hc_scale.first().copied().unwrap_or(1.0);
    let mut z = hc_head(be, &x_hc, &w.output_hc_fn, scale, &w.output_hc_base, cfg, n)?;
    z.par_chunks_mut(e)
        .for_each(|r| rms_norm(r, Some(&w.output_norm), cfg.rms_eps));
    let logits = be.matmul(&w.output, &z, n)?;

    sess.tokens.extend_from_slice(tokens);
    sess.logits = logits[(n - 1) * cfg.n_vocab..].to_vec();
    Ok(logits)
}
