//! `ds4`: one-shot generation, the chat REPL and the diagnostic interfaces (spec/serving.md §6.1).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use ds4::backend::CpuBackend;
use ds4::model::Precision;

/// DeepSeek V4 Flash on the command line.
#[derive(Parser, Debug)]
#[command(name = "ds4", version, about)]
pub struct Args {
    /// Model GGUF file.
    #[arg(short = 'm', long = "model", default_value = "ds4flash.gguf")]
    model: PathBuf,
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
    /// Run on the CPU backend (the only one in this build).
    #[arg(long = "cpu")]
    cpu: bool,
    /// Worker threads (0: all cores).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// Thinking mode (default).
    #[arg(long = "think")]
    think: bool,
    /// Think Max (needs a context of at least 393216 tokens).
    #[arg(long = "think-max")]
    think_max: bool,
    /// Disable thinking.
    #[arg(long = "nothink")]
    nothink: bool,
    /// Print a model summary and exit.
    #[arg(long = "inspect")]
    inspect: bool,
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

fn dump_logits(args: &Args, list: &str, out: &PathBuf) -> anyhow::Result<()> {
    let tokens = ds4_cli::parse_token_list(list)?;
    if tokens.is_empty() {
        bail!("--prompt-tokens is empty");
    }
    let model = ds4_cli::load_model(&args.model)?;
    let be = CpuBackend::new(model.file.clone());
    let prec = if args.precise {
        Precision::Precise
    } else {
        Precision::Default
    };
    let mut sess = model.new_session();
    let k = args.decode_from.unwrap_or(tokens.len()).min(tokens.len());
    let mut logits = model.forward(&be, &mut sess, &tokens[..k], prec)?;
    for &t in &tokens[k..] {
        logits.extend(model.forward(&be, &mut sess, &[t], prec)?);
    }
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    ds4_cli::npy::write_f32(&mut f, &logits, tokens.len(), model.config.n_vocab)?;
    std::io::Write::flush(&mut f)?;
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
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
        return dump_logits(&args, list, out);
    }
    if args.dump_logits.is_some() {
        bail!("--dump-logits needs --prompt-tokens");
    }
    bail!("text generation is not wired yet: use --prompt-tokens with --dump-logits")
}

fn main() {
    let args = Args::parse_from(ds4_cli::normalize_args(std::env::args()));
    if let Err(e) = run(args) {
        eprintln!("ds4: error: {e:#}");
        std::process::exit(1);
    }
}
