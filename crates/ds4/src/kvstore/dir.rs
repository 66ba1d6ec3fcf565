//! The cache directory (spec/serving.md §5.3, §5.6; docs/kv-format.md "Directory"): an index
//! of the valid files in it, lookup by rendered-byte prefix, crash-safe stores under a byte
//! quota, and cleanup of what killed processes and corrupt writes leave behind.
//!
//! Crash safety: a file is written to `NAME.tmp.PID.N` in the same directory, fsynced, renamed
//! over `NAME` and the directory fsynced, so a reader sees either the old file or the whole new
//! one. Every read is validated (header checksum on scan, section checksums on load), so two
//! processes sharing a directory need no lock: neither ever writes into a file the other can
//! see, except the 16 stats bytes, which no checksum covers and any value of which is valid.
//! A file that fails validation is removed with one [`Notice`]; it never stops a scan.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha1::{Digest, Sha1};

use crate::model::Config;
use crate::session::Snapshot;

use super::format::{
    self, encode_stats, FileMeta, Header, KeyKind, ModelStamp, SaveReason, ToolEntry, HEADER_BYTES,
    PREFIX_BYTES,
};
use super::identity::precision_name;
use super::{hex, now_unix, Error};

/// Temporary files of writers that are not running any more, or older than this, are removed.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Half-life of the hit count in the eviction score (spec §5.6).
const HIT_HALF_LIFE_S: f64 = 6.0 * 3600.0;
/// A file's size × this must fit the budget for it to be written (spec §5.6).
const SIZE_SLACK: f64 = 1.01;

/// Settings of a cache directory (the server's `--kv-*` flags).
#[derive(Debug, Clone)]
pub struct DirOptions {
    /// Most bytes the directory's cache files may take together.
    pub budget_bytes: u64,
    /// No checkpoint of fewer tokens is stored or loaded.
    pub min_tokens: usize,
    /// Refuse files whose routed experts have other types than ours.
    pub reject_different_quant: bool,
    /// Most entries a file's tool map may hold (4 × `--tool-memory-max-ids`).
    pub max_tool_entries: usize,
}

/// What happened to one file, for the log (one line each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeKind {
    /// Corrupt, foreign or of another model: deleted.
    Removed,
    /// Valid but not usable here (kept for a server it fits).
    Skipped,
    /// A bad file that could not be deleted.
    RemoveFailed,
    /// A temporary file left by a killed writer: deleted.
    CleanedTmp,
    /// A file could not be read (I/O); tried again at the next scan.
    Unreadable,
}

/// One line for the log about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The file.
    pub path: PathBuf,
    /// What was done.
    pub kind: NoticeKind,
    /// Why, in words.
    pub reason: String,
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            NoticeKind::Removed => "removed",
            NoticeKind::Skipped => "skipped (kept)",
            NoticeKind::RemoveFailed => "not loaded; could not remove it",
            NoticeKind::CleanedTmp => "removed leftover temporary file",
            NoticeKind::Unreadable => "could not read",
        };
        write!(
            f,
            "kv cache {}: {what}: {}",
            self.path.display(),
            self.reason
        )
    }
}

/// One indexed file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its path.
    pub path: PathBuf,
    /// Its header and stats as last read.
    pub header: Header,
    /// Bytes on disk.
    pub size: u64,
    /// Whether this server may load it (compatible and fits the context).
    pub usable: bool,
    mtime: Option<SystemTime>,
}

/// A file found for a prompt, loaded and validated.
#[derive(Debug)]
pub struct Loaded {
    /// The session state.
    pub snapshot: Snapshot,
    /// Bytes of the prompt text the checkpoint covers.
    pub text_bytes: usize,
    /// Its tool map.
    pub tools: Vec<ToolEntry>,
    /// Its header (stats before this hit).
    pub header: Header,
    /// Its file name (`SHA1.kv`).
    pub name: String,
    /// Bytes read.
    pub bytes: u64,
}

