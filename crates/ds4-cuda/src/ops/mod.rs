//! The launchers of each backend operation, grouped by spec concept: `matmul` (weight
//! products in their three forms), `elementwise` (embedding, norms, RoPE, roundings), `hc`,
//! `attention` (raw window and sink attention), `compressor`, `indexer`, `moe`, `sample`
//! (greedy choice on the device). Each checks the shapes it is given, picks the kernel and
//! grid, and launches on the backend's stream.

pub(crate) mod attention;
pub(crate) mod compressor;
pub(crate) mod elementwise;
pub(crate) mod hc;
pub(crate) mod indexer;
pub(crate) mod matmul;
pub(crate) mod moe;
pub(crate) mod sample;

use ds4::backend::{BResult, BackendError, Rows, SessionState, Tensor};

use crate::state::DevState;
use crate::{DevRows, DevT};

pub(crate) fn err(msg: impl ToString) -> BackendError {
    BackendError::new("cuda", msg)
}

/// The device address of a tensor made by this backend.
pub(crate) fn dp(t: &Tensor) -> BResult<u64> {
    t.data
        .downcast_ref::<DevT>()
        .map(|d| d.0)
        .ok_or_else(|| err(format!("{t:?} was not made by the CUDA backend")))
}

/// The device row metadata of a batch.
pub(crate) fn drows(r: &Rows) -> BResult<DevRows> {
    r.data
        .downcast_ref::<DevRows>()
        .copied()
        .ok_or_else(|| err("the rows were not made by the CUDA backend"))
}

/// The device state of a session.
pub(crate) fn dstate(st: &SessionState) -> BResult<&DevState> {
    st.data
        .downcast_ref::<DevState>()
        .ok_or_else(|| err("the session state was not made by the CUDA backend"))
}

/// Fails unless `t` is `[rows × cols]`.
pub(crate) fn want(t: &Tensor, rows: usize, cols: usize, what: &str) -> BResult<()> {
    if t.rows != rows || t.cols != cols {
        return Err(err(format!(
            "{what}: expected [{rows} × {cols}], found [{} × {}]",
            t.rows, t.cols
        )));
    }
    Ok(())
}

/// Blocks of 256 threads for a grid-stride loop over `n` elements.
pub(crate) fn blocks(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 8192) as u32
}

/// The frequencies of a layer's RoPE as the kernels take them (struct RopeTab).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RopeTab {
    pub f: [f32; 64],
    pub pairs: i32,
}

impl RopeTab {
    pub fn new(r: &ds4::model::rope::Rope) -> BResult<Self> {
        let fr = r.freq();
        if fr.len() > 64 {
            return Err(err(format!("RoPE of {} pairs (at most 64)", fr.len())));
        }
        let mut f = [0f32; 64];
        f[..fr.len()].copy_from_slice(fr);
        Ok(RopeTab {
            f,
            pairs: fr.len() as i32,
        })
    }

    /// The table for RoPE of the trailing dims of `head_dim`-wide heads.
    pub fn for_heads(r: &ds4::model::rope::Rope, head_dim: usize) -> BResult<Self> {
        if 2 * r.freq().len() > head_dim {
            return Err(err("RoPE wider than the head"));
        }
        Self::new(r)
    }
}
