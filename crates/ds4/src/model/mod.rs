//! DeepSeek V4 Flash: configuration from metadata, typed weight views, and the forward pass
//! (spec/model.md §1–§3, §7). `forward.rs` reads top-down like spec §2; each concept has its own
//! file (`hc`, `attention`, `compressor`, `indexer`, `moe`, `rope`, `numerics`).

pub mod attention;
pub mod compressor;
pub mod config;
pub mod forward;
pub mod hc;
pub mod indexer;
pub mod moe;
pub mod numerics;
pub mod rope;
pub mod scratch;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

pub use config::{Config, ConfigError};
pub use forward::{Logits, Stage, PREFILL_CHUNK};
pub use weights::{Weights, WeightsError, DENSE_TYPES, EXPERT_TYPES};

use crate::backend::Backend;
use crate::gguf::GgufFile;
use crate::session::Session;

/// Numerics of a run (DESIGN.md "Two precisions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 activations and cache rows, no FP8/FP4 simulation: what transformers computes.
    Precise,
    /// The official model's numerics: FP8 KV and Hadamard+FP4 indexer simulation, f16 cache rows.
    #[default]
    Default,
}

impl Precision {
    /// The numerics this precision stands for.
    pub fn numerics(self) -> Numerics {
        let on = self == Precision::Default;
        Numerics {
            fp8_kv: on,
            indexer_qat: on,
            f16_rows: on,
            fast: on,
        }
    }
}

/// The individual storage simulations (spec §7). [`Precision`] picks a set; tests switch single
/// ones off to prove that the reference comparison notices each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numerics {
    /// FP8 E4M3 round trip of the non-RoPE dims of raw and compressed attention rows.
    pub fp8_kv: bool,
    /// Hadamard + FP4 E2M1 round trip of indexer queries and rows.
    pub indexer_qat: bool,
    /// f16 rounding of stored raw, compressed and indexer rows.
    pub f16_rows: bool,
    /// A backend may use its fast approximations (quantised activations in matmuls, f16 GEMM
    /// inputs; DESIGN.md "Two precisions"). The CPU reference ignores it.
    pub fast: bool,
}

/// Anything that stops a model from loading or running.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The container could not be read.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::Error),
    /// The metadata is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A tensor is missing or wrong.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A backend operation failed; the session evaluated is no longer consistent.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    /// The session cannot hold the tokens.
    #[error("{needed} tokens do not fit the session's context of {ctx}")]
    ContextFull {
        /// Tokens the session would hold.
        needed: usize,
        /// Its capacity.
        ctx: usize,
    },
    /// The model computes NaN or infinity for its first token (a broken or hostile file).
    #[error("the model is unusable: {stage} of the first token is not finite")]
    NonFinite {
        /// The first stage whose output is not finite.
        stage: Stage,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange {
        /// The offending id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
}

/// A loaded model: the mapped file, its configuration and its bound weights.
pub struct Model {
    /// The mapped GGUF.
    pub file: Arc<GgufFile>,
    /// Hyperparameters.
    pub config: Config,
    /// Tensor views into `file`.
    pub weights: Weights,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Maps and validates a GGUF file.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        Self::from_file(Arc::new(GgufFile::open(path)?))
    }

    /// Validates an already opened file.
    pub fn from_file(file: Arc<GgufFile>) -> Result<Self, ModelError> {
        let config = Config::from_metadata(|k| file.get(k))?;
        let weights = Weights::bind(&file, &config)?;
        Ok(Model {
            file,
            config,
            weights,
        })
    }

    /// A fresh session for this model on `be`, sized for `ctx` tokens.
    pub fn new_session(&self, be: &dyn Backend, ctx: usize) -> Result<Session, ModelError> {
        Ok(Session::new(be, &self.config, ctx)?)
    }

    /// Evaluates `tokens` in `sess` and returns the logits after each, `[n × n_vocab]`.
    pub fn forward(
        &self,
        be: &dyn Backend,
        sess: &mut Session,
        tokens: &[u32],
        prec: Precision,
    ) -> Result<Vec<f32>, ModelError> {
        forward::forward(self, be, sess, tokens, prec.numerics(), Logits::All)
    }

    /// Evaluates `tokens` in `sess` and returns the logits after the last one, `[n_vocab]`.
    /// Only the last row goes through the output head.
    pub fn forward_last(
        &self,
        be: &dyn Backend,
        sess: &mut Session,
        tokens: &[u32],
        prec: Precision,
    ) -> Result<Vec<f32>, ModelError> {
        forward::forward(self, be, sess, tokens, prec.numerics(), Logits::Last)
    }

    /// Decodes `n` greedy tokens after `sess` (`skip` never chosen), feeding `first` and then
    /// each token as the backend chooses it, with the next step issued before the host has the
    /// token ([`forward::decode_greedy`]). Returns the chosen tokens.
    pub fn decode_greedy(
        &self,
        be: &dyn Backend,
        sess: &mut Session,
        first: u32,
        n: usize,
        skip: Option<u32>,
        prec: Precision,
    ) -> Result<Vec<u32>, ModelError> {
        forward::decode_greedy(self, be, sess, first, n, skip, prec.numerics())
    }

    /// Evaluates `token` in `sess` in precise numerics and refuses the model when some layer's
    /// output is not finite, naming the first such stage. `sess` advances by one token.
    pub fn check_first_token(
        &self,
        be: &dyn Backend,
        sess: &mut Session,
        token: u32,
    ) -> Result<(), ModelError> {
        let num = Precision::Precise.numerics();
        match forward::first_token_check(self, be, sess, token, num)? {
            Some(stage) => Err(ModelError::NonFinite { stage }),
            None => Ok(()),
        }
    }

    /// As [`Model::forward`] with an explicit set of simulations.
    pub fn forward_with(
        &self,
        be: &dyn Backend,
        sess: &mut Session,
        tokens: &[u32],
        num: Numerics,
    ) -> Result<Vec<f32>, ModelError> {
        forward::forward(self, be, sess, tokens, num, Logits::All)
    }
}
