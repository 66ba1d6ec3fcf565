//! Typed views of the model's tensors (spec/model.md §3.3). Field names are the GGUF tensor
//! names without `blk.N.` and `.weight`. Views hold byte ranges into the mapped file, not copies,
//! so a backend can read them in place or upload them once. Binding validates every tensor's
//! presence, type and shape, and names the tensor on any mismatch.
//!
//! Types are checked per tensor class, not per recipe (docs/models.md has the table): a weight
//! matrix may be any type that stores a matrix of its width ([`DENSE_TYPES`]), routed experts
//! also the i-quants and MXFP4 ([`EXPERT_TYPES`]), small vectors F32/F16/BF16, `tid2eid` I32.

use std::ops::Range;

use super::config::Config;
use crate::gguf::{GgmlType, GgufFile};
use crate::quant::QMatrix;

/// What is wrong with a tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A required tensor is absent.
    #[error("tensor `{name}` is missing")]
    Missing {
        /// GGUF tensor name.
        name: String,
    },
    /// The tensor has a type the model does not accept there.
    #[error("tensor `{name}`: expected type {expected}, found {found}")]
    Type {
        /// GGUF tensor name.
        name: String,
        /// Accepted types.
        expected: String,
        /// The file's type.
        found: GgmlType,
    },
    /// The tensor's dims differ from what the config implies.
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// GGUF tensor name.
        name: String,
        /// ggml dims, fastest first.
        expected: Vec<u64>,
        /// The file's dims.
        found: Vec<u64>,
    },
    /// Expert gate and up tensors of a layer must share one type (spec §3.4).
    #[error("layer {layer}: ffn_gate_exps is {gate} but ffn_up_exps is {up}; they must match")]
    ExpertTypes {
        /// Layer index.
        layer: usize,
        /// Gate type.
        gate: GgmlType,
        /// Up type.
        up: GgmlType,
    },
    /// A matrix whose rows are not a whole number of its type's blocks.
    #[error("tensor `{name}`: rows of {cols} elements are not whole {ty} blocks of {block_elems}")]
    RowBlocks {
        /// GGUF tensor name.
        name: String,
        /// The file's type.
        ty: GgmlType,
        /// Elements per row.
        cols: usize,
        /// Elements per block of `ty`.
        block_elems: usize,
    },
    /// A tensor's values are out of range (e.g. an expert id in `tid2eid`).
    #[error("tensor `{name}`: {problem}")]
    Values {
        /// GGUF tensor name.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// One 2-D weight matrix in the file: `rows` rows of `cols` elements of type `ty`, or a stack of
/// `n_mats` such matrices (routed experts, ggml dims `[cols, rows, n_mats]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// GGUF tensor name.
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// Output rows of one matrix.
    pub rows: usize,
    /// Inputs per row.
    pub cols: usize,
    /// Matrices stacked (1 for plain weights).
    pub n_mats: usize,
    /// Byte range in the file.
    pub range: Range<usize>,
}

impl TensorRef {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// The bytes of rows `rows` of matrix `m`, relative to the tensor's first byte; `None`
    /// when either lies outside the tensor. Every backend slices weights through this.
    pub fn sub_range(&self, m: usize, rows: Range<usize>) -> Option<Range<usize>> {
        if m >= self.n_mats || rows.start > rows.end || rows.end > self.rows {
            return None;
        }
        let (rb, per) = (self.row_bytes(), self.rows * self.row_bytes());
        Some(m * per + rows.start * rb..m * per + rows.end * rb)
    }

