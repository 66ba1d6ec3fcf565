//! The operations the forward pass asks of a compute backend. The model logic lives in
//! `model/`; a backend only provides the heavy kernels (weight matmuls, the embedding lookup)
//! and may fuse inside them. `cpu` is the reference implementation.
//!
//! Activations are host `[tokens × width]` f32 rows for now; a device backend will keep them
//! resident by extending this trait with device-side ops (not yet written).

pub mod cpu;

use std::ops::Range;

use crate::model::weights::TensorRef;

pub use cpu::CpuBackend;

/// Kernels over weights bound from one model file.
pub trait Backend: Sync {
    /// Short name for logs and benchmarks.
    fn name(&self) -> &'static str;
    /// `y[t][r] = Σ_c W[r][c]·x[t][c]`: `x` is `[n × w.cols]`, the result `[n × w.rows]`.
    fn matmul(&self, w: &TensorRef, x: &[f32], n: usize) -> Vec<f32>;
    /// As [`Backend::matmul`] with only the weight rows in `rows`: result `[n × rows.len()]`.
    fn matmul_rows(&self, w: &TensorRef, rows: Range<usize>, x: &[f32], n: usize) -> Vec<f32>;
    /// As [`Backend::matmul`] with matrix `e` of a stacked (expert) tensor.
    fn matmul_expert(&self, w: &TensorRef, e: usize, x: &[f32], n: usize) -> Vec<f32>;
    /// Rows `tokens` of an embedding table, widened to f32: `[tokens.len() × w.cols]`.
    fn embed(&self, w: &TensorRef, tokens: &[u32]) -> Vec<f32>;
}
