//! cuBLAS for the prefill GEMMs (f16 operands, f32 accumulation and output), loaded at run
//! time through cudarc on first use.
#![allow(unsafe_code)]

use cudarc::cublas::sys;

use crate::CudaError;

pub(crate) struct Gemm {
    handle: sys::cublasHandle_t,
}

// SAFETY: the handle is used only under the backend's lock, on its one stream.
unsafe impl Send for Gemm {}

fn check(call: &'static str, s: sys::cublasStatus_t) -> Result<(), CudaError> {
    if s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Cublas {
            call,
            status: s as i32,
        })
    }
}

impl Gemm {
    /// A handle issuing work on `stream`.
    pub fn new(stream: cudarc::driver::sys::CUstream) -> Result<Self, CudaError> {
        // SAFETY: only tries to dlopen the library by name.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::LibraryMissing("cuBLAS (libcublas)"));
        }
        let mut handle: sys::cublasHandle_t = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the stream outlives the handle (both live as long as the
        // backend).
        unsafe {
            check("cublasCreate", sys::cublasCreate_v2(&mut handle))?;
            check(
                "cublasSetStream",
                sys::cublasSetStream_v2(handle, stream as sys::cudaStream_t),
            )?;
        }
        Ok(Gemm { handle })
    }

    /// `C[j][i] = Σ_l A[i][l]·B[j][l]` for i < m, j < n, l < k: A row-major f16 `m × k`
    /// (row stride lda), B row-major f16 `n × k` (stride ldb), C row-major f32 `n × ·`
    /// (stride ldc) — in cuBLAS's column-major terms `C = Aᵀ·B` (`C += Aᵀ·B` with
    /// `accumulate`).
    #[allow(clippy::too_many_arguments)]
    pub fn f16(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        c: u64,
        ldc: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        // SAFETY: a, b and c are device buffers holding the operand extents described above;
        // alpha and beta are host scalars (the default pointer mode).
        check("cublasGemmEx", unsafe {
            sys::cublasGemmEx(
                self.handle,
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                m as i32,
                n as i32,
                k as i32,
                &alpha as *const f32 as *const std::ffi::c_void,
                a as *const std::ffi::c_void,
                sys::cudaDataType::CUDA_R_16F,
                lda as i32,
                b as *const std::ffi::c_void,
                sys::cudaDataType::CUDA_R_16F,
                ldb as i32,
                &beta as *const f32 as *const std::ffi::c_void,
                c as *mut std::ffi::c_void,
                sys::cudaDataType::CUDA_R_32F,
                ldc as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        })
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // SAFETY: created by cublasCreate, destroyed once.
        unsafe { sys::cublasDestroy_v2(self.handle) };
    }
}
