//! The operations the forward pass asks of a compute backend (DESIGN.md "The backend owns
//! memory"). `model/forward.rs` holds the model logic and calls these in spec order; a backend
//! holds the kernels and their launchers, and may fuse inside an operation but never forks the
//! model logic. `cpu` is the reference implementation; `ds4-cuda` is the production one.
//!
//! Everything a forward pass touches lives in backend memory: activations and scratch are
//! [`Tensor`]s (`[rows × cols]`, row-major), the KV state of a sequence is a [`SessionState`],
//! and each row of a batch carries its token and position in [`Rows`]. Only what the sampler
//! needs comes back ([`Backend::read`]). Snapshot and restore of a session go through
//! [`Backend::export_state`] / [`Backend::import_state`] and the host form [`KvState`].
//!
//! One decode step is a replayable unit: [`Backend::step`] runs a body of operations, and a
//! backend that can record it (CUDA graphs) replays the recording for the next step with the
//! same [`StepKey`] instead of running the body again. Position-dependent choices inside a step
//! are therefore read by the kernels from [`Rows`] in backend memory, never baked into launch
//! arguments, and the few host-side shape choices (the indexer on or off, its capacity) are part
//! of the key.

pub mod cpu;

use std::any::Any;

use crate::model::config::Config;
use crate::model::rope::Rope;
use crate::model::weights::{CompressorWeights, HcWeights, TensorRef};
use crate::model::Numerics;
use crate::session::KvState;

pub use cpu::CpuBackend;

/// A backend operation failed (device out of memory, driver or launch failure, a shape the
/// operation cannot take). The session being evaluated is left half-updated and must be
/// discarded.
#[derive(Debug, thiserror::Error)]
#[error("{backend} backend: {message}")]
pub struct BackendError {
    /// Which backend.
    pub backend: &'static str,
    /// What failed.
    pub message: String,
}

impl BackendError {
    /// An error of `backend` saying `message`.
    pub fn new(backend: &'static str, message: impl ToString) -> Self {
        BackendError {
            backend,
            message: message.to_string(),
        }
    }
}

/// Result of a backend operation.
pub type BResult<T> = Result<T, BackendError>;

/// Element type of a [`Tensor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float (activations).
    F32,
    /// 32-bit signed integer (expert ids, selected row indices; −1 = none).
    I32,
}

/// A backend-resident matrix `[rows × cols]`, row-major, of one [`DType`]. The data is opaque
/// to the model: host vectors on the CPU, a device allocation on CUDA.
pub struct Tensor {
    /// Rows (one per token of the batch, or `n_out` for the head).
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Element type.
    pub dtype: DType,
    /// The backend's storage.
    pub data: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{} × {} {:?}]", self.rows, self.cols, self.dtype)
    }
}

impl Tensor {
    /// `rows · cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rows of one batch (DESIGN.md "Each operation takes `[rows × width]` plus per-row
/// (session, position)"): prefill of one session, decode of one, and later a decode step over
/// many sessions are the same call with another row list.
pub struct Rows {
    /// Token id of each row.
    pub tokens: Vec<u32>,
    /// Absolute position of each row in its session.
    pub pos: Vec<usize>,
    /// Session slot of each row (0: the one session of this call).
    pub slot: Vec<u32>,
    /// The backend's copy (CUDA: tokens and positions in device memory, read by the kernels).
    pub data: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows")
            .field("n", &self.n())
            .field("pos", &self.pos.first().zip(self.pos.last()))
            .finish_non_exhaustive()
    }
}

impl Rows {
    /// Rows in the batch.
    pub fn n(&self) -> usize {
        self.tokens.len()
    }

    /// Compressed rows visible to the row at `pos` in a layer of `ratio` (spec §2.7: rows whose
    /// window ends at or before it).
    pub fn visible(pos: usize, ratio: usize) -> usize {
        (pos + 1).checked_div(ratio).unwrap_or(0)
    }

    /// The most compressed rows any row of the batch sees in a layer of `ratio`.
    pub fn max_visible(&self, ratio: usize) -> usize {
        self.pos
            .iter()
            .map(|&p| Rows::visible(p, ratio))
            .max()
            .unwrap_or(0)
    }

    /// A power of two ≥ [`Rows::max_visible`]: the capacity kernels size their grids by, so
    /// that one recorded step serves every position up to it.
    pub fn visible_cap(&self, ratio: usize) -> usize {
        self.max_visible(ratio).max(1).next_power_of_two()
    }
}

