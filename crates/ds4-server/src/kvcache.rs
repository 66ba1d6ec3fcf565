//! The server's side of the disk KV cache (spec/serving.md §5.2 step 8–9, §5.3, §5.5): the
//! `--kv-*` settings, when a checkpoint is due (cold cut, continued interval, evict, shutdown),
//! and the glue between the engine's live session, [`ds4::kvstore::KvDir`], the tool memory,
//! the log and `/metrics`. Runs on the engine thread only; the scheduler calls it.

use std::path::PathBuf;
use std::sync::Arc;

use ds4::engine::Engine;
use ds4::kvstore::{
    model_stamp, DirOptions, KeyKind, KvDir, Loaded, Notice, SaveReason, StoreOutcome, StoreRequest,
};

use crate::metrics::Metrics;
use crate::tool_memory::ToolMemory;

/// The disk cache settings (`--kv-*`, spec §5.5 defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// `--kv-disk-dir`.
    pub dir: PathBuf,
    /// `--kv-disk-space-mb`.
    pub space_mb: usize,
    /// `--kv-cache-min-tokens`.
    pub min_tokens: usize,
    /// `--kv-cache-cold-max-tokens` (0: no cold saves).
    pub cold_max_tokens: usize,
    /// `--kv-cache-continued-interval-tokens` (0: no continued saves).
    pub continued_interval_tokens: usize,
    /// `--kv-cache-boundary-trim-tokens`.
    pub boundary_trim_tokens: usize,
    /// `--kv-cache-boundary-align-tokens` (0: no alignment).
    pub boundary_align_tokens: usize,
    /// `--kv-cache-reject-different-quant`.
    pub reject_different_quant: bool,
}

impl KvCacheConfig {
    /// ds4's defaults for a cache in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        KvCacheConfig {
            dir,
            space_mb: 4096,
            min_tokens: 512,
            cold_max_tokens: 30000,
            continued_interval_tokens: 10000,
            boundary_trim_tokens: 32,
            boundary_align_tokens: 2048,
            reject_different_quant: false,
        }
    }

    /// The settings `args` ask for (None without `--kv-disk-dir`).
    pub fn from_args(args: &crate::Args) -> Option<Self> {
        Some(KvCacheConfig {
            dir: args.kv_disk_dir.clone()?,
            space_mb: args.kv_disk_space_mb,
            min_tokens: args.kv_cache_min_tokens,
            cold_max_tokens: args.kv_cache_cold_max_tokens,
            continued_interval_tokens: args.kv_cache_continued_interval_tokens,
            boundary_trim_tokens: args.kv_cache_boundary_trim_tokens,
            boundary_align_tokens: args.kv_cache_boundary_align_tokens,
            reject_different_quant: args.kv_cache_reject_different_quant,
        })
    }

    /// Positions of continued saves are multiples of this: `ceil(interval/align)·align`.
    pub fn continued_step(&self) -> Option<usize> {
        let (i, a) = (self.continued_interval_tokens, self.boundary_align_tokens);
        match (i, a) {
            (0, _) => None,
            (i, 0) => Some(i),
            (i, a) => Some(i.div_ceil(a) * a),
        }
    }

    /// Where a cold prompt of `tokens` is checkpointed (spec §5.5 "cold", commit f074c7b): the
    /// last `<｜User｜>` before the first `<｜Assistant｜>` (keeps system prompt and tool
    /// schemas, leaves out the task), else `align_down(len − trim, align)`, else the whole
    /// prompt. None when the prompt is outside `min..=cold_max`.
    pub fn cold_cut(&self, tokens: &[u32], user: u32, assistant: u32) -> Option<usize> {
        let len = tokens.len();
        let min = self.min_tokens.max(1);
        if self.cold_max_tokens == 0 || len < min || len > self.cold_max_tokens {
            return None;
        }
        let anchor = tokens
            .iter()
            .position(|&t| t == assistant)
            .and_then(|a| tokens[..a].iter().rposition(|&t| t == user));
        if let Some(a) = anchor.filter(|&a| a >= min) {
            return Some(a);
        }
        let trim = self.boundary_trim_tokens;
        let cut = len.saturating_sub(trim);
        let cut = match self.boundary_align_tokens {
            0 => cut,
            a => cut / a * a,
        };
        if cut >= min && len > min + trim {
            Some(cut)
        } else {
            Some(len)
        }
    }
}

/// The disk cache of a running server.
pub struct DiskCache {
    dir: KvDir,
    cfg: KvCacheConfig,
    metrics: Arc<Metrics>,
    tools: Option<Arc<ToolMemory>>,
    /// Position of the live session's last checkpoint (continued saves go beyond it).
    pub last_store: usize,
    /// A loaded file longer than `cold_max_tokens`: the live session's next checkpoint
    /// replaces it (ds4 unlinks it at load, losing it on a crash; we keep it until then).
    pub superseded: Option<String>,
    evictions_seen: u64,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.cfg.dir)
            .field("last_store", &self.last_store)
            .finish_non_exhaustive()
    }
}

