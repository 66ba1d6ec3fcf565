//! Generated models with the real DeepSeek V4 Flash layout (spec/model.md §3.2, §3.3) and small,
//! chosen dimensions: random weights, the published quant recipes, ds4's metadata keys plus the
//! three llama.cpp insists on (DESIGN.md). Tests, the demo server and benchmarks run on these;
//! the forward pass cannot tell them from the real file except by size.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::gguf::{GgmlType, GgufWriter, Value, ValueType};
use crate::model::config::ARCH;
use crate::quant;

/// Routed-expert quantisation of a generated model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertRecipe {
    /// IQ2_XXS gate/up, Q2_K down (the published q2 file).
    Q2,
    /// Q4_K gate/up/down (the published q4 file).
    Q4,
    /// F16 experts (test models only).
    F16,
    /// Any expert types: `gate_up` for gate and up, `down` for down (e.g. MXFP4 for all three,
    /// as DeepSeek's own checkpoint stores them).
    Types {
        /// Type of `ffn_gate_exps` and `ffn_up_exps`.
        gate_up: GgmlType,
        /// Type of `ffn_down_exps`.
        down: GgmlType,
    },
}

impl ExpertRecipe {
    /// (gate/up type, down type).
    pub fn types(self) -> (GgmlType, GgmlType) {
        match self {
            ExpertRecipe::Q2 => (GgmlType::IQ2_XXS, GgmlType::Q2_K),
            ExpertRecipe::Q4 => (GgmlType::Q4_K, GgmlType::Q4_K),
            ExpertRecipe::F16 => (GgmlType::F16, GgmlType::F16),
            ExpertRecipe::Types { gate_up, down } => (gate_up, down),
        }
    }
}

impl std::str::FromStr for ExpertRecipe {
    type Err = String;
    /// `q2`, `q4`, `f16`, one ggml type name for all three (`mxfp4`), or `GATE_UP/DOWN`
    /// (`iq2_xs/q3_k`).
    fn from_str(s: &str) -> Result<Self, String> {
        let ty = |n: &str| {
            GgmlType::from_name(n).ok_or_else(|| {
                format!(
                    "unknown expert recipe `{s}` (expected q2, q4, f16, a type name such as \
                     mxfp4, or GATE_UP/DOWN such as iq2_xs/q3_k)"
                )
            })
        };
        match s {
            "q2" => Ok(ExpertRecipe::Q2),
            "q4" => Ok(ExpertRecipe::Q4),
            "f16" => Ok(ExpertRecipe::F16),
            other => {
                let (a, b) = other.split_once('/').unwrap_or((other, other));
                Ok(ExpertRecipe::Types {
                    gate_up: ty(a)?,
                    down: ty(b)?,
                })
            }
        }
    }
}

/// Dimensions and contents of a generated model. `Default` is the test model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    /// RNG seed.
    pub seed: u64,
    /// Layers (≥ 1; ratios follow ds4's fixed schedule 0,0,4,128,4,…).
    pub layers: usize,
    /// Embedding width (a multiple of 256 for the k-quant recipes).
    pub hidden: usize,
    /// Vocabulary size (replaced by the tokenizer's when `tokenizer` is given).
    pub vocab: usize,
    /// Query heads.
    pub heads: usize,
    /// Head dim (q = k = v).
    pub head_dim: usize,
    /// q low rank.
    pub q_lora: usize,
    /// Output groups.
    pub o_groups: usize,
    /// Output rank per group.
    pub o_lora: usize,
    /// Raw window.
    pub swa: usize,
    /// Indexer heads.
    pub idx_heads: usize,
    /// Indexer top-k.
    pub idx_topk: usize,
    /// Routed experts.
    pub experts: usize,
    /// Experts per token.
    pub experts_used: usize,
    /// Expert FFN width (a multiple of 256 for the k-quant recipes).
    pub ff: usize,
    /// Expert quantisation.
    pub recipe: ExpertRecipe,
    /// One type for every dense weight matrix (projections, shared experts, output head,
    /// embedding, HC, router, compressor and indexer), as llama.cpp's converter writes F16 or
    /// BF16 files; `None` is the published recipe (Q8_0 projections, F16 elsewhere).
    pub dense: Option<GgmlType>,
    /// Tokenizer metadata to embed (e.g. the real V4 vocabulary).
    pub tokenizer: Option<Vec<(String, Value)>>,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            seed: 1,
            layers: 6,
            hidden: 256,
            vocab: 512,
            heads: 4,
            head_dim: 128,
            q_lora: 128,
            o_groups: 2,
            o_lora: 64,
            swa: 32,
            idx_heads: 16,
            idx_topk: 16,
            experts: 16,
            experts_used: 4,
            ff: 256,
            recipe: ExpertRecipe::Q2,
            dense: None,
            tokenizer: None,
        }
    }
}

