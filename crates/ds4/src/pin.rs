//! Model file hash pinning (`--model-sha256`): the SHA-256 of a file, streamed with the reading
//! and the hashing on two threads so both cores work, and remembered next to the file in
//! `<file>.sha256` keyed by its size and modification time, so a restart need not rehash
//! 81 GiB. A remembered hash is trusted only while size and mtime are unchanged; anything else
//! (a missing, unreadable or stale record) means hashing again.
//!
//! No model logic and no network: the binaries call [`verify`] before serving a model, and
//! `ds4 download` calls [`sha256_file`] on what it fetched.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

/// Bytes read at a time.
const CHUNK: usize = 8 << 20;
/// Chunks in flight between the reader and the hasher.
const IN_FLIGHT: usize = 4;

/// Why a pinned file was refused or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The expected hash is not 64 hex digits.
    #[error("--model-sha256 `{given}` is not a SHA-256 (64 hex digits)")]
    BadHex {
        /// What was given.
        given: String,
    },
    /// Reading the file failed.
    #[error("hashing {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file's hash is not the pinned one.
    #[error(
        "{} has SHA-256 {found}, but {expected} was pinned: refusing to load it \
         (a different or corrupted file; re-download it or fix the pin)",
        path.display()
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The pinned hash (lowercase hex).
        expected: String,
        /// The file's hash (lowercase hex).
        found: String,
    },
    /// A split model's shards and the pins do not pair up.
    #[error("{pins} SHA-256 pins given for a model of {files} file(s): give one per shard, in order, comma-separated")]
    Count {
        /// Pins given.
        pins: usize,
        /// Files of the model.
        files: usize,
    },
}

/// Lowercase hex of a digest.
pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// `s` as a lowercase 64-digit hex SHA-256, or [`PinError::BadHex`].
pub fn parse_hex(s: &str) -> Result<String, PinError> {
    let t = s.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(PinError::BadHex { given: s.into() })
    }
}

