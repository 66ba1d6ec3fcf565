//! `ds4::backend::Backend` for [`CudaBackend`]: memory, sessions and steps here; every
//! operation delegates to its launcher in `ops/`.

use std::ops::Range;

use ds4::backend::{BResult, Backend, CompStream, DType, Rows, SessionState, StepKey, Tensor};
use ds4::model::config::Config;
use ds4::model::rope::Rope;
use ds4::model::weights::{CompressorWeights, HcWeights, TensorRef};
use ds4::model::Numerics;
use ds4::session::KvState;

use crate::ops::{dp, dstate, err};
use crate::state::DevState;
use crate::{be_err, CudaBackend, DevT};

impl CudaBackend {
    pub(crate) fn op_read(&self, t: &Tensor, rows: Range<usize>) -> BResult<Vec<f32>> {
        if t.dtype != DType::F32 || rows.end > t.rows || rows.start > rows.end {
            return Err(err(format!("read of rows {rows:?} of {t:?}")));
        }
        let at = dp(t)? + (rows.start * t.cols * 4) as u64;
        let len = rows.len() * t.cols * 4;
        if self.timeline.is_some() {
            self.mark("read call", false);
            self.dev.sync().map_err(be_err)?;
            self.mark("device wait", false);
        }
        let out = self.read_f32(at, len).map_err(be_err)?;
        self.mark_end("read copy");
        Ok(out)
    }

    pub(crate) fn op_read_i32(&self, t: &Tensor) -> BResult<Vec<i32>> {
        if t.dtype != DType::I32 {
            return Err(err(format!("read_i32 of {t:?}")));
        }
        let mut b = vec![0u8; t.len() * 4];
        self.dev.dtoh(&mut b, dp(t)?).map_err(be_err)?;
        Ok(b.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// A step (Backend::step): replays its recording, records it, or runs it directly.
    fn run_step(
        &self,
        key: StepKey,
        session: u64,
        body: &mut dyn FnMut() -> BResult<()>,
    ) -> BResult<()> {
        self.dev.make_current().map_err(be_err)?;
        // Planes held from before this step (or a failed recording of it) are not trusted.
        self.drop_planes();
        let recordable = self.opts_graphs() && !self.profiling() && key.fast && key.rows == 1;
        let id = (key, session);
        if !recordable
            || self
                .no_graph
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id)
        {
            return body();
        }
        {
            let graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(g) = graphs.get(&id) {
                self.mark("replay call", false);
                let r = self.dev.replay(g).map_err(be_err);
                self.mark("graph launch", true);
                return r;
            }
        }
        self.dev.begin_capture().map_err(be_err)?;
        let r = body();
        let g = self.dev.end_capture();
        match (r, g) {
            (Ok(()), Ok(g)) => {
                self.dev.replay(&g).map_err(be_err)?;
                let mut graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
                // A few recordings per session and bucket; drop them all when the cache grows
                // (sessions come and go).
                if graphs.len() >= 64 {
                    graphs.clear();
                }
                graphs.insert(id, g);
                Ok(())
            }
            // This step cannot be recorded: run it directly from now on.
            _ => {
                self.no_graph
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id);
                self.lanes_reset();
                self.arena.reset();
                self.drop_planes();
                body()
            }
        }
    }

    /// Counts a batch of `n` rows for the event profile.
    fn note_batch(&self, n: usize) {
        if let Some(p) = &self.profile {
            use std::sync::atomic::Ordering::Relaxed;
            let decode = n == 1;
            p.decode.store(decode, Relaxed);
            p.steps[if decode { 0 } else { 1 }].fetch_add(1, Relaxed);
        }
    }

    fn dev_state_mut(st: &mut SessionState) -> BResult<&mut DevState> {
        st.data
            .downcast_mut::<DevState>()
            .ok_or_else(|| err("the session state was not made by the CUDA backend"))
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device_memory_used(&self) -> Option<usize> {
        self.mem_info().ok().map(|(free, total)| total - free)
    }

    fn begin(&self) -> BResult<()> {
        self.mark("caller", false);
        self.dev.make_current().map_err(be_err)?;
        self.lanes_reset();
        self.arena.reset();
        self.drop_planes();
        Ok(())
    }

    fn alloc(&self, rows: usize, cols: usize, dtype: DType) -> BResult<Tensor> {
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| err(format!("tensor of {rows} × {cols} elements overflows")))?;
        let ptr = self.scratch(n * 4)?;
        // A new tensor where a released one was: its old planes are not this one's.
        self.forget_planes(ptr);
        Ok(Tensor {
            rows,
            cols,
            dtype,
            data: Box::new(DevT(ptr)),
        })
    }

