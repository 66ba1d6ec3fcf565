//! `ds4`: one-shot generation, the chat REPL and the diagnostic interfaces (spec/serving.md §6.1).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use ds4::model::Precision;
use ds4::sample::SamplerParams;
use ds4_cli::chat_cli::{ChatOptions, Think};

/// DeepSeek V4 Flash on the command line.
#[derive(Parser, Debug)]
#[command(name = "ds4", version, about, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Model GGUF file.
    #[arg(short = 'm', long = "model", default_value = "ds4flash.gguf")]
    model: PathBuf,
    /// Refuse the model unless it has this SHA-256 (hex; a split GGUF: one per shard,
    /// comma-separated). Remembered in `<file>.sha256` by size and mtime.
    #[arg(long = "model-sha256", value_delimiter = ',', value_name = "HEX")]
    model_sha256: Vec<String>,
    /// Prompt text (one shot). Without it the REPL starts.
    #[arg(short = 'p', long = "prompt")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long = "prompt-file")]
    prompt_file: Option<PathBuf>,
    /// System prompt ("" disables). Also `-sys`.
    #[arg(long = "system", default_value = "You are a helpful assistant")]
    system: String,
    /// Maximum tokens to generate.
    #[arg(short = 'n', long = "tokens", default_value_t = 50000)]
    tokens: usize,
    /// Sampling temperature.
    #[arg(long = "temp", default_value_t = ds4::sample::DEFAULT_TEMPERATURE)]
    temp: f32,
    /// Nucleus sampling threshold.
    #[arg(long = "top-p", default_value_t = ds4::sample::DEFAULT_TOP_P)]
    top_p: f32,
    /// Minimum probability relative to the top token.
    #[arg(long = "min-p", default_value_t = ds4::sample::DEFAULT_MIN_P)]
    min_p: f32,
    /// RNG seed.
    #[arg(long = "seed")]
    seed: Option<u64>,
    /// Context size in tokens.
    #[arg(short = 'c', long = "ctx", default_value_t = 32768)]
    ctx: usize,
    /// Run on the CPU backend (the default without a GPU).
    #[arg(long = "cpu")]
    cpu: bool,
    /// Run on CUDA device 0 (the default when a GPU is present).
    #[arg(long = "cuda", conflicts_with = "cpu")]
    cuda: bool,
    /// Worker threads (0: all cores).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// Thinking mode (default).
    #[arg(long = "think", conflicts_with_all = ["think_max", "nothink"])]
    think: bool,
    /// Think Max (needs a context of at least 393216 tokens).
    #[arg(long = "think-max", conflicts_with = "nothink")]
    think_max: bool,
    /// Disable thinking.
    #[arg(long = "nothink")]
    nothink: bool,
    /// Print a model summary and exit.
    #[arg(long = "inspect")]
    inspect: bool,
    /// Diagnostic: print the prompt's token ids as written (special tokens recognised).
    #[arg(long = "dump-tokens")]
    dump_tokens: bool,
    /// Print the prompt text of an OpenAI chat-completions request file and exit (no model).
    #[arg(long = "render-chat", value_name = "REQUEST.json")]
    render_chat: Option<PathBuf>,
    /// Diagnostic: comma-separated token ids to evaluate.
    #[arg(long = "prompt-tokens")]
    prompt_tokens: Option<String>,
    /// Diagnostic: write the logits after each token as a float32 `.npy` `[n_tokens, vocab]`.
    #[arg(long = "dump-logits")]
    dump_logits: Option<PathBuf>,
    /// Diagnostic: with --dump-logits, prefill the first K tokens and decode the rest one by one.
    #[arg(long = "decode-from")]
    decode_from: Option<usize>,
    /// f32 everywhere, no FP8/FP4 simulation (the transformers comparison mode).
    #[arg(long = "precise")]
    precise: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Smoke-test a running ds4-server (every protocol, streaming and not, tool calls, auth,
    /// context size, too-long prompts) and print a pass/fail table; exit 1 on any failure.
    Check(CheckArgs),
    /// Download a published ds4 GGUF (q2, q4 or mtp) with resume, then check its size and
    /// SHA-256 (docs/models.md).
    Download(DownloadArgs),
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Server URL.
    #[arg(default_value = "http://127.0.0.1:8000")]
    url: String,
    /// API key the server was started with.
    #[arg(long = "api-key", env = "DS4_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds each request may take.
    #[arg(long = "timeout", default_value_t = 600)]
    timeout: u64,
}

fn run_check(args: &CheckArgs) -> anyhow::Result<bool> {
    let opts = ds4_cli::check::CheckOptions {
        url: args.url.clone(),
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        timeout: std::time::Duration::from_secs(args.timeout),
    };
    let report = ds4_cli::check::check(&opts)?;
    Ok(ds4_cli::check::print_table(
        &report,
        &mut std::io::stdout().lock(),
    )?)
}

impl Args {
    fn precision(&self) -> Precision {
        if self.precise {
            Precision::Precise
        } else {
            Precision::Default
        }
    }

