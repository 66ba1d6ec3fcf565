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
    /// Run on the CPU backend (the default).
    #[arg(long = "cpu", conflicts_with_all = ["cuda", "backend"])]
    pub cpu: bool,
    /// Run on CUDA device 0 (experimental: weight matmuls on the GPU, the rest on the host).
    #[arg(long = "cuda", conflicts_with = "backend")]
    pub cuda: bool,
    /// Backend by name: `cpu` or `cuda`.
    #[arg(long = "backend", value_parser = ["cpu", "cuda"])]
    pub backend: Option<String>,
    /// Milliseconds between `: prefill` SSE comments during a long prefill (spec §4.10).
    #[arg(long = "keepalive-ms", default_value_t = 5000, value_parser = positive_u64)]
    pub keepalive_ms: u64,
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
}

impl ServerConfig {
    /// The settings `args` ask for.
    pub fn from_args(args: &Args) -> Self {
        ServerConfig {
            ctx_tokens: args.ctx,
            default_max_tokens: args.tokens,
            api_key: args.api_key.clone().filter(|k| !k.is_empty()),
            cors: args.cors,
            keepalive_ms: args.keepalive_ms,
            #[cfg(feature = "test-hooks")]
            test_hooks: args.test_hooks || args.test_script.is_some(),
            #[cfg(not(feature = "test-hooks"))]
            test_hooks: false,
        }
    }
}
