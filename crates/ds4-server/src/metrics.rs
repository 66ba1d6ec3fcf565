//! `GET /metrics` in Prometheus text format: requests, tokens in and out, prefill and decode
//! throughput, queue depth, cache hits and the disk KV cache (hits, misses, writes, bytes,
//! evictions). Plain atomics; no content.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::scheduler::Usage;

/// Process-wide counters.
#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; 5],
    errors: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cache_hits: AtomicU64,
    generations: AtomicU64,
    kv_hits: AtomicU64,
    kv_misses: AtomicU64,
    kv_writes: AtomicU64,
    kv_write_bytes: AtomicU64,
    kv_read_bytes: AtomicU64,
    kv_evictions: AtomicU64,
    kv_errors: AtomicU64,
    kv_disk_bytes: AtomicU64,
    /// (prefill tokens, prefill secs, decode tokens, decode secs) totals.
    timing: Mutex<(f64, f64, f64, f64)>,
}

/// Endpoint labels, index into `requests`.
pub const ENDPOINTS: [&str; 5] = ["chat", "completions", "responses", "anthropic", "other"];

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Metrics {
    /// Counts one request to `endpoint` (a name of [`ENDPOINTS`]).
    pub fn record_request(&self, endpoint: &str) {
        let i = ENDPOINTS.iter().position(|e| *e == endpoint).unwrap_or(4);
        if let Some(c) = self.requests.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one 4xx/5xx reply.
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds one finished generation.
    pub fn record_generation(&self, usage: &Usage, prefill_secs: f64, decode_secs: f64) {
        self.generations.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(count(usage.prompt_tokens), Ordering::Relaxed);
        self.cached_tokens
            .fetch_add(count(usage.cached_tokens), Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(count(usage.completion_tokens), Ordering::Relaxed);
        if usage.cached_tokens > 0 {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut t) = self.timing.lock() {
            t.0 += usage.written_tokens() as f64;
            t.1 += prefill_secs;
            t.2 += usage.completion_tokens as f64;
            t.3 += decode_secs;
        }
    }

    /// A checkpoint loaded from disk (`bytes` read).
    pub fn record_kv_hit(&self, bytes: u64) {
        self.kv_hits.fetch_add(1, Ordering::Relaxed);
        self.kv_read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A disk lookup that found nothing.
    pub fn record_kv_miss(&self) {
        self.kv_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// A checkpoint written (`bytes`).
    pub fn record_kv_write(&self, bytes: u64) {
        self.kv_writes.fetch_add(1, Ordering::Relaxed);
        self.kv_write_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A checkpoint that could not be written.
    pub fn record_kv_error(&self) {
        self.kv_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` files evicted under the budget.
    pub fn record_kv_evictions(&self, n: u64) {
        self.kv_evictions.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes the cache directory holds now.
    pub fn set_kv_disk_bytes(&self, bytes: u64) {
        self.kv_disk_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The Prometheus exposition text; `queue_depth` is read from the scheduler.
    pub fn render(&self, queue_depth: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP ds4_requests_total HTTP requests by endpoint.");
        let _ = writeln!(s, "# TYPE ds4_requests_total counter");
        for (name, c) in ENDPOINTS.iter().zip(&self.requests) {
            let _ = writeln!(
                s,
                "ds4_requests_total{{endpoint=\"{name}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let simple = [
            (
                "ds4_request_errors_total",
                "counter",
                "Requests answered with an error status.",
                self.errors.load(Ordering::Relaxed),
            ),
            (
                "ds4_generations_total",
                "counter",
                "Finished generations.",
                self.generations.load(Ordering::Relaxed),
            ),
            (
                "ds4_prompt_tokens_total",
                "counter",
                "Prompt tokens (tokens in).",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "ds4_cached_tokens_total",
                "counter",
                "Prompt tokens reused from the live session or a disk checkpoint.",
                self.cached_tokens.load(Ordering::Relaxed),
            ),
            (
                "ds4_completion_tokens_total",
                "counter",
                "Generated tokens (tokens out).",
                self.completion_tokens.load(Ordering::Relaxed),
            ),
            (
                "ds4_cache_hits_total",
                "counter",
                "Generations that reused a live or disk prefix.",
                self.cache_hits.load(Ordering::Relaxed),
            ),
            (
                "ds4_kv_disk_hits_total",
                "counter",
                "Requests that loaded a disk KV checkpoint.",
                self.kv_hits.load(Ordering::Relaxed),
            ),
            (
                "ds4_kv_disk_misses_total",
                "counter",
                "Disk KV lookups that found no checkpoint.",
                self.kv_misses.load(Ordering::Relaxed),
            ),
            (
                "ds4_kv_disk_writes_total",
                "counter",
                "Disk KV checkpoints written.",
                self.kv_writes.load(Ordering::Relaxed),
            ),
            (
                "ds4_kv_disk_write_bytes_total",
                "counter",
                "Bytes of disk KV checkpoints written.",
                self.kv_write_bytes.load(Ordering::Relaxed),
            ),
            (
                "ds4_kv_disk_read_bytes_total",
                "counter",
                "Bytes of disk KV checkpoints loaded.",
                self.kv_read_bytes.load(Ordering::Relaxed),
            ),
            (
                "ds4_kv_disk_evictions_total",
                "counter",
                "Disk KV checkpoints deleted to stay under --kv-disk-space-mb.",
                self.kv_evictions.load(Ordering::Relaxed),
            ),
            (
                "ds4_kv_disk_errors_total",
                "counter",
                "Disk KV checkpoints that could not be written.",
                self.kv_errors.load(Ordering::Relaxed),
            ),
            (
                "ds4_kv_disk_bytes",
                "gauge",
                "Bytes the disk KV cache directory holds.",
                self.kv_disk_bytes.load(Ordering::Relaxed),
            ),
            (
                "ds4_queue_depth",
                "gauge",
                "Requests waiting or running.",
                count(queue_depth),
            ),
        ];
        for (name, kind, help, v) in simple {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let (pt, ps, dt, ds) = self.timing.lock().map(|t| *t).unwrap_or_default();
        let rate = |n: f64, secs: f64| if secs > 0.0 { n / secs } else { 0.0 };
        let _ = writeln!(s, "# HELP ds4_prefill_tokens_per_second Prefill throughput over all requests.\n# TYPE ds4_prefill_tokens_per_second gauge\nds4_prefill_tokens_per_second {:.3}", rate(pt, ps));
        let _ = writeln!(s, "# HELP ds4_decode_tokens_per_second Decode throughput over all requests.\n# TYPE ds4_decode_tokens_per_second gauge\nds4_decode_tokens_per_second {:.3}", rate(dt, ds));
        s
    }
}
