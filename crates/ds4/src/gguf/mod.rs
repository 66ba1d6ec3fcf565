//! GGUF v3 container (spec/model.md §3.1, §3.4): `read` maps a file and gives zero-copy tensor
//! views, `parse` checks every byte of the header, metadata and tensor table, `write` produces
//! files for generated models, `types` holds the ggml type table and the metadata value model
//! shared by all of them, `split` finds and merges the shards of a split file, `error` says
//! what went wrong and where.

mod error;
mod parse;
mod read;
mod split;
pub mod types;
mod write;

pub use error::Error;
pub use parse::{TensorInfo, DEFAULT_ALIGNMENT};
pub use read::{GgufFile, Tensor};
pub use split::{SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS_COUNT};
pub use types::{GgmlType, Value, ValueType};
pub use write::GgufWriter;
