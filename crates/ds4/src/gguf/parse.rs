//! The GGUF v3 parser over a byte slice (spec/model.md §3.1, §3.4): header, metadata, tensor
//! infos, data-section start and tensor bounds. Pure and bounds-checked: every read goes through
//! [`Cursor`], every count is capped by the bytes left before anything is allocated, and any
//! input gives `Ok` or an [`Error`], never a panic. No I/O here; `read.rs` owns the mmap.

use std::collections::HashMap;

use super::error::Error;
use super::types::{GgmlType, Value, ValueType};

/// `"GGUF"` as stored on disk.
pub(crate) const MAGIC: [u8; 4] = *b"GGUF";
/// The only version read or written.
pub(crate) const VERSION: u32 = 3;
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides the alignment (UINT32).
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";
/// Deepest array nesting accepted (an array directly under a key is depth 1).
pub(crate) const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions a tensor may have.
pub(crate) const MAX_DIMS: usize = 8;
/// Magic, version, tensor count, key count.
pub(crate) const HEADER_BYTES: u64 = 24;

/// One tensor's entry in the tensor-info table, resolved to absolute file offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_kv.weight`.
    pub name: String,
    /// Dimensions in ggml order (fastest-varying first); numpy shape is the reverse.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file (data-section start + stored offset).
    pub offset: u64,
    /// Product of `dims`.
    pub n_elems: u64,
    /// Bytes of data: `n_elems / block_elems * block_bytes`.
    pub n_bytes: u64,
}

/// Everything the parser learns from a file, apart from the bytes themselves.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Vec<(String, Value)>,
    pub key_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
}