    fn write(&self, t: &mut Tensor, values: &[f32]) -> BResult<()> {
        if values.len() != t.len() {
            return Err(err(format!("write of {} values into {t:?}", values.len())));
        }
        let bytes: Vec<u8> = match t.dtype {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::I32 => values
                .iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
        };
        self.forget_planes(dp(t)?);
        self.dev.htod(dp(t)?, &bytes).map_err(be_err)?;
        self.dev.sync().map_err(be_err)
    }

    fn read(&self, t: &Tensor, rows: Range<usize>) -> BResult<Vec<f32>> {
        self.op_read(t, rows)
    }

    fn read_i32(&self, t: &Tensor) -> BResult<Vec<i32>> {
        self.op_read_i32(t)
    }

    fn rows(&self, tokens: &[u32], pos0: usize) -> BResult<Rows> {
        self.mark("begin", false);
        self.dev.make_current().map_err(be_err)?;
        self.note_batch(tokens.len());
        let d = self.write_rows(tokens, pos0).map_err(be_err)?;
        // write_rows waited for the stream: no chosen token is still to come.
        self.drop_sampled();
        self.mark("rows", false);
        self.lanes_for_batch(tokens.len());
        Ok(Rows {
            tokens: tokens.to_vec(),
            pos: (pos0..pos0 + tokens.len()).collect(),
            slot: vec![0; tokens.len()],
            data: Box::new(d),
        })
    }

    fn rows_sampled(&self, pos: usize) -> BResult<Rows> {
        self.mark("begin", false);
        self.dev.make_current().map_err(be_err)?;
        self.note_batch(1);
        // argmax_next wrote the token and the position into the row buffer on the device.
        self.mark("rows", false);
        self.lanes_for_batch(1);
        Ok(Rows {
            tokens: vec![ds4::backend::UNKNOWN_TOKEN],
            pos: vec![pos],
            slot: vec![0],
            data: Box::new(self.dev_rows()),
        })
    }

    fn take_sampled(&self, pos: usize) -> BResult<u32> {
        self.op_take_sampled(pos)
    }

    fn new_state(&self, cfg: &Config, ctx: usize) -> BResult<SessionState> {
        self.dev.make_current().map_err(be_err)?;
        let st = DevState::new(&self.dev, cfg, ctx).map_err(be_err)?;
        Ok(SessionState {
            ctx,
            id: self
                .next_state
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            data: Box::new(st),
        })
    }

    fn reset_state(&self, _cfg: &Config, st: &mut SessionState) -> BResult<()> {
        self.dev.make_current().map_err(be_err)?;
        dstate(st)?.reset(&self.dev).map_err(be_err)
    }

    fn export_state(&self, st: &SessionState, n_tokens: usize) -> BResult<KvState> {
        self.dev.make_current().map_err(be_err)?;
        dstate(st)?
            .export(&self.dev, &self.cfg, n_tokens)
            .map_err(be_err)
    }

    fn import_state(
        &self,
        cfg: &Config,
        kv: &KvState,
        n_tokens: usize,
        st: &mut SessionState,
    ) -> BResult<()> {
        self.dev.make_current().map_err(be_err)?;
        kv.check(cfg).map_err(err)?;
        if n_tokens > st.ctx {
            return Err(err(format!(
                "a snapshot of {n_tokens} tokens does not fit a context of {}",
                st.ctx
            )));
        }
        Self::dev_state_mut(st)?
            .import(&self.dev, kv, n_tokens)
            .map_err(be_err)
    }

    fn step(
        &self,
        key: StepKey,
        session: u64,
        body: &mut dyn FnMut() -> BResult<()>,
    ) -> BResult<()> {
        self.run_step(key, session, body)?;
        if key.greedy.is_some() {
            self.sampled_step_issued()?;
        }
        Ok(())
    }

    fn lane(&self, lane: ds4::backend::Lane) -> BResult<()> {
        self.op_lane(lane)
    }

    fn argmax_next(&self, logits: &Tensor, rows: &Rows, g: ds4::backend::Greedy) -> BResult<()> {
        self.op_argmax_next(logits, rows, g)
    }

    fn embed(&self, w: &TensorRef, rows: &Rows, n_hc: usize, x_hc: &mut Tensor) -> BResult<()> {
        self.op_embed(w, rows, n_hc, x_hc)
    }

