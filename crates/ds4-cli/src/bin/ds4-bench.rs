//! `ds4-bench`: prefill and decode speed over a sweep of context lengths, with ds4's flags and
//! CSV columns (spec/serving.md §6.3). For each frontier it prefills only the new interval,
//! snapshots the session, decodes `--gen-tokens` greedy tokens (EOS excluded), and restores.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use ds4::model::{Model, Precision};
use ds4::sample::greedy_excluding;
use ds4::tokenizer::Tokenizer;

/// Speed sweep for DeepSeek V4 Flash.
#[derive(Parser, Debug)]
#[command(name = "ds4-bench", version, about)]
struct Args {
    /// Model GGUF file.
    #[arg(short = 'm', long = "model", default_value = "ds4flash.gguf")]
    model: PathBuf,
    /// Refuse the model unless it has this SHA-256 (hex; a split GGUF: one per shard,
    /// comma-separated). Remembered in `<file>.sha256` by size and mtime.
    #[arg(long = "model-sha256", value_delimiter = ',', value_name = "HEX")]
    model_sha256: Vec<String>,
    /// Prompt text, tokenized as plain BPE without BOS.
    #[arg(long = "prompt-file")]
    prompt_file: Option<PathBuf>,
    /// Prompt text rendered as one non-thinking user message (with `--system`).
    #[arg(long = "chat-prompt-file")]
    chat_prompt_file: Option<PathBuf>,
    /// System prompt for --chat-prompt-file.
    #[arg(long = "system", default_value = "")]
    system: String,
    /// Use deterministic pseudo-random token ids instead of a prompt file (models without a
    /// tokenizer).
    #[arg(long = "synthetic-prompt")]
    synthetic: bool,
    /// CPU backend (the default without a GPU).
    #[arg(long = "cpu")]
    cpu: bool,
    /// CUDA backend on device 0 (the default when a GPU is present).
    #[arg(long = "cuda", conflicts_with = "cpu")]
    cuda: bool,
    /// Worker threads (0: all cores).
    #[arg(short = 't', long = "threads", default_value_t = 0)]
    threads: usize,
    /// f32 everywhere, no FP8/FP4 simulation.
    #[arg(long = "precise")]
    precise: bool,
    /// First context frontier.
    #[arg(long = "ctx-start", default_value_t = 2048)]
    ctx_start: usize,
    /// Last context frontier.
    #[arg(long = "ctx-max", default_value_t = 32768)]
    ctx_max: usize,
    /// Linear step between frontiers.
    #[arg(long = "step-incr", default_value_t = 2048)]
    step_incr: usize,
    /// Geometric step (1: linear).
    #[arg(long = "step-mul", default_value_t = 1.0)]
    step_mul: f64,
    /// Greedy tokens decoded at each frontier.
    #[arg(
        short = 'n',
        long = "gen-tokens",
        alias = "tokens",
        default_value_t = 128
    )]
    gen_tokens: usize,
    /// Write the CSV here instead of stdout.
    #[arg(long = "csv")]
    csv: Option<PathBuf>,
    /// Choose each decoded token on the host from the step's logits, as ds4's bench and the
    /// server's sampler do, instead of on the backend with the next step issued before the
    /// host reads the token (`Model::decode_greedy`). Same tokens; for comparing the two.
    #[arg(long = "host-sample")]
    host_sample: bool,
}

fn frontiers(a: &Args) -> Vec<usize> {
    let mut out = Vec::new();
    let mut c = a.ctx_start.max(1);
    while c <= a.ctx_max {
        out.push(c);
        let next = if a.step_mul > 1.0 {
            (c as f64 * a.step_mul) as usize
        } else {
            c + a.step_incr.max(1)
        };
        c = next.max(c + 1);
    }
    out
}