/// A file matched by [`KvDir::find`] (not loaded yet).
#[derive(Debug, Clone)]
pub struct FoundFile {
    /// Its file name.
    pub name: String,
    /// Bytes of prompt text it covers.
    pub text_bytes: usize,
}

/// What to store.
#[derive(Debug)]
pub struct StoreRequest<'a> {
    /// The key text: the decoded text of the snapshot's tokens, or a visible transcript.
    pub text: &'a str,
    /// Which of the two.
    pub key_kind: KeyKind,
    /// Why it is stored.
    pub reason: SaveReason,
    /// The state.
    pub snapshot: &'a Snapshot,
    /// Tool-call ids whose DSML occurs in the key text.
    pub tools: &'a [ToolEntry],
}

/// What a store did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// A new file (or a replacement of the same name).
    Written {
        /// Its name.
        name: String,
        /// Its size.
        bytes: u64,
    },
    /// The same checkpoint was already on disk.
    Unchanged {
        /// Its name.
        name: String,
    },
    /// Fewer tokens than `min_tokens`.
    TooSmall,
    /// The file would exceed the budget on its own.
    TooLarge {
        /// Its size.
        bytes: u64,
    },
}

/// The cache directory of one server.
#[derive(Debug)]
pub struct KvDir {
    dir: PathBuf,
    stamp: ModelStamp,
    ctx: usize,
    cfg: Config,
    opts: DirOptions,
    entries: BTreeMap<String, Entry>,
    /// Names already reported as skipped or unremovable (reported once).
    reported: HashSet<String>,
    /// Names indexed since the last [`KvDir::take_new_tool_files`] whose file has a tool map.
    new_tool_files: Vec<String>,
    tmp_counter: u64,
    /// Files deleted to stay under the budget, since open.
    pub evictions: u64,
}

