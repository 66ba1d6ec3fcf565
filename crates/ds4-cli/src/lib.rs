//! Shared pieces of the command-line tools: argument normalisation, thread setup, model
//! loading with a readable error, the `.npy` writer used by `--dump-logits`, the `ds4`
//! modes (`chat_cli` one-shot turns, `repl`, `diag` diagnostics; spec/serving.md §6.1),
//! `ds4-gguf kv-inspect` (`kv_inspect`), `check`, the `ds4 check` smoke test of a running
//! server, and `ds4 download` (`download`).
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

pub mod chat_cli;
pub mod check;
pub mod diag;
pub mod download;
pub mod kv_inspect;
pub mod npy;
pub mod repl;

/// ds4 spells some long flags with one dash (`-sys`); clap wants two.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| match a.as_str() {
            "-sys" => "--system".to_string(),
            _ => a,
        })
        .collect()
}

/// Sizes rayon's global pool (`-t/--threads`); 0 keeps rayon's default (all cores).
pub fn init_threads(threads: usize) -> anyhow::Result<()> {
    if threads > 0 {
        rayon_pool(threads)?;
    }
    Ok(())
}

fn rayon_pool(threads: usize) -> anyhow::Result<()> {
    ds4::backend::cpu::set_threads(threads).context("setting the thread count")
}

/// Opens and validates a model file, with the path in the error.
pub fn load_model(path: &Path) -> anyhow::Result<ds4::model::Model> {
    load_model_pinned(path, &[])
}

/// [`load_model`], refusing the file unless each of its files (one, or every shard of a split
/// GGUF) has the SHA-256 in `pins` (`--model-sha256`; empty: no check). Hashing shows a
/// progress bar on stderr; a hash remembered in `<file>.sha256` (same size and mtime) is reused.
pub fn load_model_pinned(path: &Path, pins: &[String]) -> anyhow::Result<ds4::model::Model> {
    let file =
        ds4::gguf::GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    if !pins.is_empty() {
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "hashing {msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template"),
        );
        ds4::pin::verify_all(
            file.paths(),
            pins,
            &mut |p, done, total| {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
            },
            &mut |w| eprintln!("warning: {w}"),
        )?;
        bar.finish_and_clear();
    }
    ds4::model::Model::from_file(Arc::new(file))
        .with_context(|| format!("loading model {}", path.display()))
}

/// The backend the flags ask for: `--cpu` forces the CPU, `--cuda` CUDA device 0, neither
/// CUDA when a GPU is present. `ctx` is the context the sessions will use (the CUDA backend
/// checks that weights, KV and scratch fit before allocating).
pub fn make_backend(
    model: &Arc<ds4::model::Model>,
    cpu: bool,
    cuda: bool,
    ctx: usize,
) -> anyhow::Result<Box<dyn ds4::backend::Backend + Send>> {
    let choice = match (cpu, cuda) {
        (true, _) => ds4_cuda::Choice::Cpu,
        (_, true) => ds4_cuda::Choice::Cuda,
        _ => ds4_cuda::Choice::Auto,
    };
    let opts = ds4_cuda::CudaOptions {
        ctx,
        ..Default::default()
    };
    ds4_cuda::open_backend(model, choice, &opts, &mut |line| eprintln!("ds4: {line}"))
        .context("starting the backend")
}

/// Parses `5,17,3` into token ids.
pub fn parse_token_list(s: &str) -> anyhow::Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("`{t}` is not a token id"))
        })
        .collect()
}

/// Prints a one-line summary of each tensor and every metadata key (`--inspect`).
pub fn inspect(file: &ds4::gguf::GgufFile, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "GGUF v{}  alignment {}  {} keys  {} tensors  {} bytes",
        file.version(),
        file.alignment(),
        file.metadata().len(),
        file.tensors().len(),
        file.file_len()
    )?;
    for (k, v) in file.metadata() {
        let shown = match v {
            ds4::gguf::Value::Array(t, a) if a.len() > 16 => {
                format!("[{:?}; {} entries]", t, a.len())
            }
            other => format!("{other:?}"),
        };
        writeln!(out, "  {k} = {shown}")?;
    }
    for t in file.tensors() {
        writeln!(
            out,
            "  {:<40} {:<8} {:?}  {} bytes",
            t.name,
            t.ty.name(),
            t.dims,
            t.n_bytes
        )?;
    }
    Ok(())
}
