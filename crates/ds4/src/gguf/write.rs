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
    data: Vec<u8>,
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
            data,
        });
        Ok(())
    }

    /// Writes the whole file to `w`: header, metadata, tensor infos, padding, tensor data.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), Error> {
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

        let mut out = Out { w, pos: 0 };
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
            rel_offset = padded(to_u64(t.data.len()), align)?
                .checked_add(rel_offset)
                .ok_or(Error::BadAlignment { value: align })?;
        }
        out.pad(align)?;
        for t in &self.tensors {
            out.bytes(&t.data)?;
            out.pad(align)?;
        }
        Ok(())
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