/// The SHA-256 of the file at `path` (lowercase hex). One thread reads 8 MiB chunks while this
/// one hashes; `progress(done, total)` is called after each chunk (bytes).
pub fn sha256_file(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<String, PinError> {
    let io = |source| PinError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let total = f.metadata().map_err(io)?.len();
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<Vec<u8>>>(IN_FLIGHT);
    let reader = std::thread::spawn(move || loop {
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0;
        let r = loop {
            match f.read(&mut buf[n..]) {
                Ok(0) => break Ok(()),
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(n);
        let last = n < CHUNK || r.is_err();
        let msg = r.map(|()| buf);
        if tx.send(msg).is_err() || last {
            return;
        }
    });
    let mut h = Sha256::new();
    let mut done = 0u64;
    let mut result = Ok(());
    for msg in rx {
        match msg {
            Ok(buf) => {
                h.update(&buf);
                done += buf.len() as u64;
                progress(done, total);
            }
            Err(e) => {
                result = Err(io(e));
                break;
            }
        }
    }
    let _ = reader.join();
    result.map(|()| hex(&h.finalize()))
}

/// Where the remembered hash of `path` lives: `<path>.sha256`.
pub fn record_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// (size, mtime in ns since the epoch) of `path`.
fn stamp(path: &Path) -> std::io::Result<(u64, u128)> {
    let m = std::fs::metadata(path)?;
    let mtime = m
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((m.len(), mtime))
}

/// The remembered hash of `path`, if the record exists and matches its current size and mtime.
pub fn remembered(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(record_path(path)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let (size, mtime) = stamp(path).ok()?;
    let same = v["size"].as_u64() == Some(size)
        && v["mtime_ns"].as_str() == Some(mtime.to_string().as_str());
    let h = v["sha256"].as_str()?;
    (same && parse_hex(h).is_ok()).then(|| h.to_string())
}

/// Remembers `sha256` as the hash of `path` at its current size and mtime. Best effort: the
/// error is returned for the caller to log (e.g. a read-only model directory).
pub fn remember(path: &Path, sha256: &str) -> std::io::Result<()> {
    let (size, mtime) = stamp(path)?;
    let rec = serde_json::json!({
        "sha256": sha256,
        "size": size,
        "mtime_ns": mtime.to_string(),
        "what": "SHA-256 of the file without the .sha256 suffix, valid while size and mtime match",
    });
    let tmp = record_path(path).with_extension("sha256.tmp");
    std::fs::write(&tmp, format!("{rec:#}\n"))?;
    std::fs::rename(&tmp, record_path(path))
}

/// How [`verify`] got the file's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashSource {
    /// From `<file>.sha256` (size and mtime unchanged).
    Remembered,
    /// Hashed now (and remembered, if the record could be written).
    Computed,
}

/// Checks that `path` has SHA-256 `expected` (hex), using the remembered hash when size and
/// mtime are unchanged and hashing (with `progress`) otherwise. `warn` receives a message if
/// the hash could not be remembered.
pub fn verify(
    path: &Path,
    expected: &str,
    progress: &mut dyn FnMut(u64, u64),
    warn: &mut dyn FnMut(String),
) -> Result<HashSource, PinError> {
    let expected = parse_hex(expected)?;
    let (found, source) = match remembered(path) {
        Some(h) => (h, HashSource::Remembered),
        None => {
            let h = sha256_file(path, progress)?;
            if let Err(e) = remember(path, &h) {
                warn(format!(
                    "could not remember the hash in {}: {e}",
                    record_path(path).display()
                ));
            }
            (h, HashSource::Computed)
        }
    };
    if found != expected {
        return Err(PinError::Mismatch {
            path: path.to_owned(),
            expected,
            found,
        });
    }
    Ok(source)
}

/// [`verify`] for every file of a model (`paths`: one file, or each shard of a split GGUF)
/// against `pins` (one per file, in order).
pub fn verify_all(
    paths: &[PathBuf],
    pins: &[String],
    progress: &mut dyn FnMut(&Path, u64, u64),
    warn: &mut dyn FnMut(String),
) -> Result<(), PinError> {
    if pins.len() != paths.len() {
        return Err(PinError::Count {
            pins: pins.len(),
            files: paths.len(),
        });
    }
    for (p, pin) in paths.iter().zip(pins) {
        verify(p, pin, &mut |d, t| progress(p, d, t), warn)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ds4-pin-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn hashes_known_vectors_across_chunk_boundaries() {
        let d = scratch("vectors");
        let p = d.join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p, &mut |_, _| {}).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::write(&p, b"").unwrap();
        assert_eq!(
            sha256_file(&p, &mut |_, _| {}).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Two chunks and a bit of 'a' bytes; the expected value is one-shot Sha256 (sha2).
        let data = vec![b'a'; 2 * CHUNK + 5];
        std::fs::write(&p, &data).unwrap();
        let mut last = (0, 0);
        let got = sha256_file(&p, &mut |a, b| last = (a, b)).unwrap();
        assert_eq!(got, hex(&Sha256::digest(&data)));
        assert_eq!(last, (data.len() as u64, data.len() as u64));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn verify_remembers_and_rehashes_when_the_file_changes() {
        let d = scratch("verify");
        let p = d.join("model.gguf");
        std::fs::write(&p, b"abc").unwrap();
        let abc = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        let mut hashed = 0;
        let mut warn = |w: String| panic!("{w}");
        let src = verify(&p, abc, &mut |_, _| hashed += 1, &mut warn).unwrap();
        assert_eq!(src, HashSource::Computed);
        assert!(record_path(&p).exists());
        let src = verify(&p, abc, &mut |_, _| panic!("rehashed"), &mut warn).unwrap();
        assert_eq!(src, HashSource::Remembered);
        // Same size, new content and mtime: the record is stale, the mismatch is caught.
        std::fs::write(&p, b"abd").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let err = verify(&p, abc, &mut |_, _| {}, &mut warn).unwrap_err();
        assert!(matches!(err, PinError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("refusing to load"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rejects_malformed_pins_and_wrong_counts() {
        assert!(matches!(parse_hex("abc"), Err(PinError::BadHex { .. })));
        assert!(parse_hex(&"g".repeat(64)).is_err());
        let err =
            verify_all(&[PathBuf::from("a")], &[], &mut |_, _, _| {}, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, PinError::Count { pins: 0, files: 1 }),
            "{err}"
        );
    }
}
