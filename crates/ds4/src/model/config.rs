//! Model hyperparameters read from GGUF metadata (spec/model.md §1, §3.2). Every dimension comes
//! from the file so tiny generated models run the same code as the 284B model; a file that
//! claims the real dimensions is also checked against the real constants.

use crate::gguf::Value;

/// Architecture prefix of every model key, and the required `general.architecture`.
pub const ARCH: &str = "deepseek4";
/// The metadata key naming the architecture.
pub const ARCH_KEY: &str = "general.architecture";
/// Most Sinkhorn rounds accepted (20 in the real model; each is a pass over an n_hc × n_hc
/// matrix per token and layer, so 2^31 would hang the forward pass).
pub const MAX_SINKHORN_ITERS: usize = 256;
/// Most raw-window tokens accepted (128 in the real model; sizes per-session buffers).
pub const MAX_SWA: usize = 1 << 16;
/// Largest indexer top-k accepted (512 in the real model; sizes per-token buffers).
pub const MAX_IDX_TOPK: usize = 1 << 16;

/// What went wrong reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required key is absent.
    #[error("metadata key `{key}` is missing")]
    MissingKey {
        /// Full key name.
        key: String,
    },
    /// A key has a GGUF type the loader does not accept.
    #[error("metadata key `{key}`: expected {expected}, found {found}")]
    WrongType {
        /// Full key name.
        key: String,
        /// Accepted types.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
    /// A key has a value the model cannot run with.
    #[error("metadata key `{key}`: expected {expected}, found {found}")]
    WrongValue {
        /// Full key name.
        key: String,
        /// What was required.
        expected: String,
        /// What the file holds.
        found: String,
    },
}

/// Hyperparameters of one DeepSeek V4 Flash file (spec §1). Names follow the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Layers (43 in the real model).
    pub n_layer: usize,
    /// Embedding width `E` (4096).
    pub n_embd: usize,
    /// Vocabulary size (129280).
    pub n_vocab: usize,
    /// Query heads (64).
    pub n_head: usize,
    /// Head dim of q, k and v (512).
    pub head_dim: usize,
    /// RoPE'd trailing dims per head, attention and indexer alike (64).
    pub n_rot: usize,
    /// q low rank (1024).
    pub q_lora: usize,
    /// Output-projection groups (8).
    pub o_groups: usize,
    /// Per-group output rank (1024).
    pub o_lora: usize,
    /// Routed experts (256).
    pub n_expert: usize,
    /// Experts per token (6).
    pub n_expert_used: usize,
    /// Expert FFN width (2048).
    pub ff_exp: usize,
    /// Hash-routed layers, counted from layer 0 (3).
    pub n_hash_layer: usize,
    /// Raw KV window in tokens, current token included (128).
    pub n_swa: usize,
    /// Indexer heads (64).
    pub idx_heads: usize,
    /// Indexer head dim (128).
    pub idx_head_dim: usize,
    /// Indexer top-k (512).
    pub idx_topk: usize,
    /// Hyper-connection streams (4).
    pub n_hc: usize,
    /// Sinkhorn rounds (20).
    pub sinkhorn_iters: usize,
    /// HC epsilon (1e-6).
    pub hc_eps: f32,
    /// Per-layer compress ratio: 0, 4 or 128.
    pub compress_ratios: Vec<u32>,
    /// Per-layer SwiGLU clamp (10).
    pub swiglu_clamp: Vec<f32>,
    /// RoPE base of layers without compression (10000).
    pub rope_base: f32,
    /// RoPE base of compressed layers (160000).
    pub compress_rope_base: f32,
    /// YaRN factor (16).
    pub yarn_factor: f32,
    /// YaRN original context (65536).
    pub yarn_orig_ctx: f32,
    /// YaRN β_fast (32).
    pub yarn_beta_fast: f32,
    /// YaRN β_slow (1).
    pub yarn_beta_slow: f32,
    /// Routed scaling factor (1.5).
    pub expert_weights_scale: f32,
    /// RMSNorm epsilon (1e-6).
    pub rms_eps: f32,
    /// Declared context length, if the file has one (informational).
    pub context_length: Option<u64>,
}

