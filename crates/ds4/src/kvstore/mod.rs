//! The disk KV cache (spec/serving.md §5.3–§5.6, docs/kv-format.md): session snapshots in
//! checksummed files named by the SHA1 of their key text, found by rendered-byte prefix, kept
//! under a byte quota. It owns the directory and the file format; it does not decide when a
//! checkpoint is due (the server's scheduler does) and never touches a backend: it reads and
//! writes [`crate::session::Snapshot`]s, which `Session::snapshot`/`restore` move in and out of
//! backend memory.
//!
//! * `format`: the file layout, its streaming writer and its validating reader.
//! * `payload`: the session section of a file.
//! * `identity`: which model a file belongs to ([`ModelStamp`] from a loaded model).
//! * `dir`: the directory: scan, lookup, crash-safe store, eviction, leftover cleanup.

pub mod dir;
pub mod format;
pub mod identity;
pub mod payload;

use std::path::PathBuf;

pub use dir::{
    DirOptions, Entry, FoundFile, KvDir, Loaded, Notice, NoticeKind, StoreOutcome, StoreRequest,
};
pub use format::{Header, KeyKind, ModelStamp, RowEncoding, SaveReason, ToolEntry};
pub use identity::model_stamp;

/// Why a cache file or directory could not be used. Every variant says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The failure.
        source: std::io::Error,
    },
    /// An I/O call on a named path failed.
    #[error("{op} {path}: {source}")]
    PathIo {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Not a ds4-rs cache file.
    #[error("not a ds4-rs KV cache file (magic {found:?}, expected \"DS4K\")")]
    Magic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// Written by another format version.
    #[error("cache format version {found}; this build reads version {expected}")]
    Version {
        /// The file's version.
        found: u16,
        /// Ours.
        expected: u16,
    },
    /// A checksum does not match.
    #[error("{what}: checksum mismatch (the file is corrupt)")]
    Checksum {
        /// Which section.
        what: &'static str,
    },
    /// A section ends early.
    #[error("{what}: truncated (needs {need} more bytes, {have} left)")]
    Truncated {
        /// Which section.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// A size differs from what the rest of the file implies.
    #[error("{what}: {found} bytes where {expected} were expected")]
    Size {
        /// Which part.
        what: &'static str,
        /// Expected bytes.
        expected: u64,
        /// Found bytes.
        found: u64,
    },
    /// A field holds a value the format does not allow.
    #[error("{what}: {problem}")]
    Invalid {
        /// Which part.
        what: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// Valid, but written for another model or setting.
    #[error("written for {what}")]
    Incompatible {
        /// What differs, in words.
        what: String,
    },
}

impl Error {
    /// A closure mapping an I/O error of `op` to [`Error::Io`].
    pub fn io(op: &'static str) -> impl Fn(std::io::Error) -> Error {
        move |source| Error::Io { op, source }
    }

    /// A closure mapping an I/O error of `op` on `path` to [`Error::PathIo`].
    pub fn path_io(op: &'static str, path: &std::path::Path) -> impl Fn(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::PathIo {
            op,
            path: path.clone(),
            source,
        }
    }

    /// Whether the file itself is bad (corrupt, truncated, foreign), as opposed to an I/O
    /// failure of this process or a valid file of another model.
    pub fn is_corrupt(&self) -> bool {
        !matches!(
            self,
            Error::Io { .. } | Error::PathIo { .. } | Error::Incompatible { .. }
        )
    }
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Test-only (`test-hooks` feature): `DS4_TEST_KV_WRITE_PAUSE_MS` stalls every file write after
/// its body and before its header, so a test can kill the process mid-write.
fn test_pause() {
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("DS4_TEST_KV_WRITE_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
