//! Full-size synthetic models (`ds4-gguf synth`): a GGUF with every real dimension and tensor
//! type of the published q2 or q4 file (spec/model.md §3.3), ds4's and llama.cpp's metadata,
//! optionally the real V4 vocabulary, and random valid blocks with realistic scales. The file
//! is far too large for memory: the header is written first, then the tensors' data in chunks,
//! generated on every core with a fast seeded generator and written in place, so the file is
//! the same for the same seed whatever the thread count.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;

use crate::gguf::{GgmlType, GgufWriter, Value};
use crate::quant::f32_to_f16;
use crate::tiny::{plan, ExpertRecipe, Fill, TinyError, TinySpec};

/// Bytes generated per work item.
const CHUNK: usize = 32 << 20;

/// The published files' dimensions with `layers` layers (43 for the real layout) and expert
/// quantisation `recipe`.
pub fn full_size(recipe: ExpertRecipe, layers: usize, seed: u64) -> TinySpec {
    TinySpec {
        seed,
        layers,
        hidden: 4096,
        vocab: 129_280,
        heads: 64,
        head_dim: 512,
        q_lora: 1024,
        o_groups: 8,
        o_lora: 1024,
        swa: 128,
        idx_heads: 64,
        idx_topk: 512,
        experts: 256,
        experts_used: 6,
        ff: 2048,
        recipe,
        dense: None,
        tokenizer: None,
    }
}

/// SplitMix64: small, fast, and good enough for weights nobody reads for meaning.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Mean 0, variance about 1 (scaled sum of three uniforms).
    fn normalish(&mut self) -> f32 {
        (self.unit() + self.unit() + self.unit() - 1.5) * 2.0
    }

    /// An f16 scale of about `s` (×0.5..1.5).
    fn scale(&mut self, s: f32) -> [u8; 2] {
        f32_to_f16(s * (0.5 + self.unit())).to_le_bytes()
    }
}

/// Fills `out` (whole blocks of `ty`) with random valid blocks whose values are about `std`.
fn fill_blocks(ty: GgmlType, std: f32, rng: &mut Mix, out: &mut [u8]) {
    match ty {
        GgmlType::F32 => out.chunks_exact_mut(4).for_each(|c| {
            c.copy_from_slice(&(rng.normalish() * std).to_le_bytes());
        }),
        GgmlType::F16 => out.chunks_exact_mut(2).for_each(|c| {
            c.copy_from_slice(&f32_to_f16(rng.normalish() * std).to_le_bytes());
        }),
        GgmlType::Q8_0 => {
            rng.fill(out);
            // Uniform int8 quants have a standard deviation of about 73.
            out.chunks_exact_mut(34)
                .for_each(|b| b[0..2].copy_from_slice(&rng.scale(std / 73.0)));
        }
        GgmlType::Q2_K => {
            rng.fill(out);
            out.chunks_exact_mut(84).for_each(|b| {
                b[80..82].copy_from_slice(&rng.scale(std / 11.0));
                b[82..84].copy_from_slice(&rng.scale(std / 15.0));
            });
        }
        GgmlType::Q4_K => {
            rng.fill(out);
            out.chunks_exact_mut(144).for_each(|b| {
                b[0..2].copy_from_slice(&rng.scale(std / 236.0));
                b[2..4].copy_from_slice(&rng.scale(std / 126.0));
            });
        }
        GgmlType::IQ2_XXS => {
            rng.fill(out);
            out.chunks_exact_mut(66)
                .for_each(|b| b[0..2].copy_from_slice(&rng.scale(std / 40.0)));
        }
        GgmlType::BF16 => out.chunks_exact_mut(2).for_each(|c| {
            c.copy_from_slice(&crate::quant::f32_to_bf16(rng.normalish() * std).to_le_bytes());
        }),
        GgmlType::I32 | GgmlType::Q8_K => out.fill(0),
        // The other block types: random bytes, scale fields as `quant::random_blocks` sets them.
        ty => {
            rng.fill(out);
            let mut r = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(rng.next());
            out.chunks_exact_mut(ty.block_bytes())
                .for_each(|b| crate::quant::random::set_block_scales(ty, b, std, &mut r));
        }
    }
}