    /// Rows `rows` of matrix `m` as a quant view over the file's bytes, or a message naming
    /// what is out of range.
    pub fn view<'a>(
        &self,
        file: &'a [u8],
        m: usize,
        rows: Range<usize>,
    ) -> Result<QMatrix<'a>, String> {
        let out_of_range = || {
            format!(
                "matrix {m}, rows {rows:?} outside tensor `{}` ({} × {} rows)",
                self.name, self.n_mats, self.rows
            )
        };
        let r = self.sub_range(m, rows.clone()).ok_or_else(out_of_range)?;
        let bytes = file
            .get(self.range.start + r.start..self.range.start + r.end)
            .ok_or_else(out_of_range)?;
        QMatrix::new(self.ty, rows.len(), self.cols, bytes).map_err(|e| e.to_string())
    }

    /// Matrix `m` of the stack as a quant view over the file's bytes.
    pub fn mat<'a>(&self, file: &'a [u8], m: usize) -> QMatrix<'a> {
        self.view(file, m, 0..self.rows)
            .expect("invariant: tensor ranges were validated when the weights were bound")
    }
}

/// Attention-compressor or indexer-compressor tensors (spec §2.4.4).
#[derive(Debug, Clone)]
pub struct CompressorWeights {
    /// `*_kv`: W rows of E.
    pub kv: TensorRef,
    /// `*_gate`: W rows of E.
    pub gate: TensorRef,
    /// `*_ape`: `ratio` rows of W, f32.
    pub ape: Vec<f32>,
    /// `*_norm`: D, f32.
    pub norm: Vec<f32>,
}

/// Indexer tensors of a ratio-4 layer (spec §2.4.5).
#[derive(Debug, Clone)]
pub struct IndexerWeights {
    /// `indexer.attn_q_b`: idx_heads·idx_head_dim rows of q_lora.
    pub attn_q_b: TensorRef,
    /// `indexer.proj`: idx_heads rows of E.
    pub proj: TensorRef,
    /// The indexer's own compressor (D = idx_head_dim).
    pub compressor: CompressorWeights,
}

/// HC pre/post parameters of one sublayer (spec §2.3).
#[derive(Debug, Clone)]
pub struct HcWeights {
    /// `hc_*_fn`: 24 rows of n_hc·E.
    pub func: TensorRef,
    /// `hc_*_scale`: 3.
    pub scale: Vec<f32>,
    /// `hc_*_base`: 24.
    pub base: Vec<f32>,
}

/// One layer's tensors.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// HC parameters before attention.
    pub hc_attn: HcWeights,
    /// HC parameters before the FFN.
    pub hc_ffn: HcWeights,
    /// `attn_norm`, E.
    pub attn_norm: Vec<f32>,
    /// `attn_q_a`: q_lora rows of E.
    pub attn_q_a: TensorRef,
    /// `attn_q_a_norm`, q_lora.
    pub attn_q_a_norm: Vec<f32>,
    /// `attn_q_b`: n_head·head_dim rows of q_lora.
    pub attn_q_b: TensorRef,
    /// `attn_kv`: head_dim rows of E.
    pub attn_kv: TensorRef,
    /// `attn_kv_a_norm`, head_dim.
    pub attn_kv_a_norm: Vec<f32>,
    /// `attn_sinks`, n_head.
    pub attn_sinks: Vec<f32>,
    /// `attn_output_a`: o_groups·o_lora rows of heads_per_group·head_dim.
    pub attn_output_a: TensorRef,
    /// `attn_output_b`: E rows of o_groups·o_lora.
    pub attn_output_b: TensorRef,
    /// Attention compressor (ratio ≠ 0).
    pub attn_compressor: Option<CompressorWeights>,
    /// Indexer (ratio 4).
    pub indexer: Option<IndexerWeights>,
    /// `ffn_norm`, E.
    pub ffn_norm: Vec<f32>,
    /// `ffn_gate_inp`: n_expert rows of E.
    pub ffn_gate_inp: TensorRef,
    /// `exp_probs_b.bias`, n_expert (zeros when absent).
    pub exp_probs_b: Vec<f32>,
    /// `ffn_gate_tid2eid`: n_expert_used expert ids per token id (hash layers only).
    pub ffn_gate_tid2eid: Option<Vec<u32>>,
    /// `ffn_gate_exps`: n_expert × (ff_exp rows of E).
    pub ffn_gate_exps: TensorRef,
    /// `ffn_up_exps`: n_expert × (ff_exp rows of E).
    pub ffn_up_exps: TensorRef,
    /// `ffn_down_exps`: n_expert × (E rows of ff_exp).
    pub ffn_down_exps: TensorRef,
    /// `ffn_gate_shexp`: ff_exp rows of E.
    pub ffn_gate_shexp: TensorRef,
    /// `ffn_up_shexp`: ff_exp rows of E.
    pub ffn_up_shexp: TensorRef,
    /// `ffn_down_shexp`: E rows of ff_exp.
    pub ffn_down_shexp: TensorRef,
}