/// Which of a layer's compressors (spec §2.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompStream {
    /// The attention compressor (rows of `head_dim`, FP8 on the non-RoPE dims).
    Attn,
    /// The indexer compressor of ratio-4 layers (rows of `idx_head_dim`, Hadamard + FP4).
    Indexer,
}

/// The KV state of one sequence in backend memory (spec §6). Opaque to the model; converted
/// to and from the host form [`KvState`] for snapshots.
pub struct SessionState {
    /// Context capacity in tokens the state was sized for.
    pub ctx: usize,
    /// A number unique to this allocation (recordings of a step are tied to it).
    pub id: u64,
    /// The backend's storage.
    pub data: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("ctx", &self.ctx)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The host-side shape of one step: what a recording of it depends on besides the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepKey {
    /// Rows in the batch.
    pub rows: usize,
    /// Rows of logits the step computes (1: the last row; `rows`: all).
    pub out_rows: usize,
    /// Whether the backend may use its fast approximations ([`Numerics::fast`]).
    pub fast: bool,
    /// Whether the ratio-4 layers run the indexer (some row sees more than top-k rows).
    pub indexer: bool,
    /// [`Rows::visible_cap`] of the ratio-4 layers (grid size of the indexer).
    pub idx_cap: usize,
    /// Whether the step ends with a greedy choice on the backend ([`Backend::argmax_next`]).
    pub greedy: Option<Greedy>,
}

/// A greedy choice of the next token made by the backend at the end of a step (serving.md
/// §3.3 "T ≤ 0": the first index of the largest logit, NaN never chosen), so that the host
/// can issue the next step before it knows the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Greedy {
    /// A token never chosen (ds4-bench excludes EOS, as ds4's bench does).
    pub skip: Option<u32>,
}

/// The host's value of [`Rows::tokens`] for a row whose token the backend chose and the host
/// does not know yet ([`Backend::rows_sampled`]).
pub const UNKNOWN_TOKEN: u32 = u32::MAX;

/// Where the operations issued after [`Backend::lane`] run relative to the others: how the
/// forward pass says that two runs of operations are independent, so that a backend may
/// overlap them. The operations' results are those of running everything in issue order,
/// which is what a backend that ignores lanes does (the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A branch starts: the operations that follow depend only on work issued before the
    /// first branch began, and until [`Lane::Join`] nothing outside the branch (the main line,
    /// other branches) reads or writes what they write, nor writes what they read. Called
    /// again before [`Lane::Main`], a further branch beside the ones before it.
    Branch,
    /// The main line continues beside the branches (after the work issued before them, not
    /// necessarily after them).
    Main,
    /// The branches end: what follows runs after them and the main line.
    Join,
}

/// Kernels over weights bound from one model file, and the memory they run in. Every
/// operation's shapes are given in its doc; a backend checks them and returns an error on a
/// mismatch rather than panicking.
pub trait Backend: Send + Sync {
    /// Short name for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// Device memory this process uses now, in bytes (None for host backends).
    fn device_memory_used(&self) -> Option<usize> {
        None
    }

    // ---- memory ------------------------------------------------------------------------