fn prompt_tokens(a: &Args, model: &Model) -> anyhow::Result<Vec<u32>> {
    if a.synthetic {
        let v = model.config.n_vocab as u64;
        // A fixed LCG: reproducible across runs and machines.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        return Ok((0..a.ctx_max)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % v) as u32
            })
            .collect());
    }
    let tok = Tokenizer::from_metadata(|k| model.file.get(k))
        .context("this model has no tokenizer; use --synthetic-prompt")?;
    if let Some(p) = &a.prompt_file {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        return Ok(tok.encode(&text, false));
    }
    if let Some(p) = &a.chat_prompt_file {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let mut msgs = serde_json::json!([{"role": "user", "content": text}]);
        if !a.system.is_empty() {
            msgs.as_array_mut().expect("literal array").insert(
                0,
                serde_json::json!({"role": "system", "content": a.system}),
            );
        }
        let req = serde_json::json!({"messages": msgs, "thinking": false});
        let r =
            ds4::chat::render_chat_request(&req, a.ctx_max).context("rendering the chat prompt")?;
        return Ok(tok.encode(&r.prompt, true));
    }
    bail!("give --prompt-file, --chat-prompt-file or --synthetic-prompt")
}

fn run(a: Args) -> anyhow::Result<()> {
    ds4_cli::init_threads(a.threads)?;
    let t_load = Instant::now();
    let model = std::sync::Arc::new(ds4_cli::load_model_pinned(&a.model, &a.model_sha256)?);
    let prec = if a.precise {
        Precision::Precise
    } else {
        Precision::Default
    };
    let tokens = prompt_tokens(&a, &model)?;
    if tokens.len() < a.ctx_max {
        bail!(
            "the prompt has {} tokens; --ctx-max {} needs at least that many",
            tokens.len(),
            a.ctx_max
        );
    }
    let eos = Tokenizer::from_metadata(|k| model.file.get(k))
        .ok()
        .map(|t| t.eos());
    let be = ds4_cli::make_backend(&model, a.cpu, a.cuda, a.ctx_max + a.gen_tokens)?;
    let be = be.as_ref();
    let load_s = t_load.elapsed().as_secs_f64();
    let mut peak = be.device_memory_used();
    let mut note_peak = |be: &dyn ds4::backend::Backend| {
        if let Some(m) = be.device_memory_used() {
            peak = Some(peak.map_or(m, |p: usize| p.max(m)));
        }
    };
    let mut out: Box<dyn Write> = match &a.csv {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout()),
    };
    writeln!(
        out,
        "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes"
    )?;
    let mut sess = model.new_session(be, a.ctx_max + a.gen_tokens)?;
    for ctx in frontiers(&a) {
        let from = sess.pos();
        let t0 = Instant::now();
        if ctx > from {
            model.forward_last(be, &mut sess, &tokens[from..ctx], prec)?;
        }
        let prefill_s = t0.elapsed().as_secs_f64();
        let snapshot = sess.snapshot(be)?;
        let kv_bytes = snapshot.kv_bytes();
        let t1 = Instant::now();
        let first = greedy_excluding(&sess.logits, eos);
        if a.host_sample {
            let mut t = first;
            for _ in 0..a.gen_tokens {
                let l = model.forward_last(be, &mut sess, &[t], prec)?;
                t = greedy_excluding(&l, eos);
            }
        } else {
            model.decode_greedy(be, &mut sess, first, a.gen_tokens, eos, prec)?;
        }
        let gen_s = t1.elapsed().as_secs_f64();
        note_peak(be);
        sess.restore(be, &model.config, &snapshot)?;
        let prefill_tokens = ctx - from;
        writeln!(
            out,
            "{ctx},{prefill_tokens},{:.2},{},{:.2},{kv_bytes}",
            prefill_tokens as f64 / prefill_s.max(1e-9),
            a.gen_tokens,
            a.gen_tokens as f64 / gen_s.max(1e-9)
        )?;
        out.flush()?;
    }
    match peak {
        Some(p) => eprintln!(
            "ds4-bench: {} backend, load {load_s:.1} s, peak device memory {:.2} GiB",
            be.name(),
            p as f64 / (1u64 << 30) as f64
        ),
        None => eprintln!("ds4-bench: {} backend, load {load_s:.1} s", be.name()),
    }
    Ok(())
}

fn main() {
    let args = Args::parse_from(ds4_cli::normalize_args(std::env::args()));
    if let Err(e) = run(args) {
        eprintln!("ds4-bench: error: {e:#}");
        std::process::exit(1);
    }
}