/// All tensors of the model.
#[derive(Debug, Clone)]
pub struct Weights {
    /// `token_embd`: n_vocab rows of E.
    pub token_embd: TensorRef,
    /// Per-layer tensors.
    pub layers: Vec<LayerWeights>,
    /// `output_hc_fn`: n_hc rows of n_hc·E.
    pub output_hc_fn: TensorRef,
    /// `output_hc_scale`, 1.
    pub output_hc_scale: Vec<f32>,
    /// `output_hc_base`, n_hc.
    pub output_hc_base: Vec<f32>,
    /// `output_norm`, E.
    pub output_norm: Vec<f32>,
    /// `output`: n_vocab rows of E.
    pub output: TensorRef,
}

/// Types a dense weight matrix may have (projections, shared experts, output head, embedding,
/// HC, router, compressor and indexer matrices): the float types, Q8_0 and the K-quants, as
/// llama.cpp's converter and quantizer write them.
pub const DENSE_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Types routed experts may have: [`DENSE_TYPES`] plus the i-quants of the published mixes and
/// MXFP4 (DeepSeek's checkpoint stores the routed experts as FP4).
pub const EXPERT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ3_XXS,
    GgmlType::MXFP4,
];

/// Types of the small vectors (norms, biases, HC scale and base, `ape`), widened to f32.
const VECTOR_TYPES: &[GgmlType] = &[GgmlType::F32, GgmlType::F16, GgmlType::BF16];

struct Binder<'a> {
    file: &'a GgufFile,
}

