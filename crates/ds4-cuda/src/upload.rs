//! Loading the model onto the device, once, at start: every weight tensor is copied from the
//! mapped file through two pinned staging buffers (the host copy of one chunk, spread over all
//! cores, overlaps the DMA of the other), Q8_0 and IQ2_XXS tensors are repacked on the device
//! into aligned planes (kernels/repack.cu) — IQ2_XXS, where memory allows, into 4-bit codes
//! (`plan_codes`) — and the small f32 parameters (norms, biases, HC
//! scales, `ape`, `tid2eid`) go into one buffer. Progress is reported through a callback.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use rayon::prelude::*;

use ds4::gguf::GgmlType;
use ds4::model::weights::{TensorRef, Weights};

use crate::driver::{kargs, DevBuf, Device, Event, Kernel, Pinned};
use crate::CudaError;

/// A weight in device memory, as the kernels take it (struct DW in kernels/common.cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dw {
    pub a: u64,
    pub b: u64,
    pub ty: i32,
    pub rows: i32,
    pub cols: i32,
}

/// The device type id of IQ2_XXS in 4-bit codes (TY_IQ2C in kernels/common.cuh): not a ggml
/// type; the kernels of the `*_iq2c` family read it.
pub(crate) const TY_IQ2C: i32 = 1016;

impl Dw {
    /// Whether this weight is IQ2_XXS stored as 4-bit codes.
    pub(crate) fn coded(&self) -> bool {
        self.ty == TY_IQ2C
    }
}

/// The IQ2_XXS tensors (by file offset) that go to the device as 4-bit codes.
pub(crate) type Coded = HashSet<usize>;

/// Bytes per pinned staging buffer.
const STAGE: usize = 64 << 20;

/// A device layout into which a GGUF tensor is repacked at upload: its `block`-byte blocks
/// become `quants` bytes each in plane a and `side` bytes each in plane b (256-aligned after
/// plane a), by `kernel` (kernels/repack.cu).
struct Repack {
    kernel: &'static str,
    block: usize,
    quants: usize,
    side: usize,
    /// The 4-bit codes (TY_IQ2C) rather than the GGUF type's own planes.
    codes: bool,
}

const REPACK_Q8_0: Repack = Repack {
    kernel: "repack_q8_0",
    block: 34,
    quants: 32,
    side: 2,
    codes: false,
};
const REPACK_IQ2_XXS: Repack = Repack {
    kernel: "repack_iq2_xxs",
    block: 66,
    quants: 64,
    side: 2,
    codes: false,
};
const REPACK_IQ2C: Repack = Repack {
    kernel: "repack_iq2c",
    block: 66,
    quants: 128,
    side: 8,
    codes: true,
};

impl Repack {
    /// Blocks of a tensor of `n` file bytes.
    fn blocks(&self, n: usize) -> usize {
        n / self.block
    }

    /// Device bytes of a tensor of `n` file bytes (both planes).
    fn bytes(&self, n: usize) -> usize {
        align(self.blocks(n) * self.quants) + self.blocks(n) * self.side
    }
}

/// The layout `t` is repacked into on the device (codes when `coded` holds it), if any.
fn repack_of(t: &TensorRef, coded: &Coded) -> Option<&'static Repack> {
    match t.ty {
        GgmlType::IQ2_XXS if coded.contains(&t.range.start) => Some(&REPACK_IQ2C),
        GgmlType::IQ2_XXS => Some(&REPACK_IQ2_XXS),
        GgmlType::Q8_0 => Some(&REPACK_Q8_0),
        _ => None,
    }
}

/// Device bytes of a tensor (planes included, each 256-aligned), in codes when `coded` holds it.
pub(crate) fn device_bytes(t: &TensorRef, coded: &Coded) -> usize {
    repack_of(t, coded).map_or(t.range.len(), |r| r.bytes(t.range.len()))
}

fn align(n: usize) -> usize {
    n.div_ceil(256) * 256
}

/// Every weight matrix of the model.
pub(crate) fn tensors(w: &Weights) -> Vec<&TensorRef> {
    let mut v = vec![&w.token_embd, &w.output_hc_fn, &w.output];
    for l in &w.layers {
        v.extend([
            &l.hc_attn.func,
            &l.hc_ffn.func,
            &l.attn_q_a,
            &l.attn_q_b,
            &l.attn_kv,
            &l.attn_output_a,
            &l.attn_output_b,
            &l.ffn_gate_inp,
            &l.ffn_gate_exps,
            &l.ffn_up_exps,
            &l.ffn_down_exps,
            &l.ffn_gate_shexp,
            &l.ffn_up_shexp,
            &l.ffn_down_shexp,
        ]);
        if let Some(c) = &l.attn_compressor {
            v.extend([&c.kv, &c.gate]);
        }
        if let Some(i) = &l.indexer {
            v.extend([&i.attn_q_b, &i.proj, &i.compressor.kv, &i.compressor.gate]);
        }
    }
    v
}

