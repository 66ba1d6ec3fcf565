//! The state of one sequence (spec/model.md §6): per layer the raw KV window, the compressed
//! attention and indexer rows, and the compressor frontiers; plus the tokens seen and the last
//! logits. Exactly what is needed to continue decoding, nothing derived.

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
    fn new(ratio: usize, d: usize) -> Self {
        let (rows, width) = if ratio == 4 { (8, 2 * d) } else { (ratio, d) };
        Frontier {
            kv: vec![0.0; rows * width],
            score: vec![FRONTIER_EMPTY_SCORE; rows * width],
            width,
        }
    }
}

/// One layer's cache.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerState {
    /// The last ≤ n_swa raw KV rows, oldest first, `head_dim` each.
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

/// The KV state of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Tokens evaluated so far; their count is the next position.
    pub tokens: Vec<u32>,
    /// Per-layer caches.
    pub layers: Vec<LayerState>,
    /// Logits after the last evaluated token (empty before the first).
    pub logits: Vec<f32>,
}

impl Session {
    /// An empty session for a model with configuration `cfg`.
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
        Session {
            tokens: Vec::new(),
            layers,
            logits: Vec::new(),
        }
    }

    /// The position of the next token.
    pub fn pos(&self) -> usize {
        self.tokens.len()
    }
}
