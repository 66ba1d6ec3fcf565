//! The CUDA backend (DESIGN.md): cudarc with dynamic loading, so this crate builds and links on
//! machines without CUDA, and kernels compiled by NVRTC at run time. It implements the
//! `ds4::backend::Backend` operations the forward pass asks for; the model logic stays in
//! `ds4::model`.
//!
//! First version: each weight tensor is uploaded once, on first use, and kept on the device;
//! activations still travel host → device → host per operation, because the `Backend` trait
//! keeps them on the host. Matmuls dequantise on the fly in `kernels/matmul.cu`. The embedding
//! lookup stays on the host (one row per token). Driver failures come back as
//! `BackendError`s, never panics.
#![allow(unsafe_code)] // FFI: kernel launches (each site has a SAFETY comment).
#![warn(missing_docs)]

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use ds4::backend::{Backend, BackendError};
use ds4::gguf::{GgmlType, GgufFile};
use ds4::model::weights::TensorRef;

/// Tokens per block in `matmul_deq` (the kernel's `TOK`).
const TOK: usize = 8;
/// Threads per block in `matmul_deq` (the kernel's `THREADS`).
const THREADS: u32 = 256;

/// Why the CUDA backend could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The driver failed (no device, out of memory, launch failure, …).
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// The CUDA driver or NVRTC library could not be loaded (no GPU driver on this machine,
    /// or its folder is not on the loader path).
    #[error("the {0} library was not found: is an NVIDIA driver installed, and is its folder on LD_LIBRARY_PATH?")]
    LibraryMissing(&'static str),
    /// A matrix or row range outside the tensor.
    #[error("matrix {m}, rows {rows:?} outside tensor `{tensor}`")]
    OutOfRange {
        /// Tensor name.
        tensor: String,
        /// Matrix index in the stack.
        m: usize,
        /// Requested rows.
        rows: Range<usize>,
    },
    /// NVRTC rejected the kernel source.
    #[error("NVRTC: {0}")]
    Nvrtc(#[from] cudarc::nvrtc::CompileError),
    /// A tensor type without a CUDA kernel.
    #[error("tensor `{tensor}`: type {ty} has no CUDA kernel")]
    Unsupported {
        /// Tensor name.
        tensor: String,
        /// Its type.
        ty: GgmlType,
    },
}

/// The kernel source with the IQ2_XXS tables prepended as `__constant__` arrays.
fn kernel_source() -> String {
    let grid: Vec<String> = ds4::quant::IQ2XXS_GRID
        .iter()
        .map(|v| format!("0x{v:016x}ull"))
        .collect();
    let signs: Vec<String> = ds4::quant::KSIGNS_IQ2XS
        .iter()
        .map(|v| v.to_string())
        .collect();
    format!(
        "__constant__ unsigned long long iq2xxs_grid[256] = {{{}}};\n__constant__ unsigned char ksigns_iq2xs[128] = {{{}}};\n{}",
        grid.join(","),
        signs.join(","),
        include_str!("../kernels/matmul.cu")
    )
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by name; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Runs the matmuls on one CUDA device.
pub struct CudaBackend {
    file: Arc<GgufFile>,
    stream: Arc<CudaStream>,
    matmul: CudaFunction,
    /// Device copies of weight tensors, keyed by their byte offset in the file.
    weights: Mutex<HashMap<usize, Arc<CudaSlice<u8>>>>,
    device_name: String,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device_name)
            .finish_non_exhaustive()
    }
}

impl CudaBackend {
    /// Opens device `ordinal` and compiles the kernels for it.
    pub fn new(file: Arc<GgufFile>, ordinal: usize) -> Result<Self, CudaError> {
        // cudarc panics when it first touches a library it cannot load: check before.
        if !driver_present() {
            return Err(CudaError::LibraryMissing("CUDA driver (libcuda)"));
        }
        // SAFETY: only tries to dlopen the library by name; no symbol is called.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::LibraryMissing("NVRTC (libnvrtc)"));
        }
        let ctx = CudaContext::new(ordinal)?;
        let device_name = ctx.name()?;
        let ptx = cudarc::nvrtc::compile_ptx(kernel_source())?;
        let module = ctx.load_module(ptx)?;
        let matmul = module.load_function("matmul_deq")?;
        Ok(CudaBackend {
            file,
            stream: ctx.default_stream(),
            matmul,
            weights: Mutex::new(HashMap::new()),
            device_name,
        })
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// The device copy of the bytes `range` of the file, uploaded on first use.
    fn upload(&self, range: Range<usize>) -> Result<Arc<CudaSlice<u8>>, CudaError> {
        let mut cache = self.weights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = cache.get(&range.start) {
            return Ok(d.clone());
        }
        let d = Arc::new(self.stream.clone_htod(&self.file.bytes()[range.clone()])?);
        cache.insert(range.start, d.clone());
        Ok(d)
    }

    /// `y = W[rows] · x` for `n` tokens, where the matrix is `rows` rows of `w.cols` starting
    /// `byte_off` bytes into the tensor's device copy.
    fn run(
        &self,
        w: &TensorRef,
        m: usize,
        rows: Range<usize>,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, CudaError> {
        let ty_id: i32 = match w.ty {
            GgmlType::F32
            | GgmlType::F16
            | GgmlType::Q8_0
            | GgmlType::Q2_K
            | GgmlType::Q4_K
            | GgmlType::IQ2_XXS => w.ty.id() as i32,
            ty => {
                return Err(CudaError::Unsupported {
                    tensor: w.name.clone(),
                    ty,
                })
            }
        };
        let bytes = w
            .sub_range(m, rows.clone())
            .ok_or_else(|| CudaError::OutOfRange {
                tensor: w.name.clone(),
                m,
                rows: rows.clone(),
            })?;
        let rows = rows.len();
        if n == 0 || rows == 0 {
            return Ok(Vec::new());
        }
        let dev = self.upload(w.range.clone())?;
        let row_bytes = w.row_bytes() as i64;
        let view = dev.slice(bytes);
        let xd = self.stream.clone_htod(x)?;
        let mut yd = self.stream.alloc_zeros::<f32>(n * rows)?;
        let (rows_i, cols_i, n_i) = (rows as i32, w.cols as i32, n as i32);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, n.div_ceil(TOK) as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.matmul);
        b.arg(&ty_id)
            .arg(&view)
            .arg(&row_bytes)
            .arg(&rows_i)
            .arg(&cols_i)
            .arg(&xd)
            .arg(&n_i)
            .arg(&mut yd);
        // SAFETY: the argument list matches `matmul_deq`'s signature; `view` holds `rows` rows
        // of `row_bytes`, `xd` n·cols floats and `yd` n·rows floats, which bound every index the
        // kernel forms (r < rows, c < cols, t < n_tok).
        unsafe { b.launch(cfg) }?;
        Ok(self.stream.clone_dtoh(&yd)?)
    }
}

fn backend_err(e: CudaError) -> BackendError {
    BackendError::new("cuda", e)
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
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
        self.run(w, 0, rows, x, n).map_err(backend_err)
    }

    fn matmul_expert(
        &self,
        w: &TensorRef,
        e: usize,
        x: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, BackendError> {
        self.run(w, e, 0..w.rows, x, n).map_err(backend_err)
    }

    fn embed(&self, w: &TensorRef, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        ds4::backend::CpuBackend::new(self.file.clone()).embed(w, tokens)
    }
}