/// Why a synthetic model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The layout or the container is invalid.
    #[error(transparent)]
    Tiny(#[from] TinyError),
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The output.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Writes the model `spec` describes to `path` (to a temporary name, renamed when complete).
/// `progress(done, total)` is called as data is written (bytes).
pub fn write(
    spec: &TinySpec,
    path: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64, SynthError> {
    let io = |source| SynthError::Io {
        path: path.display().to_string(),
        source,
    };
    let vocab = match &spec.tokenizer {
        Some(meta) => meta
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.tokens")
            .and_then(|(_, v)| v.as_array())
            .map(|a| a.len())
            .ok_or_else(|| {
                TinyError::Dims("tokenizer metadata has no tokenizer.ggml.tokens".into())
            })?,
        None => spec.vocab,
    };
    let mut w = GgufWriter::new();
    crate::tiny::write_keys(&mut w, spec, vocab)?;
    let tensors = plan(spec, vocab);
    // Small tensors get their bytes now (sequential seeded RNG); weights are laid out only.
    let mut small: Vec<Option<Vec<u8>>> = Vec::with_capacity(tensors.len());
    let mut rng = Mix(spec.seed ^ 0x5eed);
    for t in &tensors {
        let dims: Vec<u64> = t.dims.iter().map(|&d| d as u64).collect();
        let n: usize = t.dims.iter().product();
        let bytes = match &t.fill {
            Fill::Weights { .. } => None,
            Fill::Normal { std, plus_one } => Some(
                (0..n)
                    .flat_map(|_| {
                        let v = rng.normalish() * std;
                        (if *plus_one { 1.0 + v } else { v }).to_le_bytes()
                    })
                    .collect(),
            ),
            Fill::Const(v) => Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Fill::TidEid { experts } => Some(
                (0..n)
                    .flat_map(|_| ((rng.next() % *experts as u64) as i32).to_le_bytes())
                    .collect(),
            ),
        };
        w.add_tensor_shape(&t.name, &dims, t.ty)
            .map_err(TinyError::from)?;
        small.push(bytes);
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp.{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let file = File::create(&tmp).map_err(io)?;
    let mut bw = BufWriter::new(&file);
    let (spans, total) = w.write_header_to(&mut bw).map_err(TinyError::from)?;
    bw.flush().map_err(io)?;
    drop(bw);
    file.set_len(total).map_err(io)?;
    // Work items: (tensor, byte range within it), each a whole number of blocks.
    let mut items = Vec::new();
    for (i, (t, &(off, n))) in tensors.iter().zip(&spans).enumerate() {
        if small[i].is_some() {
            items.push((i, off, 0u64, n));
            continue;
        }
        let bb = t.ty.block_bytes() as u64;
        let step = (CHUNK as u64 / bb).max(1) * bb;
        let mut s = 0;
        while s < n {
            items.push((i, off, s, step.min(n - s)));
            s += step;
        }
    }
    let result = fill(
        &tensors, &small, &spans, &items, spec.seed, &file, progress, &io,
    );
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(total)
}

type Item = (usize, u64, u64, u64);

#[allow(clippy::too_many_arguments)]
fn fill(
    tensors: &[crate::tiny::Planned],
    small: &[Option<Vec<u8>>],
    spans: &[(u64, u64)],
    items: &[Item],
    seed: u64,
    file: &File,
    progress: &(dyn Fn(u64, u64) + Sync),
    io: &(dyn Fn(std::io::Error) -> SynthError + Sync),
) -> Result<(), SynthError> {
    let done = std::sync::atomic::AtomicU64::new(0);
    let data_total: u64 = spans.iter().map(|s| s.1).sum();
    items
        .par_iter()
        .try_for_each(|&(i, off, s, len)| -> Result<(), SynthError> {
            let buf = match &small[i] {
                Some(b) => b.clone(),
                None => {
                    // Only weights are generated in chunks (the rest is in `small`).
                    let std = match tensors[i].fill {
                        Fill::Weights { std } => std,
                        _ => 1.0,
                    };
                    let mut b = vec![0u8; len as usize];
                    let seed =
                        seed ^ ((i as u64) << 40) ^ (s / CHUNK as u64).wrapping_mul(0x9e37_79b9);
                    fill_blocks(tensors[i].ty, std, &mut Mix(seed), &mut b);
                    b
                }
            };
            file.write_all_at(&buf, off + s).map_err(io)?;
            let d = done.fetch_add(len, std::sync::atomic::Ordering::Relaxed) + len;
            progress(d, data_total);
            Ok(())
        })
}

/// The metadata value of the real tokenizer's vocabulary size, for messages.
pub fn vocab_of(meta: &[(String, Value)]) -> Option<usize> {
    meta.iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array())
        .map(|a| a.len())
}
