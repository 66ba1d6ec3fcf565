//! The CPU backend: the correctness reference. Tensors are host vectors, the session state is
//! the host form [`KvState`] itself, and weights are read in place from the mapped file:
//! matmuls dequantise weight rows on the fly against f32 activations (`quant::matmul`, SIMD
//! where the CPU has it, rayon across rows). Every operation is plain loops over the spec's
//! formulas; the files beside this one group them by spec concept.

mod attention;
mod compressor;
mod hc;
mod indexer;
mod moe;

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{
    BResult, Backend, BackendError, CompStream, DType, Greedy, Rows, SessionState, StepKey, Tensor,
};
use crate::gguf::GgufFile;
use crate::model::config::Config;
use crate::model::numerics::{fp8_e4m3_sim, indexer_qat_sim, rms_norm, round_f16};
use crate::model::rope::Rope;
use crate::model::weights::{CompressorWeights, HcWeights, TensorRef};
use crate::model::Numerics;
use crate::quant::{self, QMatrix};
use crate::session::KvState;

/// Runs every op on the host.
#[derive(Debug)]
pub struct CpuBackend {
    file: Arc<GgufFile>,
    /// Operations left before every further one fails (fault injection for tests).
    fault_after: Option<AtomicUsize>,
    next_state_id: AtomicUsize,
    /// Greedy choices made by `argmax_next` and not yet taken, oldest first.
    sampled: Mutex<VecDeque<u32>>,
}

pub(crate) fn err(e: impl ToString) -> BackendError {
    BackendError::new("cpu", e)
}

/// The host vector of an F32 tensor.
pub(crate) fn f32s(t: &Tensor) -> BResult<&Vec<f32>> {
    t.data
        .downcast_ref::<Vec<f32>>()
        .ok_or_else(|| err(format!("{t:?} is not an F32 CPU tensor")))
}

/// The host vector of an F32 tensor, mutably.
pub(crate) fn f32s_mut(t: &mut Tensor) -> BResult<&mut Vec<f32>> {
    let what = format!("{t:?}");
    t.data
        .downcast_mut::<Vec<f32>>()
        .ok_or_else(|| err(format!("{what} is not an F32 CPU tensor")))
}

/// The host vector of an I32 tensor.
pub(crate) fn i32s(t: &Tensor) -> BResult<&Vec<i32>> {
    t.data
        .downcast_ref::<Vec<i32>>()
        .ok_or_else(|| err(format!("{t:?} is not an I32 CPU tensor")))
}

/// The host vector of an I32 tensor, mutably.
pub(crate) fn i32s_mut(t: &mut Tensor) -> BResult<&mut Vec<i32>> {
    let what = format!("{t:?}");
    t.data
        .downcast_mut::<Vec<i32>>()
        .ok_or_else(|| err(format!("{what} is not an I32 CPU tensor")))
}

/// The KV state of a CPU session.
pub(crate) fn kv(st: &SessionState) -> BResult<&KvState> {
    st.data
        .downcast_ref::<KvState>()
        .ok_or_else(|| err("the session state was not made by the CPU backend"))
}

/// The KV state of a CPU session, mutably.
pub(crate) fn kv_mut(st: &mut SessionState) -> BResult<&mut KvState> {
    st.data
        .downcast_mut::<KvState>()
        .ok_or_else(|| err("the session state was not made by the CPU backend"))
}

/// Fails unless `t` is `[rows × cols]`.
pub(crate) fn want(t: &Tensor, rows: usize, cols: usize, what: &str) -> BResult<()> {
    if t.rows != rows || t.cols != cols {
        return Err(err(format!(
            "{what}: expected [{rows} × {cols}], found [{} × {}]",
            t.rows, t.cols
        )));
    }
    Ok(())
}

impl CpuBackend {
    /// A backend reading weights from `file` (the one the weights were bound from).
    pub fn new(file: Arc<GgufFile>) -> Self {
        CpuBackend {
            file,
            fault_after: None,
            next_state_id: AtomicUsize::new(1),
            sampled: Mutex::new(VecDeque::new()),
        }
    }

    /// As [`CpuBackend::new`], but every operation after the first `ok` fails as a device
    /// running out of memory would: for tests of error handling.
    pub fn failing_after(file: Arc<GgufFile>, ok: usize) -> Self {
        CpuBackend {
            fault_after: Some(AtomicUsize::new(ok)),
            ..Self::new(file)
        }
    }

