//! Opening a GGUF file (spec/model.md §3.1): the whole file is mapped read-only and tensors are
//! handed out as zero-copy byte views into the map. A split GGUF (`split.rs`) opens from its
//! first shard: all shards are mapped back to back into one reserved range of address space,
//! so the rest of the program sees one byte slice as for a single file. Parsing lives in
//! `parse.rs`; this file owns the mmaps (the only `unsafe` in the gguf module) and the lookup
//! API.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::Error;
use super::parse::{self, to_u64, Layout, TensorInfo};
use super::split;
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
    #[cfg(unix)]
    Shards(ShardMap),
}

impl Storage {
    fn as_slice(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
            #[cfg(unix)]
            Storage::Shards(m) => m.as_slice(),
        }
    }
}

/// A parsed GGUF v3 file: metadata and tensor infos in file order, plus the bytes they index.
pub struct GgufFile {
    storage: Storage,
    layout: Layout,
    /// The files behind the bytes: one, or every shard of a split GGUF (empty in memory).
    shards: Vec<PathBuf>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("mapped", &!matches!(self.storage, Storage::Owned(_)))
            .field("shards", &self.shards.len())
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
    /// Maps `path` read-only and parses it. A split GGUF (`split.count` > 1) is opened from its
    /// first shard, `PREFIX-00001-of-NNNNN.gguf`: every shard is mapped and checked, and the
    /// result is one file whose tensors are those of all shards.
    ///
    /// Contract: the file must not be modified or truncated by anyone while the returned value
    /// (or any [`Tensor`] borrowed from it) is alive. The parse checks bounds once, at open;
    /// changes made afterwards through other handles are not seen, and truncation would make
    /// reads fault.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let (file, _len) = open_regular(path)?;
        // SAFETY: `Mmap::map` is unsafe because the mapped file could be changed underneath us,
        // which would break the immutability of the `&[u8]` we hand out. We map read-only and
        // pass that contract to the caller (documented above, as ripgrep's searcher does): the
        // file must not be mutated while mapped. Every offset is bounds-checked against the
        // mapped length by `parse::parse` before any view is created.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let layout = parse::parse(&map)?;
        match split::keys(&layout, path)? {
            None => Ok(Self {
                storage: Storage::Mapped(map),
                layout,
                shards: vec![path.to_owned()],
            }),
            Some(k) if k.no != 0 => Err(Error::NotFirstShard {
                path: path.to_owned(),
                no: k.no,
                count: k.count,
            }),
            Some(k) => {
                drop(map);
                Self::open_split(path, k)
            }
        }
    }

    /// Maps every shard of the split GGUF whose first shard is `first`, parses each, and merges
    /// the tensor tables.
    #[cfg(unix)]
    fn open_split(first: &Path, k: split::SplitKeys) -> Result<Self, Error> {
        let paths = split::shard_paths(first, k.count)?;
        let mut files = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            match std::fs::metadata(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::MissingShard {
                        path: p.clone(),
                        index: i as u64 + 1,
                        count: k.count,
                    })
                }
                _ => files.push((p.clone(), open_regular(p)?)),
            }
        }
        let map = ShardMap::new(&files)?;
        let mut shards = Vec::with_capacity(files.len());
        for ((p, (_, len)), &base) in files.iter().zip(&map.bases) {
            let bytes = usize::try_from(base)
                .ok()
                .zip(usize::try_from(*len).ok())
                .and_then(|(b, l)| map.as_slice().get(b..b.checked_add(l)?));
            let layout = parse::parse(bytes.unwrap_or(&[])).map_err(|e| Error::ShardMismatch {
                path: p.clone(),
                problem: e.to_string(),
            })?;
            shards.push((p.clone(), layout));
        }
        let layout = split::merge(shards, &map.bases, k)?;
        Ok(Self {
            storage: Storage::Shards(map),
            layout,
            shards: paths,
        })
    }

    #[cfg(not(unix))]
    fn open_split(first: &Path, _k: split::SplitKeys) -> Result<Self, Error> {
        Err(Error::ShardMismatch {
            path: first.to_owned(),
            problem: "split GGUFs are supported on Unix only; merge them with gguf-split".into(),
        })
    }

    /// The files behind this model: one path, or every shard of a split GGUF in order (empty
    /// for a file parsed from memory).
    pub fn paths(&self) -> &[PathBuf] {
        &self.shards
    }

    /// Parses a GGUF file held in memory (tests, fuzzing, generated models).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, Error> {
        let layout = parse::parse(&bytes)?;
        Ok(Self {
            storage: Storage::Owned(bytes),
            layout,
            shards: Vec::new(),
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

    /// File length in bytes (of a split GGUF: the combined range, shards page-aligned).
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

/// Opens `path` for reading after checking that it is a regular file of at least a header.
fn open_regular(path: &Path) -> Result<(File, u64), Error> {
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
    Ok((file, len))
}

/// Several files mapped read-only back to back into one reserved range of address space, file
/// `i` at page-aligned offset `bases[i]` (the gaps read as zeros), so that a split GGUF is one
/// byte slice. Unmapped as a whole on drop.
#[cfg(unix)]
struct ShardMap {
    ptr: *mut libc::c_void,
    reserved: usize,
    len: usize,
    bases: Vec<u64>,
}

// SAFETY: the mapping is read-only and owned by this value; `&[u8]` views of it are as
// shareable across threads as those of a `memmap2::Mmap`.
#[cfg(unix)]
#[allow(unsafe_code)]
unsafe impl Send for ShardMap {}
// SAFETY: as above; nothing mutates the mapping after `new`.
#[cfg(unix)]
#[allow(unsafe_code)]
unsafe impl Sync for ShardMap {}

#[cfg(unix)]
#[allow(unsafe_code)]
impl ShardMap {
    fn new(files: &[(PathBuf, (File, u64))]) -> Result<Self, Error> {
        use std::os::fd::AsRawFd;
        let first = files.first().map(|f| f.0.clone()).unwrap_or_default();
        let too_big = |path: &Path| Error::Io {
            path: path.to_owned(),
            source: std::io::Error::other("shards too large for the address space"),
        };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p.is_power_of_two())
            .unwrap_or(4096);
        let mut bases = Vec::with_capacity(files.len());
        let mut end = 0usize;
        for (p, (_, len)) in files {
            let base = end
                .checked_next_multiple_of(page)
                .ok_or_else(|| too_big(p))?;
            let len = usize::try_from(*len).map_err(|_| too_big(p))?;
            end = base.checked_add(len).ok_or_else(|| too_big(p))?;
            bases.push(base as u64);
        }
        let reserved = end
            .checked_next_multiple_of(page)
            .ok_or_else(|| too_big(&first))?;
        // SAFETY: an anonymous, private, read-only reservation; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Io {
                path: first,
                source: std::io::Error::last_os_error(),
            });
        }
        let me = ShardMap {
            ptr,
            reserved,
            len: end,
            bases,
        };
        for ((p, (file, len)), &base) in files.iter().zip(&me.bases) {
            // SAFETY: `base + len ≤ reserved`, so MAP_FIXED replaces only pages of our own
            // reservation. The file-not-mutated contract is `GgufFile::open`'s, as for one file.
            let got = unsafe {
                libc::mmap(
                    me.ptr.cast::<u8>().add(base as usize).cast(),
                    *len as usize,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if got == libc::MAP_FAILED {
                return Err(Error::Io {
                    path: p.clone(),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(me)
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is mapped readable for our lifetime (shards and zero gaps).
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

#[cfg(unix)]
#[allow(unsafe_code)]
impl Drop for ShardMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the reservation made in `new` (shards included); no view
        // outlives `self`.
        unsafe {
            libc::munmap(self.ptr, self.reserved);
        }
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
