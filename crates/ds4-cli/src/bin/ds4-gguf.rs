//! `ds4-gguf`: GGUF tooling. `tiny` writes a generated model with the real layout; `inspect`
//! lists a file's keys and tensors; `kv-inspect` checks disk KV cache files.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ds4::gguf::GgmlType;
use ds4::tiny::{ExpertRecipe, TinySpec};

#[derive(Parser)]
#[command(name = "ds4-gguf", about = "GGUF tools for DeepSeek V4 Flash files")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `tiny`'s flags: every dimension of [`TinySpec`].
#[derive(clap::Args)]
struct TinyArgs {
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Layers (ratios follow 0,0,4,128,4,…).
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// Embedding width (multiple of 256).
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Expert FFN width (multiple of 256).
    #[arg(long, default_value_t = 256)]
    ff: usize,
    /// Query heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Head dim (q = k = v; ≥ 64).
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// q low rank.
    #[arg(long, default_value_t = 128)]
    q_lora: usize,
    /// Output-projection groups.
    #[arg(long, default_value_t = 2)]
    o_groups: usize,
    /// Per-group output rank.
    #[arg(long, default_value_t = 64)]
    o_lora: usize,
    /// Raw attention window in tokens.
    #[arg(long, default_value_t = 32)]
    swa: usize,
    /// Indexer heads.
    #[arg(long, default_value_t = 16)]
    idx_heads: usize,
    /// Indexer top-k.
    #[arg(long, default_value_t = 16)]
    idx_topk: usize,
    /// Routed experts.
    #[arg(long, default_value_t = 16)]
    n_experts: usize,
    /// Experts per token.
    #[arg(long, default_value_t = 4)]
    experts_used: usize,
    /// Routed expert quantisation: q2, q4, f16, one type for all three (mxfp4) or
    /// GATE_UP/DOWN (iq2_xs/q3_k).
    #[arg(long, default_value = "q2")]
    experts: ExpertRecipe,
    /// One type for every dense weight matrix (f16, bf16, q8_0, q6_k, …); default: the
    /// published recipe (Q8_0 projections, F16 elsewhere).
    #[arg(long, value_parser = parse_type)]
    dense: Option<GgmlType>,
    /// Vocabulary size when no tokenizer is given.
    #[arg(long, default_value_t = 512)]
    vocab: usize,
    /// A tokenizer.json whose vocabulary to embed (e.g. the real V4 one).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a small model with the real tensor layout and random weights.
    Tiny(TinyArgs),
    /// Write a full-size synthetic model: every real dimension and tensor type of the published
    /// q2 or q4 file, random valid weights (for benchmarks; ds4 and llama.cpp load it too).
    Synth {
        /// Expert quantisation of the published file to imitate: q2 or q4.
        #[arg(long, default_value = "q2")]
        layout: ExpertRecipe,
        /// Layers (43 in the real model).
        #[arg(long, default_value_t = 43)]
        layers: usize,
        /// RNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A tokenizer.json whose vocabulary to embed (the real V4 one: ds4 needs it).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a file's metadata and tensor table.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
    },
    /// Check disk KV cache files (`ds4-server --kv-disk-dir`): header, tokens, model layout,
    /// size, hits and validity of each. Exits 1 if any file is invalid.
    KvInspect {
        /// A `.kv` file or a cache directory.
        path: PathBuf,
        /// Also say whether a server of this model would load each file.
        #[arg(short = 'm', long = "model")]
        model: Option<PathBuf>,
        /// Print the first 80 characters of each key text (prompt content).
        #[arg(long)]
        show_text: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Tiny(t) => {
            let tokenizer = match &t.tokenizer {
                Some(p) => Some(read_tokenizer(p)?),
                None => None,
            };
            let spec = TinySpec {
                seed: t.seed,
                layers: t.layers,
                hidden: t.hidden,
                ff: t.ff,
                heads: t.heads,
                head_dim: t.head_dim,
                q_lora: t.q_lora,
                o_groups: t.o_groups,
                o_lora: t.o_lora,
                swa: t.swa,
                idx_heads: t.idx_heads,
                idx_topk: t.idx_topk,
                experts: t.n_experts,
                experts_used: t.experts_used,
                recipe: t.experts,
                dense: t.dense,
                vocab: t.vocab,
                tokenizer,
            };
            let w = ds4::tiny::generate(&spec).context("generating the model")?;
            w.write_file(&t.out)
                .with_context(|| format!("writing {}", t.out.display()))?;
            eprintln!("ds4-gguf: wrote {}", t.out.display());
            Ok(())
        }
        Cmd::Synth {
            layout,
            layers,
            seed,
            tokenizer,
            out,
        } => {
            let mut spec = ds4::synth::full_size(layout, layers, seed);
            if let Some(p) = &tokenizer {
                spec.tokenizer = Some(read_tokenizer(p)?);
            }
            let t0 = std::time::Instant::now();
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "ds4-gguf: {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let total = ds4::synth::write(&spec, &out, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .with_context(|| format!("writing {}", out.display()))?;
            bar.finish_and_clear();
            let s = t0.elapsed().as_secs_f64();
            eprintln!(
                "ds4-gguf: wrote {} ({:.1} GiB in {s:.1} s, {:.2} GB/s)",
                out.display(),
                total as f64 / (1u64 << 30) as f64,
                total as f64 / s / 1e9
            );
            Ok(())
        }
        Cmd::Inspect { file } => {
            let f = ds4::gguf::GgufFile::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            ds4_cli::inspect(&f, &mut std::io::stdout().lock())
        }
        Cmd::KvInspect {
            path,
            model,
            show_text,
        } => {
            let opts = ds4_cli::kv_inspect::KvInspect {
                path,
                model,
                show_text,
            };
            let bad = ds4_cli::kv_inspect::kv_inspect(&opts, &mut std::io::stdout().lock())?;
            if bad > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// GGUF tokenizer metadata from a tokenizer.json.
fn parse_type(s: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(s)
        .ok_or_else(|| format!("unknown tensor type `{s}` (e.g. f16, bf16, q8_0)"))
}

fn read_tokenizer(p: &std::path::Path) -> anyhow::Result<Vec<(String, ds4::gguf::Value)>> {
    let json = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    ds4::tokenizer::gguf_metadata_from_tokenizer_json(&json)
        .with_context(|| format!("converting {}", p.display()))
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("ds4-gguf: error: {e:#}");
        std::process::exit(1);
    }
}
