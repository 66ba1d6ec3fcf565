//! The state of one sequence (spec/model.md §6). A [`Session`] holds the tokens seen and the
//! last logits on the host, and its KV state in backend memory ([`SessionState`]). The host
//! form of that state, [`KvState`] — per layer the raw KV window, the compressed attention and
//! indexer rows, and the compressor frontiers — is what snapshots are made of: exactly what is
//! needed to continue decoding, nothing derived.

use crate::backend::{BResult, Backend, SessionState};
use crate::model::config::Config;

/// A compressor's pending window (spec §2.4.4): `rows × width` KV values and gate scores.
/// Ratio 4 keeps 8 rows (previous window 0..4, current 4..8); ratio 128 keeps 128.
#[derive(Debug, Clone, PartialEq)]
pub struct Frontier {
    /// Rows of projected KV values, `rows × width`.
    pub kv: Vec<f32>,
    /// Rows of gate scores (with the positional `ape` added), `rows × width`.
    pub score: Vec<f32>,
    /// Projection width `W` (`coff·D`).
    pub width: usize,
}

/// Scores of rows never written: they get zero weight in the pooling softmax.
pub const FRONTIER_EMPTY_SCORE: f32 = -1e30;

impl Frontier {
    /// An empty frontier of a compressor with `ratio` and output width `d`.
    pub fn new(ratio: usize, d: usize) -> Self {
        let (rows, width) = Frontier::shape(ratio, d);
        Frontier {
            kv: vec![0.0; rows * width],
            score: vec![FRONTIER_EMPTY_SCORE; rows * width],
            width,
        }
    }

    /// `(rows, width)` of the frontier of a compressor with `ratio` and output width `d`.
    pub fn shape(ratio: usize, d: usize) -> (usize, usize) {
        if ratio == 4 {
            (8, 2 * d)
        } else {
            (ratio, d)
        }
    }
}

/// One layer's cache.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerState {
    /// Raw KV rows, oldest first, `head_dim` each: in a [`KvState`] snapshot the last
    /// ≤ n_swa; a live CPU state may also hold the rows of the batch being evaluated.
    pub raw: Vec<f32>,
    /// Compressed attention rows, `head_dim` each (ratio ≠ 0).
    pub comp: Vec<f32>,
    /// Indexer rows, `idx_head_dim` each (ratio 4).
    pub idx: Vec<f32>,
    /// Attention compressor frontier (ratio ≠ 0).
    pub attn_frontier: Option<Frontier>,
    /// Indexer compressor frontier (ratio 4).
    pub idx_frontier: Option<Frontier>,
}

/// The KV state of one sequence in host form (spec §6): what a snapshot holds.
#[derive(Debug, Clone, PartialEq)]
pub struct KvState {
    /// Raw window length of the model (rows kept per layer).
    pub n_swa: usize,
    /// Raw row width.
    pub head_dim: usize,
    /// Per-layer caches.
    pub layers: Vec<LayerState>,
}

impl KvState {
    /// An empty state for a model with configuration `cfg`.
    pub fn new(cfg: &Config) -> Self {
        let layers = (0..cfg.n_layer)
            .map(|il| {
                let r = cfg.ratio(il);
                LayerState {
                    raw: Vec::new(),
                    comp: Vec::new(),
                    idx: Vec::new(),
                    attn_frontier: (r != 0).then(|| Frontier::new(r, cfg.head_dim)),
                    idx_frontier: (r == 4).then(|| Frontier::new(r, cfg.idx_head_dim)),
                }
            })
            .collect();
        KvState {
            n_swa: cfg.n_swa,
            head_dim: cfg.head_dim,
            layers,
        }
    }

    /// The same state with only the last `n_swa` raw rows per layer (the snapshot form).
    pub fn canonical(&self) -> KvState {
        let mut s = self.clone();
        for l in &mut s.layers {
            let held = l.raw.len() / self.head_dim;
            if held > self.n_swa {
                l.raw.drain(..(held - self.n_swa) * self.head_dim);
            }
        }
        s
    }