/// The real model's values (spec §1), checked when a file claims the real dimensions.
const REAL_U32: &[(&str, u64)] = &[
    ("block_count", 43),
    ("embedding_length", 4096),
    ("vocab_size", 129280),
    ("attention.head_count", 64),
    ("attention.head_count_kv", 1),
    ("attention.key_length", 512),
    ("attention.value_length", 512),
    ("rope.dimension_count", 64),
    ("attention.q_lora_rank", 1024),
    ("attention.output_lora_rank", 1024),
    ("attention.output_group_count", 8),
    ("expert_count", 256),
    ("expert_used_count", 6),
    ("expert_feed_forward_length", 2048),
    ("expert_shared_count", 1),
    ("hash_layer_count", 3),
    ("attention.sliding_window", 128),
    ("attention.indexer.head_count", 64),
    ("attention.indexer.key_length", 128),
    ("attention.indexer.top_k", 512),
    ("hyper_connection.count", 4),
    ("hyper_connection.sinkhorn_iterations", 20),
];

/// Reads keys with the prefix, typed as ds4 requires (spec §3.2).
struct Meta<'a, F: Fn(&str) -> Option<&'a Value>> {
    get: F,
}

impl<'a, F: Fn(&str) -> Option<&'a Value>> Meta<'a, F> {
    fn key(name: &str) -> String {
        format!("{ARCH}.{name}")
    }

    fn value(&self, name: &str) -> Result<&'a Value, ConfigError> {
        let key = Self::key(name);
        (self.get)(&key).ok_or(ConfigError::MissingKey { key })
    }

    /// Exactly GGUF UINT32.
    fn u32(&self, name: &str) -> Result<usize, ConfigError> {
        match self.value(name)? {
            Value::U32(v) => Ok(*v as usize),
            other => Err(wrong_type(name, "UINT32", other)),
        }
    }

    /// A float stored as F32, F64, U32 or I32 (ds4's `required_f32`).
    fn f32(&self, name: &str) -> Result<f32, ConfigError> {
        let v = self.value(name)?;
        match v {
            Value::F32(_) | Value::F64(_) | Value::U32(_) | Value::I32(_) => {
                Ok(v.as_f64().unwrap_or_default() as f32)
            }
            other => Err(wrong_type(name, "FLOAT32, FLOAT64, UINT32 or INT32", other)),
        }
    }

    fn opt(&self, name: &str) -> Option<&'a Value> {
        (self.get)(&Self::key(name))
    }
}

fn wrong_type(name: &str, expected: &'static str, found: &Value) -> ConfigError {
    ConfigError::WrongType {
        key: format!("{ARCH}.{name}"),
        expected,
        found: format!("{:?}", found.value_type()),
    }
}

