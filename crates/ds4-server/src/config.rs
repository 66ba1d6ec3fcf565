//! Command-line flags of `ds4-server` (spec/serving.md §6.2) and the settings they resolve to,
//! the `--kv-*` disk cache (§5.5) and the tool memory (§5.7) included.

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
    /// Disk KV cache directory (created if missing; off when not given, spec §5.5).
    #[arg(long = "kv-disk-dir", value_name = "DIR")]
    pub kv_disk_dir: Option<PathBuf>,
    /// Disk KV cache budget in MiB: the directory's cache files never exceed it.
    #[arg(long = "kv-disk-space-mb", default_value_t = 4096, value_parser = positive)]
    pub kv_disk_space_mb: usize,
    /// No checkpoint of fewer tokens is stored or loaded.
    #[arg(long = "kv-cache-min-tokens", default_value_t = 512)]
    pub kv_cache_min_tokens: usize,
    /// Largest cold prompt whose stable prefix is saved (0: no cold saves; else ≥ min tokens).
    /// Disk hits longer than this are replaced by the live session's next checkpoint.
    #[arg(long = "kv-cache-cold-max-tokens", default_value_t = 30000)]
    pub kv_cache_cold_max_tokens: usize,
    /// Save the live session every this many tokens, rounded up to the alignment (0: never).
    #[arg(long = "kv-cache-continued-interval-tokens", default_value_t = 10000)]
    pub kv_cache_continued_interval_tokens: usize,
    /// Tokens a cold save leaves off the end of the prompt when it has no chat anchor.
    #[arg(long = "kv-cache-boundary-trim-tokens", default_value_t = 32)]
    pub kv_cache_boundary_trim_tokens: usize,
    /// Cold cuts and continued saves fall on multiples of this (0: no alignment).
    #[arg(long = "kv-cache-boundary-align-tokens", default_value_t = 2048)]
    pub kv_cache_boundary_align_tokens: usize,
    /// Refuse checkpoints written with other routed-expert quants (default: reuse them).
    #[arg(long = "kv-cache-reject-different-quant")]
    pub kv_cache_reject_different_quant: bool,
    /// Tool-call ids remembered with the exact DSML they were sampled as (spec §5.7).
    #[arg(long = "tool-memory-max-ids", default_value_t = 100_000, value_parser = positive)]
    pub tool_memory_max_ids: usize,
    /// Render earlier tool calls canonically, never as the sampled bytes.
    #[arg(long = "disable-exact-dsml-tool-replay")]
    pub disable_exact_dsml_tool_replay: bool,
    /// Test only: honour the `ds4_test_output` request field that forces the sampled tokens.
    #[cfg(feature = "test-hooks")]
    #[arg(long = "test-hooks")]
    pub test_hooks: bool,
    /// Test only: force the output of requests by the rules of FILE (implies --test-hooks).
    #[cfg(feature = "test-hooks")]
    #[arg(long = "test-script", value_name = "FILE")]
    pub test_script: Option<PathBuf>,
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
    /// `--kv-cache-cold-max-tokens` below `--kv-cache-min-tokens` (spec §5.5).
    #[error(
        "--kv-cache-cold-max-tokens {cold} is below --kv-cache-min-tokens {min}: pass 0 to \
         disable cold saves, or a value of at least {min}"
    )]
    ColdBelowMin {
        /// The cold maximum.
        cold: usize,
        /// The minimum.
        min: usize,
    },
}

impl Args {
    /// Checks what clap cannot: the API key (spec §4.1 has none; ours must be usable).
    pub fn validate(&self) -> Result<(), ArgsError> {
        let (cold, min) = (self.kv_cache_cold_max_tokens, self.kv_cache_min_tokens);
        if cold != 0 && cold < min {
            return Err(ArgsError::ColdBelowMin { cold, min });
        }
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
    /// The disk KV cache, if `--kv-disk-dir` is given.
    pub kv_cache: Option<crate::kvcache::KvCacheConfig>,
    /// Tool-call ids remembered for exact DSML replay (0: replay off).
    pub tool_memory_max_ids: usize,
}

impl Default for ServerConfig {
    /// A 32768-token server without authentication, CORS or disk cache.
    fn default() -> Self {
        ServerConfig {
            ctx_tokens: 32768,
            default_max_tokens: 393216,
            api_key: None,
            cors: false,
            keepalive_ms: 5000,
            test_hooks: false,
            limits: RequestLimits::default(),
            kv_cache: None,
            tool_memory_max_ids: 100_000,
        }
    }
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
            test_hooks: args.test_hooks || args.test_script.is_some(),
            #[cfg(not(feature = "test-hooks"))]
            test_hooks: false,
            limits: RequestLimits::from_args(args),
            kv_cache: crate::kvcache::KvCacheConfig::from_args(args),
            tool_memory_max_ids: if args.disable_exact_dsml_tool_replay {
                0
            } else {
                args.tool_memory_max_ids
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["ds4-server"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("flags parse")
    }

    #[test]
    fn disk_cache_flags_default_to_ds4s_values() {
        let a = args(&["--kv-disk-dir", "/tmp/kv"]);
        let c = ServerConfig::from_args(&a)
            .kv_cache
            .expect("on with a directory");
        assert_eq!(
            c,
            crate::kvcache::KvCacheConfig::new(PathBuf::from("/tmp/kv"))
        );
        assert!(ServerConfig::from_args(&args(&[])).kv_cache.is_none());
        assert_eq!(ServerConfig::from_args(&a).tool_memory_max_ids, 100_000);
        let off = args(&["--disable-exact-dsml-tool-replay"]);
        assert_eq!(ServerConfig::from_args(&off).tool_memory_max_ids, 0);
    }

    #[test]
    fn cold_max_must_be_zero_or_at_least_min() {
        assert!(args(&["--kv-cache-cold-max-tokens", "100"])
            .validate()
            .is_err());
        assert!(args(&["--kv-cache-cold-max-tokens", "0"])
            .validate()
            .is_ok());
        let ok = [
            "--kv-cache-cold-max-tokens",
            "100",
            "--kv-cache-min-tokens",
            "50",
        ];
        assert!(args(&ok).validate().is_ok());
        assert!(Args::try_parse_from(["ds4-server", "--kv-disk-space-mb", "0"]).is_err());
    }
}
