//! The generation core shared by the CLI and the server: one model, one backend, one live
//! session. It syncs the session to a prompt (reusing the longest token prefix it already holds,
//! spec/serving.md §5.2), then samples tokens one by one and hands each decoded piece to the
//! caller, who decides whether to go on, to force greedy (DSML structure, §3.2) or to stop.

use std::sync::Arc;
use std::time::Instant;

use crate::backend::{Backend, CpuBackend};
use crate::model::{Model, ModelError, Precision};
use crate::sample::{Sampler, SamplerParams};
use crate::session::{Session, Snapshot};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Why a request could not run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model failed to load or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The file carries no usable tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    /// The prompt plus the requested output do not fit the context.
    #[error("prompt of {prompt} tokens plus {max_tokens} output tokens exceeds the context of {ctx} tokens")]
    ContextExceeded {
        /// Prompt tokens.
        prompt: usize,
        /// Requested output limit.
        max_tokens: usize,
        /// Context size.
        ctx: usize,
    },
    /// Nothing to evaluate.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The caller's cancellation check fired between prefill chunks; the session holds the
    /// chunks evaluated so far.
    #[error("cancelled during prefill")]
    Cancelled,
}

/// What the caller wants after a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Sample the next token normally.
    Continue,
    /// Sample the next token greedily (inside DSML structure).
    ContinueGreedy,
    /// Stop now (stop sequence, tool call complete, client gone).
    Stop,
}

/// One sampled token and the text it completes (never half a UTF-8 character).
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The token id.
    pub id: u32,
    /// Decoded text released by this token (may be empty while a character is incomplete).
    pub text: String,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishCause {
    /// The model produced the end-of-sentence token.
    Eos,
    /// `max_tokens` reached.
    Length,
    /// The caller said stop.
    Stopped,
}

/// Counters of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the live session (not prefilled again).
    pub cached_tokens: usize,
    /// Tokens sampled (EOS included when it ended the turn).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish: FinishCause,
    /// Seconds spent prefilling the new part of the prompt.
    pub prefill_secs: f64,
    /// Seconds spent decoding.
    pub decode_secs: f64,
}

/// What a generation lets its caller do besides reading pieces.
pub struct Hooks<'a> {
    /// Checked before each prefill chunk; true stops with [`EngineError::Cancelled`].
    pub cancel: &'a dyn Fn() -> bool,
    /// Positions where a prefill chunk must end (so that a checkpoint can be taken there), in
    /// any order; chunks also end every [`crate::model::PREFILL_CHUNK`] tokens.
    pub breaks: Vec<usize>,
    /// Called with the engine in a consistent state (its session holds whole evaluated tokens
    /// and their logits): after every prefill chunk, and after each sampled token is handed
    /// to `on_piece` but before it is evaluated.
    pub at_frontier: Option<&'a mut dyn FnMut(&Engine)>,
}

impl Default for Hooks<'_> {
    fn default() -> Self {
        Hooks {
            cancel: &|| false,
            breaks: Vec::new(),
            at_frontier: None,
        }
    }
}

/// A loaded model with its tokenizer and one live session.
pub struct Engine {
    /// The model.
    pub model: Arc<Model>,
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    backend: Box<dyn Backend + Send>,
    session: Session,
    precision: Precision,
    ctx: usize,
    /// Test-only: token ids to emit instead of sampling, in order (`test-hooks` feature).
    #[cfg(feature = "test-hooks")]
    forced: std::collections::VecDeque<u32>,
}

impl Engine {
    /// An engine over `model` on the CPU backend with a context of `ctx` tokens.
    pub fn new(model: Arc<Model>, precision: Precision, ctx: usize) -> Result<Self, EngineError> {
        let backend = Box::new(CpuBackend::new(model.file.clone()));
        Self::with_backend(model, backend, precision, ctx)
    }

    /// An engine over `model` running on `backend` (which must have been made for the same
    /// model file).
    pub fn with_backend(
        model: Arc<Model>,
        backend: Box<dyn Backend + Send>,
        precision: Precision,
        ctx: usize,
    ) -> Result<Self, EngineError> {
        let tokenizer = Tokenizer::from_metadata(|k| model.file.get(k))?;
        let mut session = model.new_session(backend.as_ref(), ctx)?;
        // A file can pass every structural check and still compute NaN (hostile or broken
        // weights): refuse it here, naming the layer, rather than serve repeated BOS tokens.
        model.check_first_token(backend.as_ref(), &mut session, tokenizer.bos())?;
        session.tokens.clear();
        backend
            .reset_state(&model.config, &mut session.state)
            .map_err(ModelError::from)?;
        Ok(Engine {
            model,
            tokenizer,
            backend,
            session,
            precision,
            ctx,
            #[cfg(feature = "test-hooks")]
            forced: Default::default(),
        })
    }