impl Binder<'_> {
    fn tensor(
        &self,
        name: &str,
        types: &[GgmlType],
        dims: &[usize],
    ) -> Result<TensorRef, WeightsError> {
        let t = self
            .file
            .tensor(name)
            .ok_or_else(|| WeightsError::Missing { name: name.into() })?;
        let info = t.info;
        if !types.contains(&info.ty) {
            let expected = types
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(WeightsError::Type {
                name: name.into(),
                expected,
                found: info.ty,
            });
        }
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if info.dims != want {
            return Err(WeightsError::Shape {
                name: name.into(),
                expected: want,
                found: info.dims.clone(),
            });
        }
        if !dims[0].is_multiple_of(info.ty.block_elems()) {
            return Err(WeightsError::RowBlocks {
                name: name.into(),
                ty: info.ty,
                cols: dims[0],
                block_elems: info.ty.block_elems(),
            });
        }
        let start = info.offset as usize;
        Ok(TensorRef {
            name: name.into(),
            ty: info.ty,
            cols: dims[0],
            rows: dims.get(1).copied().unwrap_or(1),
            n_mats: dims.get(2).copied().unwrap_or(1),
            range: start..start + info.n_bytes as usize,
        })
    }

    /// A dense weight matrix of `rows` rows of `cols` ([`DENSE_TYPES`]).
    fn mat(&self, name: &str, cols: usize, rows: usize) -> Result<TensorRef, WeightsError> {
        self.tensor(name, DENSE_TYPES, &[cols, rows])
    }

    /// A small F32/F16/BF16 tensor widened into an owned vector.
    fn vec(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, WeightsError> {
        let r = self.tensor(name, VECTOR_TYPES, dims)?;
        let n: usize = dims.iter().product();
        let mut out = vec![0f32; n];
        crate::quant::dequantize(r.ty, &self.file.bytes()[r.range.clone()], &mut out)
            .expect("invariant: size checked by shape and type above");
        Ok(out)
    }

    fn hc(&self, p: &str, c: &Config) -> Result<HcWeights, WeightsError> {
        let mix = (2 + c.n_hc) * c.n_hc;
        Ok(HcWeights {
            func: self.mat(&format!("{p}_fn.weight"), c.n_hc * c.n_embd, mix)?,
            scale: self.vec(&format!("{p}_scale.weight"), &[3])?,
            base: self.vec(&format!("{p}_base.weight"), &[mix])?,
        })
    }

    fn compressor(
        &self,
        p: &str,
        c: &Config,
        d: usize,
        ratio: usize,
    ) -> Result<CompressorWeights, WeightsError> {
        let w = if ratio == 4 { 2 * d } else { d };
        Ok(CompressorWeights {
            kv: self.mat(&format!("{p}_kv.weight"), c.n_embd, w)?,
            gate: self.mat(&format!("{p}_gate.weight"), c.n_embd, w)?,
            ape: self.vec(&format!("{p}_ape.weight"), &[w, ratio])?,
            norm: self.vec(&format!("{p}_norm.weight"), &[d])?,
        })
    }

    fn layer(&self, il: usize, c: &Config) -> Result<LayerWeights, WeightsError> {
        let b = |n: &str| format!("blk.{il}.{n}");
        let e = c.n_embd;
        let ratio = c.ratio(il);
        let attn_compressor = match ratio {
            0 => None,
            r => Some(self.compressor(&b("attn_compressor"), c, c.head_dim, r)?),
        };
        let indexer = match ratio {
            4 => Some(IndexerWeights {
                attn_q_b: self.mat(
                    &b("indexer.attn_q_b.weight"),
                    c.q_lora,
                    c.idx_heads * c.idx_head_dim,
                )?,
                proj: self.mat(&b("indexer.proj.weight"), e, c.idx_heads)?,
                compressor: self.compressor(&b("indexer_compressor"), c, c.idx_head_dim, 4)?,
            }),
            _ => None,
        };
        let ffn_gate_tid2eid = if il < c.n_hash_layer {
            Some(self.tid2eid(&b("ffn_gate_tid2eid.weight"), c)?)
        } else {
            None
        };
        let exp_probs_b = match self.file.tensor(&b("exp_probs_b.bias")) {
            Some(_) => self.vec(&b("exp_probs_b.bias"), &[c.n_expert])?,
            None => vec![0.0; c.n_expert],
        };
        let gate = self.tensor(
            &b("ffn_gate_exps.weight"),
            EXPERT_TYPES,
            &[e, c.ff_exp, c.n_expert],
        )?;
        let up = self.tensor(
            &b("ffn_up_exps.weight"),
            EXPERT_TYPES,
            &[e, c.ff_exp, c.n_expert],
        )?;
        if gate.ty != up.ty {
            return Err(WeightsError::ExpertTypes {
                layer: il,
                gate: gate.ty,
                up: up.ty,
            });
        }
        Ok(LayerWeights {
            hc_attn: self.hc(&b("hc_attn"), c)?,
            hc_ffn: self.hc(&b("hc_ffn"), c)?,
            attn_norm: self.vec(&b("attn_norm.weight"), &[e])?,
            attn_q_a: self.mat(&b("attn_q_a.weight"), e, c.q_lora)?,
            attn_q_a_norm: self.vec(&b("attn_q_a_norm.weight"), &[c.q_lora])?,
            attn_q_b: self.mat(&b("attn_q_b.weight"), c.q_lora, c.n_head * c.head_dim)?,
            attn_kv: self.mat(&b("attn_kv.weight"), e, c.head_dim)?,
            attn_kv_a_norm: self.vec(&b("attn_kv_a_norm.weight"), &[c.head_dim])?,
            attn_sinks: self.vec(&b("attn_sinks.weight"), &[c.n_head])?,
            attn_output_a: self.mat(
                &b("attn_output_a.weight"),
                c.heads_per_group() * c.head_dim,
                c.o_groups * c.o_lora,
            )?,
            attn_output_b: self.mat(&b("attn_output_b.weight"), c.o_groups * c.o_lora, e)?,
            attn_compressor,
            indexer,
            ffn_norm: self.vec(&b("ffn_norm.weight"), &[e])?,
            ffn_gate_inp: self.mat(&b("ffn_gate_inp.weight"), e, c.n_expert)?,
            exp_probs_b,
            ffn_gate_tid2eid,
            ffn_gate_exps: gate,
            ffn_up_exps: up,
            ffn_down_exps: self.tensor(
                &b("ffn_down_exps.weight"),
                EXPERT_TYPES,
                &[c.ff_exp, e, c.n_expert],
            )?,
            ffn_gate_shexp: self.mat(&b("ffn_gate_shexp.weight"), e, c.ff_exp)?,
            ffn_up_shexp: self.mat(&b("ffn_up_shexp.weight"), e, c.ff_exp)?,
            ffn_down_shexp: self.mat(&b("ffn_down_shexp.weight"), c.ff_exp, e)?,
        })
    }

    fn tid2eid(&self, name: &str, c: &Config) -> Result<Vec<u32>, WeightsError> {
        let r = self.tensor(name, &[GgmlType::I32], &[c.n_expert_used, c.n_vocab])?;
        let bytes = &self.file.bytes()[r.range];
        bytes
            .chunks_exact(4)
            .map(|b| {
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                u32::try_from(v)
                    .ok()
                    .filter(|&e| (e as usize) < c.n_expert)
                    .ok_or_else(|| WeightsError::Values {
                        name: name.into(),
                        problem: format!("expert id {v} outside 0..{}", c.n_expert),
                    })
            })
            .collect()
    }
}