fn is_cache_name(name: &str) -> bool {
    name.len() == 43
        && name.ends_with(".kv")
        && name[..40]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `NAME.kv.tmp.PID.N` → PID.
fn tmp_pid(name: &str) -> Option<u32> {
    let (base, rest) = name.split_once(".tmp.")?;
    if !is_cache_name(base) {
        return None;
    }
    rest.split('.').next()?.parse().ok()
}

/// Whether process `pid` is running (Linux: `/proc/PID` exists; elsewhere unknown → true, so
/// only the age rule applies).
fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

impl KvDir {
    /// Opens (creating it if needed) the directory `dir` for a server of model `stamp`, config
    /// `cfg` and context `ctx`: removes leftover temporary files and bad files, indexes the
    /// rest and evicts down to the budget. The notices say what was removed or skipped.
    pub fn open(
        dir: &Path,
        stamp: ModelStamp,
        cfg: &Config,
        ctx: usize,
        opts: DirOptions,
    ) -> Result<(KvDir, Vec<Notice>), Error> {
        fs::create_dir_all(dir).map_err(Error::path_io("creating", dir))?;
        let mut d = KvDir {
            dir: dir.to_path_buf(),
            stamp,
            ctx,
            cfg: cfg.clone(),
            opts,
            entries: BTreeMap::new(),
            reported: HashSet::new(),
            new_tool_files: Vec::new(),
            tmp_counter: 0,
            evictions: 0,
        };
        let mut notices = d.rescan()?;
        notices.extend(d.evict_to(d.opts.budget_bytes, None));
        Ok((d, notices))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The options it was opened with.
    pub fn options(&self) -> &DirOptions {
        &self.opts
    }

    /// Indexed files by name.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// Bytes the indexed files take.
    pub fn total_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }

    /// Names of files indexed since the last call that carry a tool map (to load into the
    /// tool memory with [`KvDir::read_tools`]).
    pub fn take_new_tool_files(&mut self) -> Vec<String> {
        std::mem::take(&mut self.new_tool_files)
    }

    /// Brings the index up to date with the directory (other processes write to it too):
    /// new and changed files are validated by header, vanished ones dropped, leftovers of
    /// killed writers removed. Fails only if the directory cannot be listed.
    pub fn rescan(&mut self) -> Result<Vec<Notice>, Error> {
        let mut notices = Vec::new();
        let mut seen = HashSet::new();
        let list = fs::read_dir(&self.dir).map_err(Error::path_io("listing", &self.dir))?;
        for item in list {
            let Ok(item) = item else { continue };
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = item.path();
            if let Some(pid) = tmp_pid(&name) {
                self.clean_tmp(&path, pid, &mut notices);
                continue;
            }
            if !is_cache_name(&name) {
                continue;
            }
            seen.insert(name.clone());
            let meta = match fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            let mtime = meta.modified().ok();
            if let Some(e) = self.entries.get(&name) {
                if e.size == meta.len() && e.mtime == mtime && mtime.is_some() {
                    continue;
                }
            }
            self.index(&name, &path, meta.len(), mtime, &mut notices);
        }
        self.entries.retain(|n, _| seen.contains(n));
        Ok(notices)
    }

    fn clean_tmp(&mut self, path: &Path, pid: u32, notices: &mut Vec<Notice>) {
        let ours = pid == std::process::id();
        let old = fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TMP);
        // Our own writes finish inside `store`, so a file of our pid is a leftover of an
        // earlier process that had the same pid.
        if ours || old || !pid_alive(pid) {
            let why = if ours || !pid_alive(pid) {
                format!("its writer (pid {pid}) is gone")
            } else {
                "older than an hour".to_string()
            };
            if fs::remove_file(path).is_ok() {
                notices.push(Notice {
                    path: path.to_path_buf(),
                    kind: NoticeKind::CleanedTmp,
                    reason: why,
                });
            }
        }
    }

    /// Reads and checks the header of `name`, indexing it or removing it.
    fn index(
        &mut self,
        name: &str,
        path: &Path,
        size: u64,
        mtime: Option<SystemTime>,
        notices: &mut Vec<Notice>,
    ) {
        let header = match read_header(path, name, size) {
            Ok(h) => h,
            Err(e) if e.is_corrupt() => {
                self.entries.remove(name);
                self.drop_bad(name, path, e.to_string(), notices);
                return;
            }
            Err(e) => {
                self.entries.remove(name);
                if self.reported.insert(name.to_string()) {
                    notices.push(Notice {
                        path: path.to_path_buf(),
                        kind: NoticeKind::Unreadable,
                        reason: e.to_string(),
                    });
                }
                return;
            }
        };
        if header.model.layout != self.stamp.layout {
            self.entries.remove(name);
            let why = "another model (its layout identity differs from the loaded model's)";
            self.drop_bad(name, path, why.to_string(), notices);
            return;
        }
        let usable = match self.unusable_reason(&header) {
            None => true,
            Some(why) => {
                if self.reported.insert(name.to_string()) {
                    notices.push(Notice {
                        path: path.to_path_buf(),
                        kind: NoticeKind::Skipped,
                        reason: why,
                    });
                }
                false
            }
        };
        let fresh = !self.entries.contains_key(name);
        if fresh && usable && header.tool_bytes > 0 {
            self.new_tool_files.push(name.to_string());
        }
        self.entries.insert(
            name.to_string(),
            Entry {
                path: path.to_path_buf(),
                header,
                size,
                usable,
                mtime,
            },
        );
    }

    /// Why a valid file of our model cannot be loaded here, if it cannot.
    fn unusable_reason(&self, h: &Header) -> Option<String> {
        if h.model.precision != self.stamp.precision {
            return Some(format!(
                "written with {} numerics; this server runs {}",
                precision_name(h.model.precision),
                precision_name(self.stamp.precision)
            ));
        }
        if self.opts.reject_different_quant && h.model.expert_types != self.stamp.expert_types {
            return Some(format!(
                "routed experts of types {:?}, ours are {:?} (--kv-cache-reject-different-quant)",
                h.model.expert_types, self.stamp.expert_types
            ));
        }
        if h.tokens as usize >= self.ctx {
            return Some(format!(
                "{} tokens do not fit this server's context of {}",
                h.tokens, self.ctx
            ));
        }
        None
    }

    fn drop_bad(&mut self, name: &str, path: &Path, why: String, notices: &mut Vec<Notice>) {
        match fs::remove_file(path) {
            Ok(()) => notices.push(Notice {
                path: path.to_path_buf(),
                kind: NoticeKind::Removed,
                reason: why,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                if self.reported.insert(name.to_string()) {
                    notices.push(Notice {
                        path: path.to_path_buf(),
                        kind: NoticeKind::RemoveFailed,
                        reason: format!("{why}; removing it failed: {e}"),
                    });
                }
            }
        }
    }

    /// The usable files whose key text is a byte prefix of `text` (by SHA1, spec §5.3), longest
    /// first. One pass over `text`: candidates are hashed in order of their length.
    pub fn find(&self, text: &str) -> Vec<FoundFile> {
        let mut cands: Vec<(&String, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.usable
                    && e.header.tokens as usize >= self.opts.min_tokens
                    && e.header.text_bytes > 0
                    && e.header.text_bytes <= text.len() as u64
            })
            .collect();
        cands.sort_by_key(|(_, e)| e.header.text_bytes);
        let bytes = text.as_bytes();
        let mut h = Sha1::new();
        let mut done = 0usize;
        let mut found = Vec::new();
        for (name, e) in cands {
            let n = e.header.text_bytes as usize;
            h.update(&bytes[done..n]);
            done = n;
            if <[u8; 20]>::from(h.clone().finalize()) == e.header.key_sha1 {
                found.push(FoundFile {
                    name: name.clone(),
                    text_bytes: n,
                });
            }
        }
        found.reverse();
        found
    }

    /// Loads the longest usable file whose key text is a byte prefix of `text`: its text is
    /// compared byte for byte, every checksum verified and the state checked against the
    /// model. A bad file is removed (with a notice) and the next candidate tried. A hit counts
    /// in the file's stats.
    pub fn lookup(&mut self, text: &str) -> (Option<Loaded>, Vec<Notice>) {
        let mut notices = match self.rescan() {
            Ok(n) => n,
            Err(e) => {
                return (
                    None,
                    vec![Notice {
                        path: self.dir.clone(),
                        kind: NoticeKind::Unreadable,
                        reason: e.to_string(),
                    }],
                )
            }
        };
        for f in self.find(text) {
            let Some(path) = self.entries.get(&f.name).map(|e| e.path.clone()) else {
                continue;
            };
            match self.load(&f.name, &path, text) {
                Ok(l) => return (Some(l), notices),
                Err(e) if e.is_corrupt() => {
                    self.entries.remove(&f.name);
                    self.drop_bad(&f.name, &path, e.to_string(), &mut notices);
                }
                Err(e) => {
                    self.entries.remove(&f.name);
                    notices.push(Notice {
                        path,
                        kind: if matches!(e, Error::Incompatible { .. }) {
                            NoticeKind::Skipped
                        } else {
                            NoticeKind::Unreadable
                        },
                        reason: e.to_string(),
                    });
                }
            }
        }
        (None, notices)
    }

    fn load(&mut self, name: &str, path: &Path, text: &str) -> Result<Loaded, Error> {
        let file = File::open(path).map_err(Error::path_io("opening", path))?;
        let size = file
            .metadata()
            .map_err(Error::path_io("reading", path))?
            .len();
        let mut r = BufReader::with_capacity(1 << 20, file);
        let header = read_prefix(&mut r, name, size)?;
        if header.model.layout != self.stamp.layout {
            return Err(Error::Invalid {
                what: "file",
                problem: "replaced by a file of another model".into(),
            });
        }
        if let Some(why) = self.unusable_reason(&header) {
            return Err(Error::Incompatible { what: why });
        }
        let key = format::read_text(&mut r, &header)?;
        if text.as_bytes().get(..key.len()) != Some(key.as_bytes()) {
            return Err(Error::Incompatible {
                what: "another prompt (its key text differs from the prompt's prefix)".into(),
            });
        }
        let tools = format::read_tools(&mut r, &header, self.opts.max_tool_entries)?;
        let snapshot = format::read_snapshot(&mut r, &header)?;
        self.check_snapshot(&snapshot)?;
        let now = now_unix();
        // Stats are advisory: a read-only file simply keeps its old ones.
        let _ = write_stats(path, header.hits.saturating_add(1), now);
        if let Some(e) = self.entries.get_mut(name) {
            e.header.hits = header.hits.saturating_add(1);
            e.header.last_used = now;
            e.mtime = fs::metadata(path).and_then(|m| m.modified()).ok();
        }
        Ok(Loaded {
            snapshot,
            text_bytes: key.len(),
            tools,
            header,
            name: name.to_string(),
            bytes: size,
        })
    }

    /// The snapshot fits our model exactly (the layout hash said so; this checks the bytes).
    fn check_snapshot(&self, s: &Snapshot) -> Result<(), Error> {
        let cfg = &self.cfg;
        let bad = |p: String| Error::Invalid {
            what: "payload",
            problem: p,
        };
        if s.kv.n_swa != cfg.n_swa || s.logits.len() != cfg.n_vocab {
            return Err(bad("window or vocabulary differ from the model's".into()));
        }
        if s.tokens.iter().any(|&t| t as usize >= cfg.n_vocab) {
            return Err(bad("a token id outside the vocabulary".into()));
        }
        s.kv.check(cfg).map_err(bad)?;
        for (il, l) in s.kv.layers.iter().enumerate() {
            let r = cfg.ratio(il);
            let comp = l.comp.len() / cfg.head_dim;
            if comp != s.tokens.len().checked_div(r).unwrap_or(0) {
                return Err(bad(format!("layer {il}: compressed rows do not match")));
            }
        }
        Ok(())
    }

    /// Reads the tool map of an indexed file (checked by its CRC).
    pub fn read_tools(&self, name: &str) -> Result<Vec<ToolEntry>, Error> {
        let path = self.dir.join(name);
        let file = File::open(&path).map_err(Error::path_io("opening", &path))?;
        let size = file
            .metadata()
            .map_err(Error::path_io("reading", &path))?
            .len();
        let mut r = BufReader::new(file);
        let h = read_prefix(&mut r, name, size)?;
        std::io::copy(&mut (&mut r).take(h.text_bytes), &mut std::io::sink())
            .map_err(Error::path_io("reading", &path))?;
        format::read_tools(&mut r, &h, self.opts.max_tool_entries)
    }

    /// Stores a checkpoint: checks its size against the budget, evicts to make room, writes
    /// it crash-safely, then evicts again if other writers grew the directory meanwhile (never
    /// the new file unless it alone exceeds the budget).
    pub fn store(&mut self, req: &StoreRequest<'_>) -> Result<(StoreOutcome, Vec<Notice>), Error> {
        if req.snapshot.tokens.len() < self.opts.min_tokens.max(1) {
            return Ok((StoreOutcome::TooSmall, Vec::new()));
        }
        let now = now_unix();
        let meta = FileMeta {
            reason: req.reason,
            key_kind: req.key_kind,
            model: self.stamp,
            ctx: u32::try_from(self.ctx).unwrap_or(u32::MAX),
            now,
            text: req.text,
            tools: req.tools,
        };
        let (plan, _, _) = format::plan(&meta, req.snapshot)?;
        let bytes = plan.file_bytes().unwrap_or(u64::MAX);
        if bytes as f64 * SIZE_SLACK > self.opts.budget_bytes as f64 {
            return Ok((StoreOutcome::TooLarge { bytes }, Vec::new()));
        }
        let name = format!("{}.kv", hex(&plan.key_sha1));
        let mut notices = self.rescan()?;
        if let Some(e) = self.entries.get(&name) {
            let h = &e.header;
            if e.usable
                && h.tokens == plan.tokens
                && h.tool_crc == plan.tool_crc
                && h.tool_bytes == plan.tool_bytes
                && h.model == plan.model
            {
                let _ = write_stats(&e.path, h.hits, now);
                return Ok((StoreOutcome::Unchanged { name }, notices));
            }
        }
        let replaced = self.entries.get(&name).map_or(0, |e| e.size);
        let room = self
            .opts
            .budget_bytes
            .saturating_sub(bytes)
            .saturating_add(replaced);
        notices.extend(self.evict_to(room, Some(&name)));
        let path = self.dir.join(&name);
        let header = self.write_atomic(&path, &meta, req.snapshot)?;
        let mtime = fs::metadata(&path).and_then(|m| m.modified()).ok();
        self.entries.insert(
            name.clone(),
            Entry {
                path,
                header,
                size: bytes,
                usable: true,
                mtime,
            },
        );
        if let Ok(more) = self.rescan() {
            notices.extend(more);
        }
        notices.extend(self.evict_to(self.opts.budget_bytes, Some(&name)));
        Ok((StoreOutcome::Written { name, bytes }, notices))
    }

    fn write_atomic(
        &mut self,
        path: &Path,
        meta: &FileMeta<'_>,
        snap: &Snapshot,
    ) -> Result<Header, Error> {
        self.tmp_counter += 1;
        let tmp = path.with_file_name(format!(
            "{}.tmp.{}.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("kv"),
            std::process::id(),
            self.tmp_counter
        ));
        let result = (|| {
            let mut f = File::options()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(Error::path_io("creating", &tmp))?;
            let header = format::write_file(&mut f, meta, snap)?;
            f.sync_all().map_err(Error::path_io("syncing", &tmp))?;
            drop(f);
            fs::rename(&tmp, path).map_err(Error::path_io("renaming", &tmp))?;
            if let Ok(d) = File::open(&self.dir) {
                // Makes the rename durable; some filesystems cannot sync a directory.
                let _ = d.sync_all();
            }
            Ok(header)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Deletes files, lowest [`score`] first, until the total is at most `limit`; `protect` is
    /// deleted only if it alone exceeds `limit` (spec §5.6, commit d4f3133).
    pub fn evict_to(&mut self, limit: u64, protect: Option<&str>) -> Vec<Notice> {
        let now = now_unix();
        let mut notices = Vec::new();
        while self.total_bytes() > limit {
            let protect_ok = protect.is_some_and(|p| {
                self.entries
                    .get(p)
                    .is_some_and(|e| e.size <= self.opts.budget_bytes)
            });
            let victim = self
                .entries
                .iter()
                .filter(|(n, _)| !(protect_ok && Some(n.as_str()) == protect))
                .min_by(|a, b| {
                    let (sa, sb) = (
                        score(&a.1.header, a.1.size, now),
                        score(&b.1.header, b.1.size, now),
                    );
                    sa.total_cmp(&sb)
                        .then(a.1.header.last_used.cmp(&b.1.header.last_used))
                })
                .map(|(n, e)| (n.clone(), e.path.clone()));
            let Some((name, path)) = victim else { break };
            self.entries.remove(&name);
            match fs::remove_file(&path) {
                Ok(()) => self.evictions += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => notices.push(Notice {
                    path,
                    kind: NoticeKind::RemoveFailed,
                    reason: format!("evicting under the budget: {e}"),
                }),
            }
        }
        notices
    }

    /// Deletes the file `name` (a checkpoint superseded by a newer one of the same session).
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(e) = self.entries.remove(name) else {
            return false;
        };
        fs::remove_file(&e.path).is_ok()
    }
}

/// The eviction score of a file (spec §5.6): `(effective_hits + 1) · tokens / size`, hits
/// halving every 6 h since the last use and counting as 0 below 0.01. Lowest goes first.
pub fn score(h: &Header, size: u64, now: u64) -> f64 {
    let age = now.saturating_sub(h.last_used) as f64;
    let mut hits = h.hits as f64 * (-age / HIT_HALF_LIFE_S).exp2();
    if hits < 0.01 {
        hits = 0.0;
    }
    (hits + 1.0) * h.tokens as f64 / size.max(1) as f64
}

/// Reads and checks the prefix of `path` (named `name`, `size` bytes).
fn read_header(path: &Path, name: &str, size: u64) -> Result<Header, Error> {
    let mut f = File::open(path).map_err(Error::path_io("opening", path))?;
    read_prefix(&mut f, name, size)
}

fn read_prefix(r: &mut impl Read, name: &str, size: u64) -> Result<Header, Error> {
    if size < PREFIX_BYTES as u64 {
        return Err(Error::Truncated {
            what: "file",
            need: PREFIX_BYTES as u64,
            have: size,
        });
    }
    let mut b = [0u8; PREFIX_BYTES];
    r.read_exact(&mut b).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Truncated {
                what: "file",
                need: PREFIX_BYTES as u64,
                have: size,
            }
        } else {
            Error::io("reading the header")(e)
        }
    })?;
    let h = Header::decode(&b)?;
    h.check_file_size(size)?;
    if format!("{}.kv", hex(&h.key_sha1)) != name {
        return Err(Error::Invalid {
            what: "file name",
            problem: "does not match the SHA1 of its key text".into(),
        });
    }
    Ok(h)
}