/// Why a model could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    /// The requested dimensions do not fit the quant formats.
    #[error("invalid dimensions: {0}")]
    Dims(String),
    /// Writing the container failed.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::Error),
    /// Quantisation failed.
    #[error(transparent)]
    Quant(#[from] quant::QuantError),
}

const ROPE_DIMS: usize = 64;
const IDX_HEAD_DIM: usize = 128;

struct Gen {
    w: GgufWriter,
    rng: ChaCha8Rng,
}

impl Gen {
    fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        // Sum of uniforms: a cheap, seeded, roughly normal variate.
        (0..n)
            .map(|_| {
                let s: f32 = (0..4).map(|_| self.rng.random::<f32>() - 0.5).sum();
                s * std * 1.732
            })
            .collect()
    }

    /// A matrix `[cols, rows(, mats)]` of type `ty` with entries of scale `std`.
    fn tensor(
        &mut self,
        name: &str,
        dims: &[usize],
        ty: GgmlType,
        std: f32,
    ) -> Result<(), TinyError> {
        let n: usize = dims.iter().product();
        let data = match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 => {
                let v = self.normal(n, std);
                quant::quantize(ty, &v)?
            }
            _ => quant::random_blocks(ty, n, std, &mut self.rng)?,
        };
        let d: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        self.w.add_tensor(name, &d, ty, data)?;
        Ok(())
    }

    fn f32s(&mut self, name: &str, v: Vec<f32>) -> Result<(), TinyError> {
        let dims = [v.len() as u64];
        self.w.add_tensor(
            name,
            &dims,
            GgmlType::F32,
            quant::quantize(GgmlType::F32, &v)?,
        )?;
        Ok(())
    }
}

fn ratio(il: usize) -> u32 {
    if il < 2 {
        0
    } else if il.is_multiple_of(2) {
        4
    } else {
        128
    }
}

fn key(w: &mut GgufWriter, k: &str, v: Value) -> Result<(), TinyError> {
    w.add(&format!("{ARCH}.{k}"), v)?;
    Ok(())
}

