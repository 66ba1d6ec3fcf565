//! (in progress)
pub fn dot_f32() {}
