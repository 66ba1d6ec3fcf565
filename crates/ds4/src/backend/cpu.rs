//! The CPU backend: the correctness reference. Weights are read in place from the mapped file;
//! matmuls dequantize weight rows on the fly against f32 activations (`quant::matmul`, SIMD
//! where the CPU has it, rayon across rows).

use std::ops::Range;
use std::sync::Arc;

use super::{Backend, BackendError};
use crate::gguf::GgufFile;
use crate::model::weights::TensorRef;
use crate::quant::{self, QMatrix};

/// Runs every op on the host.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    file: Arc<GgufFile>,
}

fn err(e: quant::QuantError) -> BackendError {
    BackendError::new("cpu", e)
}

impl CpuBackend {
    /// A backend reading weights from `file` (the one the weights were bound from).
    pub fn new(file: Arc<GgufFile>) -> Self {
        CpuBackend { file }
    }

    fn run(&self, m: &QMatrix<'_>, x: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        let mut y = vec![0f32; n * m.rows];
        quant::matmul(m, x, n, &mut y).map_err(err)?;
        Ok(y)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn matmul(&self, w: &TensorRef, x: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        self.matmul_rows(w, 0..w.rows, x, n)
    }

    fn matmul_rows(
        &self,
        w: &TensorRef,
        rows: Range<usize>,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, BackendError> {
        let m = w
            .view(self.file.bytes(), 0, rows)
            .map_err(|e| BackendError::new("cpu", e))?;
        self.run(&m, x, n)
    }

    fn matmul_expert(
        &self,
        w: &TensorRef,
        e: usize,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, BackendError> {
        let m = w
            .view(self.file.bytes(), e, 0..w.rows)
            .map_err(|e| BackendError::new("cpu", e))?;
        self.run(&m, x, n)
    }

    fn embed(&self, w: &TensorRef, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        let m = w.mat(self.file.bytes(), 0);
        let mut out = vec![0f32; tokens.len() * w.cols];
        for (t, o) in tokens.iter().zip(out.chunks_mut(w.cols)) {
            quant::dequantize(w.ty, m.row(*t as usize), o).map_err(err)?;
        }
        Ok(out)
    }
}

/// Sizes the global rayon pool that the CPU kernels run on. Call once, before any work.
pub fn set_threads(threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
}
