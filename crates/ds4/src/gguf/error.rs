//! `gguf::Error`: every way a GGUF file can fail to open, parse or be written. Each variant
//! carries the key, tensor name or byte offset it is about, so a bad file is diagnosed from the
//! message alone (spec/model.md §3.4).

use std::path::PathBuf;

use super::types::{GgmlType, ValueType};

/// A GGUF read or write failure. Messages name the problem and where it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening, mapping, writing or renaming a file failed.
    #[error("GGUF file {}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing to a caller-supplied stream failed.
    #[error("writing GGUF data: {source}")]
    Write {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file cannot even hold the 24-byte header (magic, version, two counts).
    #[error("file is {len} bytes, too short for the 24-byte GGUF header")]
    TooShort {
        /// File length in bytes.
        len: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("bad magic {:?}: not a GGUF file (expected \"GGUF\")", String::from_utf8_lossy(.found))]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A GGUF version other than 3 (a big-endian file shows up as a huge version).
    #[error("unsupported GGUF version {found}: only version 3 is supported")]
    UnsupportedVersion {
        /// The version field as read (little-endian).
        found: u32,
    },
    /// The file ends in the middle of a field.
    #[error("file truncated: {what} at byte offset {offset} runs past the end of the file")]
    Truncated {
        /// What was being read, e.g. "key 17 name" or "tensor `blk.0.x` dims".
        what: String,
        /// Byte offset where the field starts.
        offset: u64,
    },
    /// A count (keys, tensors, array elements) that the remaining bytes cannot possibly hold.
    #[error("{what}: count {count} cannot fit in the {remaining} bytes left at offset {offset}")]
    CountTooLarge {
        /// What is counted, e.g. "metadata key count" or "key `x` array length".
        what: String,
        /// The count as read.
        count: u64,
        /// Bytes left in the file after the count.
        remaining: u64,
        /// Byte offset just after the count.
        offset: u64,
    },
    /// A string (key, tensor name, string value) that is not UTF-8.
    #[error("{what} at byte offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string, e.g. "key 3 name".
        what: String,
        /// Byte offset of the string bytes.
        offset: u64,
    },
    /// A metadata value type id outside 0..=12.
    #[error("key `{key}`: unknown metadata value type id {id}")]
    UnknownValueType {
        /// The key whose value (or array element type) is unknown.
        key: String,
        /// The type id found.
        id: u32,
    },
    /// Arrays nested more than 8 deep.
    #[error("key `{key}`: arrays nested more than 8 levels deep")]
    ArrayTooDeep {
        /// The key holding the array.
        key: String,
    },
    /// (Writer) an array element whose type differs from the array's element type.
    #[error("key `{key}`: array of {declared:?} holds a {found:?} element")]
    MixedArray {
        /// The key holding the array.
        key: String,
        /// The declared element type.
        declared: ValueType,
        /// The type of the offending element.
        found: ValueType,
    },
    /// A tensor type id this crate does not know.
    #[error("tensor `{tensor}`: unknown ggml type id {id}")]
    UnknownTensorType {
        /// Tensor name.
        tensor: String,
        /// The type id found.
        id: u32,
    },
    /// A tensor with 0 or more than 8 dimensions.
    #[error("tensor `{tensor}`: bad ndim {ndim} (must be 1..=8)")]
    BadNdim {
        /// Tensor name.
        tensor: String,
        /// The dimension count found.
        ndim: u64,
    },
    /// The product of the dims (or the byte size) does not fit in an i64/u64.
    #[error("tensor `{tensor}`: element count overflow for dims {dims:?}")]
    ElementCountOverflow {
        /// Tensor name.
        tensor: String,
        /// The dims (ggml order).
        dims: Vec<u64>,
    },
    /// The element count is not a multiple of the type's block size.
    #[error(
        "tensor `{tensor}`: {n_elems} elements is not a whole number of {ty} blocks ({} elements each)",
        .ty.block_elems()
    )]
    NotWholeBlocks {
        /// Tensor name.
        tensor: String,
        /// Tensor type.
        ty: GgmlType,
        /// Element count.
        n_elems: u64,
    },
    /// Tensor data that extends past the end of the file.
    #[error(
        "tensor `{tensor}`: data ends at byte {end}, past the end of the file ({file_len} bytes)"
    )]
    TensorPastEof {
        /// Tensor name.
        tensor: String,
        /// Absolute end offset of the data (saturated at u64::MAX on overflow).
        end: u64,
        /// File length in bytes.
        file_len: u64,
    },
    /// A tensor offset that is not a multiple of the data-section alignment (ggml refuses it).
    #[error("tensor `{tensor}`: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// Tensor name.
        tensor: String,
        /// The offset as stored (relative to the data section).
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// Two tensors whose data ranges share bytes.
    #[error(
        "tensors `{first}` and `{second}` overlap: `{first}` ends at byte {first_end}, \
         `{second}` starts at byte {second_start}"
    )]
    OverlappingTensors {
        /// The tensor that starts first.
        first: String,
        /// Its absolute end offset.
        first_end: u64,
        /// The tensor that starts inside it.
        second: String,
        /// Its absolute start offset.
        second_start: u64,
    },
    /// A tensor that does not start where the previous one (in table order) ends, rounded up
    /// to the alignment: ggml packs tensors without gaps, so its size does not match the
    /// layout.
    #[error(
        "tensor `{tensor}`: starts at byte {offset}, but the tensors before it end at byte \
         {expected} (a gap: tensors are packed in table order, as ggml requires, so a type or \
         shape does not match the layout)"
    )]
    TensorGap {
        /// Tensor name.
        tensor: String,
        /// Its absolute offset.
        offset: u64,
        /// Where it had to start.
        expected: u64,
    },
    /// The path is a directory, FIFO, socket or device: only regular files are mapped (a FIFO
    /// would block the open forever).
    #[error("GGUF file {}: not a regular file ({kind})", path.display())]
    NotRegularFile {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Two tensors with the same name.
    #[error("duplicate tensor name `{name}`")]
    DuplicateTensor {
        /// The repeated name.
        name: String,
    },
    /// Two metadata entries with the same key.
    #[error("duplicate metadata key `{key}`")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// `general.alignment` (or the writer's alignment) is zero, not a power of two, or too big.
    #[error("bad alignment {value}: must be a nonzero power of two that fits in u32")]
    BadAlignment {
        /// The alignment value.
        value: u64,
    },
    /// `general.alignment` stored with a type other than UINT32.
    #[error("general.alignment has type {found:?}, expected U32")]
    BadAlignmentType {
        /// The type found.
        found: ValueType,
    },
    /// (Writer) tensor data whose length does not match its dims and type.
    #[error("tensor `{tensor}`: {ty} {dims:?} needs {expected} bytes, got {found}")]
    DataSizeMismatch {
        /// Tensor name.
        tensor: String,
        /// Tensor type.
        ty: GgmlType,
        /// The dims (ggml order).
        dims: Vec<u64>,
        /// Bytes the dims and type require.
        expected: u64,
        /// Bytes supplied.
        found: u64,
    },
    /// The first shard of a split GGUF is not named as llama.cpp's gguf-split names shards,
    /// so the other shards cannot be found.
    #[error(
        "split GGUF {}: a file with split.count = {count} must be named \
         PREFIX-00001-of-{count:05}.gguf (gguf-split naming) so its shards can be found",
        path.display()
    )]
    SplitName {
        /// The file opened.
        path: PathBuf,
        /// Its `split.count`.
        count: u64,
    },
    /// A shard other than the first was opened.
    #[error(
        "{} is shard {} of {count} of a split GGUF: open the first shard (…-00001-of-{count:05}.gguf)",
        path.display(),
        no + 1
    )]
    NotFirstShard {
        /// The file opened.
        path: PathBuf,
        /// Its `split.no` (0-based).
        no: u64,
        /// Its `split.count`.
        count: u64,
    },
    /// A shard of a split GGUF does not exist.
    #[error("split GGUF: shard {index} of {count} is missing: {}", path.display())]
    MissingShard {
        /// The shard's expected path.
        path: PathBuf,
        /// Its 1-based number.
        index: u64,
        /// Shards in all.
        count: u64,
    },
    /// A shard whose split keys or tensors do not fit the first shard's.
    #[error("split GGUF shard {}: {problem}", path.display())]
    ShardMismatch {
        /// The shard.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}