    fn think(&self) -> Think {
        if self.nothink {
            Think::None
        } else if self.think_max {
            Think::Max
        } else {
            Think::High
        }
    }

    fn chat_options(&self) -> ChatOptions {
        ChatOptions {
            system: self.system.clone(),
            think: self.think(),
            max_tokens: self.tokens,
            sampler: SamplerParams {
                temperature: self.temp,
                top_p: self.top_p,
                min_p: self.min_p,
                seed: self.seed,
                ..SamplerParams::default()
            },
        }
    }

    /// `-p` text or the content of `--prompt-file`.
    fn prompt_text(&self) -> anyhow::Result<Option<String>> {
        match (&self.prompt, &self.prompt_file) {
            (Some(_), Some(_)) => bail!("give either -p or --prompt-file, not both"),
            (Some(p), None) => Ok(Some(p.clone())),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(Some)
                .with_context(|| format!("reading {}", f.display())),
            (None, None) => Ok(None),
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Check(c)) = &args.command {
        if !run_check(c)? {
            std::process::exit(1);
        }
        return Ok(());
    }
    if let Some(Command::Download(d)) = &args.command {
        return download(d);
    }
    if let Some(req) = &args.render_chat {
        let prompt = ds4_cli::diag::render_chat(req, args.ctx)?;
        let mut out = std::io::stdout().lock();
        std::io::Write::write_all(&mut out, prompt.as_bytes())?;
        return Ok(std::io::Write::flush(&mut out)?);
    }
    ds4_cli::init_threads(args.threads)?;
    if args.inspect {
        let f = ds4::gguf::GgufFile::open(&args.model)
            .with_context(|| format!("opening {}", args.model.display()))?;
        ds4_cli::inspect(&f, &mut std::io::stdout().lock())?;
        let model = ds4_cli::load_model(&args.model)?;
        println!("{:#?}", model.config);
        return Ok(());
    }
    if let (Some(list), Some(out)) = (&args.prompt_tokens, &args.dump_logits) {
        let tokens = ds4_cli::parse_token_list(list)?;
        return ds4_cli::diag::dump_logits(
            &args.model,
            &tokens,
            out,
            args.precision(),
            args.decode_from,
            args.cpu,
            args.cuda,
        );
    }
    if args.dump_logits.is_some() {
        bail!("--dump-logits needs --prompt-tokens");
    }
    let prompt = args.prompt_text()?;
    if args.dump_tokens {
        let Some(text) = prompt else {
            bail!("--dump-tokens needs -p TEXT or --prompt-file FILE");
        };
        let tok = ds4_cli::diag::load_tokenizer(&args.model)?;
        return Ok(ds4_cli::diag::dump_tokens(
            &tok,
            &text,
            &mut std::io::stdout().lock(),
        )?);
    }
    let model = Arc::new(ds4_cli::load_model_pinned(&args.model, &args.model_sha256)?);
    let backend = ds4_cli::make_backend(&model, args.cpu, args.cuda, args.ctx)?;
    let mut engine = ds4::engine::Engine::with_backend(model, backend, args.precision(), args.ctx)?;
    match prompt {
        Some(text) => ds4_cli::chat_cli::one_shot(&mut engine, &args.chat_options(), &text),
        None => ds4_cli::repl::run_repl(engine, args.chat_options()),
    }
}

/// `ds4 download`: fetch a published ds4 GGUF with resume, size and SHA-256 check.
#[derive(clap::Args, Debug)]
struct DownloadArgs {
    /// What to fetch: q2 (about 81 GB), q4 (about 153 GB) or mtp (about 3.5 GB).
    #[arg(value_parser = ["q2", "q4", "mtp"])]
    target: String,
    /// Directory for the file (default: env DS4_GGUF_DIR, else ./gguf).
    #[arg(long = "dir", env = "DS4_GGUF_DIR", default_value = "gguf")]
    dir: PathBuf,
    /// Hugging Face token (default: env HF_TOKEN).
    #[arg(long = "token", env = "HF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Expected SHA-256 (hex), instead of the one the server announces.
    #[arg(long = "sha256", value_name = "HEX")]
    sha256: Option<String>,
    /// Where the files are (`URL/FILE` is fetched).
    #[arg(long = "base-url", default_value = ds4_cli::download::BASE_URL)]
    base_url: String,
    /// No progress bars.
    #[arg(long = "quiet")]
    quiet: bool,
}

fn download(a: &DownloadArgs) -> anyhow::Result<()> {
    let opts = ds4_cli::download::Options {
        dir: a.dir.clone(),
        base_url: a.base_url.clone(),
        token: a.token.clone().filter(|t| !t.trim().is_empty()),
        sha256: a.sha256.clone(),
        progress: !a.quiet,
    };
    let path = ds4_cli::download::download(&a.target, &opts)?;
    println!("{}", path.display());
    if a.target != "mtp" {
        eprintln!("run it with: ds4 -m {}", path.display());
    }
    Ok(())
}

fn main() {
    let args = Args::parse_from(ds4_cli::normalize_args(std::env::args()));
    if let Err(e) = run(args) {
        eprintln!("ds4: error: {e:#}");
        std::process::exit(1);
    }
}
