//! Writing GGUF v3 files (spec/model.md §3.1) for generated test models and tools: metadata in
//! insertion order, tensor infos, then each tensor's bytes padded to the alignment, the layout
//! gguf-py's `GGUFWriter` produces. Everything is checked when added, so a written file always
//! parses back.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::Error;
use super::parse::{
    align_up, tensor_size, to_u64, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH,
    MAX_DIMS, VERSION,
};
use super::types::{GgmlType, Value};

/// A tensor waiting to be written.
#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    /// The bytes; `None` for a tensor whose data the caller writes itself after the header
    /// ([`GgufWriter::add_tensor_shape`]).
    data: Option<Vec<u8>>,
    n_bytes: u64,
}

/// Collects metadata and tensors in memory, then writes one GGUF v3 file.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    alignment: u64,
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty writer with the default 32-byte alignment.
    pub fn new() -> Self {
        Self::with_alignment(DEFAULT_ALIGNMENT)
    }

    /// An empty writer aligning the data section and each tensor to `alignment` bytes. A
    /// non-default alignment is recorded as `general.alignment` (U32, first key). An alignment
    /// that is not a nonzero power of two fitting in u32 makes `write_to` fail.
    pub fn with_alignment(alignment: u64) -> Self {
        Self {
            alignment,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// Adds metadata `key` = `value`. Fails on a repeated key, on arrays whose elements do not
    /// all have the declared type or that nest deeper than 8, and on a `general.alignment` that
    /// is not a U32 power of two (a valid one also sets this writer's alignment).
    pub fn add(&mut self, key: &str, value: Value) -> Result<(), Error> {
        if self.keys.contains(key) {
            return Err(Error::DuplicateKey {
                key: key.to_owned(),
            });
        }
        check_value(key, &value, 0)?;
        if key == ALIGNMENT_KEY {
            match value {
                Value::U32(a) if a.is_power_of_two() => self.alignment = u64::from(a),
                Value::U32(a) => {
                    return Err(Error::BadAlignment {
                        value: u64::from(a),
                    })
                }
                ref other => {
                    return Err(Error::BadAlignmentType {
                        found: other.value_type(),
                    })
                }
            }
        }
        self.keys.insert(key.to_owned());
        self.metadata.push((key.to_owned(), value));
        Ok(())
    }

    /// Adds tensor `name` with ggml-order `dims` and type `ty`. `data` must be exactly
    /// `ty.bytes_for(product(dims))` bytes; names must be unique; 1..=8 dims.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), Error> {
        if self.names.contains(name) {
            return Err(Error::DuplicateTensor {
                name: name.to_owned(),
            });
        }
        if !(1..=MAX_DIMS).contains(&dims.len()) {
            return Err(Error::BadNdim {
                tensor: name.to_owned(),
                ndim: to_u64(dims.len()),
            });
        }
        let (_, n_bytes) = tensor_size(name, dims, ty)?;
        if to_u64(data.len()) != n_bytes {
            return Err(Error::DataSizeMismatch {
                tensor: name.to_owned(),
                ty,
                dims: dims.to_vec(),
                expected: n_bytes,
                found: to_u64(data.len()),
            });
        }
        self.names.insert(name.to_owned());
        self.tensors.push(PendingTensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            ty,
            data: Some(data),
            n_bytes,
        });
        Ok(())
    }

    /// Adds tensor `name` without data: [`GgufWriter::write_header_to`] lays it out and the
    /// caller writes its bytes at the offset returned (files too large to hold in memory).
    pub fn add_tensor_shape(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
    ) -> Result<(), Error> {
        if self.names.contains(name) {
            return Err(Error::DuplicateTensor {
                name: name.to_owned(),
            });
        }
        if !(1..=MAX_DIMS).contains(&dims.len()) {
            return Err(Error::BadNdim {
                tensor: name.to_owned(),
                ndim: to_u64(dims.len()),
            });
        }
        let (_, n_bytes) = tensor_size(name, dims, ty)?;
        self.names.insert(name.to_owned());
        self.tensors.push(PendingTensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            ty,
            data: None,
            n_bytes,
        });
        Ok(())
    }

    /// Writes the whole file to `w`: header, metadata, tensor infos, padding, tensor data.
    /// Fails if a tensor was added without data.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), Error> {
        let mut out = Out { w, pos: 0 };
        self.header(&mut out)?;
        for t in &self.tensors {
            let Some(data) = &t.data else {
                return Err(Error::DataSizeMismatch {
                    tensor: t.name.clone(),
                    ty: t.ty,
                    dims: t.dims.clone(),
                    expected: t.n_bytes,
                    found: 0,
                });
            };
            out.bytes(data)?;
            out.pad(self.alignment)?;
        }
        Ok(())
    }

    /// Writes header, metadata, tensor infos and the padding before the data section, and
    /// returns each tensor's absolute data offset in the file and byte size, in the order the
    /// tensors were added. The data (and the padding between tensors, zeros) is the caller's
    /// to write; the file is `total_len` bytes long.
    pub fn write_header_to(&self, w: &mut impl Write) -> Result<(Vec<(u64, u64)>, u64), Error> {
        let mut out = Out { w, pos: 0 };
        self.header(&mut out)?;
        let start = out.pos;
        let mut at = start;
        let mut spans = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            spans.push((at, t.n_bytes));
            at = at
                .checked_add(padded(t.n_bytes, self.alignment)?)
                .ok_or(Error::BadAlignment {
                    value: self.alignment,
                })?;
        }
        Ok((spans, at))
    }

    fn header<W: Write>(&self, out: &mut Out<'_, W>) -> Result<(), Error> {
        let align = self.alignment;
        let align_u32 = u32::try_from(align).ok().filter(|a| a.is_power_of_two());
        let Some(align_u32) = align_u32 else {
            return Err(Error::BadAlignment { value: align });
        };
        let implicit_alignment = (align != DEFAULT_ALIGNMENT && !self.keys.contains(ALIGNMENT_KEY))
            .then(|| (ALIGNMENT_KEY.to_owned(), Value::U32(align_u32)));
        let metadata: Vec<&(String, Value)> = implicit_alignment
            .iter()
            .chain(self.metadata.iter())
            .collect();
        out.bytes(&MAGIC)?;
        out.bytes(&VERSION.to_le_bytes())?;
        out.u64(to_u64(self.tensors.len()))?;
        out.u64(to_u64(metadata.len()))?;
        for (key, value) in metadata {
            out.string(key)?;
            out.bytes(&value.value_type().id().to_le_bytes())?;
            out.value(value)?;
        }
        let mut rel_offset = 0u64;
        for t in &self.tensors {
            out.string(&t.name)?;
            out.bytes(
                &u32::try_from(t.dims.len())
                    .expect("ndim checked in add_tensor")
                    .to_le_bytes(),
            )?;
            for &d in &t.dims {
                out.u64(d)?;
            }
            out.bytes(&t.ty.id().to_le_bytes())?;
            out.u64(rel_offset)?;
            rel_offset = padded(t.n_bytes, align)?
                .checked_add(rel_offset)
                .ok_or(Error::BadAlignment { value: align })?;
        }
        out.pad(align)
    }

    /// Writes the file to a temporary name beside `path`, syncs it, then renames it over
    /// `path`, so readers never see a half-written file.
    pub fn write_file(&self, path: &Path) -> Result<(), Error> {
        let tmp = temp_path(path);
        let result = self.write_tmp(&tmp).and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })
        });
        if result.is_err() {
            // Best effort: the original error is what matters.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_tmp(&self, tmp: &Path) -> Result<(), Error> {
        let io = |source| Error::Io {
            path: tmp.to_owned(),
            source,
        };
        let mut w = BufWriter::new(File::create(tmp).map_err(io)?);
        self.write_to(&mut w).map_err(|e| match e {
            Error::Write { source } => io(source),
            other => other,
        })?;
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)
    }
}