    /// Test-only (`test-hooks` feature): the next generation emits `ids` instead of sampling,
    /// then samples normally. Lets server tests drive tool calls through random weights.
    #[cfg(feature = "test-hooks")]
    pub fn force_tokens(&mut self, ids: Vec<u32>) {
        self.forced = ids.into();
    }

    /// The backend's name (`cpu`, `cuda`).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The numerics the engine runs with.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Context size in tokens.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Changes the context size; drops the live session (as `/ctx N` does).
    pub fn set_ctx(&mut self, ctx: usize) -> Result<(), EngineError> {
        self.ctx = ctx;
        self.session = self.model.new_session(self.backend.as_ref(), ctx)?;
        Ok(())
    }

    /// Forgets the live session (its memory is reused by the next one). Should clearing the
    /// backend state fail, the session is marked full so that the next request starts afresh.
    pub fn reset(&mut self) {
        self.session.tokens.clear();
        self.session.logits.clear();
        if self
            .backend
            .reset_state(&self.model.config, &mut self.session.state)
            .is_err()
        {
            match self.backend.new_state(&self.model.config, self.ctx) {
                Ok(st) => self.session.state = st,
                // Nothing can run in this state; forward reports the context as full.
                Err(_) => self.session.state.ctx = 0,
            }
        }
    }

    /// Tokens the live session holds.
    pub fn session_tokens(&self) -> &[u32] {
        &self.session.tokens
    }

    /// Evaluates `tokens` after the live session. A failed evaluation leaves the session
    /// half-updated, so it is dropped: the next request starts from scratch.
    fn eval(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let r = self.model.forward_last(
            self.backend.as_ref(),
            &mut self.session,
            tokens,
            self.precision,
        );
        if r.is_err() {
            self.reset();
        }
        Ok(r?)
    }

    /// Makes the live session hold exactly `prompt` and returns (reused tokens, logits after
    /// the last prompt token). A session that is a prefix of `prompt` is extended; any other is
    /// restarted. At least the last token is always evaluated so fresh logits exist.
    pub fn sync(&mut self, prompt: &[u32]) -> Result<(usize, Vec<f32>), EngineError> {
        self.sync_cancellable(prompt, &|| false)
    }

    /// As [`Engine::sync`], checking `cancel` before each prefill chunk of
    /// [`crate::model::PREFILL_CHUNK`] tokens.
    pub fn sync_cancellable(
        &mut self,
        prompt: &[u32],
        cancel: &dyn Fn() -> bool,
    ) -> Result<(usize, Vec<f32>), EngineError> {
        self.sync_hooked(
            prompt,
            &mut Hooks {
                cancel,
                ..Hooks::default()
            },
        )
    }

