//! (in progress)
pub fn random_blocks() {}