fn wrong_value(name: &str, expected: impl ToString, found: impl ToString) -> ConfigError {
    ConfigError::WrongValue {
        key: format!("{ARCH}.{name}"),
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

impl Config {
    /// Reads and validates the configuration from metadata looked up by full key name.
    pub fn from_metadata<'a>(get: impl Fn(&str) -> Option<&'a Value>) -> Result<Self, ConfigError> {
        check_architecture(&get)?;
        let m = Meta { get };
        let n_layer = m.u32("block_count")?;
        let cfg = Config {
            n_layer,
            n_embd: m.u32("embedding_length")?,
            n_vocab: m.u32("vocab_size")?,
            n_head: m.u32("attention.head_count")?,
            head_dim: m.u32("attention.key_length")?,
            n_rot: m.u32("rope.dimension_count")?,
            q_lora: m.u32("attention.q_lora_rank")?,
            o_groups: m.u32("attention.output_group_count")?,
            o_lora: m.u32("attention.output_lora_rank")?,
            n_expert: m.u32("expert_count")?,
            n_expert_used: m.u32("expert_used_count")?,
            ff_exp: m.u32("expert_feed_forward_length")?,
            n_hash_layer: m.u32("hash_layer_count")?,
            n_swa: m.u32("attention.sliding_window")?,
            idx_heads: m.u32("attention.indexer.head_count")?,
            idx_head_dim: m.u32("attention.indexer.key_length")?,
            idx_topk: m.u32("attention.indexer.top_k")?,
            n_hc: m.u32("hyper_connection.count")?,
            sinkhorn_iters: m.u32("hyper_connection.sinkhorn_iterations")?,
            hc_eps: m.f32("hyper_connection.epsilon")?,
            compress_ratios: read_ratios(&m, n_layer)?,
            swiglu_clamp: read_clamps(&m, n_layer)?,
            rope_base: m.f32("rope.freq_base")?,
            compress_rope_base: m.f32("attention.compress_rope_freq_base")?,
            yarn_factor: m.f32("rope.scaling.factor")?,
            yarn_orig_ctx: read_u64ish(&m, "rope.scaling.original_context_length")? as f32,
            yarn_beta_fast: m.f32("rope.scaling.yarn_beta_fast")?,
            yarn_beta_slow: m.f32("rope.scaling.yarn_beta_slow")?,
            expert_weights_scale: m.f32("expert_weights_scale")?,
            rms_eps: m.f32("attention.layer_norm_rms_epsilon")?,
            context_length: m
                .opt("context_length")
                .and_then(Value::as_int)
                .and_then(|v| u64::try_from(v).ok()),
        };
        check_fixed(&m, &cfg)?;
        check_ranges(&cfg)?;
        if cfg.n_layer == 43 && cfg.n_embd == 4096 {
            check_real(&m, &cfg)?;
        }
        Ok(cfg)
    }

    /// Compress ratio of layer `il` (0, 4 or 128).
    pub fn ratio(&self, il: usize) -> usize {
        self.compress_ratios.get(il).map_or(0, |&r| r as usize)
    }

    /// Heads per output group.
    pub fn heads_per_group(&self) -> usize {
        self.n_head / self.o_groups
    }
}

fn read_u64ish<'a, F: Fn(&str) -> Option<&'a Value>>(
    m: &Meta<'a, F>,
    name: &str,
) -> Result<u64, ConfigError> {
    match m.value(name)? {
        Value::U32(v) => Ok(u64::from(*v)),
        Value::U64(v) => Ok(*v),
        other => Err(wrong_type(name, "UINT32 or UINT64", other)),
    }
}

fn read_ratios<'a, F: Fn(&str) -> Option<&'a Value>>(
    m: &Meta<'a, F>,
    n_layer: usize,
) -> Result<Vec<u32>, ConfigError> {
    let name = "attention.compress_ratios";
    let v = m.value(name)?;
    let arr = v
        .as_array()
        .ok_or_else(|| wrong_type(name, "ARRAY of UINT32 or INT32", v))?;
    if arr.len() < n_layer {
        return Err(wrong_value(
            name,
            format!("at least {n_layer} entries"),
            arr.len(),
        ));
    }
    let mut out = Vec::with_capacity(n_layer);
    for (il, e) in arr.iter().take(n_layer).enumerate() {
        let r = match e {
            Value::U32(r) => *r,
            Value::I32(r) if *r >= 0 => *r as u32,
            other => return Err(wrong_type(name, "ARRAY of UINT32 or INT32", other)),
        };
        // ds4's fixed schedule: 0 on the first two layers, then 4 on even and 128 on odd ones.
        let want = if il < 2 {
            0
        } else if il % 2 == 0 {
            4
        } else {
            128
        };
        if r != want {
            return Err(wrong_value(
                name,
                format!("{want} at layer {il} (pattern 0,0,4,128,4,…)"),
                r,
            ));
        }
        out.push(r);
    }
    Ok(out)
}

fn read_clamps<'a, F: Fn(&str) -> Option<&'a Value>>(
    m: &Meta<'a, F>,
    n_layer: usize,
) -> Result<Vec<f32>, ConfigError> {
    let name = "swiglu_clamp_exp";
    let v = m.value(name)?;
    let arr = v
        .as_array()
        .ok_or_else(|| wrong_type(name, "ARRAY of FLOAT32 or FLOAT64", v))?;
    if arr.len() < n_layer {
        return Err(wrong_value(
            name,
            format!("at least {n_layer} entries"),
            arr.len(),
        ));
    }
    arr.iter()
        .take(n_layer)
        .map(|e| match e {
            Value::F32(_) | Value::F64(_) => Ok(e.as_f64().unwrap_or_default() as f32),
            other => Err(wrong_type(name, "ARRAY of FLOAT32 or FLOAT64", other)),
        })
        .collect()
}

/// `general.architecture` must be `deepseek4`: another model's file must not be read as ours.
fn check_architecture<'a>(get: &impl Fn(&str) -> Option<&'a Value>) -> Result<(), ConfigError> {
    match get(ARCH_KEY) {
        None => Err(ConfigError::MissingKey {
            key: ARCH_KEY.into(),
        }),
        Some(Value::String(a)) if a == ARCH => Ok(()),
        Some(Value::String(a)) => Err(ConfigError::WrongValue {
            key: ARCH_KEY.into(),
            expected: format!("\"{ARCH}\" (DeepSeek V4 Flash)"),
            found: format!("{a:?}"),
        }),
        Some(other) => Err(ConfigError::WrongType {
            key: ARCH_KEY.into(),
            expected: "STRING",
            found: format!("{:?}", other.value_type()),
        }),
    }
}

