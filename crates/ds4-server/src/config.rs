//! Command-line flags of `ds4-server` (spec/serving.md §6.2) and the settings they resolve to.
//! The `--kv-*` disk-cache flags are accepted and validated, but the disk cache itself is not
//! implemented yet (spec §5.3–§5.6): only the in-memory live session is reused.

use std::path::PathBuf;

use clap::Parser;

/// `ds4-server` flags.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "ds4-server",
    version,
    about = "OpenAI and Anthropic compatible server for DeepSeek V4 Flash"
)]
pub struct Args {
    /// Model GGUF file.
    #[arg(short = 'm', long = "model", default_value = "ds4flash.gguf")]
    pub model: PathBuf,
    /// Refuse to serve unless the model file has this SHA-256 (hex; a split GGUF: one per
    /// shard, comma-separated). The hash is remembered in `<file>.sha256` by size and mtime.
    #[arg(long = "model-sha256", value_delimiter = ',', value_name = "HEX")]
    pub model_sha256: Vec<String>,
    /// Context allocated at startup, in tokens.
    #[arg(short = 'c', long = "ctx", default_value_t = 32768, value_parser = positive)]
    pub ctx: usize,
    /// Default max output tokens when the client omits a limit.
    #[arg(short = 'n', long = "tokens", default_value_t = 393216, value_parser = positive)]
    pub tokens: usize,
    /// Worker threads (default: all cores, or env DS4_THREADS).
    #[arg(short = 't', long = "threads", env = "DS4_THREADS", value_parser = positive)]
    pub threads: Option<usize>,
    /// Bind address (IPv4 literal or `localhost`).
    #[arg(long = "host", default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one).
    #[arg(long = "port", default_value_t = 8000)]
    pub port: u16,
    /// Send CORS headers and answer preflight requests.
    #[arg(long = "cors")]
    pub cors: bool,
    /// Write a per-request trace (request content included) to FILE.
    #[arg(long = "trace")]
    pub trace: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` or `x-api-key: KEY` on every endpoint but /health.
    #[arg(long = "api-key", env = "DS4_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// f32 everywhere, no FP8/FP4 simulation.
    #[arg(long = "precise")]
    pub precise: bool,
    /// Run on the CPU backend (the default without a GPU).
    #[arg(long = "cpu", conflicts_with_all = ["cuda", "backend"])]
    pub cpu: bool,
    /// Run on CUDA device 0 (the default when a GPU is present).
    #[arg(long = "cuda", conflicts_with = "backend")]
    pub cuda: bool,
    /// Backend by name: `cpu` or `cuda`.
    #[arg(long = "backend", value_parser = ["cpu", "cuda"])]
    pub backend: Option<String>,
    /// Milliseconds between `: prefill` SSE comments during a long prefill (spec §4.10).
    #[arg(long = "keepalive-ms", default_value_t = 5000, value_parser = positive_u64)]
    pub keepalive_ms: u64,
    /// Most connections served at once; more wait in the listen backlog (default: the
    /// descriptor limit less a reserve, at most 1024).
    #[arg(long = "max-connections", value_parser = positive)]
    pub max_connections: Option<usize>,
    /// Seconds a connection may take to send a request's headers, counted from the connection
    /// opening or the previous response ending (so also the idle keep-alive timeout).
    #[arg(long = "header-timeout-s", default_value_t = 10, value_parser = positive_u64)]
    pub header_timeout_s: u64,
    /// Seconds a request may take to send its whole body.
    #[arg(long = "body-timeout-s", default_value_t = 30, value_parser = positive_u64)]
    pub body_timeout_s: u64,
    /// Seconds a response write may make no progress (a client that stops reading) before
    /// the connection is closed.
    #[arg(long = "write-timeout-s", default_value_t = 30, value_parser = positive_u64)]
    pub write_timeout_s: u64,
    /// Seconds a graceful shutdown waits for open connections before the process exits.
    #[arg(long = "shutdown-timeout-s", default_value_t = 5, value_parser = positive_u64)]
    pub shutdown_timeout_s: u64,
    /// Largest request body, in MiB (413 above it).
    #[arg(long = "max-body-mb", default_value_t = 64, value_parser = positive)]
    pub max_body_mb: usize,
    /// MiB of request bodies that may be read, parsed and tokenized at once; a large request
    /// waits for room (bodies under 64 KiB never wait).
    #[arg(long = "body-budget-mb", default_value_t = 256, value_parser = positive)]
    pub body_budget_mb: usize,
    /// Disk KV cache directory (accepted; disk cache not implemented yet).
    #[arg(long = "kv-disk-dir")]
    pub kv_disk_dir: Option<PathBuf>,
    /// Disk KV cache budget in MiB (accepted; not implemented yet).
    #[arg(long = "kv-disk-space-mb", value_parser = positive)]
    pub kv_disk_space_mb: Option<usize>,
    /// Smallest prompt worth a disk checkpoint (accepted; not implemented yet).
    #[arg(long = "kv-cache-min-tokens")]
    pub kv_cache_min_tokens: Option<usize>,
    /// Largest cold prompt saved (accepted; not implemented yet).
    #[arg(long = "kv-cache-cold-max-tokens")]
    pub kv_cache_cold_max_tokens: Option<usize>,
    /// Continued-save interval (accepted; not implemented yet).
    #[arg(long = "kv-cache-continued-interval-tokens")]
    pub kv_cache_continued_interval_tokens: Option<usize>,
    /// Boundary trim (accepted; not implemented yet).
    #[arg(long = "kv-cache-boundary-trim-tokens")]
    pub kv_cache_boundary_trim_tokens: Option<usize>,
    /// Boundary alignment (accepted; not implemented yet).
    #[arg(long = "kv-cache-boundary-align-tokens")]
    pub kv_cache_boundary_align_tokens: Option<usize>,
    /// Refuse checkpoints written with another expert quant (accepted; not implemented yet).
    #[arg(long = "kv-cache-reject-different-quant")]
    pub kv_cache_reject_different_quant: bool,
    /// Test only: honour the `ds4_test_output` request field that forces the sampled tokens.
    #[cfg(feature = "test-hooks")]
    #[arg(long = "test-hooks")]
    pub test_hooks: bool,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => Err("must be > 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => Err("must be > 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Why the flags cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// `--api-key ""`, `DS4_API_KEY=` or a key of spaces: it would either turn authentication
    /// off without a word or never match (HTTP trims header whitespace).
    #[error(
        "the API key (--api-key or DS4_API_KEY) is {problem}; pass a non-empty key without \
         surrounding whitespace, or leave both unset to serve without authentication"
    )]
    BadApiKey {
        /// "empty", "only whitespace", …
        problem: &'static str,
    },
}

impl Args {
    /// Checks what clap cannot: the API key (spec §4.1 has none; ours must be usable).
    pub fn validate(&self) -> Result<(), ArgsError> {
        let Some(key) = self.api_key.as_deref() else {
            return Ok(());
        };
        let problem = if key.is_empty() {
            "empty"
        } else if key.trim().is_empty() {
            "only whitespace"
        } else if key.trim() != key {
            "padded with whitespace"
        } else if key.chars().any(char::is_control) {
            "holding control characters"
        } else {
            return Ok(());
        };
        Err(ArgsError::BadApiKey { problem })
    }
}

/// Limits on what one request may cost before it is refused or waits (item 2 of the
/// hardening issue). Connection-level limits live in [`crate::serve::ConnLimits`].
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Bytes of bodies admitted at once (read, parsed and tokenized).
    pub body_budget_bytes: usize,
    /// Time to receive a whole body (408 after).
    pub body_timeout: std::time::Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_body_bytes: crate::request::MAX_BODY_BYTES,
            body_budget_bytes: 256 << 20,
            body_timeout: std::time::Duration::from_secs(30),
        }
    }
}

impl RequestLimits {
    /// The limits `args` ask for.
    pub fn from_args(args: &Args) -> Self {
        RequestLimits {
            max_body_bytes: args.max_body_mb.saturating_mul(1 << 20),
            body_budget_bytes: args.body_budget_mb.saturating_mul(1 << 20),
            body_timeout: std::time::Duration::from_secs(args.body_timeout_s),
        }
    }
}

/// Settings the HTTP layer needs (what `router()` is built from).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Context size in tokens.
    pub ctx_tokens: usize,
    /// Default output limit.
    pub default_max_tokens: usize,
    /// Expected API key, if any.
    pub api_key: Option<String>,
    /// CORS on.
    pub cors: bool,
    /// Keepalive period during prefill.
    pub keepalive_ms: u64,
    /// Whether `ds4_test_output` is honoured (test-hooks builds only).
    pub test_hooks: bool,
    /// Body size, budget and deadline.
    pub limits: RequestLimits,
}

impl ServerConfig {
    /// The settings `args` ask for.
    pub fn from_args(args: &Args) -> Self {
        ServerConfig {
            ctx_tokens: args.ctx,
            default_max_tokens: args.tokens,
            // `Args::validate` refused empty keys; none is ever dropped silently here.
            api_key: args.api_key.clone(),
            cors: args.cors,
            keepalive_ms: args.keepalive_ms,
            #[cfg(feature = "test-hooks")]
            test_hooks: args.test_hooks,
            #[cfg(not(feature = "test-hooks"))]
            test_hooks: false,
            limits: RequestLimits::from_args(args),
        }
    }
}