/// The metadata of a generated model: ds4's keys, the three llama.cpp insists on, and the
/// tokenizer's when given.
pub(crate) fn write_keys(w: &mut GgufWriter, s: &TinySpec, vocab: usize) -> Result<(), TinyError> {
    let u = |v: usize| Value::U32(v as u32);
    w.add("general.architecture", Value::String(ARCH.into()))?;
    w.add(
        "general.name",
        Value::String(format!("ds4-rs tiny {:?} seed {}", s.recipe, s.seed)),
    )?;
    for (k, v) in [
        ("context_length", 1_048_576),
        ("block_count", s.layers),
        ("embedding_length", s.hidden),
        ("vocab_size", vocab),
        ("attention.head_count", s.heads),
        ("attention.head_count_kv", 1),
        ("attention.key_length", s.head_dim),
        ("attention.value_length", s.head_dim),
        ("rope.dimension_count", ROPE_DIMS),
        ("attention.q_lora_rank", s.q_lora),
        ("attention.output_lora_rank", s.o_lora),
        ("attention.output_group_count", s.o_groups),
        ("expert_count", s.experts),
        ("expert_used_count", s.experts_used),
        ("expert_feed_forward_length", s.ff),
        ("expert_shared_count", 1),
        ("hash_layer_count", 3),
        ("attention.sliding_window", s.swa),
        ("attention.indexer.head_count", s.idx_heads),
        ("attention.indexer.key_length", IDX_HEAD_DIM),
        ("attention.indexer.top_k", s.idx_topk),
        ("hyper_connection.count", 4),
        ("hyper_connection.sinkhorn_iterations", 20),
        ("expert_gating_func", 4),
    ] {
        key(w, k, u(v))?;
    }
    for (k, v) in [
        ("hyper_connection.epsilon", 1e-6),
        ("rope.freq_base", 10000.0),
        ("rope.scaling.factor", 16.0),
        ("rope.scaling.yarn_beta_fast", 32.0),
        ("rope.scaling.yarn_beta_slow", 1.0),
        ("attention.compress_rope_freq_base", 160000.0),
        ("expert_weights_scale", 1.5),
        ("attention.layer_norm_rms_epsilon", 1e-6),
    ] {
        key(w, k, Value::F32(v))?;
    }
    key(w, "rope.scaling.original_context_length", u(65536))?;
    key(w, "rope.scaling.type", Value::String("yarn".into()))?;
    key(w, "expert_weights_norm", Value::Bool(true))?;
    key(
        w,
        "attention.compress_ratios",
        Value::Array(
            ValueType::U32,
            (0..s.layers).map(|il| Value::U32(ratio(il))).collect(),
        ),
    )?;
    key(
        w,
        "swiglu_clamp_exp",
        Value::Array(
            ValueType::F32,
            (0..s.layers).map(|_| Value::F32(10.0)).collect(),
        ),
    )?;
    if let Some(meta) = &s.tokenizer {
        for (k, v) in meta {
            w.add(k, v.clone())?;
        }
    }
    Ok(())
}

/// How a planned tensor is filled.
#[derive(Debug, Clone)]
pub(crate) enum Fill {
    /// Random weights of the tensor's type with values of about `std`.
    Weights {
        /// Scale of the dequantised values.
        std: f32,
    },
    /// F32 normal samples (`1 + sample` when `plus_one`: norm weights).
    Normal {
        /// Standard deviation.
        std: f32,
        /// Shift by one.
        plus_one: bool,
    },
    /// F32 constants.
    Const(Vec<f32>),
    /// I32 expert ids below `experts` (hash routing tables).
    TidEid {
        /// Routed experts.
        experts: usize,
    },
}

/// One tensor of a generated model.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    /// GGUF name.
    pub name: String,
    /// ggml dims, fastest first.
    pub dims: Vec<usize>,
    /// Element type (F32 for `Normal`/`Const`, I32 for `TidEid`).
    pub ty: GgmlType,
    /// Contents.
    pub fill: Fill,
}