    fn tick(&self) -> BResult<()> {
        if let Some(left) = &self.fault_after {
            let n = left.load(Ordering::SeqCst);
            if n == 0 {
                return Err(err("out of device memory (injected fault)"));
            }
            left.store(n - 1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn sampled_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<u32>> {
        self.sampled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bytes of the mapped file.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.file.bytes()
    }

    /// `y = W[m][rows] · x` for `n` rows of `x`.
    pub(crate) fn matmul_view(
        &self,
        w: &TensorRef,
        m: usize,
        rows: Range<usize>,
        x: &[f32],
        n: usize,
    ) -> BResult<Vec<f32>> {
        let view: QMatrix<'_> = w.view(self.bytes(), m, rows).map_err(err)?;
        let mut y = vec![0f32; n * view.rows];
        quant::matmul(&view, x, n, &mut y).map_err(err)?;
        Ok(y)
    }
}

/// Storage rounding of one attention row (raw or compressed): FP8 on the non-RoPE dims, then
/// f16 (spec §7.1, §7.3). Each step only when `num` asks for it.
pub(crate) fn finish_kv_row(row: &mut [f32], n_rot: usize, num: Numerics) {
    if num.fp8_kv {
        let nope = row.len() - n_rot;
        fp8_e4m3_sim(&mut row[..nope]);
    }
    if num.f16_rows {
        round_f16(row);
    }
}

/// Storage rounding of one indexer row or query head: Hadamard + FP4 (spec §7.2), and f16 for
/// stored rows.
pub(crate) fn finish_idx(x: &mut [f32], num: Numerics, stored: bool) {
    if num.indexer_qat {
        indexer_qat_sim(x);
    }
    if stored && num.f16_rows {
        round_f16(x);
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn begin(&self) -> BResult<()> {
        Ok(())
    }

    fn alloc(&self, rows: usize, cols: usize, dtype: DType) -> BResult<Tensor> {
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| err(format!("tensor of {rows} × {cols} elements overflows")))?;
        let data: Box<dyn std::any::Any + Send + Sync> = match dtype {
            DType::F32 => Box::new(vec![0f32; n]),
            DType::I32 => Box::new(vec![0i32; n]),
        };
        Ok(Tensor {
            rows,
            cols,
            dtype,
            data,
        })
    }

    fn write(&self, t: &mut Tensor, values: &[f32]) -> BResult<()> {
        if values.len() != t.len() {
            return Err(err(format!("write of {} values into {t:?}", values.len())));
        }
        match t.dtype {
            DType::F32 => f32s_mut(t)?.copy_from_slice(values),
            DType::I32 => i32s_mut(t)?
                .iter_mut()
                .zip(values)
                .for_each(|(d, &v)| *d = v as i32),
        }
        Ok(())
    }

    fn read(&self, t: &Tensor, rows: Range<usize>) -> BResult<Vec<f32>> {
        let v = f32s(t)?;
        v.get(rows.start * t.cols..rows.end * t.cols)
            .map(|s| s.to_vec())
            .ok_or_else(|| err(format!("read of rows {rows:?} of {t:?}")))
    }

    fn read_i32(&self, t: &Tensor) -> BResult<Vec<i32>> {
        Ok(i32s(t)?.clone())
    }

    fn rows(&self, tokens: &[u32], pos0: usize) -> BResult<Rows> {
        // A batch of known tokens: choices a failed greedy run left behind are stale.
        self.sampled_queue().clear();
        Ok(Rows {
            tokens: tokens.to_vec(),
            pos: (pos0..pos0 + tokens.len()).collect(),
            slot: vec![0; tokens.len()],
            data: Box::new(()),
        })
    }

    fn rows_sampled(&self, pos: usize) -> BResult<Rows> {
        let t = self
            .sampled_queue()
            .back()
            .copied()
            .ok_or_else(|| err("no greedy choice to feed"))?;
        Ok(Rows {
            tokens: vec![t],
            pos: vec![pos],
            slot: vec![0],
            data: Box::new(()),
        })
    }

    fn take_sampled(&self, _pos: usize) -> BResult<u32> {
        self.sampled_queue()
            .pop_front()
            .ok_or_else(|| err("no greedy choice pending"))
    }

    fn new_state(&self, cfg: &Config, ctx: usize) -> BResult<SessionState> {
        Ok(SessionState {
            ctx,
            id: self.next_state_id.fetch_add(1, Ordering::Relaxed) as u64,
            data: Box::new(KvState::new(cfg)),
        })
    }

    fn reset_state(&self, cfg: &Config, st: &mut SessionState) -> BResult<()> {
        *kv_mut(st)? = KvState::new(cfg);
        Ok(())
    }

    fn export_state(&self, st: &SessionState, _n_tokens: usize) -> BResult<KvState> {
        Ok(kv(st)?.canonical())
    }

    fn import_state(
        &self,
        cfg: &Config,
        kv: &KvState,
        _n_tokens: usize,
        st: &mut SessionState,
    ) -> BResult<()> {
        kv.check(cfg).map_err(err)?;
        *kv_mut(st)? = kv.clone();
        Ok(())
    }

    fn step(
        &self,
        _key: StepKey,
        _session: u64,
        body: &mut dyn FnMut() -> BResult<()>,
    ) -> BResult<()> {
        body()
    }

    fn embed(&self, w: &TensorRef, rows: &Rows, n_hc: usize, x_hc: &mut Tensor) -> BResult<()> {
        self.tick()?;
        let e = w.cols;
        want(x_hc, rows.n(), n_hc * e, "embed output")?;
        let m = w.view(self.bytes(), 0, 0..w.rows).map_err(err)?;
        let out = f32s_mut(x_hc)?;
        for (&t, xt) in rows.tokens.iter().zip(out.chunks_mut(n_hc * e)) {
            let t = t as usize;
            if t >= w.rows {
                return Err(err(format!("token {t} outside the embedding table")));
            }
            let (first, rest) = xt.split_at_mut(e);
            quant::dequantize(w.ty, m.row(t), first).map_err(err)?;
            rest.chunks_mut(e).for_each(|s| s.copy_from_slice(first));
        }
        Ok(())
    }

    fn hc_pre(
        &self,
        x_hc: &Tensor,
        w: &HcWeights,
        cfg: &Config,
        out: &mut Tensor,
        mix: &mut Tensor,
        _num: Numerics,
    ) -> BResult<()> {
        self.tick()?;
        hc::hc_pre(self, x_hc, w, cfg, out, mix)
    }

    fn hc_post(
        &self,
        y: &Tensor,
        x_hc: &Tensor,
        mix: &Tensor,
        n_hc: usize,
        out: &mut Tensor,
    ) -> BResult<()> {
        self.tick()?;
        hc::hc_post(y, x_hc, mix, n_hc, out)
    }

    fn hc_head(
        &self,
        x_hc: &Tensor,
        first: usize,
        func: &TensorRef,
        scale: f32,
        base: &[f32],
        cfg: &Config,
        z: &mut Tensor,
        _num: Numerics,
    ) -> BResult<()> {
        self.tick()?;
        hc::hc_head(self, x_hc, first, func, scale, base, cfg, z)
    }

    fn rms_norm(&self, x: &mut Tensor, w: Option<&[f32]>, group: usize, eps: f32) -> BResult<()> {
        self.tick()?;
        if group == 0 || !x.cols.is_multiple_of(group) || w.is_some_and(|w| w.len() != group) {
            return Err(err(format!("rms_norm of {x:?} in groups of {group}")));
        }
        f32s_mut(x)?
            .par_chunks_mut(group)
            .for_each(|r| rms_norm(r, w, eps));
        Ok(())
    }

    fn matmul(&self, w: &TensorRef, x: &Tensor, y: &mut Tensor, _num: Numerics) -> BResult<()> {
        self.tick()?;
        want(x, x.rows, w.cols, &format!("{} input", w.name))?;
        want(y, x.rows, w.rows, &format!("{} output", w.name))?;
        let r = self.matmul_view(w, 0, 0..w.rows, f32s(x)?, x.rows)?;
        *f32s_mut(y)? = r;
        Ok(())
    }

    fn matmul_grouped(
        &self,
        w: &TensorRef,
        groups: usize,
        x: &Tensor,
        y: &mut Tensor,
        _num: Numerics,
    ) -> BResult<()> {
        self.tick()?;
        let n = x.rows;
        if groups == 0 || !w.rows.is_multiple_of(groups) {
            return Err(err(format!("{}: {groups} groups", w.name)));
        }
        want(x, n, groups * w.cols, &format!("{} input", w.name))?;
        want(y, n, w.rows, &format!("{} output", w.name))?;
        let (gw, gr) = (w.cols, w.rows / groups);
        let xs = f32s(x)?;
        let mut low = vec![0f32; n * w.rows];
        for g in 0..groups {
            let xg: Vec<f32> = xs
                .chunks(groups * gw)
                .flat_map(|xt| xt[g * gw..(g + 1) * gw].iter().copied())
                .collect();
            let yg = self.matmul_view(w, 0, g * gr..(g + 1) * gr, &xg, n)?;
            for t in 0..n {
                low[(t * groups + g) * gr..(t * groups + g + 1) * gr]
                    .copy_from_slice(&yg[t * gr..(t + 1) * gr]);
            }
        }
        *f32s_mut(y)? = low;
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Tensor,
        head_dim: usize,
        rope: &Rope,
        rows: &Rows,
        inverse: bool,
    ) -> BResult<()> {
        self.tick()?;
        if head_dim == 0 || !x.cols.is_multiple_of(head_dim) || x.rows != rows.n() {
            return Err(err(format!("rope of {x:?} in heads of {head_dim}")));
        }
        let cols = x.cols;
        f32s_mut(x)?
            .par_chunks_mut(cols)
            .zip(rows.pos.par_iter())
            .for_each(|(xt, &p)| {
                for head in xt.chunks_mut(head_dim) {
                    rope.apply(head, p, inverse);
                }
            });
        Ok(())
    }

    fn kv_round(&self, x: &mut Tensor, n_rot: usize, num: Numerics) -> BResult<()> {
        self.tick()?;
        let cols = x.cols;
        f32s_mut(x)?
            .par_chunks_mut(cols)
            .for_each(|row| finish_kv_row(row, n_rot, num));
        Ok(())
    }

    fn indexer_qat(&self, x: &mut Tensor, head_dim: usize, num: Numerics) -> BResult<()> {
        self.tick()?;
        f32s_mut(x)?
            .par_chunks_mut(head_dim)
            .for_each(|h| finish_idx(h, num, false));
        Ok(())
    }

    fn scale(&self, x: &mut Tensor, s: f32) -> BResult<()> {
        self.tick()?;
        f32s_mut(x)?.iter_mut().for_each(|v| *v *= s);
        Ok(())
    }

    fn add(&self, y: &mut Tensor, x: &Tensor) -> BResult<()> {
        self.tick()?;
        want(x, y.rows, y.cols, "add input")?;
        let xs = f32s(x)?;
        f32s_mut(y)?.iter_mut().zip(xs).for_each(|(o, &s)| *o += s);
        Ok(())
    }

    fn raw_push(
        &self,
        st: &mut SessionState,
        il: usize,
        kv_rows: &Tensor,
        _rows: &Rows,
    ) -> BResult<()> {
        self.tick()?;
        attention::raw_push(kv_mut(st)?, il, f32s(kv_rows)?, kv_rows.cols)
    }

    fn compress(
        &self,
        st: &mut SessionState,
        il: usize,
        stream: CompStream,
        kv_p: &Tensor,
        score: &Tensor,
        w: &CompressorWeights,
        rope: &Rope,
        cfg: &Config,
        num: Numerics,
        rows: &Rows,
    ) -> BResult<()> {
        self.tick()?;
        compressor::compress(
            kv_mut(st)?,
            il,
            stream,
            kv_p,
            score,
            w,
            rope,
            cfg,
            num,
            rows,
        )
    }

    fn indexer_select(
        &self,
        st: &SessionState,
        il: usize,
        q: &Tensor,
        wts: &Tensor,
        rows: &Rows,
        sel: &mut Tensor,
    ) -> BResult<()> {
        self.tick()?;
        indexer::select(kv(st)?, il, q, wts, rows, sel)
    }

    fn attention(
        &self,
        st: &SessionState,
        il: usize,
        q: &Tensor,
        sinks: &[f32],
        sel: Option<&Tensor>,
        cfg: &Config,
        rope: &Rope,
        rows: &Rows,
        _num: Numerics,
        out: &mut Tensor,
    ) -> BResult<()> {
        self.tick()?;
        attention::attention(kv(st)?, il, q, sinks, sel, cfg, rows, out)?;
        self.rope(out, cfg.head_dim, rope, rows, true)
    }

    fn route(
        &self,
        logits: &Tensor,
        bias: &[f32],
        tid2eid: Option<&[u32]>,
        scale: f32,
        rows: &Rows,
        ids: &mut Tensor,
        wts: &mut Tensor,
    ) -> BResult<()> {
        self.tick()?;
        moe::route(logits, bias, tid2eid, scale, rows, ids, wts)
    }

    fn swiglu(
        &self,
        gate: &TensorRef,
        up: &TensorRef,
        x: &Tensor,
        clamp: f32,
        mid: &mut Tensor,
        _num: Numerics,
    ) -> BResult<()> {
        self.tick()?;
        moe::swiglu_ffn(self, gate, up, x, clamp, mid)
    }

    fn moe_experts(
        &self,
        gate: &TensorRef,
        up: &TensorRef,
        down: &TensorRef,
        x: &Tensor,
        ids: &Tensor,
        wts: &Tensor,
        clamp: f32,
        out: &mut Tensor,
        _num: Numerics,
    ) -> BResult<()> {
        self.tick()?;
        moe::experts(self, gate, up, down, x, ids, wts, clamp, out)
    }

    fn argmax_next(&self, logits: &Tensor, rows: &Rows, g: Greedy) -> BResult<()> {
        self.tick()?;
        let (n, v) = (rows.n(), logits.cols);
        if logits.rows == 0 || n == 0 {
            return Err(err("greedy choice from no logits"));
        }
        let l = f32s(logits)?;
        let t = crate::sample::greedy_excluding(&l[(logits.rows - 1) * v..], g.skip);
        self.sampled_queue().push_back(t);
        Ok(())
    }
}

/// Sizes the global rayon pool that the CPU kernels run on. Call once, before any work.
pub fn set_threads(threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
}
