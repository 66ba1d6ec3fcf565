//! The scratch arena: one device allocation, handed out by a bump pointer. A forward pass
//! starts from the beginning (`Backend::begin`), so a decode step's tensors land at the same
//! addresses every time and a recorded step stays valid. Operations take temporaries with
//! [`Arena::mark`] / [`Arena::release`]: memory released after a launch is only reused by later
//! launches of the same stream, which it orders after it. A branch on a side stream
//! (crate::lanes) keeps what it took until it is joined: [`Arena::hold_peak`].

use std::sync::Mutex;

use ds4::model::config::Config;

use crate::driver::DevBuf;
use crate::CudaError;

/// Alignment of every allocation (wide loads, cuBLAS).
const ALIGN: usize = 256;

pub(crate) struct Arena {
    buf: DevBuf,
    /// (fill, highest fill since [`Arena::start_peak`]).
    used: Mutex<(usize, usize)>,
}

impl Arena {
    pub fn new(bytes: usize) -> Result<Self, CudaError> {
        Ok(Arena {
            buf: DevBuf::new(bytes)?,
            used: Mutex::new((0, 0)),
        })
    }

    /// `bytes` from the arena.
    pub fn alloc(&self, bytes: usize) -> Result<u64, CudaError> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let at = used.0.div_ceil(ALIGN) * ALIGN;
        let end = at + bytes.max(1);
        if end > self.buf.len {
            return Err(CudaError::Model(format!(
                "the scratch arena ({} MiB) cannot hold {} more bytes: a batch or context larger than the backend was sized for",
                self.buf.len >> 20,
                bytes
            )));
        }
        *used = (end, used.1.max(end));
        Ok(self.buf.ptr + at as u64)
    }

    /// The current fill, to release temporaries back to.
    pub fn mark(&self) -> usize {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Returns everything allocated since `mark`.
    pub fn release(&self, mark: usize) {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).0 = mark;
    }

    /// Starts tracking the highest fill from here (a branch begins).
    pub fn start_peak(&self) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.1 = used.0;
    }

    /// Keeps everything up to the highest fill since [`Arena::start_peak`] allocated (the
    /// branch's temporaries, which its kernels may still use while the main line goes on) and
    /// returns that fill.
    pub fn hold_peak(&self) -> usize {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.0 = used.0.max(used.1);
        used.0
    }

    /// Starts over (a new forward pass).
    pub fn reset(&self) {
        self.release(0);
    }
}

/// The arena a forward pass of `rows` rows needs with sessions of `ctx` tokens: the named
/// buffers of `model::scratch::Scratch` per row, logits for up to 256 rows, and the largest
/// temporaries of one operation (attention partials, indexer scores, a GEMM's f16 operands,
/// one expert's buffers in prefill).
pub(crate) fn arena_bytes(cfg: &Config, rows: usize, ctx: usize) -> usize {
    let (e, hc, hd) = (cfg.n_embd, cfg.n_hc, cfg.head_dim);
    let (nh, ff, ne, k) = (cfg.n_head, cfg.ff_exp, cfg.n_expert, cfg.n_expert_used);
    let (ih, idim) = (cfg.idx_heads, cfg.idx_head_dim);
    let per_row = 2 * hc * e
        + (hc + hc * hc)
        + e
        + cfg.q_lora
        + 2 * nh * hd
        + hd
        + 4 * hd
        + 2 * hd
        + 4 * idim
        + ih * idim
        + ih
        + cfg.idx_topk
        + cfg.o_groups * cfg.o_lora
        + 2 * e
        + ne
        + 2 * k
        + ff
        + e;
    let scratch = rows * per_row * 4 + rows * 64 * 16; // + alignment slack per tensor
    let logits = rows.min(256) * cfg.n_vocab * 4 + rows.min(256) * e * 4;
    let idx_cap = (ctx / 4).max(1).next_power_of_two();
    let max_cols = [e, cfg.q_lora, cfg.o_groups * cfg.o_lora, ff, hc * e]
        .into_iter()
        .max()
        .unwrap_or(e);
    // Attention partials: 16 slices a row (up to 64 for one decode row: attn_splits).
    let attn = (rows * 16).max(64) * nh * (hd + 2) * 4;
    let idx = rows * idx_cap * 4;
    let gemm = 2 * rows * max_cols * 2 + (64 << 20);
    // Routed experts of a chunk: every (row, expert) slot at once for the tensor-core kernel
    // (f16 pairs of x, gate/up/mid, f16 pairs of mid, the down output, ids and weights).
    let expert = rows * k.max(1) * (8 * e + 16 * ff + 16) + (64 << 20);
    let mix = rows * (2 + hc) * hc * 4;
    let temps = [attn, idx, gemm, expert, mix]
        .into_iter()
        .max()
        .unwrap_or(0);
    scratch + logits + temps + (16 << 20)
}