/// `.NAME.tmp.PID` in the same directory as `path` (same filesystem, so rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

fn padded(n: u64, align: u64) -> Result<u64, Error> {
    align_up(n, align).ok_or(Error::BadAlignment { value: align })
}

/// Rejects arrays with mixed element types or nesting deeper than [`MAX_ARRAY_DEPTH`].
fn check_value(key: &str, value: &Value, depth: usize) -> Result<(), Error> {
    let Value::Array(elem, items) = value else {
        return Ok(());
    };
    if depth >= MAX_ARRAY_DEPTH {
        return Err(Error::ArrayTooDeep {
            key: key.to_owned(),
        });
    }
    for item in items {
        if item.value_type() != *elem {
            return Err(Error::MixedArray {
                key: key.to_owned(),
                declared: *elem,
                found: item.value_type(),
            });
        }
        check_value(key, item, depth + 1)?;
    }
    Ok(())
}

/// A little-endian writer that tracks its position for padding.
struct Out<'w, W: Write> {
    w: &'w mut W,
    pos: u64,
}

impl<W: Write> Out<'_, W> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), Error> {
        self.w
            .write_all(b)
            .map_err(|source| Error::Write { source })?;
        self.pos = self.pos.saturating_add(to_u64(b.len()));
        Ok(())
    }

    fn u64(&mut self, v: u64) -> Result<(), Error> {
        self.bytes(&v.to_le_bytes())
    }

    fn string(&mut self, s: &str) -> Result<(), Error> {
        self.u64(to_u64(s.len()))?;
        self.bytes(s.as_bytes())
    }

    fn pad(&mut self, align: u64) -> Result<(), Error> {
        let n = padded(self.pos, align)? - self.pos;
        const ZEROS: [u8; 64] = [0; 64];
        let mut left = n;
        while left > 0 {
            let chunk = left.min(to_u64(ZEROS.len()));
            let chunk_len = usize::try_from(chunk).expect("chunk ≤ 64");
            self.bytes(&ZEROS[..chunk_len])?;
            left -= chunk;
        }
        Ok(())
    }

    /// A value without its type id (arrays write element type and length first).
    fn value(&mut self, v: &Value) -> Result<(), Error> {
        match v {
            Value::U8(x) => self.bytes(&x.to_le_bytes()),
            Value::I8(x) => self.bytes(&x.to_le_bytes()),
            Value::U16(x) => self.bytes(&x.to_le_bytes()),
            Value::I16(x) => self.bytes(&x.to_le_bytes()),
            Value::U32(x) => self.bytes(&x.to_le_bytes()),
            Value::I32(x) => self.bytes(&x.to_le_bytes()),
            Value::F32(x) => self.bytes(&x.to_le_bytes()),
            Value::Bool(x) => self.bytes(&[u8::from(*x)]),
            Value::String(s) => self.string(s),
            Value::U64(x) => self.bytes(&x.to_le_bytes()),
            Value::I64(x) => self.bytes(&x.to_le_bytes()),
            Value::F64(x) => self.bytes(&x.to_le_bytes()),
            Value::Array(elem, items) => {
                self.bytes(&elem.id().to_le_bytes())?;
                self.u64(to_u64(items.len()))?;
                items.iter().try_for_each(|item| self.value(item))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::read::GgufFile;
    use super::super::types::ValueType;
    use super::*;

    fn written(w: &GgufWriter) -> Vec<u8> {
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        out
    }

    #[test]
    fn written_file_reads_back_with_aligned_tensors() {
        let mut w = GgufWriter::new();
        w.add("general.architecture", Value::String("deepseek4".into()))
            .unwrap();
        w.add("n", Value::U32(7)).unwrap();
        w.add_tensor("a", &[3], GgmlType::F32, vec![1; 12]).unwrap();
        w.add_tensor("b", &[32, 2], GgmlType::Q8_0, vec![2; 68])
            .unwrap();
        let bytes = written(&w);
        let f = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.get("n"), Some(&Value::U32(7)));
        assert_eq!(
            f.metadata().len(),
            2,
            "no general.alignment at the default alignment"
        );
        let a = f.tensor("a").unwrap();
        let b = f.tensor("b").unwrap();
        assert_eq!(a.info.offset, f.data_offset());
        assert_eq!(b.info.offset, f.data_offset() + 32, "12 bytes padded to 32");
        assert_eq!(a.data, &[1; 12][..]);
        assert_eq!(b.data, &[2; 68][..]);
        assert_eq!(b.info.dims, vec![32, 2]);
        assert_eq!(
            f.file_len() % 32,
            0,
            "last tensor padded too, as gguf-py does"
        );
    }

    #[test]
    fn non_default_alignment_is_recorded_first_as_u32() {
        let mut w = GgufWriter::with_alignment(64);
        w.add("x", Value::Bool(true)).unwrap();
        w.add_tensor("a", &[1], GgmlType::F32, vec![0; 4]).unwrap();
        w.add_tensor("b", &[1], GgmlType::F32, vec![0; 4]).unwrap();
        let f = GgufFile::from_bytes(written(&w)).unwrap();
        assert_eq!(f.metadata()[0], (ALIGNMENT_KEY.to_owned(), Value::U32(64)));
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.tensor("b").unwrap().info.offset, f.data_offset() + 64);
    }

    #[test]
    fn explicit_alignment_key_sets_the_alignment() {
        let mut w = GgufWriter::new();
        w.add(ALIGNMENT_KEY, Value::U32(128)).unwrap();
        w.add_tensor("a", &[1], GgmlType::F32, vec![0; 4]).unwrap();
        let f = GgufFile::from_bytes(written(&w)).unwrap();
        assert_eq!(f.alignment(), 128);
        assert_eq!(f.data_offset() % 128, 0);
        assert_eq!(f.metadata().len(), 1);
    }

    #[test]
    fn rejects_bad_alignments() {
        let mut w = GgufWriter::new();
        assert!(matches!(
            w.add(ALIGNMENT_KEY, Value::U32(24)),
            Err(Error::BadAlignment { value: 24 })
        ));
        assert!(matches!(
            w.add(ALIGNMENT_KEY, Value::U64(32)),
            Err(Error::BadAlignmentType {
                found: ValueType::U64
            })
        ));
        for a in [0, 3, 1 << 32] {
            let e = GgufWriter::with_alignment(a)
                .write_to(&mut Vec::new())
                .unwrap_err();
            assert!(
                matches!(e, Error::BadAlignment { value } if value == a),
                "{e:?}"
            );
        }
    }

    #[test]
    fn rejects_duplicate_keys_and_tensors() {
        let mut w = GgufWriter::new();
        w.add("k", Value::U8(1)).unwrap();
        let e = w.add("k", Value::U8(2)).unwrap_err();
        assert!(matches!(&e, Error::DuplicateKey { key } if key == "k"));
        w.add_tensor("t", &[1], GgmlType::F32, vec![0; 4]).unwrap();
        let e = w
            .add_tensor("t", &[1], GgmlType::F32, vec![0; 4])
            .unwrap_err();
        assert!(matches!(&e, Error::DuplicateTensor { name } if name == "t"));
    }

    #[test]
    fn rejects_tensors_with_wrong_shape_or_size() {
        let mut w = GgufWriter::new();
        let e = w.add_tensor("t", &[], GgmlType::F32, vec![]).unwrap_err();
        assert!(matches!(e, Error::BadNdim { ndim: 0, .. }));
        let e = w
            .add_tensor("t", &[1; 9], GgmlType::F32, vec![0; 4])
            .unwrap_err();
        assert!(matches!(e, Error::BadNdim { ndim: 9, .. }));
        let e = w
            .add_tensor("t", &[4], GgmlType::F32, vec![0; 15])
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::DataSizeMismatch {
                    expected: 16,
                    found: 15,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("needs 16 bytes, got 15"), "{e}");
        let e = w
            .add_tensor("t", &[16], GgmlType::Q8_0, vec![])
            .unwrap_err();
        assert!(matches!(e, Error::NotWholeBlocks { n_elems: 16, .. }));
        let e = w
            .add_tensor("t", &[u64::MAX, 2], GgmlType::F32, vec![])
            .unwrap_err();
        assert!(matches!(e, Error::ElementCountOverflow { .. }));
        assert!(w.tensors.is_empty(), "failed adds leave nothing behind");
    }

    #[test]
    fn rejects_mixed_and_too_deep_arrays() {
        let mut w = GgufWriter::new();
        let mixed = Value::Array(ValueType::U8, vec![Value::U8(1), Value::I8(1)]);
        let e = w.add("m", mixed).unwrap_err();
        assert!(matches!(
            e,
            Error::MixedArray {
                declared: ValueType::U8,
                found: ValueType::I8,
                ..
            }
        ));
        let mut v = Value::Array(ValueType::U8, vec![]);
        for _ in 1..8 {
            v = Value::Array(ValueType::Array, vec![v]);
        }
        w.add("eight", v.clone()).unwrap();
        let nine = Value::Array(ValueType::Array, vec![v]);
        assert!(matches!(
            w.add("nine", nine),
            Err(Error::ArrayTooDeep { .. })
        ));
        let f = GgufFile::from_bytes(written(&w)).unwrap();
        assert_eq!(f.metadata().len(), 1);
    }

    #[test]
    fn write_file_replaces_target_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("ds4-gguf-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        std::fs::write(&path, b"old").unwrap();
        let mut w = GgufWriter::new();
        w.add("k", Value::String("v".into())).unwrap();
        w.add_tensor("t", &[2], GgmlType::F16, vec![0, 60, 0, 188])
            .unwrap();
        w.write_file(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.tensor("t").unwrap().data, &[0, 60, 0, 188]);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.gguf")]);
        drop(f);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_file_into_missing_directory_names_the_path() {
        let path = std::env::temp_dir().join("ds4-gguf-no-such-dir/x/m.gguf");
        let e = GgufWriter::new().write_file(&path).unwrap_err();
        assert!(matches!(e, Error::Io { .. }));
        assert!(e.to_string().contains("ds4-gguf-no-such-dir"), "{e}");
    }
}