/// Every small f32 parameter vector of the model (keyed on the device by its address).
pub(crate) fn params(w: &Weights) -> Vec<&[f32]> {
    let mut v: Vec<&[f32]> = vec![&w.output_hc_scale, &w.output_hc_base, &w.output_norm];
    for l in &w.layers {
        v.extend([
            l.hc_attn.scale.as_slice(),
            &l.hc_attn.base,
            &l.hc_ffn.scale,
            &l.hc_ffn.base,
            &l.attn_norm,
            &l.attn_q_a_norm,
            &l.attn_kv_a_norm,
            &l.attn_sinks,
            &l.ffn_norm,
            &l.exp_probs_b,
        ]);
        if let Some(c) = &l.attn_compressor {
            v.extend([c.ape.as_slice(), &c.norm]);
        }
        if let Some(i) = &l.indexer {
            v.extend([i.compressor.ape.as_slice(), &i.compressor.norm]);
        }
    }
    v
}

/// The device weights: one allocation per tensor, looked up by the tensor's file offset.
pub(crate) struct DeviceWeights {
    pub by_offset: HashMap<usize, Dw>,
    pub params: HashMap<usize, u64>,
    pub bytes: usize,
    _bufs: Vec<DevBuf>,
}

/// Total device bytes the weights will take.
pub(crate) fn total_bytes(w: &Weights, coded: &Coded) -> usize {
    let mut seen = HashSet::new();
    let t: usize = tensors(w)
        .into_iter()
        .filter(|t| seen.insert(t.range.start))
        .map(|t| align(device_bytes(t, coded)))
        .sum();
    let p: usize = params(w).iter().map(|p| align(p.len() * 4)).sum();
    let tid: usize = w
        .layers
        .iter()
        .filter_map(|l| l.ffn_gate_tid2eid.as_ref())
        .map(|t| align(t.len() * 4))
        .sum();
    t + p + tid
}

/// The IQ2_XXS tensors to store as 4-bit codes, in model order (layer by layer), as long as
/// the bytes the codes add stay within `spare`: twice the quant bytes buy a decode dot of about
/// a third of the instructions (kernels/matmul.cu iq2c_part), which these instruction-bound
/// products turn into speed; what does not fit stays IQ2_XXS.
pub(crate) fn plan_codes(w: &Weights, spare: usize) -> Coded {
    let mut coded = Coded::new();
    let mut left = spare;
    for t in tensors(w) {
        if t.ty != GgmlType::IQ2_XXS || coded.contains(&t.range.start) {
            continue;
        }
        let n = t.range.len();
        let extra = align(REPACK_IQ2C.bytes(n)).saturating_sub(align(REPACK_IQ2_XXS.bytes(n)));
        if extra > left {
            break;
        }
        left -= extra;
        coded.insert(t.range.start);
    }
    coded
}

/// The largest tensor that is repacked (its raw bytes need a device staging buffer).
pub(crate) fn staging_bytes(w: &Weights) -> usize {
    tensors(w)
        .into_iter()
        .filter(|t| repack_of(t, &Coded::new()).is_some())
        .map(|t| t.range.len())
        .max()
        .unwrap_or(0)
}