    fn hc_pre(
        &self,
        x_hc: &Tensor,
        w: &HcWeights,
        cfg: &Config,
        out: &mut Tensor,
        mix: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        self.op_hc_pre(x_hc, w, cfg, out, mix, num)
    }

    fn hc_post(
        &self,
        y: &Tensor,
        x_hc: &Tensor,
        mix: &Tensor,
        n_hc: usize,
        out: &mut Tensor,
    ) -> BResult<()> {
        self.op_hc_post(y, x_hc, mix, n_hc, out)
    }

    fn hc_post_pre(
        &self,
        y: &Tensor,
        x_hc: &Tensor,
        mix: &mut Tensor,
        out: &mut Tensor,
        w: &HcWeights,
        norm: &[f32],
        cfg: &Config,
        h: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        self.op_hc_post_pre(y, x_hc, mix, out, w, norm, cfg, h, num)
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
        num: Numerics,
    ) -> BResult<()> {
        self.op_hc_head(x_hc, first, func, scale, base, cfg, z, num)
    }

    fn rms_norm(&self, x: &mut Tensor, w: Option<&[f32]>, group: usize, eps: f32) -> BResult<()> {
        self.op_rms_norm(x, w, group, eps)
    }

    fn matmul(&self, w: &TensorRef, x: &Tensor, y: &mut Tensor, num: Numerics) -> BResult<()> {
        self.op_matmul(w, x, y, num)
    }

    fn matmul_add(
        &self,
        w: &TensorRef,
        x: &Tensor,
        tmp: &mut Tensor,
        y: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        self.op_matmul_add(w, x, tmp, y, num)
    }

    fn matmuls(
        &self,
        ws: &[&TensorRef],
        x: &Tensor,
        ys: &mut [&mut Tensor],
        num: Numerics,
    ) -> BResult<()> {
        self.op_matmuls(ws, x, ys, num)
    }

    fn matmul_grouped(
        &self,
        w: &TensorRef,
        groups: usize,
        x: &Tensor,
        y: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        self.op_matmul_grouped(w, groups, x, y, num)
    }

    fn rope(
        &self,
        x: &mut Tensor,
        head_dim: usize,
        rope: &Rope,
        rows: &Rows,
        inverse: bool,
    ) -> BResult<()> {
        self.op_rope(x, head_dim, rope, rows, inverse)
    }

    fn head_norm_rope(
        &self,
        x: &mut Tensor,
        w: Option<&[f32]>,
        head_dim: usize,
        eps: f32,
        rope: &Rope,
        rows: &Rows,
    ) -> BResult<()> {
        self.op_head_norm_rope(x, w, head_dim, eps, rope, rows)
    }

    fn kv_round(&self, x: &mut Tensor, n_rot: usize, num: Numerics) -> BResult<()> {
        self.op_kv_round(x, n_rot, num)
    }

    fn indexer_qat(&self, x: &mut Tensor, head_dim: usize, num: Numerics) -> BResult<()> {
        self.op_indexer_qat(x, head_dim, num)
    }

    fn scale(&self, x: &mut Tensor, s: f32) -> BResult<()> {
        self.op_scale(x, s)
    }

    fn add(&self, y: &mut Tensor, x: &Tensor) -> BResult<()> {
        self.op_add(y, x)
    }

    fn raw_push(&self, st: &mut SessionState, il: usize, kv: &Tensor, rows: &Rows) -> BResult<()> {
        self.op_raw_push(st, il, kv, rows)
    }

    fn compress(
        &self,
        st: &mut SessionState,
        il: usize,
        stream: CompStream,
        kv: &Tensor,
        score: &Tensor,
        w: &CompressorWeights,
        rope: &Rope,
        cfg: &Config,
        num: Numerics,
        rows: &Rows,
    ) -> BResult<()> {
        self.op_compress(st, il, stream, kv, score, w, rope, cfg, num, rows)
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
        self.op_indexer_select(st, il, q, wts, rows, sel)
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
        num: Numerics,
        out: &mut Tensor,
    ) -> BResult<()> {
        self.op_attention(st, il, q, sinks, sel, cfg, rope, rows, num, out)
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
        self.op_route(logits, bias, tid2eid, scale, rows, ids, wts)
    }

    fn swiglu(
        &self,
        gate: &TensorRef,
        up: &TensorRef,
        x: &Tensor,
        clamp: f32,
        mid: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        self.op_swiglu(gate, up, x, clamp, mid, num)
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
        num: Numerics,
    ) -> BResult<()> {
        self.op_moe_experts(gate, up, down, x, ids, wts, clamp, out, num)
    }
}