/// Rewrites the stats bytes of `path` in place.
fn write_stats(path: &Path, hits: u32, last_used: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = File::options().write(true).open(path)?;
    f.seek(SeekFrom::Start(HEADER_BYTES as u64))?;
    f.write_all(&encode_stats(hits, last_used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tokens: u32, hits: u32, last_used: u64) -> Header {
        let mut b = [0u8; PREFIX_BYTES];
        b[..4].copy_from_slice(&format::MAGIC);
        let mut h = Header::decode(&{
            b[4..6].copy_from_slice(&format::VERSION.to_le_bytes());
            b[6..8].copy_from_slice(&(HEADER_BYTES as u16).to_le_bytes());
            b[32..36].copy_from_slice(&1u32.to_le_bytes());
            let crc = crc32fast::hash(&b[..124]);
            b[124..128].copy_from_slice(&crc.to_le_bytes());
            b
        })
        .expect("minimal header");
        h.tokens = tokens;
        h.hits = hits;
        h.last_used = last_used;
        h
    }

    #[test]
    fn eviction_score_weighs_tokens_per_byte_and_decaying_hits() {
        let now = 100_000_000;
        // Same size and tokens: the file with recent hits scores higher.
        let hot = score(&header(1000, 4, now), 1 << 20, now);
        let cold = score(&header(1000, 0, now), 1 << 20, now);
        assert!(hot > cold);
        // Hits halve every 6 h: 4 hits 12 h ago count as 1.
        let aged = score(&header(1000, 4, now - 12 * 3600), 1 << 20, now);
        assert!((aged / cold - 2.0).abs() < 1e-9, "{aged} {cold}");
        // Long forgotten hits count as none (below 0.01).
        let old = score(&header(1000, 4, now - 30 * 24 * 3600), 1 << 20, now);
        assert_eq!(old, cold);
        // More tokens per byte is worth more.
        assert!(score(&header(2000, 0, now), 1 << 20, now) > cold);
    }

    #[test]
    fn only_cache_and_temporary_names_are_ours() {
        let h = "0123456789abcdef0123456789abcdef01234567";
        assert!(is_cache_name(&format!("{h}.kv")));
        assert!(!is_cache_name(&format!("{}.kv", h.to_uppercase())));
        assert!(!is_cache_name("notes.kv"));
        assert_eq!(tmp_pid(&format!("{h}.kv.tmp.42.7")), Some(42));
        assert_eq!(tmp_pid("other.kv.tmp.42.7"), None);
    }
}
