//! A session's KV state in device memory (spec/model.md §6), in one allocation per session:
//! per layer a raw ring of `ring` rows (position p in row p % ring; the ring holds the window
//! plus a whole chunk, spec §2.7), the compressed and indexer rows at their index (capacity
//! ctx/ratio + 2), and the compressor frontiers (f32 kv and scores). Conversion to and from
//! the host form `KvState` is exact: rows are stored as f32.

use ds4::model::config::Config;
use ds4::model::PREFILL_CHUNK;
use ds4::session::{Frontier, KvState, LayerState, FRONTIER_EMPTY_SCORE};

use crate::driver::{DevBuf, Device};
use crate::CudaError;

/// Device addresses of one layer's state.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LayerDev {
    pub ratio: usize,
    pub raw: u64,
    pub comp: u64,
    pub comp_cap: usize,
    pub idx: u64,
    pub fr_kv: u64,
    pub fr_sc: u64,
    pub fr_rows: usize,
    pub fr_w: usize,
    pub ifr_kv: u64,
    pub ifr_sc: u64,
    pub ifr_w: usize,
}

/// The device state of one session.
pub(crate) struct DevState {
    pub buf: DevBuf,
    pub layers: Vec<LayerDev>,
    pub ring: usize,
    hd: usize,
    idx_dim: usize,
}

/// Raw ring rows: the window plus a chunk, rounded to 256 (ds4's `align_up(128 + ubatch, 256)`).
pub(crate) fn ring_rows(cfg: &Config) -> usize {
    (cfg.n_swa + PREFILL_CHUNK).div_ceil(256) * 256
}

/// The byte layout of a state for `ctx` tokens; returns (total bytes, layers with offsets
/// relative to 0).
fn layout(cfg: &Config, ctx: usize) -> (usize, Vec<LayerDev>) {
    let (hd, idim) = (cfg.head_dim, cfg.idx_head_dim);
    let ring = ring_rows(cfg);
    let mut off = 0u64;
    let mut take = |bytes: usize| {
        let at = off;
        off += (bytes.div_ceil(256) * 256) as u64;
        at
    };
    let layers = (0..cfg.n_layer)
        .map(|il| {
            let r = cfg.ratio(il);
            let mut l = LayerDev {
                ratio: r,
                raw: take(ring * hd * 4),
                ..Default::default()
            };
            if let Some(per) = ctx.checked_div(r) {
                l.comp_cap = per + 2;
                l.comp = take(l.comp_cap * hd * 4);
                let (rows, w) = Frontier::shape(r, hd);
                l.fr_rows = rows;
                l.fr_w = w;
                l.fr_kv = take(rows * w * 4);
                l.fr_sc = take(rows * w * 4);
            }
            if r == 4 {
                l.idx = take(l.comp_cap * idim * 4);
                let (rows, w) = Frontier::shape(4, idim);
                l.ifr_w = w;
                l.ifr_kv = take(rows * w * 4);
                l.ifr_sc = take(rows * w * 4);
            }
            l
        })
        .collect();
    (off as usize, layers)
}

