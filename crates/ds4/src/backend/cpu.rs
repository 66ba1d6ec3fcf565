//! The CPU backend: the correctness reference. Weights are read in place from the mapped file;
//! matmuls dequantize weight rows on the fly against f32 activations (`quant::matmul`, SIMD
//! where the CPU has it, rayon across rows).

use std::ops::Range;
use std::sync::Arc;

use super::Backend;
use crate::gguf::GgufFile;
use crate::model::weights::TensorRef;
use crate::quant::{self, QMatrix};

/// Runs every op on the host.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    file: Arc<GgufFile>,
}

impl CpuBackend {
    /// A backend reading weights from `file` (the one the weights were bound from).
    pub fn new(file: Arc<GgufFile>) -> Self {
        CpuBackend { file }
    }

    fn run(&self, m: &QMatrix<'_>, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * m.rows];
        quant::matmul(m, x, n, &mut y)
            .expect("invariant: activation widths follow the validated config");
        y
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn matmul(&self, w: &TensorRef, x: &[f32], n: usize) -> Vec<f32> {
        self.run(&w.mat(self.file.bytes(), 0), x, n)
    }

    fn matmul_rows(&self, w: &TensorRef, rows: Range<usize>, x: &[f32], n: usize) -> Vec<f32> {
        let full = w.mat(self.file.bytes(), 0);
        let rb = full.row_bytes();
        let sub = QMatrix::new(
            w.ty,
            rows.len(),
            w.cols,
            &full.data[rows.start * rb..rows.end * rb],
        )
        .expect("invariant: row range lies inside the validated tensor");
        self.run(&sub, x, n)
    }

    fn matmul_expert(&self, w: &TensorRef, e: usize, x: &[f32], n: usize) -> Vec<f32> {
        self.run(&w.mat(self.file.bytes(), e), x, n)
    }

    fn embed(&self, w: &TensorRef, tokens: &[u32]) -> Vec<f32> {
        let m = w.mat(self.file.bytes(), 0);
        let mut out = vec![0f32; tokens.len() * w.cols];
        for (t, o) in tokens.iter().zip(out.chunks_mut(w.cols)) {
            quant::dequantize(w.ty, m.row(*t as usize), o)
                .expect("invariant: token ids checked against the vocabulary");
        }
        out
    }
}

/// Sizes the global rayon pool that the CPU kernels run on. Call once, before any work.
pub fn set_threads(threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
}
