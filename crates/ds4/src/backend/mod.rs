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

/// A backend operation failed (device out of memory, driver or launch failure). The session
/// being evaluated is left half-updated and must be discarded.
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

/// Kernels over weights bound from one model file.
pub trait Backend: Sync {
    /// Short name for logs and benchmarks.
    fn name(&self) -> &'static str;
    /// `y[t][r] = Σ_c W[r][c]·x[t][c]`: `x` is `[n × w.cols]`, the result `[n × w.rows]`.
    fn matmul(&self, w: &TensorRef, x: &[f32], n: usize) -> Result<Vec<f32>, BackendError>;
    /// As [`Backend::matmul`] with only the weight rows in `rows`: result `[n × rows.len()]`.
    fn matmul_rows(
        &self,
        w: &TensorRef,
        rows: Range<usize>,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, BackendError>;
    /// As [`Backend::matmul`] with matrix `e` of a stacked (expert) tensor.
    fn matmul_expert(
        &self,
        w: &TensorRef,
        e: usize,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, BackendError>;
    /// Rows `tokens` of an embedding table, widened to f32: `[tokens.len() × w.cols]`.
    fn embed(&self, w: &TensorRef, tokens: &[u32]) -> Result<Vec<f32>, BackendError>;
}