fn log_notices(notices: &[Notice]) {
    for n in notices {
        tracing::warn!("{n}");
    }
}

impl DiskCache {
    /// Opens the cache for `engine`'s model. A directory that cannot be used is one warning and
    /// no cache: the server starts anyway.
    pub fn open(
        cfg: KvCacheConfig,
        engine: &Engine,
        metrics: Arc<Metrics>,
        tools: Option<Arc<ToolMemory>>,
    ) -> Option<Self> {
        let stamp = model_stamp(&engine.model, engine.precision());
        let opts = DirOptions {
            budget_bytes: (cfg.space_mb as u64).saturating_mul(1 << 20),
            min_tokens: cfg.min_tokens,
            reject_different_quant: cfg.reject_different_quant,
            max_tool_entries: tools.as_ref().map_or(0, |t| t.max_ids().saturating_mul(4)),
        };
        let (dir, notices) =
            match KvDir::open(&cfg.dir, stamp, &engine.model.config, engine.ctx(), opts) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(
                        "kv cache {}: disabled: {e}; serving without a disk cache",
                        cfg.dir.display()
                    );
                    return None;
                }
            };
        log_notices(&notices);
        let mut c = DiskCache {
            evictions_seen: dir.evictions,
            dir,
            cfg,
            metrics,
            tools,
            last_store: 0,
            superseded: None,
        };
        c.metrics.record_kv_evictions(c.evictions_seen);
        c.load_tool_maps();
        c.report();
        tracing::info!(
            dir = %c.cfg.dir.display(),
            files = c.dir.entries().len(),
            bytes = c.dir.total_bytes(),
            budget_mb = c.cfg.space_mb,
            "kv cache open"
        );
        Some(c)
    }

    /// The settings.
    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }

    /// Loads the tool maps of files indexed since the last call into the tool memory.
    fn load_tool_maps(&mut self) {
        let names = self.dir.take_new_tool_files();
        let Some(tools) = &self.tools else { return };
        for name in names {
            match self.dir.read_tools(&name) {
                Ok(entries) => tools.load(&entries),
                Err(e) => tracing::warn!("kv cache {name}: tool map not loaded: {e}"),
            }
        }
    }

    /// Counts evictions and the directory size in `/metrics`.
    fn report(&mut self) {
        let ev = self.dir.evictions;
        self.metrics
            .record_kv_evictions(ev.saturating_sub(self.evictions_seen));
        self.evictions_seen = ev;
        self.metrics.set_kv_disk_bytes(self.dir.total_bytes());
    }

    /// The longest checkpoint whose key text is a prefix of `text` (spec §5.3), loaded and
    /// validated; bad files on the way are removed with one warning each.
    pub fn lookup(&mut self, text: &str) -> Option<Loaded> {
        let (hit, notices) = self.dir.lookup(text);
        log_notices(&notices);
        self.load_tool_maps();
        self.report();
        match hit {
            Some(l) => {
                self.metrics.record_kv_hit(l.bytes);
                if let Some(t) = &self.tools {
                    t.load(&l.tools);
                }
                Some(l)
            }
            None => {
                self.metrics.record_kv_miss();
                None
            }
        }
    }

    /// Stores the live session of `engine` with `reason`. The key is `visible` (a client
    /// transcript bound to the live frontier, spec §5.4 ext bits) or the decoded tokens; with
    /// `prefix_of`, a decoded key that is not a byte prefix of that prompt text (a cut inside
    /// a character) is not stored. True if the checkpoint is on disk afterwards.
    pub fn store(
        &mut self,
        engine: &Engine,
        visible: Option<(&str, KeyKind)>,
        reason: SaveReason,
        prefix_of: Option<&str>,
    ) -> bool {
        let tokens = engine.session_tokens().len();
        if tokens == 0 || tokens < self.cfg.min_tokens {
            return false;
        }
        let (text, key_kind) = match visible {
            Some((v, k)) => (v.to_string(), k),
            None => (
                engine.tokenizer.decode(engine.session_tokens()),
                KeyKind::Tokens,
            ),
        };
        if prefix_of.is_some_and(|p| !p.starts_with(&text)) {
            tracing::debug!(
                tokens,
                "kv cache: the cut is not a text boundary; not stored"
            );
            return false;
        }
        let snapshot = match engine.snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("kv cache: snapshot of the live session failed: {e}");
                return false;
            }
        };
        let tools = self
            .tools
            .as_ref()
            .map(|t| t.entries_in(&text))
            .unwrap_or_default();
        let t0 = std::time::Instant::now();
        let r = self.dir.store(&StoreRequest {
            text: &text,
            key_kind,
            reason,
            snapshot: &snapshot,
            tools: &tools,
        });
        let stored = match r {
            Ok((outcome, notices)) => {
                log_notices(&notices);
                match outcome {
                    StoreOutcome::Written { name, bytes } => {
                        self.metrics.record_kv_write(bytes);
                        tracing::info!(
                            reason = reason.name(),
                            tokens,
                            bytes,
                            tool_ids = tools.len(),
                            ms = t0.elapsed().as_millis() as u64,
                            file = name.as_str(),
                            "kv cache stored"
                        );
                        self.retire_superseded(&name);
                        true
                    }
                    StoreOutcome::Unchanged { name } => {
                        self.retire_superseded(&name);
                        true
                    }
                    StoreOutcome::TooSmall => false,
                    StoreOutcome::TooLarge { bytes } => {
                        tracing::warn!(
                            reason = reason.name(),
                            tokens,
                            bytes,
                            "kv cache: checkpoint exceeds --kv-disk-space-mb {}; not stored",
                            self.cfg.space_mb
                        );
                        false
                    }
                }
            }
            Err(e) => {
                self.metrics.record_kv_error();
                tracing::warn!(
                    reason = reason.name(),
                    tokens,
                    "kv cache: store failed: {e}"
                );
                false
            }
        };
        if stored {
            self.last_store = tokens;
        }
        self.report();
        stored
    }

    fn retire_superseded(&mut self, stored: &str) {
        if let Some(old) = self.superseded.take() {
            if old != stored && self.dir.remove(&old) {
                tracing::debug!(
                    file = old.as_str(),
                    "kv cache: superseded checkpoint removed"
                );
            }
        }
    }

    /// Prefill positions where a checkpoint may be due, beyond `cached` and before `len`:
    /// `cold` and the continued multiples.
    pub fn breaks(&self, cached: usize, len: usize, cold: Option<usize>) -> Vec<usize> {
        let mut b: Vec<usize> = cold.into_iter().filter(|&c| c > cached).collect();
        if let Some(step) = self.cfg.continued_step() {
            let mut p = (cached / step + 1) * step;
            while p < len {
                b.push(p);
                p += step;
            }
        }
        b
    }

    /// Whether a continued checkpoint is due at `pos` (spec §5.5: a multiple of the step, at
    /// least min tokens, beyond the last store).
    pub fn continued_due(&self, pos: usize) -> bool {
        self.cfg.continued_step().is_some_and(|s| {
            pos > 0 && pos.is_multiple_of(s) && pos >= self.cfg.min_tokens && pos > self.last_store
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: usize, cold: usize, trim: usize, align: usize) -> KvCacheConfig {
        KvCacheConfig {
            min_tokens: min,
            cold_max_tokens: cold,
            boundary_trim_tokens: trim,
            boundary_align_tokens: align,
            ..KvCacheConfig::new(PathBuf::new())
        }
    }

    const U: u32 = 1;
    const A: u32 = 2;

    #[test]
    fn cold_cut_prefers_the_chat_anchor_then_aligned_trim() {
        // system (10 tokens), <User> task, <Assistant>
        let mut t = vec![9u32; 10];
        t.push(U);
        t.extend([9; 20]);
        t.push(A);
        assert_eq!(cfg(4, 100, 2, 0).cold_cut(&t, U, A), Some(10));
        // Anchor below min: align_down(len − trim, align).
        assert_eq!(cfg(12, 100, 2, 8).cold_cut(&t, U, A), Some(24));
        // Too short to trim: the whole prompt.
        assert_eq!(cfg(30, 100, 2, 8).cold_cut(&t, U, A), Some(32));
        // Outside min..=cold_max, or cold saves off.
        assert_eq!(cfg(40, 100, 2, 8).cold_cut(&t, U, A), None);
        assert_eq!(cfg(4, 20, 2, 8).cold_cut(&t, U, A), None);
        assert_eq!(cfg(4, 0, 2, 8).cold_cut(&t, U, A), None);
        // The anchor is the last <User> before the first <Assistant>.
        let mut t2 = vec![9u32; 6];
        t2.extend([U, 9, 9, 9, 9, 9, U, 9, A, 9, U, 9, A]);
        assert_eq!(cfg(4, 100, 2, 0).cold_cut(&t2, U, A), Some(12));
    }

    #[test]
    fn continued_step_rounds_the_interval_up_to_the_alignment() {
        let c = |i, a| KvCacheConfig {
            continued_interval_tokens: i,
            boundary_align_tokens: a,
            ..KvCacheConfig::new(PathBuf::new())
        };
        assert_eq!(c(10000, 2048).continued_step(), Some(10240));
        assert_eq!(c(10000, 0).continued_step(), Some(10000));
        assert_eq!(c(0, 2048).continued_step(), None);
    }
}