    /// Checks that the state fits a model with configuration `cfg`, naming the first mismatch.
    pub fn check(&self, cfg: &Config) -> Result<(), String> {
        if self.layers.len() != cfg.n_layer || self.head_dim != cfg.head_dim {
            return Err(format!(
                "the state has {} layers of head dim {}; the model has {} of {}",
                self.layers.len(),
                self.head_dim,
                cfg.n_layer,
                cfg.head_dim
            ));
        }
        for (il, l) in self.layers.iter().enumerate() {
            let r = cfg.ratio(il);
            let bad = |what: &str| Err(format!("layer {il}: {what} does not fit the model"));
            if l.raw.len() % cfg.head_dim != 0 || l.raw.len() / cfg.head_dim > cfg.n_swa {
                return bad("raw window");
            }
            if l.comp.len() % cfg.head_dim != 0 || (r == 0 && !l.comp.is_empty()) {
                return bad("compressed rows");
            }
            if l.idx.len() % cfg.idx_head_dim != 0 || (r != 4 && !l.idx.is_empty()) {
                return bad("indexer rows");
            }
            let fits = |f: &Option<Frontier>, on: bool, d: usize| match f {
                None => !on,
                Some(f) => {
                    let (rows, w) = Frontier::shape(r, d);
                    on && f.width == w && f.kv.len() == rows * w && f.score.len() == rows * w
                }
            };
            if !fits(&l.attn_frontier, r != 0, cfg.head_dim) {
                return bad("attention frontier");
            }
            if !fits(&l.idx_frontier, r == 4, cfg.idx_head_dim) {
                return bad("indexer frontier");
            }
        }
        Ok(())
    }
}

/// One sequence: tokens and last logits on the host, KV state in backend memory.
#[derive(Debug)]
pub struct Session {
    /// Tokens evaluated so far; their count is the next position.
    pub tokens: Vec<u32>,
    /// Logits after the last evaluated token (empty before the first).
    pub logits: Vec<f32>,
    /// The KV state, owned by the backend that made it.
    pub state: SessionState,
}

impl Session {
    /// An empty session on `be` sized for `ctx` tokens.
    pub fn new(be: &dyn Backend, cfg: &Config, ctx: usize) -> BResult<Self> {
        Ok(Session {
            tokens: Vec::new(),
            logits: Vec::new(),
            state: be.new_state(cfg, ctx)?,
        })
    }

    /// The position of the next token.
    pub fn pos(&self) -> usize {
        self.tokens.len()
    }

    /// A copy of this session's complete state (host form), for snapshots.
    pub fn snapshot(&self, be: &dyn Backend) -> BResult<Snapshot> {
        Ok(Snapshot {
            tokens: self.tokens.clone(),
            logits: self.logits.clone(),
            kv: be.export_state(&self.state, self.tokens.len())?,
        })
    }

    /// Makes this session continue exactly from `snap` (its memory is reused).
    pub fn restore(&mut self, be: &dyn Backend, cfg: &Config, snap: &Snapshot) -> BResult<()> {
        if snap.tokens.len() > self.state.ctx {
            return Err(crate::backend::BackendError::new(
                be.name(),
                format!(
                    "a snapshot of {} tokens does not fit a context of {}",
                    snap.tokens.len(),
                    self.state.ctx
                ),
            ));
        }
        be.import_state(cfg, &snap.kv, snap.tokens.len(), &mut self.state)?;
        self.tokens = snap.tokens.clone();
        self.logits = snap.logits.clone();
        Ok(())
    }
}

/// A session's complete state on the host: tokens, last logits and the KV state.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Tokens evaluated.
    pub tokens: Vec<u32>,
    /// Logits after the last token.
    pub logits: Vec<f32>,
    /// The KV state.
    pub kv: KvState,
}

impl Snapshot {
    /// Bytes the state takes as f32 values (what ds4-bench reports as `kvcache_bytes`).
    pub fn kv_bytes(&self) -> usize {
        let f = |v: &Vec<f32>| v.len() * 4;
        self.kv
            .layers
            .iter()
            .map(|l| {
                f(&l.raw)
                    + f(&l.comp)
                    + f(&l.idx)
                    + [&l.attn_frontier, &l.idx_frontier]
                        .iter()
                        .filter_map(|fr| fr.as_ref())
                        .map(|fr| f(&fr.kv) + f(&fr.score))
                        .sum::<usize>()
            })
            .sum::<usize>()
            + self.tokens.len() * 4
    }
}
