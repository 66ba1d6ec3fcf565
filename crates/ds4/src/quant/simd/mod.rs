//! SIMD kernel selection (STYLE §5): the instruction set is detected once at runtime and one
//! safe dispatcher per operation picks the AVX2+FMA+F16C kernel (`avx2.rs`) or the scalar
//! reference (`super::dot`). Default builds are fast on any x86-64 with AVX2; other CPUs and
//! architectures get the scalar code.

#[cfg(target_arch = "x86_64")]
mod avx2;

use std::sync::OnceLock;

use super::dot::{dot_f32_ref, dot_row_ref};
use crate::gguf::GgmlType;

/// The kernel family in use, detected once.
#[derive(Clone, Copy, Debug)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if let Some(token) = avx2::Avx2::detect() {
            return Isa::Avx2(token);
        }
        Isa::Scalar
    })
}

/// `Σ a[i]·b[i]` in f32 over `min(a.len(), b.len())` elements (callers pass equal lengths),
/// with the fastest kernel this CPU has.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot_f32 operands differ in length");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => t.dot_f32(a, b),
        Isa::Scalar => dot_f32_ref(a, b),
    }
}

/// `Σ_c W[c]·x[c]` for one weight row of type `ty` with `x.len()` elements, weights
/// dequantised on the fly, f32 accumulation. The caller has checked that `row` holds exactly
/// `x.len()` elements (`QMatrix::new`).
pub(crate) fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => t.dot_row(ty, row, x),
        Isa::Scalar => dot_row_ref(ty, row, x),
    }
}
