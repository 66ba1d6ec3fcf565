//! `--trace FILE` (spec/serving.md §4.11): per request, the rendered prompt, the cache
//! decision, the sampled pieces and the finish, written unbuffered. This is the only place
//! request content is written; logs never carry it.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use crate::scheduler::Usage;

/// An open trace file.
pub struct Trace {
    file: Mutex<std::fs::File>,
}

impl Trace {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Trace {
            file: Mutex::new(std::fs::File::create(path)?),
        })
    }

    fn line(&self, value: serde_json::Value) {
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "{value}");
        }
    }

    /// A raw request body.
    pub fn body(&self, path: &str, body: &[u8]) {
        self.line(serde_json::json!({"event": "body", "path": path, "body": String::from_utf8_lossy(body)}));
    }

    /// The status a request was answered with (for a stream: when its headers went out).
    pub fn status(&self, method: &str, path: &str, status: u16) {
        self.line(serde_json::json!({"event": "status", "method": method, "path": path, "status": status}));
    }

    /// The prompt and the cache decision.
    pub fn request(&self, job: u64, prompt: &str, decision: &str, cached: usize, tokens: usize) {
        self.line(
            serde_json::json!({"event": "request", "job": job, "prompt": prompt,
            "cache": decision, "cached_tokens": cached, "prompt_tokens": tokens}),
        );
    }

    /// One sampled piece.
    pub fn piece(&self, job: u64, id: u32, text: &str) {
        self.line(serde_json::json!({"event": "piece", "job": job, "id": id, "text": text}));
    }

    /// The finish.
    pub fn finish(&self, job: u64, finish: &str, usage: &Usage) {
        self.line(
            serde_json::json!({"event": "finish", "job": job, "finish": finish,
            "prompt_tokens": usage.prompt_tokens, "cached_tokens": usage.cached_tokens,
            "completion_tokens": usage.completion_tokens}),
        );
    }
}
