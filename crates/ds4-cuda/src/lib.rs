//! The CUDA backend (DESIGN.md): being rewritten for device-resident activations and sessions
//! (issue #7). This interim version only keeps the selection API; `CudaBackend::new` reports
//! that the backend is unavailable.
#![allow(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;

use ds4::backend::{Backend, CpuBackend};
use ds4::model::Model;

/// Which backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    /// CUDA when a GPU is present, else the CPU.
    #[default]
    Auto,
    /// The CPU reference.
    Cpu,
    /// CUDA device 0 (an error without one).
    Cuda,
}

/// Why the CUDA backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// Not available in this build.
    #[error("the CUDA backend is being rewritten and is not available in this build")]
    Unavailable,
}

/// Options of the CUDA backend.
#[derive(Debug, Clone, Default)]
pub struct CudaOptions {
    /// Context the sessions will use (for the memory check).
    pub ctx: usize,
}

/// Placeholder.
#[derive(Debug)]
pub struct CudaBackend;

impl CudaBackend {
    /// Always fails in this interim build.
    pub fn new(_model: &Model, _opts: &CudaOptions) -> Result<Self, CudaError> {
        Err(CudaError::Unavailable)
    }
}

/// Whether a CUDA driver can be loaded on this machine.
pub fn driver_present() -> bool {
    false
}

/// Opens the backend `choice` asks for; `log` receives one line naming it.
pub fn open_backend(
    model: &Arc<Model>,
    choice: Choice,
    opts: &CudaOptions,
    log: &mut dyn FnMut(&str),
) -> Result<Box<dyn Backend + Send>, CudaError> {
    let _ = opts;
    match choice {
        Choice::Cuda => Err(CudaError::Unavailable),
        Choice::Auto | Choice::Cpu => {
            log("CPU backend");
            Ok(Box::new(CpuBackend::new(model.file.clone())))
        }
    }
}