impl Weights {
    /// Binds and validates every tensor of `file` against `cfg` (spec §3.3, §3.4).
    pub fn bind(file: &GgufFile, cfg: &Config) -> Result<Self, WeightsError> {
        let bd = Binder { file };
        let e = cfg.n_embd;
        let layers = (0..cfg.n_layer)
            .map(|il| bd.layer(il, cfg))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Weights {
            token_embd: bd.mat("token_embd.weight", e, cfg.n_vocab)?,
            layers,
            output_hc_fn: bd.mat("output_hc_fn.weight", cfg.n_hc * e, cfg.n_hc)?,
            output_hc_scale: bd.vec("output_hc_scale.weight", &[1])?,
            output_hc_base: bd.vec("output_hc_base.weight", &[cfg.n_hc])?,
            output_norm: bd.vec("output_norm.weight", &[e])?,
            output: bd.mat("output.weight", e, cfg.n_vocab)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::TensorRef;
    use crate::gguf::GgmlType;

    /// Two Q8_0 matrices of 3 rows × 64 (2 blocks of 34 bytes a row) at file offset 100.
    fn stack() -> TensorRef {
        TensorRef {
            name: "t".into(),
            ty: GgmlType::Q8_0,
            rows: 3,
            cols: 64,
            n_mats: 2,
            range: 100..100 + 2 * 3 * 68,
        }
    }

    #[test]
    fn sub_range_addresses_rows_of_each_matrix() {
        let t = stack();
        assert_eq!(t.row_bytes(), 68);
        assert_eq!(t.sub_range(0, 0..3), Some(0..204));
        assert_eq!(t.sub_range(1, 1..3), Some(272..408));
        assert_eq!(t.sub_range(1, 2..2), Some(340..340));
    }

    #[test]
    fn sub_range_rejects_rows_or_matrices_outside_the_tensor() {
        let t = stack();
        assert_eq!(t.sub_range(2, 0..1), None);
        assert_eq!(t.sub_range(0, 2..4), None);
        let file = vec![0u8; 100 + 408];
        let err = t.view(&file, 0, 1..9).expect_err("rows past the end");
        assert!(err.contains("rows 1..9 outside tensor `t`"), "{err}");
        assert_eq!(t.view(&file, 1, 0..2).expect("in range").rows, 2);
    }
}