/// The tensors of a generated model in file order (spec §3.3), with how to fill each.
pub(crate) fn plan(s: &TinySpec, vocab: usize) -> Vec<Planned> {
    let (e, hc) = (s.hidden, 4usize);
    let (f16, q8, f32t) = (
        s.dense.unwrap_or(GgmlType::F16),
        s.dense.unwrap_or(GgmlType::Q8_0),
        GgmlType::F32,
    );
    let isq = |n: usize| 1.0 / (n as f32).sqrt();
    let (gate_ty, down_ty) = s.recipe.types();
    let wt = |name: String, dims: &[usize], ty: GgmlType, std: f32| Planned {
        name,
        dims: dims.to_vec(),
        ty,
        fill: Fill::Weights { std },
    };
    let mut out: Vec<Planned> = Vec::new();
    let norm = |name: String, n: usize, std: f32, plus_one: bool| Planned {
        name,
        dims: vec![n],
        ty: f32t,
        fill: Fill::Normal { std, plus_one },
    };
    let konst = |name: String, vals: Vec<f32>| Planned {
        name,
        dims: vec![vals.len()],
        ty: f32t,
        fill: Fill::Const(vals),
    };
    out.push(wt("token_embd.weight".into(), &[e, vocab], f16, 1.0));
    for il in 0..s.layers {
        let b = |n: &str| format!("blk.{il}.{n}");
        for p in ["hc_attn", "hc_ffn"] {
            out.push(wt(
                b(&format!("{p}_fn.weight")),
                &[hc * e, 24],
                f16,
                isq(hc * e),
            ));
            out.push(konst(b(&format!("{p}_scale.weight")), vec![0.5, 0.5, 0.5]));
            out.push(norm(b(&format!("{p}_base.weight")), 24, 0.5, false));
        }
        out.push(norm(b("attn_norm.weight"), e, 0.1, true));
        out.push(wt(b("attn_q_a.weight"), &[e, s.q_lora], q8, isq(e)));
        out.push(norm(b("attn_q_a_norm.weight"), s.q_lora, 0.1, true));
        out.push(wt(
            b("attn_q_b.weight"),
            &[s.q_lora, s.heads * s.head_dim],
            q8,
            isq(s.q_lora) * 4.0,
        ));
        out.push(wt(b("attn_kv.weight"), &[e, s.head_dim], q8, isq(e)));
        out.push(norm(b("attn_kv_a_norm.weight"), s.head_dim, 0.1, true));
        out.push(norm(b("attn_sinks.weight"), s.heads, 1.0, false));
        let gw = s.heads / s.o_groups * s.head_dim;
        out.push(wt(
            b("attn_output_a.weight"),
            &[gw, s.o_groups * s.o_lora],
            q8,
            isq(gw),
        ));
        out.push(wt(
            b("attn_output_b.weight"),
            &[s.o_groups * s.o_lora, e],
            q8,
            isq(s.o_groups * s.o_lora),
        ));
        let r = ratio(il) as usize;
        if r != 0 {
            let streams: &[(&str, usize)] = if r == 4 {
                &[("attn_compressor", 0), ("indexer_compressor", 1)]
            } else {
                &[("attn_compressor", 0)]
            };
            for &(p, which) in streams {
                let d = if which == 0 { s.head_dim } else { IDX_HEAD_DIM };
                let width = if r == 4 { 2 * d } else { d };
                let ape_ty = match s.dense {
                    Some(t @ (GgmlType::F32 | GgmlType::BF16)) => t,
                    _ => GgmlType::F16,
                };
                out.push(wt(b(&format!("{p}_ape.weight")), &[width, r], ape_ty, 0.5));
                out.push(wt(b(&format!("{p}_kv.weight")), &[e, width], f16, isq(e)));
                out.push(wt(b(&format!("{p}_gate.weight")), &[e, width], f16, isq(e)));
                out.push(norm(b(&format!("{p}_norm.weight")), d, 0.1, true));
                if which == 1 {
                    out.push(wt(
                        b("indexer.attn_q_b.weight"),
                        &[s.q_lora, s.idx_heads * IDX_HEAD_DIM],
                        f16,
                        isq(s.q_lora),
                    ));
                    out.push(wt(b("indexer.proj.weight"), &[e, s.idx_heads], f16, isq(e)));
                }
            }
        }
        out.push(norm(b("ffn_norm.weight"), e, 0.1, true));
        out.push(wt(b("ffn_gate_inp.weight"), &[e, s.experts], f16, isq(e)));
        if il < 3 {
            out.push(Planned {
                name: b("ffn_gate_tid2eid.weight"),
                dims: vec![s.experts_used, vocab],
                ty: GgmlType::I32,
                fill: Fill::TidEid { experts: s.experts },
            });
        } else {
            out.push(norm(b("exp_probs_b.bias"), s.experts, 0.1, false));
        }
        out.push(wt(
            b("ffn_gate_exps.weight"),
            &[e, s.ff, s.experts],
            gate_ty,
            isq(e),
        ));
        out.push(wt(
            b("ffn_up_exps.weight"),
            &[e, s.ff, s.experts],
            gate_ty,
            isq(e),
        ));
        out.push(wt(
            b("ffn_down_exps.weight"),
            &[s.ff, e, s.experts],
            down_ty,
            isq(s.ff),
        ));
        out.push(wt(b("ffn_gate_shexp.weight"), &[e, s.ff], q8, isq(e)));
        out.push(wt(b("ffn_up_shexp.weight"), &[e, s.ff], q8, isq(e)));
        out.push(wt(b("ffn_down_shexp.weight"), &[s.ff, e], q8, isq(s.ff)));
    }
    out.push(wt(
        "output_hc_fn.weight".into(),
        &[hc * e, hc],
        f16,
        isq(hc * e),
    ));
    out.push(konst("output_hc_scale.weight".into(), vec![0.5]));
    out.push(norm("output_hc_base.weight".into(), hc, 0.5, false));
    out.push(norm("output_norm.weight".into(), e, 0.1, true));
    out.push(wt("output.weight".into(), &[e, vocab], q8, isq(e) * 4.0));
    out
}