/// Device bytes of a session for `ctx` tokens.
pub(crate) fn state_bytes(cfg: &Config, ctx: usize) -> usize {
    layout(cfg, ctx).0
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl DevState {
    /// An empty state for `ctx` tokens.
    pub fn new(dev: &Device, cfg: &Config, ctx: usize) -> Result<Self, CudaError> {
        let (bytes, mut layers) = layout(cfg, ctx);
        let buf = DevBuf::new(bytes)?;
        for l in &mut layers {
            for p in [
                &mut l.raw,
                &mut l.comp,
                &mut l.idx,
                &mut l.fr_kv,
                &mut l.fr_sc,
                &mut l.ifr_kv,
                &mut l.ifr_sc,
            ] {
                *p += buf.ptr;
            }
        }
        let st = DevState {
            buf,
            layers,
            ring: ring_rows(cfg),
            hd: cfg.head_dim,
            idx_dim: cfg.idx_head_dim,
        };
        st.reset(dev)?;
        Ok(st)
    }

    /// Empties the state: rows zeroed, frontier scores at the empty value.
    pub fn reset(&self, dev: &Device) -> Result<(), CudaError> {
        dev.memset(self.buf.ptr, 0, self.buf.len)?;
        for l in &self.layers {
            for (sc, n) in [(l.fr_sc, l.fr_rows * l.fr_w), (l.ifr_sc, 8 * l.ifr_w)] {
                if n > 0 {
                    let v = f32_bytes(&vec![FRONTIER_EMPTY_SCORE; n]);
                    dev.htod(sc, &v)?;
                }
            }
        }
        dev.sync()
    }

    fn read(dev: &Device, ptr: u64, floats: usize) -> Result<Vec<f32>, CudaError> {
        let mut b = vec![0u8; floats * 4];
        dev.dtoh(&mut b, ptr)?;
        Ok(to_f32(&b))
    }

    /// The host form after `n` tokens.
    pub fn export(&self, dev: &Device, cfg: &Config, n: usize) -> Result<KvState, CudaError> {
        let mut kv = KvState::new(cfg);
        for (l, out) in self.layers.iter().zip(&mut kv.layers) {
            let keep = n.min(cfg.n_swa);
            let mut raw = Vec::with_capacity(keep * self.hd);
            for p in n - keep..n {
                let at = l.raw + ((p % self.ring) * self.hd * 4) as u64;
                raw.extend(Self::read(dev, at, self.hd)?);
            }
            *out = LayerState {
                raw,
                comp: Vec::new(),
                idx: Vec::new(),
                attn_frontier: None,
                idx_frontier: None,
            };
            if let Some(rows) = n.checked_div(l.ratio) {
                let rows = rows.min(l.comp_cap);
                out.comp = Self::read(dev, l.comp, rows * self.hd)?;
                out.attn_frontier = Some(Frontier {
                    kv: Self::read(dev, l.fr_kv, l.fr_rows * l.fr_w)?,
                    score: Self::read(dev, l.fr_sc, l.fr_rows * l.fr_w)?,
                    width: l.fr_w,
                });
            }
            if l.ratio == 4 {
                let rows = (n / 4).min(l.comp_cap);
                out.idx = Self::read(dev, l.idx, rows * self.idx_dim)?;
                out.idx_frontier = Some(Frontier {
                    kv: Self::read(dev, l.ifr_kv, 8 * l.ifr_w)?,
                    score: Self::read(dev, l.ifr_sc, 8 * l.ifr_w)?,
                    width: l.ifr_w,
                });
            }
        }
        Ok(kv)
    }

    /// Replaces the contents with `kv`, the state after `n` tokens.
    pub fn import(&self, dev: &Device, kv: &KvState, n: usize) -> Result<(), CudaError> {
        self.reset(dev)?;
        for (l, src) in self.layers.iter().zip(&kv.layers) {
            let held = src.raw.len() / self.hd;
            if held > n {
                return Err(CudaError::State(format!(
                    "{held} raw rows for a session of {n} tokens"
                )));
            }
            for (i, row) in src.raw.chunks(self.hd).enumerate() {
                let p = n - held + i;
                dev.htod(
                    l.raw + ((p % self.ring) * self.hd * 4) as u64,
                    &f32_bytes(row),
                )?;
            }
            if src.comp.len() / self.hd > l.comp_cap
                || src.idx.len() / self.idx_dim.max(1) > l.comp_cap
            {
                return Err(CudaError::State(
                    "the snapshot holds more compressed rows than the context".into(),
                ));
            }
            dev.htod(l.comp, &f32_bytes(&src.comp))?;
            dev.htod(l.idx, &f32_bytes(&src.idx))?;
            if let Some(f) = &src.attn_frontier {
                dev.htod(l.fr_kv, &f32_bytes(&f.kv))?;
                dev.htod(l.fr_sc, &f32_bytes(&f.score))?;
            }
            if let Some(f) = &src.idx_frontier {
                dev.htod(l.ifr_kv, &f32_bytes(&f.kv))?;
                dev.htod(l.ifr_sc, &f32_bytes(&f.score))?;
            }
            // The host buffers above must outlive their copies.
            dev.sync()?;
        }
        Ok(())
    }
}
