//! (in progress)
pub fn vec_dot_q2_k_q8_k() {}
pub fn vec_dot_q4_k_q8_k() {}
pub fn vec_dot_iq2_xxs_q8_k() {}
