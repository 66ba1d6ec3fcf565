//! Opening a GGUF file (spec/model.md §3.1): the whole file is mapped read-only and tensors are
//! handed out as zero-copy byte views into the map. Parsing lives in `parse.rs`; this file owns
//! the mmap (the only `unsafe` in the gguf module) and the lookup API.

use std::fs::File;
use std::path::Path;

use super::error::Error;
use super::parse::{self, to_u64, Layout, TensorInfo};
use super::types::Value;

/// A tensor's info and its bytes, borrowed from the file (no copy).
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    /// Name, dims, type and offsets.
    pub info: &'a TensorInfo,
    /// Exactly `info.n_bytes` bytes at `info.offset`. Not necessarily aligned beyond the file's
    /// alignment; cast with a checked cast.
    pub data: &'a [u8],
}

/// The bytes behind a [`GgufFile`].
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn as_slice(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF v3 file: metadata and tensor infos in file order, plus the bytes they index.
pub struct GgufFile {
    storage: Storage,
    layout: Layout,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("mapped", &matches!(self.storage, Storage::Mapped(_)))
            .field("file_len", &self.file_len())
            .field("version", &self.layout.version)
            .field("alignment", &self.layout.alignment)
            .field("data_offset", &self.layout.data_offset)
            .field("n_keys", &self.layout.metadata.len())
            .field("n_tensors", &self.layout.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` read-only and parses it.
    ///
    /// Contract: the file must not be modified or truncated by anyone while the returned value
    /// (or any [`Tensor`] borrowed from it) is alive. The parse checks bounds once, at open;
    /// changes made afterwards through other handles are not seen, and truncation would make
    /// reads fault.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        // Before opening: opening a FIFO for reading blocks until a writer appears.
        let kind = |m: &std::fs::Metadata| file_kind(&m.file_type());
        if let Some(kind) = kind(&std::fs::metadata(path).map_err(io)?) {
            return Err(Error::NotRegularFile {
                path: path.to_owned(),
                kind,
            });
        }
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        // Again on the open file, in case the path changed in between.
        if let Some(kind) = kind(&meta) {
            return Err(Error::NotRegularFile {
                path: path.to_owned(),
                kind,
            });
        }
        let len = meta.len();
        if len < parse::HEADER_BYTES {
            // Also avoids mapping an empty file, which some platforms reject.
            return Err(Error::TooShort { len });
        }
        // SAFETY: `Mmap::map` is unsafe because the mapped file could be changed underneath us,
        // which would break the immutability of the `&[u8]` we hand out. We map read-only and
        // pass that contract to the caller (documented above, as ripgrep's searcher does): the
        // file must not be mutated while mapped. Every offset is bounds-checked against the
        // mapped length by `parse::parse` before any view is created.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let layout = parse::parse(&map)?;
        Ok(Self {
            storage: Storage::Mapped(map),
            layout,
        })
    }

    /// Parses a GGUF file held in memory (tests, fuzzing, generated models).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, Error> {
        let layout = parse::parse(&bytes)?;
        Ok(Self {
            storage: Storage::Owned(bytes),
            layout,
        })
    }

    /// The GGUF version (always 3).
    pub fn version(&self) -> u32 {
        self.layout.version
    }

    /// Data-section alignment in bytes (`general.alignment` or 32).
    pub fn alignment(&self) -> u64 {
        self.layout.alignment
    }

    /// Absolute byte offset where the data section starts.
    pub fn data_offset(&self) -> u64 {
        self.layout.data_offset
    }

    /// File length in bytes.
    pub fn file_len(&self) -> u64 {
        to_u64(self.bytes().len())
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.layout.metadata
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let &i = self.layout.key_index.get(key)?;
        self.layout.metadata.get(i).map(|(_, v)| v)
    }

    /// All tensor infos in file order (offsets absolute).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.layout.tensors
    }

    /// The tensor named `name` with its bytes, found by hash lookup.
    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        let &i = self.layout.tensor_index.get(name)?;
        let info = self.layout.tensors.get(i)?;
        Some(Tensor {
            info,
            data: self.data_of(info)?,
        })
    }

    /// The bytes that `info` (one of this file's [`tensors`](Self::tensors)) describes; `None`
    /// only for an info whose range is not inside this file.
    pub fn data_of(&self, info: &TensorInfo) -> Option<&[u8]> {
        let start = usize::try_from(info.offset).ok();
        let end = usize::try_from(info.n_bytes)
            .ok()
            .zip(start)
            .and_then(|(n, s)| s.checked_add(n));
        self.bytes().get(start?..end?)
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.as_slice()
    }
}

/// `None` for a regular file, else what the file is.
fn file_kind(t: &std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_socket() {
            return Some("a socket");
        }
        if t.is_block_device() || t.is_char_device() {
            return Some("a device");
        }
    }
    Some("not a regular file")
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<GgufFile>();
};

#[cfg(test)]
mod tests {
    use super::super::types::GgmlType;
    use super::super::write::GgufWriter;
    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("ds4-gguf-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn open_maps_file_and_views_tensor_bytes_in_place() {
        let mut w = GgufWriter::new();
        w.add("general.name", Value::String("tiny".into())).unwrap();
        w.add_tensor("a", &[2, 2], GgmlType::I32, (0u8..16).collect())
            .unwrap();
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).unwrap();
        let path = temp_file("open.gguf", &bytes);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.bytes(), &bytes[..]);
        assert_eq!(f.get("general.name").and_then(Value::as_str), Some("tiny"));
        let t = f.tensor("a").unwrap();
        assert_eq!(t.data, &(0u8..16).collect::<Vec<_>>()[..]);
        // Zero-copy: the view points into the mapped file at the tensor's offset.
        let base = f.bytes().as_ptr() as usize;
        assert_eq!(t.data.as_ptr() as usize - base, t.info.offset as usize);
        assert!(f.tensor("missing").is_none());
        assert!(format!("{f:?}").contains("mapped: true"));
        drop(f);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn open_reports_missing_file_with_its_path() {
        let path = std::env::temp_dir().join("ds4-gguf-definitely-missing.gguf");
        let e = GgufFile::open(&path).unwrap_err();
        assert!(matches!(&e, Error::Io { path: p, .. } if *p == path));
        assert!(
            e.to_string().contains("ds4-gguf-definitely-missing.gguf"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn open_refuses_a_fifo_without_blocking_and_a_directory() {
        let dir = std::env::temp_dir().join(format!("ds4-gguf-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("model.gguf");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // With no writer, opening it would block forever: this returns instead.
        let e = GgufFile::open(&fifo).unwrap_err();
        assert!(
            matches!(e, Error::NotRegularFile { kind: "a FIFO", .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("not a regular file (a FIFO)"), "{e}");
        let e = GgufFile::open(&dir).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotRegularFile {
                    kind: "a directory",
                    ..
                }
            ),
            "{e:?}"
        );
        std::fs::remove_file(&fifo).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn open_rejects_empty_file_as_too_short() {
        let path = temp_file("empty.gguf", &[]);
        let e = GgufFile::open(&path).unwrap_err();
        assert!(matches!(e, Error::TooShort { len: 0 }), "{e:?}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn data_of_rejects_info_outside_the_file() {
        let mut w = GgufWriter::new();
        w.add_tensor("a", &[1], GgmlType::F32, vec![0; 4]).unwrap();
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).unwrap();
        let f = GgufFile::from_bytes(bytes).unwrap();
        let mut info = f.tensors()[0].clone();
        info.offset = u64::MAX - 1;
        assert!(f.data_of(&info).is_none());
    }
}
