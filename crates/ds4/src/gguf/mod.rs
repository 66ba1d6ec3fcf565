//! GGUF v3 container (spec/model.md §3.1): `read` maps a file and gives zero-copy tensor views,
//! `write` produces files for generated models, `types` holds the ggml type table and the
//! metadata value model shared by both.

pub mod types;

pub use types::{GgmlType, Value, ValueType};