/// Builds the GGUF of a generated model in memory.
pub fn generate(spec: &TinySpec) -> Result<GgufWriter, TinyError> {
    let s = spec;
    let vocab = match &s.tokenizer {
        Some(meta) => meta
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.tokens")
            .and_then(|(_, v)| v.as_array())
            .map(|a| a.len())
            .ok_or_else(|| {
                TinyError::Dims("tokenizer metadata has no tokenizer.ggml.tokens".into())
            })?,
        None => s.vocab,
    };
    let dims = [
        s.layers,
        s.hidden,
        vocab,
        s.heads,
        s.head_dim,
        s.q_lora,
        s.o_groups,
        s.o_lora,
        s.swa,
        s.idx_heads,
        s.idx_topk,
        s.experts,
        s.experts_used,
        s.ff,
    ];
    if dims.contains(&0) {
        return Err(TinyError::Dims("every dimension must be positive".into()));
    }
    let (gate_ty, down_ty) = s.recipe.types();
    let block = gate_ty.block_elems().max(down_ty.block_elems());
    if !s.hidden.is_multiple_of(256) || !s.ff.is_multiple_of(block) || !s.ff.is_multiple_of(32) {
        return Err(TinyError::Dims(
            "hidden and ff must be multiples of 256 (k-quant blocks)".into(),
        ));
    }
    if !s.heads.is_multiple_of(s.o_groups)
        || s.head_dim < ROPE_DIMS
        || s.layers == 0
        || s.experts_used > s.experts
    {
        return Err(TinyError::Dims(
            "heads must divide into groups, head_dim ≥ 64, used ≤ experts".into(),
        ));
    }
    let mut g = Gen {
        w: GgufWriter::new(),
        rng: ChaCha8Rng::seed_from_u64(s.seed),
    };
    write_keys(&mut g.w, s, vocab)?;

    for t in plan(s, vocab) {
        match t.fill {
            Fill::Weights { std } => g.tensor(&t.name, &t.dims, t.ty, std)?,
            Fill::Normal { std, plus_one } => {
                let n = t.dims.iter().product();
                let v = g.normal(n, std);
                let v = if plus_one {
                    v.into_iter().map(|v| 1.0 + v).collect()
                } else {
                    v
                };
                g.f32s(&t.name, v)?;
            }
            Fill::Const(v) => g.f32s(&t.name, v)?,
            Fill::TidEid { experts } => {
                let n: usize = t.dims.iter().product();
                let ids: Vec<u8> = (0..n)
                    .flat_map(|_| (g.rng.random_range(0..experts) as i32).to_le_bytes())
                    .collect();
                let d: Vec<u64> = t.dims.iter().map(|&d| d as u64).collect();
                g.w.add_tensor(&t.name, &d, GgmlType::I32, ids)?;
            }
        }
    }
    Ok(g.w)
}