/// Parses a whole GGUF v3 file held in `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Layout, Error> {
    let file_len = to_u64(buf.len());
    if file_len < HEADER_BYTES {
        return Err(Error::TooShort { len: file_len });
    }
    let mut cur = Cursor { buf, pos: 0 };
    let magic: [u8; 4] = cur.array(|| "magic".into())?;
    if magic != MAGIC {
        return Err(Error::BadMagic { found: magic });
    }
    let version = cur.u32(|| "version".into())?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion { found: version });
    }
    let n_tensors = cur.u64(|| "tensor count".into())?;
    let n_kv = cur.u64(|| "metadata key count".into())?;

    let (metadata, key_index) = read_metadata(&mut cur, n_kv)?;
    let alignment = alignment_of(&metadata, &key_index)?;
    let mut tensors = read_tensor_infos(&mut cur, n_tensors)?;
    let data_offset =
        align_up(to_u64(cur.pos), alignment).ok_or(Error::BadAlignment { value: alignment })?;

    let mut tensor_index = HashMap::with_capacity(tensors.len());
    for (i, t) in tensors.iter_mut().enumerate() {
        // ggml: every stored offset is a multiple of the alignment.
        if !t.offset.is_multiple_of(alignment) {
            return Err(Error::MisalignedTensor {
                tensor: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        // The stored offset is relative to the data section; make it absolute and bound it.
        let abs = data_offset.checked_add(t.offset);
        let end = abs.and_then(|a| a.checked_add(t.n_bytes));
        match (abs, end) {
            (Some(abs), Some(end)) if end <= file_len => t.offset = abs,
            _ => {
                return Err(Error::TensorPastEof {
                    tensor: t.name.clone(),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
        if tensor_index.insert(t.name.clone(), i).is_some() {
            return Err(Error::DuplicateTensor {
                name: t.name.clone(),
            });
        }
    }

    check_packing(&tensors, data_offset, alignment)?;

    Ok(Layout {
        version,
        alignment,
        data_offset,
        metadata,
        key_index,
        tensors,
        tensor_index,
    })
}

/// The tensor table is packed as ggml requires (`gguf_init_from_file_impl`): in table order,
/// each tensor starts where the one before ends, rounded up to the alignment (the first at
/// the data section's start). Since sizes come from type and shape, this rules out overlaps,
/// gaps, and any type or shape change that would make a tensor read into its neighbour or
/// leave bytes unread.
fn check_packing(tensors: &[TensorInfo], data_offset: u64, alignment: u64) -> Result<(), Error> {
    let mut expected = data_offset;
    let mut prev: Option<&TensorInfo> = None;
    for t in tensors {
        if t.offset < expected {
            // Only reachable after a first tensor: the data section starts at `data_offset`.
            let p = prev.expect("invariant: offsets start at the data section");
            return Err(Error::OverlappingTensors {
                first: p.name.clone(),
                first_end: p.offset.saturating_add(p.n_bytes),
                second: t.name.clone(),
                second_start: t.offset,
            });
        }
        if t.offset > expected {
            return Err(Error::TensorGap {
                tensor: t.name.clone(),
                offset: t.offset,
                expected,
            });
        }
        // In bounds (checked above), so neither the sum nor the padding can overflow.
        expected = align_up(t.offset.saturating_add(t.n_bytes), alignment).unwrap_or(u64::MAX);
        prev = Some(t);
    }
    Ok(())
}

/// `general.alignment` if present (must be a U32 nonzero power of two), else 32.
fn alignment_of(
    metadata: &[(String, Value)],
    key_index: &HashMap<String, usize>,
) -> Result<u64, Error> {
    let Some(v) = key_index.get(ALIGNMENT_KEY).and_then(|&i| metadata.get(i)) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match v.1 {
        Value::U32(a) if a.is_power_of_two() => Ok(u64::from(a)),
        Value::U32(a) => Err(Error::BadAlignment {
            value: u64::from(a),
        }),
        ref other => Err(Error::BadAlignmentType {
            found: other.value_type(),
        }),
    }
}

type Metadata = (Vec<(String, Value)>, HashMap<String, usize>);

fn read_metadata(cur: &mut Cursor<'_>, n_kv: u64) -> Result<Metadata, Error> {
    // Smallest entry: key length (8) + type (4) + a 1-byte value.
    let n = cur.cap_count(n_kv, 8 + 4 + 1, || "metadata key count".into())?;
    let mut metadata = Vec::with_capacity(n);
    let mut key_index = HashMap::with_capacity(n);
    for i in 0..n {
        let key = cur.string(|| format!("key {i} name"))?;
        let type_id = cur.u32(|| format!("key `{key}` type"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| Error::UnknownValueType {
            key: key.clone(),
            id: type_id,
        })?;
        let value = read_value(cur, ty, &key, 0)?;
        if key_index.insert(key.clone(), i).is_some() {
            return Err(Error::DuplicateKey { key });
        }
        metadata.push((key, value));
    }
    Ok((metadata, key_index))
}

/// Reads one value of type `ty`; `depth` is the number of arrays enclosing it.
fn read_value(
    cur: &mut Cursor<'_>,
    ty: ValueType,
    key: &str,
    depth: usize,
) -> Result<Value, Error> {
    let what = || format!("key `{key}` value");
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(cur.array(what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(cur.array(what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.array(what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(cur.array(what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.array(what)?)),
        // Any nonzero byte is true, as gguf-py's numpy bool view reads it.
        ValueType::Bool => Value::Bool(u8::from_le_bytes(cur.array(what)?) != 0),
        ValueType::String => Value::String(cur.string(what)?),
        ValueType::U64 => Value::U64(u64::from_le_bytes(cur.array(what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.array(what)?)),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(Error::ArrayTooDeep {
                    key: key.to_owned(),
                });
            }
            let elem_id = cur.u32(|| format!("key `{key}` array element type"))?;
            let elem = ValueType::from_id(elem_id).ok_or_else(|| Error::UnknownValueType {
                key: key.to_owned(),
                id: elem_id,
            })?;
            let len = cur.u64(|| format!("key `{key}` array length"))?;
            let n = cur.cap_count(len, min_value_bytes(elem), || {
                format!("key `{key}` array length")
            })?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(cur, elem, key, depth + 1)?);
            }
            Value::Array(elem, items)
        }
    })
}

/// Fewest bytes a value of type `ty` can occupy (used to cap counts before allocating).
fn min_value_bytes(ty: ValueType) -> u64 {
    match ty {
        ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
        ValueType::U16 | ValueType::I16 => 2,
        ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
        ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
        ValueType::Array => 4 + 8,
    }
}

fn read_tensor_infos(cur: &mut Cursor<'_>, n_tensors: u64) -> Result<Vec<TensorInfo>, Error> {
    // Smallest entry: name length (8) + ndim (4) + type (4) + offset (8); a 0-dim entry is
    // rejected below, but only after it has been read.
    let n = cur.cap_count(n_tensors, 8 + 4 + 4 + 8, || "tensor count".into())?;
    let mut tensors = Vec::with_capacity(n);
    for i in 0..n {
        let name = cur.string(|| format!("tensor {i} name"))?;
        let ndim = cur.u32(|| format!("tensor `{name}` ndim"))?;
        let n_dims = usize::try_from(ndim)
            .ok()
            .filter(|d| (1..=MAX_DIMS).contains(d));
        let Some(n_dims) = n_dims else {
            return Err(Error::BadNdim {
                tensor: name,
                ndim: u64::from(ndim),
            });
        };
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(cur.u64(|| format!("tensor `{name}` dims"))?);
        }
        let type_id = cur.u32(|| format!("tensor `{name}` type"))?;
        let rel_offset = cur.u64(|| format!("tensor `{name}` offset"))?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| Error::UnknownTensorType {
            tensor: name.clone(),
            id: type_id,
        })?;
        let (n_elems, n_bytes) = tensor_size(&name, &dims, ty)?;
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset: rel_offset,
            n_elems,
            n_bytes,
        });
    }
    Ok(tensors)
}

/// Element and byte count of a tensor. ggml counts elements in i64, so the product must fit
/// there; the element count must be a whole number of blocks.
pub(crate) fn tensor_size(name: &str, dims: &[u64], ty: GgmlType) -> Result<(u64, u64), Error> {
    let overflow = || Error::ElementCountOverflow {
        tensor: name.to_owned(),
        dims: dims.to_vec(),
    };
    let max_elems = u64::try_from(i64::MAX).expect("i64::MAX fits in u64");
    let n_elems = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= max_elems)
        .ok_or_else(overflow)?;
    if !n_elems.is_multiple_of(to_u64(ty.block_elems())) {
        return Err(Error::NotWholeBlocks {
            tensor: name.to_owned(),
            ty,
            n_elems,
        });
    }
    let n_bytes = ty.bytes_for(n_elems).ok_or_else(overflow)?;
    Ok((n_elems, n_bytes))
}

/// `x` rounded up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    Some(x.checked_add(mask)? & !mask)
}

/// usize → u64 is lossless on every target Rust supports with 64-bit file offsets.
pub(crate) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).expect("usize fits in u64")
}