    /// As [`Engine::sync`] with `hooks`: chunks also end at each of `hooks.breaks`, and
    /// `hooks.at_frontier` sees the engine after every chunk.
    fn sync_hooked(
        &mut self,
        prompt: &[u32],
        hooks: &mut Hooks<'_>,
    ) -> Result<(usize, Vec<f32>), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let held = &self.session.tokens;
        let reusable = held.len() <= prompt.len() && prompt[..held.len()] == held[..];
        if !reusable || held.len() == prompt.len() && self.session.logits.is_empty() {
            self.reset();
        }
        let cached = self.session.tokens.len();
        if cached == prompt.len() {
            return Ok((cached, self.session.logits.clone()));
        }
        let mut logits = Vec::new();
        let mut at = cached;
        while at < prompt.len() {
            let mut end = (at + crate::model::PREFILL_CHUNK).min(prompt.len());
            if let Some(&b) = hooks.breaks.iter().filter(|&&b| b > at && b < end).min() {
                end = b;
            }
            if (hooks.cancel)() {
                return Err(EngineError::Cancelled);
            }
            logits = self.eval(&prompt[at..end])?;
            at = end;
            if let Some(f) = hooks.at_frontier.as_mut() {
                f(self);
            }
        }
        Ok((cached, logits))
    }

    /// A copy of the live session's complete state (tokens, last logits, KV), for the disk
    /// cache.
    pub fn snapshot(&self) -> Result<Snapshot, EngineError> {
        Ok(self
            .session
            .snapshot(self.backend.as_ref())
            .map_err(ModelError::from)?)
    }

    /// Makes the live session continue exactly from `snap` (as if its tokens had just been
    /// evaluated). On failure the session is emptied.
    pub fn restore(&mut self, snap: &Snapshot) -> Result<(), EngineError> {
        if snap.tokens.len() >= self.ctx {
            return Err(EngineError::ContextExceeded {
                prompt: snap.tokens.len(),
                max_tokens: 0,
                ctx: self.ctx,
            });
        }
        let r = self
            .session
            .restore(self.backend.as_ref(), &self.model.config, snap);
        if r.is_err() {
            self.reset();
        }
        Ok(r.map_err(ModelError::from)?)
    }

    /// Evaluates `prompt`, then samples up to `max_tokens` tokens, calling `on_piece` after each.
    /// The sampled tokens stay in the live session, so a follow-up prompt that extends this
    /// transcript reuses it.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        params: SamplerParams,
        on_piece: impl FnMut(&Piece) -> Control,
    ) -> Result<GenStats, EngineError> {
        self.generate_cancellable(prompt, max_tokens, params, &|| false, on_piece)
    }

    /// As [`Engine::generate`], checking `cancel` between prefill chunks (a client gone or a
    /// shutdown need not wait for a whole long prompt).
    pub fn generate_cancellable(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        params: SamplerParams,
        cancel: &dyn Fn() -> bool,
        on_piece: impl FnMut(&Piece) -> Control,
    ) -> Result<GenStats, EngineError> {
        let mut hooks = Hooks {
            cancel,
            ..Hooks::default()
        };
        self.generate_hooked(prompt, max_tokens, params, &mut hooks, on_piece)
    }

    /// As [`Engine::generate`] with `hooks` (cancellation, prefill chunk breaks and a look at
    /// every frontier, for disk checkpoints).
    pub fn generate_hooked(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        params: SamplerParams,
        hooks: &mut Hooks<'_>,
        mut on_piece: impl FnMut(&Piece) -> Control,
    ) -> Result<GenStats, EngineError> {
        if prompt.len() + max_tokens > self.ctx {
            return Err(EngineError::ContextExceeded {
                prompt: prompt.len(),
                max_tokens,
                ctx: self.ctx,
            });
        }
        let t0 = Instant::now();
        let (cached, mut logits) = self.sync_hooked(prompt, hooks)?;
        let prefill_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut sampler = Sampler::new(params);
        let eos = self.tokenizer.eos();
        let mut completion = 0;
        let mut finish = FinishCause::Length;
        let mut decoder_bytes: Vec<u8> = Vec::new();
        while completion < max_tokens {
            #[cfg(feature = "test-hooks")]
            let id = self
                .forced
                .pop_front()
                .unwrap_or_else(|| sampler.sample(&logits));
            #[cfg(not(feature = "test-hooks"))]
            let id = sampler.sample(&logits);
            completion += 1;
            if id == eos {
                // EOS joins the transcript so the next turn's prompt (which ends the turn with
                // EOS) extends it.
                self.eval(&[id])?;
                finish = FinishCause::Eos;
                break;
            }
            let text = release_utf8(
                &mut decoder_bytes,
                self.tokenizer.token_bytes(id).unwrap_or_default(),
            );
            let ctl = on_piece(&Piece { id, text });
            if let Some(f) = hooks.at_frontier.as_mut() {
                f(self);
            }
            logits = self.eval(&[id])?;
            match ctl {
                Control::Stop => {
                    finish = FinishCause::Stopped;
                    break;
                }
                Control::ContinueGreedy => sampler.set_force_greedy(true),
                Control::Continue => sampler.set_force_greedy(false),
            }
        }
        Ok(GenStats {
            prompt_tokens: prompt.len(),
            cached_tokens: cached,
            completion_tokens: completion,
            finish,
            prefill_secs,
            decode_secs: t1.elapsed().as_secs_f64(),
        })
    }
}

/// Appends `bytes` to `pending` and returns the longest valid UTF-8 prefix, keeping an
/// incomplete trailing character for later; invalid sequences become U+FFFD.
fn release_utf8(pending: &mut Vec<u8>, bytes: &[u8]) -> String {
    pending.extend_from_slice(bytes);
    let mut out = String::new();
    loop {
        match std::str::from_utf8(pending) {
            Ok(s) => {
                out.push_str(s);
                pending.clear();
                return out;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(
                    std::str::from_utf8(&pending[..valid]).expect("valid_up_to marks valid UTF-8"),
                );
                match e.error_len() {
                    None => {
                        pending.drain(..valid);
                        return out;
                    }
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        pending.drain(..valid + bad);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::release_utf8;

    #[test]
    fn release_utf8_holds_incomplete_characters() {
        let mut p = Vec::new();
        let euro = "€".as_bytes();
        assert_eq!(release_utf8(&mut p, &euro[..1]), "");
        assert_eq!(release_utf8(&mut p, &euro[1..]), "€");
        assert_eq!(release_utf8(&mut p, b"a\xffb"), "a\u{FFFD}b");
        assert!(p.is_empty());
    }
}
