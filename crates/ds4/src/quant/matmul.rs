//! (in progress)
pub struct QMatrix;
pub fn matvec() {}
pub fn matmul() {}