    /// Starts a forward pass: scratch handed out by [`Backend::alloc`] since the previous
    /// `begin` may be reused from here on (none of it may be used again).
    fn begin(&self) -> BResult<()>;
    /// A `[rows × cols]` tensor of `dtype`; contents unspecified until written.
    fn alloc(&self, rows: usize, cols: usize, dtype: DType) -> BResult<Tensor>;
    /// Copies host values into `t` (row-major, `t.len()` values). For tests and inputs.
    fn write(&self, t: &mut Tensor, values: &[f32]) -> BResult<()>;
    /// Copies rows `rows` of an F32 tensor to the host.
    fn read(&self, t: &Tensor, rows: std::ops::Range<usize>) -> BResult<Vec<f32>>;
    /// Copies an I32 tensor to the host.
    fn read_i32(&self, t: &Tensor) -> BResult<Vec<i32>>;
    /// The row list of a batch of `tokens` at positions `pos0..` of one session.
    fn rows(&self, tokens: &[u32], pos0: usize) -> BResult<Rows>;
    /// The one-row batch at position `pos` of one session whose token is the one the last
    /// [`Backend::argmax_next`] chose, at the end of the step at `pos − 1` (the caller's
    /// guarantee). A device backend's host may not know the token yet: [`Rows::tokens`] may
    /// hold [`UNKNOWN_TOKEN`].
    fn rows_sampled(&self, pos: usize) -> BResult<Rows>;
    /// The token the oldest step ended by [`Backend::argmax_next`] chose (to be fed at `pos`)
    /// and that has not been taken yet; waits for that step.
    fn take_sampled(&self, pos: usize) -> BResult<u32>;
    /// An empty session sized for `ctx` tokens.
    fn new_state(&self, cfg: &Config, ctx: usize) -> BResult<SessionState>;
    /// Empties `st` in place (same memory, same [`SessionState::id`]).
    fn reset_state(&self, cfg: &Config, st: &mut SessionState) -> BResult<()>;
    /// The state of a session that has evaluated `n_tokens` tokens, in host form (for
    /// snapshots).
    fn export_state(&self, st: &SessionState, n_tokens: usize) -> BResult<KvState>;
    /// Replaces the contents of `st` with `kv` (a snapshot of a session that had evaluated
    /// `n_tokens` tokens), in place.
    fn import_state(
        &self,
        cfg: &Config,
        kv: &KvState,
        n_tokens: usize,
        st: &mut SessionState,
    ) -> BResult<()>;
    /// Runs `body` as one step of the session whose [`SessionState::id`] is `session`. A
    /// backend that records steps may instead replay its recording of an earlier step with the
    /// same `key` and session; `body` must therefore issue the same operations for the same
    /// key, reading positions only through [`Rows`].
    fn step(
        &self,
        key: StepKey,
        session: u64,
        body: &mut dyn FnMut() -> BResult<()>,
    ) -> BResult<()>;

    /// Sends the operations that follow to `lane` (see [`Lane`]); a backend that runs
    /// everything in issue order ignores it. Branches are opened, left for the main line and
    /// joined in that order, within one step.
    fn lane(&self, _lane: Lane) -> BResult<()> {
        Ok(())
    }

    // ---- operations (spec/model.md §2) --------------------------------------------------

