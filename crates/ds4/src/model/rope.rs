//! Partial interleaved RoPE on the trailing `n_rot` dims of a head (spec/model.md §2.4.2):
//! adjacent pairs `(2k, 2k+1)`, base 10000 on uncompressed layers and base 160000 with YaRN ×16
//! (no magnitude correction) on compressed ones. The inverse rotation de-rotates attention
//! outputs (pitfall §8.1).

use super::config::Config;

/// The rotation frequencies of one layer: `theta(pos, k) = pos · freq[k]`.
#[derive(Debug, Clone)]
pub struct Rope {
    /// Per pair `k < n_rot/2`: the angle per position.
    freq: Vec<f32>,
}

impl Rope {
    /// The RoPE of layer `il`: plain for ratio-0 layers, YaRN for compressed ones.
    pub fn for_layer(cfg: &Config, il: usize) -> Self {
        let n = cfg.n_rot;
        let compressed = cfg.ratio(il) != 0;
        let base = if compressed {
            cfg.compress_rope_base
        } else {
            cfg.rope_base
        };
        let ext = |k: usize| (base as f64).powf(-2.0 * k as f64 / n as f64);
        let freq = if !compressed {
            (0..n / 2).map(|k| ext(k) as f32).collect()
        } else {
            // YaRN blend between the extrapolated and the interpolated (÷factor) frequency,
            // with the ramp over pair indices between the β_fast and β_slow correction dims.
            let cd = |r: f64| {
                n as f64 * (cfg.yarn_orig_ctx as f64 / (r * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * (base as f64).ln())
            };
            let low = cd(cfg.yarn_beta_fast as f64).floor().max(0.0);
            let high = cd(cfg.yarn_beta_slow as f64).ceil().min(n as f64 - 1.0);
            (0..n / 2)
                .map(|k| {
                    let y = ((k as f64 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                    let ramp = 1.0 - y;
                    let e = ext(k);
                    (e / cfg.yarn_factor as f64 * (1.0 - ramp) + e * ramp) as f32
                })
                .collect()
        };
        Rope { freq }
    }

    /// The angle per position of each pair `k < n_rot/2` (what device kernels are given).
    pub fn freq(&self) -> &[f32] {
        &self.freq
    }

    /// Rotates the trailing `2·freq.len()` dims of `head` at position `pos`; `inverse` negates
    /// the sine.
    pub fn apply(&self, head: &mut [f32], pos: usize, inverse: bool) {
        let n_rot = 2 * self.freq.len();
        let tail_start = head.len() - n_rot;
        let tail = &mut head[tail_start..];
        for (k, &f) in self.freq.iter().enumerate() {
            let theta = pos as f64 * f as f64;
            let (s, c) = theta.sin_cos();
            let (s, c) = (if inverse { -s } else { s } as f32, c as f32);
            let (a, b) = (tail[2 * k], tail[2 * k + 1]);
            tail[2 * k] = a * c - b * s;
            tail[2 * k + 1] = a * s + b * c;
        }
    }

    /// Applies [`Rope::apply`] to each `head_dim`-wide head of `x`.
    pub fn apply_heads(&self, x: &mut [f32], head_dim: usize, pos: usize, inverse: bool) {
        x.chunks_mut(head_dim)
            .for_each(|h| self.apply(h, pos, inverse));
    }
}