/// Bounds that hold at every size, so a small file cannot slip a NaN, a division by zero or
/// an endless loop into the forward pass: every float finite and in a sane range, every
/// integer that sizes work or buffers (rather than a tensor, whose shape is checked against
/// the file) below a cap.
fn check_ranges(c: &Config) -> Result<(), ConfigError> {
    // (key, value, low, high, low inclusive): the real values are well inside each range.
    let floats = [
        ("hyper_connection.epsilon", c.hc_eps, 0.0, 1e-2, false),
        (
            "attention.layer_norm_rms_epsilon",
            c.rms_eps,
            0.0,
            1e-2,
            false,
        ),
        // ln(base) divides the YaRN correction dims, and base^(-2k/n) is the frequency.
        ("rope.freq_base", c.rope_base, 1.0, 1e9, false),
        (
            "attention.compress_rope_freq_base",
            c.compress_rope_base,
            1.0,
            1e9,
            false,
        ),
        ("rope.scaling.factor", c.yarn_factor, 1.0, 1e6, true),
        (
            "rope.scaling.original_context_length",
            c.yarn_orig_ctx,
            1.0,
            1e9,
            true,
        ),
        (
            "rope.scaling.yarn_beta_fast",
            c.yarn_beta_fast,
            0.0,
            1e6,
            false,
        ),
        (
            "rope.scaling.yarn_beta_slow",
            c.yarn_beta_slow,
            0.0,
            1e6,
            false,
        ),
        (
            "expert_weights_scale",
            c.expert_weights_scale,
            0.0,
            1e3,
            false,
        ),
    ];
    for (name, v, lo, hi, lo_inclusive) in floats {
        let above_lo = if lo_inclusive { v >= lo } else { v > lo };
        if !(v.is_finite() && above_lo && v <= hi) {
            let open = if lo_inclusive { '[' } else { '(' };
            return Err(wrong_value(
                name,
                format!("a finite number in {open}{lo}, {hi}]"),
                v,
            ));
        }
    }
    let ints = [
        (
            "hyper_connection.sinkhorn_iterations",
            c.sinkhorn_iters,
            1,
            MAX_SINKHORN_ITERS,
        ),
        ("attention.sliding_window", c.n_swa, 1, MAX_SWA),
        ("attention.indexer.top_k", c.idx_topk, 1, MAX_IDX_TOPK),
    ];
    for (name, v, lo, hi) in ints {
        if !(lo..=hi).contains(&v) {
            return Err(wrong_value(name, format!("an integer in [{lo}, {hi}]"), v));
        }
    }
    Ok(())
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

/// Constraints that hold for every file, small or real: the code depends on them.
fn check_fixed<'a, F: Fn(&str) -> Option<&'a Value>>(
    m: &Meta<'a, F>,
    c: &Config,
) -> Result<(), ConfigError> {
    let pos = [
        ("block_count", c.n_layer),
        ("embedding_length", c.n_embd),
        ("vocab_size", c.n_vocab),
        ("attention.head_count", c.n_head),
        ("attention.q_lora_rank", c.q_lora),
        ("attention.output_group_count", c.o_groups),
        ("attention.output_lora_rank", c.o_lora),
        ("expert_count", c.n_expert),
        ("expert_used_count", c.n_expert_used),
        ("expert_feed_forward_length", c.ff_exp),
        ("attention.sliding_window", c.n_swa),
        ("attention.indexer.head_count", c.idx_heads),
        ("attention.indexer.top_k", c.idx_topk),
    ];
    for (name, v) in pos {
        if v == 0 {
            return Err(wrong_value(name, "a positive value", 0));
        }
    }
    if m.u32("attention.head_count_kv")? != 1 {
        return Err(wrong_value(
            "attention.head_count_kv",
            1,
            m.u32("attention.head_count_kv")?,
        ));
    }
    if m.u32("attention.value_length")? != c.head_dim {
        return Err(wrong_value(
            "attention.value_length",
            c.head_dim,
            m.u32("attention.value_length")?,
        ));
    }
    if c.n_rot == 0
        || !c.n_rot.is_multiple_of(2)
        || c.n_rot > c.head_dim
        || c.n_rot > c.idx_head_dim
    {
        return Err(wrong_value(
            "rope.dimension_count",
            "an even number ≤ both head dims",
            c.n_rot,
        ));
    }
    if !c.idx_head_dim.is_power_of_two() {
        return Err(wrong_value(
            "attention.indexer.key_length",
            "a power of two (Hadamard)",
            c.idx_head_dim,
        ));
    }
    if !c.n_head.is_multiple_of(c.o_groups) {
        return Err(wrong_value(
            "attention.output_group_count",
            format!("a divisor of {}", c.n_head),
            c.o_groups,
        ));
    }
    if c.n_expert_used > c.n_expert {
        return Err(wrong_value(
            "expert_used_count",
            format!("≤ expert_count {}", c.n_expert),
            c.n_expert_used,
        ));
    }
    if m.u32("expert_shared_count")? != 1 {
        return Err(wrong_value(
            "expert_shared_count",
            1,
            m.u32("expert_shared_count")?,
        ));
    }
    if c.n_hc != 4 {
        return Err(wrong_value("hyper_connection.count", 4, c.n_hc));
    }
    for name in ["expert_group_count", "expert_group_used_count"] {
        if let Some(v) = m.opt(name) {
            if v.as_int() != Some(0) {
                return Err(wrong_value(name, "0 or absent", format!("{v:?}")));
            }
        }
    }
    match m.value("expert_weights_norm")? {
        Value::Bool(true) => {}
        other => {
            return Err(wrong_value(
                "expert_weights_norm",
                "BOOL true",
                format!("{other:?}"),
            ))
        }
    }
    for (il, &cl) in c.swiglu_clamp.iter().enumerate() {
        if !close(cl, 10.0) {
            return Err(wrong_value(
                "swiglu_clamp_exp",
                format!("10 at layer {il}"),
                cl,
            ));
        }
    }
    Ok(())
}

/// A file with the real dimensions must match every constant of spec §1.
fn check_real<'a, F: Fn(&str) -> Option<&'a Value>>(
    m: &Meta<'a, F>,
    c: &Config,
) -> Result<(), ConfigError> {
    for &(name, want) in REAL_U32 {
        let got = m.u32(name)? as u64;
        if got != want {
            return Err(wrong_value(name, want, got));
        }
    }
    let floats = [
        ("hyper_connection.epsilon", c.hc_eps, 1e-6),
        ("rope.freq_base", c.rope_base, 10000.0),
        (
            "attention.compress_rope_freq_base",
            c.compress_rope_base,
            160000.0,
        ),
        ("rope.scaling.factor", c.yarn_factor, 16.0),
        (
            "rope.scaling.original_context_length",
            c.yarn_orig_ctx,
            65536.0,
        ),
        ("rope.scaling.yarn_beta_fast", c.yarn_beta_fast, 32.0),
        ("rope.scaling.yarn_beta_slow", c.yarn_beta_slow, 1.0),
        ("expert_weights_scale", c.expert_weights_scale, 1.5),
        ("attention.layer_norm_rms_epsilon", c.rms_eps, 1e-6),
    ];
    for (name, got, want) in floats {
        if !close(got, want) {
            return Err(wrong_value(name, want, got));
        }
    }
    Ok(())
}