    /// §2.2: `x_hc[t] = [e, e, …]` (`n_hc` copies) with `e = f32(w[token_t])`;
    /// `x_hc` is `[n × n_hc·E]`.
    fn embed(&self, w: &TensorRef, rows: &Rows, n_hc: usize, x_hc: &mut Tensor) -> BResult<()>;
    /// §2.3 HC pre: from `x_hc` `[n × n_hc·E]`, the sublayer input `out` `[n × E]` and `mix`
    /// `[n × (n_hc + n_hc²)]` = post gates `2σ(z)` then the Sinkhorn-normalised combine matrix.
    fn hc_pre(
        &self,
        x_hc: &Tensor,
        w: &HcWeights,
        cfg: &Config,
        out: &mut Tensor,
        mix: &mut Tensor,
        num: Numerics,
    ) -> BResult<()>;
    /// §2.3 HC post: `out[f] = post[f]·y + Σ_s comb[f + n_hc·s]·x_hc[s]` per row.
    fn hc_post(
        &self,
        y: &Tensor,
        x_hc: &Tensor,
        mix: &Tensor,
        n_hc: usize,
        out: &mut Tensor,
    ) -> BResult<()>;
    /// The boundary between two sublayers: [`Backend::hc_post`] of a sublayer into `out`, then
    /// [`Backend::hc_pre`] of `out` with the next sublayer's `w` into `h`, then the next
    /// sublayer's input RMSNorm of `h` with weight `norm` (§2.4.1 / §2.5 `u`): `mix` holds this
    /// sublayer's gates on entry and the next one's on return. A backend may fuse the three (each
    /// output is the next one's only input).
    #[allow(clippy::too_many_arguments)]
    fn hc_post_pre(
        &self,
        y: &Tensor,
        x_hc: &Tensor,
        mix: &mut Tensor,
        out: &mut Tensor,
        w: &HcWeights,
        norm: &[f32],
        cfg: &Config,
        h: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        self.hc_post(y, x_hc, mix, cfg.n_hc, out)?;
        self.hc_pre(out, w, cfg, h, mix, num)?;
        self.rms_norm(h, Some(norm), cfg.n_embd, cfg.rms_eps)
    }
    /// §2.6 HC head over rows `first..first + z.rows` of `x_hc`:
    /// `z = Σ_h (σ(pre_h·scale + base_h) + eps)·x_hc[h]`.
    #[allow(clippy::too_many_arguments)]
    fn hc_head(
        &self,
        x_hc: &Tensor,
        first: usize,
        func: &TensorRef,
        scale: f32,
        base: &[f32],
        cfg: &Config,
        z: &mut Tensor,
        num: Numerics,
    ) -> BResult<()>;
    /// RMSNorm in place of each `group`-wide slice of every row (`group = cols`: whole rows),
    /// with weight `w` (length `group`) or none.
    fn rms_norm(&self, x: &mut Tensor, w: Option<&[f32]>, group: usize, eps: f32) -> BResult<()>;
    /// `y[t][r] = Σ_c W[r][c]·x[t][c]`: `x` `[n × w.cols]`, `y` `[n × w.rows]`. With
    /// `num.fast` a backend may quantise activations (spec §7.4).
    fn matmul(&self, w: &TensorRef, x: &Tensor, y: &mut Tensor, num: Numerics) -> BResult<()>;
    /// `y += W·x` ([`Backend::matmul`] into `tmp`, `[n × w.rows]` scratch the caller
    /// provides, then [`Backend::add`]); a backend may accumulate into `y` directly.
    fn matmul_add(
        &self,
        w: &TensorRef,
        x: &Tensor,
        tmp: &mut Tensor,
        y: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        self.matmul(w, x, tmp, num)?;
        self.add(y, tmp)
    }
    /// `ys[i] = ws[i]·x` for several weights of one activation (as [`Backend::matmul`] each);
    /// a backend may run them as one product.
    fn matmuls(
        &self,
        ws: &[&TensorRef],
        x: &Tensor,
        ys: &mut [&mut Tensor],
        num: Numerics,
    ) -> BResult<()> {
        if ws.len() != ys.len() {
            return Err(BackendError::new(
                self.name(),
                format!("{} weights for {} outputs", ws.len(), ys.len()),
            ));
        }
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            self.matmul(w, x, y, num)?;
        }
        Ok(())
    }
    /// §2.4.7 grouped projection: rows `g·(w.rows/groups)..` of `w` take columns
    /// `g·w.cols..(g+1)·w.cols` of `x` (`[n × groups·w.cols]`); `y` is `[n × w.rows]`.
    fn matmul_grouped(
        &self,
        w: &TensorRef,
        groups: usize,
        x: &Tensor,
        y: &mut Tensor,
        num: Numerics,
    ) -> BResult<()>;
    /// §2.4.2 RoPE of the trailing dims of every `head_dim`-wide head of each row at the row's
    /// position; `inverse` de-rotates.
    fn rope(
        &self,
        x: &mut Tensor,
        head_dim: usize,
        rope: &Rope,
        rows: &Rows,
        inverse: bool,
    ) -> BResult<()>;
    /// §2.4.1–2 per-head RMSNorm (weight `w` or none) of every `head_dim`-wide head, then
    /// RoPE of its tail at the row's position: [`Backend::rms_norm`] then [`Backend::rope`]
    /// (forward); a backend may fuse the two.
    #[allow(clippy::too_many_arguments)]
    fn head_norm_rope(
        &self,
        x: &mut Tensor,
        w: Option<&[f32]>,
        head_dim: usize,
        eps: f32,
        rope: &Rope,
        rows: &Rows,
    ) -> BResult<()> {
        self.rms_norm(x, w, head_dim, eps)?;
        self.rope(x, head_dim, rope, rows, false)
    }
    /// §7.1/§7.3 storage rounding of attention KV rows in place: FP8 E4M3 of the first
    /// `cols − n_rot` dims (if `num.fp8_kv`), then f16 (if `num.f16_rows`).
    fn kv_round(&self, x: &mut Tensor, n_rot: usize, num: Numerics) -> BResult<()>;
    /// §7.2 indexer QAT of every `head_dim`-wide head in place (if `num.indexer_qat`).
    fn indexer_qat(&self, x: &mut Tensor, head_dim: usize, num: Numerics) -> BResult<()>;
    /// `x *= s`.
    fn scale(&self, x: &mut Tensor, s: f32) -> BResult<()>;
    /// `y += x`.
    fn add(&self, y: &mut Tensor, x: &Tensor) -> BResult<()>;
    /// §2.4.3: appends each row of `kv` (`[n × head_dim]`, already rounded) to layer `il`'s
    /// raw window.
    fn raw_push(&self, st: &mut SessionState, il: usize, kv: &Tensor, rows: &Rows) -> BResult<()>;
    /// §2.4.4: feeds each row's projections `kv` and `score` (`[n × W]`, `ape` not yet added)
    /// to layer `il`'s compressor `stream` in token order; every completed window is pooled,
    /// normed, RoPE'd at its first position, rounded (FP8 or QAT, then f16, as `num` says) and
    /// appended to the layer's rows, visible to the token that completed it.
    #[allow(clippy::too_many_arguments)]
    fn compress(
        &self,
        st: &mut SessionState,
        il: usize,
        stream: CompStream,
        kv: &Tensor,
        score: &Tensor,
        w: &CompressorWeights,
        rope: &Rope,
        cfg: &Config,
        num: Numerics,
        rows: &Rows,
    ) -> BResult<()>;
    /// §2.4.5: per row, the compressed rows it attends to in layer `il`: `sel` `[n × topk]`
    /// I32, ascending, padded with −1. A row that sees ≤ topk rows gets all of them; otherwise
    /// the top-k of `Σ_h w_h·ReLU(q_h·K_c)` (ties: lower index). `q` is `[n × heads·dh]`
    /// (RoPE'd, QAT'd), `wts` `[n × heads]` (scaled).
    fn indexer_select(
        &self,
        st: &SessionState,
        il: usize,
        q: &Tensor,
        wts: &Tensor,
        rows: &Rows,
        sel: &mut Tensor,
    ) -> BResult<()>;
    /// §2.4.6 sink attention of each row's heads `q` (`[n × heads·head_dim]`) over its raw
    /// window (the last `n_swa` rows up to and including itself) followed by its compressed rows
    /// (all visible ones, or the ones `sel` lists), then §2.4.7's inverse RoPE of each head of
    /// the output (`rope`, at each row's position); `out` like `q`. `num` tells a backend
    /// whether the stored rows are f16-exact (`f16_rows`), which its fast kernels may use.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        st: &SessionState,
        il: usize,
        q: &Tensor,
        sinks: &[f32],
        sel: Option<&Tensor>,
        cfg: &Config,
        rope: &Rope,
        rows: &Rows,
        num: Numerics,
        out: &mut Tensor,
    ) -> BResult<()>;
    /// §2.5 steps 2–4: from router logits `[n × n_expert]`, each row's `ids` `[n × k]` (I32)
    /// and weights `wts` `[n × k]`: sqrt-softplus scores, selection by `tid2eid[token]` when
    /// given, else top-k of score + `bias`; weights normalised to sum 1 and times `scale`.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        logits: &Tensor,
        bias: &[f32],
        tid2eid: Option<&[u32]>,
        scale: f32,
        rows: &Rows,
        ids: &mut Tensor,
        wts: &mut Tensor,
    ) -> BResult<()>;
    /// `mid = silu(min(gate·x, c)) · clamp(up·x, −c, c)` (spec §2.5 step 6): `x` `[n × cols]`,
    /// `mid` `[n × gate.rows]`.
    fn swiglu(
        &self,
        gate: &TensorRef,
        up: &TensorRef,
        x: &Tensor,
        clamp: f32,
        mid: &mut Tensor,
        num: Numerics,
    ) -> BResult<()>;
    /// §2.5 step 5, the routed experts: `out[t] = Σ_i down_{e_i}(swiglu_{e_i}(x[t]) · w_i)`
    /// over each row's `ids`/`wts`.
    #[allow(clippy::too_many_arguments)]
    fn moe_experts(
        &self,
        gate: &TensorRef,
        up: &TensorRef,
        down: &TensorRef,
        x: &Tensor,
        ids: &Tensor,
        wts: &Tensor,
        clamp: f32,
        out: &mut Tensor,
        num: Numerics,
    ) -> BResult<()>;
    /// The greedy choice ([`Greedy`], `g.skip` excluded) from the last row of `logits`
    /// `[n × n_vocab]` at the end of a step whose rows are `rows`: it becomes the token of the
    /// batch [`Backend::rows_sampled`] returns next and the value of
    /// [`Backend::take_sampled`]. A device backend neither waits for it nor sends it to the
    /// host here. The step's key says [`StepKey::greedy`].
    fn argmax_next(&self, logits: &Tensor, rows: &Rows, g: Greedy) -> BResult<()>;
}