/// A bounds-checked little-endian reader. `what` closures name the field for error messages and
/// only run on failure.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        to_u64(self.buf.len().saturating_sub(self.pos))
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], Error> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n));
        match end.and_then(|end| Some((end, self.buf.get(self.pos..end)?))) {
            Some((end, bytes)) => {
                self.pos = end;
                Ok(bytes)
            }
            None => Err(Error::Truncated {
                what: what(),
                offset: to_u64(self.pos),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N], Error> {
        let bytes = self.take(to_u64(N), what)?;
        Ok(bytes.try_into().expect("take returns exactly N bytes"))
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes.
    fn string(&mut self, what: impl Fn() -> String) -> Result<String, Error> {
        let len = self.u64(&what)?;
        let start = to_u64(self.pos);
        let bytes = self.take(len, &what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(Error::InvalidUtf8 {
                what: what(),
                offset: start,
            }),
        }
    }

    /// `count` as a usize, after checking that `count` items of at least `min_bytes` each fit
    /// in what is left of the file (so a forged count never drives a huge allocation).
    fn cap_count(
        &self,
        count: u64,
        min_bytes: u64,
        what: impl FnOnce() -> String,
    ) -> Result<usize, Error> {
        let remaining = self.remaining();
        let fits = count
            .checked_mul(min_bytes)
            .is_some_and(|need| need <= remaining);
        match usize::try_from(count) {
            Ok(n) if fits => Ok(n),
            _ => Err(Error::CountTooLarge {
                what: what(),
                count,
                remaining,
                offset: to_u64(self.pos),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-assembles GGUF bytes, including malformed ones the writer refuses to produce.
    #[derive(Default)]
    struct Raw(Vec<u8>);

    impl Raw {
        fn header(n_tensors: u64, n_kv: u64) -> Self {
            Raw::default()
                .bytes(b"GGUF")
                .u32(3)
                .u64(n_tensors)
                .u64(n_kv)
        }
        fn bytes(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn u32(self, v: u32) -> Self {
            self.bytes(&v.to_le_bytes())
        }
        fn u64(self, v: u64) -> Self {
            self.bytes(&v.to_le_bytes())
        }
        fn string(self, s: &str) -> Self {
            self.u64(s.len() as u64).bytes(s.as_bytes())
        }
        fn kv_u32(self, key: &str, v: u32) -> Self {
            self.string(key).u32(ValueType::U32.id()).u32(v)
        }
        fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
            let mut r = self.string(name).u32(dims.len() as u32);
            for &d in dims {
                r = r.u64(d);
            }
            r.u32(ty).u64(offset)
        }
        fn pad(self, align: usize) -> Self {
            let n = self.0.len().next_multiple_of(align) - self.0.len();
            self.bytes(&vec![0; n])
        }
        fn zeros(self, n: usize) -> Self {
            self.bytes(&vec![0; n])
        }
    }

    fn parse_err(raw: Raw) -> Error {
        match parse(&raw.0) {
            Ok(l) => panic!("expected an error, parsed {l:?}"),
            Err(e) => e,
        }
    }

    fn assert_msg(e: &Error, parts: &[&str]) {
        let msg = e.to_string();
        for p in parts {
            assert!(msg.contains(p), "message {msg:?} should mention {p:?}");
        }
    }

    fn f32_tensor_file(n: u64, data_bytes: usize) -> Raw {
        Raw::header(1, 0)
            .tensor("w", &[n], GgmlType::F32.id(), 0)
            .pad(32)
            .zeros(data_bytes)
    }

    #[test]
    fn parses_minimal_valid_file() {
        let raw = f32_tensor_file(8, 32);
        let l = parse(&raw.0).unwrap();
        assert_eq!(l.version, 3);
        assert_eq!(l.alignment, 32);
        // 24 header + (8+1 name, 4 ndim, 8 dim, 4 type, 8 offset) = 57 → 64.
        assert_eq!(l.data_offset, 64);
        let t = &l.tensors[0];
        assert_eq!((t.offset, t.n_elems, t.n_bytes), (64, 8, 32));
    }

    #[test]
    fn parses_header_only_file() {
        let l = parse(&Raw::header(0, 0).0).unwrap();
        assert!(l.metadata.is_empty() && l.tensors.is_empty());
        assert_eq!(l.data_offset, 32);
    }

    #[test]
    fn rejects_file_shorter_than_header() {
        let e = parse_err(Raw::default().bytes(b"GGUF").u32(3));
        assert!(matches!(e, Error::TooShort { len: 8 }), "{e:?}");
        assert_msg(&e, &["8 bytes", "too short"]);
    }

    #[test]
    fn rejects_wrong_magic() {
        let e = parse_err(Raw::default().bytes(b"GGML").u32(3).u64(0).u64(0));
        assert!(
            matches!(e, Error::BadMagic { found } if &found == b"GGML"),
            "{e:?}"
        );
        assert_msg(&e, &["bad magic", "GGML"]);
    }

    #[test]
    fn rejects_version_other_than_3() {
        for v in [1, 2, 4, 0x0300_0000] {
            let e = parse_err(Raw::default().bytes(b"GGUF").u32(v).u64(0).u64(0));
            assert!(
                matches!(e, Error::UnsupportedVersion { found } if found == v),
                "{e:?}"
            );
            assert_msg(&e, &[&format!("version {v}"), "only version 3"]);
        }
    }

    #[test]
    fn rejects_truncated_key_name_naming_the_key_and_offset() {
        let e = parse_err(Raw::header(0, 1).u64(100).bytes(b"abc").zeros(20));
        assert!(
            matches!(&e, Error::Truncated { what, offset: 32 } if what == "key 0 name"),
            "{e:?}"
        );
        assert_msg(&e, &["truncated", "key 0 name", "offset 32"]);
    }

    #[test]
    fn rejects_truncated_tensor_dims_naming_the_tensor() {
        let e = parse_err(Raw::header(1, 0).string("blk.0.x").u32(3).u64(4).u64(4));
        assert!(
            matches!(&e, Error::Truncated { what, .. } if what == "tensor `blk.0.x` dims"),
            "{e:?}"
        );
    }

    #[test]
    fn rejects_every_truncation_of_a_valid_file() {
        let raw = Raw::header(1, 2)
            .kv_u32("a", 1)
            .string("b")
            .u32(ValueType::Array.id())
            .u32(ValueType::String.id())
            .u64(2)
            .string("x")
            .string("yz")
            .tensor("w", &[8], GgmlType::F32.id(), 0)
            .pad(32)
            .zeros(32);
        assert!(parse(&raw.0).is_ok());
        for cut in 0..raw.0.len() {
            assert!(
                parse(&raw.0[..cut]).is_err(),
                "prefix of {cut} bytes parsed"
            );
        }
    }

    #[test]
    fn rejects_tensor_data_past_eof() {
        let e = parse_err(f32_tensor_file(8, 31));
        assert!(
            matches!(&e, Error::TensorPastEof { tensor, end: 96, file_len: 95 } if tensor == "w"),
            "{e:?}"
        );
        assert_msg(&e, &["`w`", "96", "past the end", "95 bytes"]);
    }

    #[test]
    fn rejects_tensor_offset_that_overflows() {
        let raw = Raw::header(1, 0)
            .tensor("w", &[8], GgmlType::F32.id(), u64::MAX - 31)
            .pad(32);
        let e = parse_err(raw);
        assert!(
            matches!(&e, Error::TensorPastEof { end: u64::MAX, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn rejects_element_count_overflow() {
        for dims in [vec![u64::MAX, 2], vec![1 << 62, 2], vec![1 << 32, 1 << 32]] {
            let raw = Raw::header(1, 0).tensor("big", &dims, GgmlType::F32.id(), 0);
            let e = parse_err(raw);
            assert!(matches!(&e, Error::ElementCountOverflow { tensor, .. } if tensor == "big"));
            assert_msg(&e, &["`big`", "element count overflow"]);
        }
    }

    #[test]
    fn rejects_byte_count_overflow() {
        // 2^62 elements fit in i64, but 2^62 × 4 bytes does not fit in u64.
        let raw = Raw::header(1, 0).tensor("big", &[1 << 62], GgmlType::F32.id(), 0);
        assert!(matches!(parse_err(raw), Error::ElementCountOverflow { .. }));
    }

    #[test]
    fn rejects_partial_blocks() {
        let raw = Raw::header(1, 0).tensor("q", &[33], GgmlType::Q8_0.id(), 0);
        let e = parse_err(raw);
        assert!(matches!(
            &e,
            Error::NotWholeBlocks {
                ty: GgmlType::Q8_0,
                n_elems: 33,
                ..
            }
        ));
        assert_msg(&e, &["`q`", "33 elements", "Q8_0", "32 elements each"]);
    }

    #[test]
    fn rejects_unknown_tensor_type() {
        let e = parse_err(Raw::header(1, 0).tensor("odd", &[4], 99, 0));
        assert!(matches!(&e, Error::UnknownTensorType { tensor, id: 99 } if tensor == "odd"));
        assert_msg(&e, &["`odd`", "unknown ggml type id 99"]);
    }

    #[test]
    fn rejects_bad_ndim() {
        for dims in [vec![], vec![1; 9]] {
            let n = dims.len() as u64;
            let e = parse_err(Raw::header(1, 0).tensor("t", &dims, 0, 0));
            assert!(matches!(&e, Error::BadNdim { tensor, ndim } if tensor == "t" && *ndim == n));
            assert_msg(&e, &["`t`", &format!("bad ndim {n}")]);
        }
    }

    #[test]
    fn accepts_eight_dims() {
        let raw = Raw::header(1, 0)
            .tensor("t", &[1, 1, 1, 1, 1, 1, 1, 2], 0, 0)
            .pad(32)
            .zeros(8);
        assert_eq!(parse(&raw.0).unwrap().tensors[0].n_elems, 2);
    }

    #[test]
    fn rejects_misaligned_tensor_offset() {
        let raw = Raw::header(1, 0)
            .tensor("w", &[1], GgmlType::F32.id(), 4)
            .pad(32)
            .zeros(64);
        let e = parse_err(raw);
        assert!(
            matches!(&e, Error::MisalignedTensor { tensor, offset: 4, alignment: 32 } if tensor == "w"),
            "{e:?}"
        );
        assert_msg(&e, &["`w`", "offset 4", "multiple of the alignment 32"]);
    }

    #[test]
    fn rejects_tensor_pointing_into_another_tensor() {
        // b starts inside a (64 bytes at 0).
        let raw = Raw::header(2, 0)
            .tensor("a", &[16], GgmlType::F32.id(), 0)
            .tensor("b", &[8], GgmlType::F32.id(), 32)
            .pad(32)
            .zeros(96);
        let e = parse_err(raw);
        assert!(
            matches!(&e, Error::OverlappingTensors { first, second, .. } if first == "a" && second == "b"),
            "{e:?}"
        );
        assert_msg(&e, &["`a`", "`b`", "overlap"]);
        // The same bytes under two names overlap too.
        let raw = Raw::header(2, 0)
            .tensor("a", &[8], GgmlType::F32.id(), 0)
            .tensor("b", &[8], GgmlType::F32.id(), 0)
            .pad(32)
            .zeros(32);
        assert!(matches!(parse_err(raw), Error::OverlappingTensors { .. }));
    }

    #[test]
    fn rejects_type_change_that_reads_into_the_next_tensor() {
        // F16 [16] is 32 bytes; as F32 it is 64 and runs into `b` at 32.
        let raw = Raw::header(2, 0)
            .tensor("a", &[16], GgmlType::F32.id(), 0)
            .tensor("b", &[16], GgmlType::F16.id(), 32)
            .pad(32)
            .zeros(96);
        assert!(matches!(parse_err(raw), Error::OverlappingTensors { .. }));
    }

    #[test]
    fn rejects_a_gap_or_tensors_out_of_table_order() {
        // A gap: `b` starts 32 bytes after `a` ends (a shrinking type change looks like this).
        let raw = Raw::header(2, 0)
            .tensor("a", &[8], GgmlType::F32.id(), 0)
            .tensor("b", &[8], GgmlType::F32.id(), 64)
            .pad(32)
            .zeros(96);
        let e = parse_err(raw);
        assert!(
            matches!(&e, Error::TensorGap { tensor, .. } if tensor == "b"),
            "{e:?}"
        );
        assert_msg(&e, &["`b`", "gap"]);
        // Swapped offsets: the first entry does not start the data section.
        let raw = Raw::header(2, 0)
            .tensor("a", &[8], GgmlType::F32.id(), 32)
            .tensor("b", &[8], GgmlType::F32.id(), 0)
            .pad(32)
            .zeros(64);
        assert!(matches!(parse_err(raw), Error::TensorGap { .. }));
    }

    #[test]
    fn accepts_packed_tensors_with_padding_and_empty_ones() {
        let raw = Raw::header(3, 0)
            .tensor("a", &[3], GgmlType::F32.id(), 0)
            .tensor("empty", &[0], GgmlType::F32.id(), 32)
            .tensor("b", &[8], GgmlType::F32.id(), 32)
            .pad(32)
            .zeros(64);
        let l = parse(&raw.0).unwrap();
        assert_eq!(l.tensors.len(), 3);
    }

    #[test]
    fn rejects_duplicate_tensor_names() {
        let raw = Raw::header(2, 0)
            .tensor("w", &[1], 0, 0)
            .tensor("w", &[1], 0, 32)
            .pad(32)
            .zeros(64);
        let e = parse_err(raw);
        assert!(
            matches!(&e, Error::DuplicateTensor { name } if name == "w"),
            "{e:?}"
        );
        assert_msg(&e, &["duplicate tensor", "`w`"]);
    }

    #[test]
    fn rejects_duplicate_keys() {
        let e = parse_err(Raw::header(0, 2).kv_u32("k", 1).kv_u32("k", 2));
        assert!(
            matches!(&e, Error::DuplicateKey { key } if key == "k"),
            "{e:?}"
        );
        assert_msg(&e, &["duplicate metadata key", "`k`"]);
    }

    #[test]
    fn rejects_unknown_value_type() {
        let e = parse_err(Raw::header(0, 1).string("k").u32(13).u32(0));
        assert!(
            matches!(&e, Error::UnknownValueType { key, id: 13 } if key == "k"),
            "{e:?}"
        );
        assert_msg(&e, &["`k`", "unknown metadata value type id 13"]);
        let e = parse_err(Raw::header(0, 1).string("k").u32(9).u32(77).u64(0));
        assert!(
            matches!(&e, Error::UnknownValueType { id: 77, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn rejects_invalid_utf8_key() {
        let e = parse_err(
            Raw::header(0, 1)
                .u64(2)
                .bytes(&[0xff, 0xfe])
                .u32(0)
                .bytes(&[0]),
        );
        assert!(matches!(&e, Error::InvalidUtf8 { what, offset: 32 } if what == "key 0 name"));
        assert_msg(&e, &["key 0 name", "UTF-8"]);
    }

    #[test]
    fn rejects_counts_larger_than_the_file() {
        let e = parse_err(Raw::header(0, u64::MAX));
        assert!(
            matches!(
                &e,
                Error::CountTooLarge {
                    count: u64::MAX,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_msg(&e, &["metadata key count", &u64::MAX.to_string()]);
        let e = parse_err(Raw::header(1 << 40, 0).zeros(64));
        assert!(matches!(&e, Error::CountTooLarge { what, .. } if what == "tensor count"));
        // An array claiming 2^40 u64s in a few bytes fails before allocating.
        let raw = Raw::header(0, 1)
            .string("k")
            .u32(9)
            .u32(10)
            .u64(1 << 40)
            .zeros(16);
        let e = parse_err(raw);
        assert!(matches!(&e, Error::CountTooLarge { what, .. } if what == "key `k` array length"));
    }

    /// `depth` arrays nested inside each other, the innermost holding one u8.
    fn nested(depth: usize) -> Raw {
        let mut r = Raw::header(0, 1).string("n").u32(ValueType::Array.id());
        for _ in 1..depth {
            r = r.u32(ValueType::Array.id()).u64(1);
        }
        r.u32(ValueType::U8.id()).u64(1).bytes(&[7])
    }

    #[test]
    fn accepts_arrays_nested_eight_deep() {
        let l = parse(&nested(8).0).unwrap();
        let mut v = &l.metadata[0].1;
        for _ in 0..8 {
            v = &v.as_array().unwrap()[0];
        }
        assert_eq!(v, &Value::U8(7));
    }

    #[test]
    fn rejects_arrays_nested_nine_deep() {
        let e = parse_err(nested(9));
        assert!(
            matches!(&e, Error::ArrayTooDeep { key } if key == "n"),
            "{e:?}"
        );
        assert_msg(&e, &["`n`", "nested"]);
    }

    #[test]
    fn honours_general_alignment() {
        let raw = Raw::header(1, 1)
            .kv_u32(ALIGNMENT_KEY, 64)
            .tensor("w", &[1], 0, 0)
            .pad(64)
            .zeros(4);
        let l = parse(&raw.0).unwrap();
        assert_eq!(l.alignment, 64);
        assert_eq!(l.data_offset % 64, 0);
        assert_eq!(l.tensors[0].offset, l.data_offset);
    }

    #[test]
    fn rejects_bad_general_alignment() {
        for a in [0, 48] {
            let e = parse_err(Raw::header(0, 1).kv_u32(ALIGNMENT_KEY, a));
            assert!(matches!(e, Error::BadAlignment { value } if value == u64::from(a)));
            assert_msg(&e, &[&format!("bad alignment {a}"), "power of two"]);
        }
        let raw = Raw::header(0, 1)
            .string(ALIGNMENT_KEY)
            .u32(ValueType::U64.id())
            .u64(64);
        let e = parse_err(raw);
        assert!(
            matches!(
                e,
                Error::BadAlignmentType {
                    found: ValueType::U64
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn reads_every_scalar_type() {
        let raw = Raw::header(0, 12)
            .string("u8")
            .u32(0)
            .bytes(&[200])
            .string("i8")
            .u32(1)
            .bytes(&[0x80])
            .string("u16")
            .u32(2)
            .bytes(&60000u16.to_le_bytes())
            .string("i16")
            .u32(3)
            .bytes(&(-2i16).to_le_bytes())
            .string("u32")
            .u32(4)
            .u32(4_000_000_000)
            .string("i32")
            .u32(5)
            .bytes(&(-5i32).to_le_bytes())
            .string("f32")
            .u32(6)
            .bytes(&1.5f32.to_le_bytes())
            .string("bool")
            .u32(7)
            .bytes(&[1])
            .string("str")
            .u32(8)
            .string("héllo")
            .string("u64")
            .u32(10)
            .u64(u64::MAX)
            .string("i64")
            .u32(11)
            .bytes(&i64::MIN.to_le_bytes())
            .string("f64")
            .u32(12)
            .bytes(&(-0.25f64).to_le_bytes());
        let l = parse(&raw.0).unwrap();
        let values: Vec<Value> = l.metadata.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            vec![
                Value::U8(200),
                Value::I8(-128),
                Value::U16(60000),
                Value::I16(-2),
                Value::U32(4_000_000_000),
                Value::I32(-5),
                Value::F32(1.5),
                Value::Bool(true),
                Value::String("héllo".into()),
                Value::U64(u64::MAX),
                Value::I64(i64::MIN),
                Value::F64(-0.25),
            ]
        );
    }
}
