//! Quantised tensor formats (spec/model.md §4): block layouts, dequantisation bit-identical to
//! gguf-py, the quantisers gguf-py has (F32, F16, BF16, Q8_0), Q8_K activation quantisation,
//! and f32-activation matrix × vector / matrix × matrix products over quantised weights with
//! AVX2 kernels chosen at runtime.
//!
//! Owns no I/O and no model logic: callers pass the bytes of a tensor (usually from the GGUF
//! mmap) and f32 activations. Activations stay f32 in [`matvec`] / [`matmul`] (no Q8_K
//! activation quantisation), so the precise mode matches a float reference; the Q8_K dots
//! (spec §4.6) are provided separately for speed work.
//!
//! Files: `blocks` (layouts), `float` (f16/bf16), `dequant`, `quantize`, `dot` (scalar
//! reference kernels), `simd` (AVX2 kernels + the dispatcher), `matmul`, `random`,
//! `iq2_tables` and `grids` (lookup tables).

mod blocks;
mod dequant;
mod dot;
mod float;
mod grids;
mod iq2_tables;
mod matmul;
mod quantize;
pub(crate) mod random;
mod simd;

#[cfg(test)]
mod fixtures;

pub use blocks::{
    BlockIQ2XS, BlockIQ2XXS, BlockIQ3XXS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K,
    BlockQ6K, BlockQ8K, BlockQ8_0, QK8_0, QK_K, QK_MXFP4,
};
pub use dequant::dequantize;
pub use dot::{vec_dot_iq2_xxs_q8_k, vec_dot_q2_k_q8_k, vec_dot_q4_k_q8_k};
pub use float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
pub use grids::{IQ2XS_GRID, IQ3XXS_GRID, KVALUES_MXFP4};
pub use iq2_tables::{IQ2XXS_GRID, KSIGNS_IQ2XS};
pub use matmul::{matmul, matvec, QMatrix};
pub use quantize::{quantize, quantize_row_q8_k};
pub use random::random_blocks;
pub use simd::dot_f32;

use crate::gguf::GgmlType;

/// Errors of the quant module. Each names the type and the expected vs found sizes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// An element count that is not a whole number of blocks.
    #[error("{ty}: {n_elems} elements is not a whole number of {block_elems}-element blocks")]
    PartialBlock {
        /// The tensor type.
        ty: GgmlType,
        /// Elements asked for.
        n_elems: usize,
        /// Elements per block of `ty`.
        block_elems: usize,
    },
    /// A byte buffer whose length does not match its element count.
    #[error("{ty}: {n_elems} elements take {expected} bytes, found {found}")]
    DataLength {
        /// The tensor type.
        ty: GgmlType,
        /// Elements the buffer should hold.
        n_elems: usize,
        /// Bytes those elements take.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// An f32 input or output buffer of the wrong length.
    #[error("{what}: expected {expected} elements, found {found}")]
    BufferLength {
        /// Which buffer (e.g. "matvec x").
        what: &'static str,
        /// Elements needed.
        expected: usize,
        /// Elements given.
        found: usize,
    },
    /// An operation this type does not support (e.g. quantising to Q2_K).
    #[error("{ty}: {op} is not supported for this type")]
    Unsupported {
        /// The tensor type.
        ty: GgmlType,
        /// The operation.
        op: &'static str,
    },
    /// A size that overflows `usize`.
    #[error("{ty}: size of {rows} × {cols} elements overflows")]
    TooLarge {
        /// The tensor type.
        ty: GgmlType,
        /// Rows.
        rows: usize,
        /// Elements per row.
        cols: usize,
    },
    /// A scale for [`random_blocks`] that is not finite and positive.
    #[error("random blocks: scale must be finite and positive, found {scale}")]
    BadScale {
        /// The scale given.
        scale: f32,
    },
}

/// Bytes taken by `n_elems` elements of `ty`, or an error if that is not whole blocks.
pub(crate) fn bytes_for(ty: GgmlType, n_elems: usize) -> Result<usize, QuantError> {
    let block_elems = ty.block_elems();
    if !n_elems.is_multiple_of(block_elems) {
        return Err(QuantError::PartialBlock {
            ty,
            n_elems,
            block_elems,
        });
    }
    (n_elems / block_elems)
        .checked_mul(ty.block_bytes())
        .ok_or(QuantError::TooLarge {
            ty,
            rows: 1,
            cols: n_elems,
        })
}

/// Checks that `found` bytes hold exactly `n_elems` elements of `ty`.
pub(crate) fn check_data(ty: GgmlType, n_elems: usize, found: usize) -> Result<(), QuantError> {
    let expected = bytes_for(ty, n_elems)?;
    if expected != found {
        return Err(QuantError::DataLength {
            ty,
            n_elems,
            expected,
            found,
        });
    }
    Ok(())
}

/// Checks an f32 buffer length.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    found: usize,
) -> Result<(), QuantError> {
    if expected != found {
        return Err(QuantError::BufferLength {
            what,
            expected,
            found,
        });
    }
    Ok(())
}