/// Uploads every weight of `w` from `file`. `progress(done, total)` is called after each
/// tensor (bytes of the file).
pub(crate) fn upload(
    dev: &Device,
    kernels: &HashMap<&'static str, Kernel>,
    file: &[u8],
    w: &Weights,
    coded: &Coded,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DeviceWeights, CudaError> {
    let list = tensors(w);
    let total: usize = list.iter().map(|t| t.range.len()).sum();
    let mut stages = [Pinned::new(STAGE)?, Pinned::new(STAGE)?];
    let events = [Event::new()?, Event::new()?];
    let mut used = [false, false];
    let staging = DevBuf::new(staging_bytes(w))?;
    let mut bufs = Vec::new();
    let mut by_offset = HashMap::new();
    let mut done = 0usize;
    let mut turn = 0usize;
    let t0 = Instant::now();
    for t in list {
        if by_offset.contains_key(&t.range.start) {
            continue;
        }
        let src = file.get(t.range.clone()).ok_or_else(|| {
            CudaError::Model(format!("tensor `{}` lies outside the file", t.name))
        })?;
        let buf = DevBuf::new(device_bytes(t, coded))?;
        let repack = repack_of(t, coded);
        let dst = if repack.is_some() {
            staging.ptr
        } else {
            buf.ptr
        };
        // Copy in chunks through the two pinned buffers.
        for (ci, chunk) in src.chunks(STAGE).enumerate() {
            let s = turn % 2;
            turn += 1;
            if used[s] {
                events[s].wait()?;
            }
            let stage = &mut stages[s].as_mut_slice()[..chunk.len()];
            stage
                .par_chunks_mut(1 << 20)
                .zip(chunk.par_chunks(1 << 20))
                .for_each(|(d, s)| d.copy_from_slice(s));
            dev.htod(dst + (ci * STAGE) as u64, stage)?;
            events[s].record(dev)?;
            used[s] = true;
        }
        let (rows, cols) = (t.rows as i32, t.cols as i32);
        let dw = match repack {
            Some(r) => {
                let nblocks = r.blocks(t.range.len()) as i64;
                let qs = buf.ptr;
                let side = buf.ptr + align(nblocks as usize * r.quants) as u64;
                let grid = (nblocks as u64).div_ceil(256).min(65535) as u32;
                let src_ptr = staging.ptr;
                dev.launch(
                    &kernels[r.kernel],
                    (grid, 1, 1),
                    256,
                    0,
                    &mut kargs![&src_ptr, &nblocks, &qs, &side],
                )?;
                // The staging buffer is reused by the next repacked tensor.
                dev.sync()?;
                Dw {
                    a: qs,
                    b: side,
                    ty: if r.codes { TY_IQ2C } else { t.ty.id() as i32 },
                    rows,
                    cols,
                }
            }
            None => Dw {
                a: buf.ptr,
                b: 0,
                ty: t.ty.id() as i32,
                rows,
                cols,
            },
        };
        by_offset.insert(t.range.start, dw);
        bufs.push(buf);
        done += t.range.len();
        progress(done, total);
    }
    dev.sync()?;
    // Parameters: one buffer, each vector 256-aligned.
    let ps = params(w);
    let tids: Vec<&Vec<u32>> = w
        .layers
        .iter()
        .filter_map(|l| l.ffn_gate_tid2eid.as_ref())
        .collect();
    let plen: usize = ps.iter().map(|p| align(p.len() * 4)).sum::<usize>()
        + tids.iter().map(|t| align(t.len() * 4)).sum::<usize>();
    let pbuf = DevBuf::new(plen)?;
    let mut host = vec![0u8; plen];
    let mut params = HashMap::new();
    let mut off = 0usize;
    for p in ps {
        for (i, v) in p.iter().enumerate() {
            host[off + 4 * i..off + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        params.insert(p.as_ptr() as usize, pbuf.ptr + off as u64);
        off += align(p.len() * 4);
    }
    for t in tids {
        for (i, v) in t.iter().enumerate() {
            host[off + 4 * i..off + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        params.insert(t.as_ptr() as usize, pbuf.ptr + off as u64);
        off += align(t.len() * 4);
    }
    dev.htod(pbuf.ptr, &host)?;
    dev.sync()?;
    let _ = t0;
    let bytes = bufs.iter().map(|b| b.len).sum::<usize>() + plen;
    bufs.push(pbuf);
    Ok(DeviceWeights {
        by_offset,
        params,
        bytes,
        _bufs: bufs,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ds4::gguf::GgufFile;
    use ds4::model::Model;
    use ds4::tiny::{generate, ExpertRecipe, TinySpec};

    use super::*;

    fn q2_model() -> Model {
        let mut b = Vec::new();
        generate(&TinySpec {
            recipe: ExpertRecipe::Q2,
            layers: 3,
            ..TinySpec::default()
        })
        .expect("generate")
        .write_to(&mut b)
        .expect("write");
        Model::from_file(Arc::new(GgufFile::from_bytes(b).expect("parse"))).expect("bind")
    }

    /// The bytes coding `t` adds.
    fn extra(t: &TensorRef) -> usize {
        let one: Coded = [t.range.start].into_iter().collect();
        align(device_bytes(t, &one)) - align(device_bytes(t, &Coded::new()))
    }

    /// The codes take what the budget allows, in model order, and the device bytes count them.
    #[test]
    fn plan_codes_fills_the_budget_in_model_order() {
        let m = q2_model();
        let w = &m.weights;
        let iq2: Vec<&TensorRef> = tensors(w)
            .into_iter()
            .filter(|t| t.ty == GgmlType::IQ2_XXS)
            .collect();
        assert!(iq2.len() >= 4, "{} IQ2_XXS tensors", iq2.len());
        // Each coded tensor takes 136 bytes a block instead of 66 (+ plane alignment).
        for t in &iq2 {
            let blocks = t.range.len() / 66;
            assert!(
                extra(t) >= blocks * 70,
                "{}: {} extra bytes",
                t.name,
                extra(t)
            );
        }
        assert!(plan_codes(w, 0).is_empty());
        let all: usize = iq2.iter().map(|t| extra(t)).sum();
        assert_eq!(plan_codes(w, all).len(), iq2.len());
        assert_eq!(plan_codes(w, usize::MAX).len(), iq2.len());
        // One byte short of the first two: only the first.
        let two = extra(iq2[0]) + extra(iq2[1]);
        let c = plan_codes(w, two - 1);
        assert_eq!(c.len(), 1);
        assert!(c.contains(&iq2[0].range.start));
        let none = Coded::new();
        assert_eq!(
            total_bytes(w, &plan_codes(w, two)) - total_bytes(w, &none),
            two
        );
        // Only IQ2_XXS tensors are ever coded.
        assert!(plan_codes(w, usize::MAX)
            .iter()
            .all(|off| iq2.iter().any(|t| t.range.start == *off)));
    }
}
