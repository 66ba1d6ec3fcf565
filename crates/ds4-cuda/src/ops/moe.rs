//! The FFN sublayer on the device (kernels/moe.cu, kernels/matmul.cu): routing, the shared
//! expert's SwiGLU and the routed experts. One-row decode in the fast mode reads the routing
//! from device memory (gate/up/SwiGLU of the selected experts in one launch, down summed over
//! them in another); chunks of several rows, and the precise mode, bring the routes to the host,
//! group rows by expert and run each expert over its rows (GEMMs, or the precise product).

use ds4::backend::{BResult, Rows, Tensor};
use ds4::gguf::GgmlType;
use ds4::model::weights::TensorRef;
use ds4::model::Numerics;

use super::matmul::{kname, mv_split};
use super::{blocks, dp, drows, err, want};
use crate::driver::kargs;
use crate::CudaBackend;

/// Floor of the selected scores' sum (spec §2.5 step 4), as the CPU uses.
const WEIGHT_SUM_FLOOR: f32 = 6.1035e-5;
/// Weight rows and slots of one block of the tensor-core expert kernel (MQ_ROWS, MQ_TOK).
const MQ_ROWS: usize = 64;
const MQ_TOK: usize = 64;
/// Experts group_slots can count (MQ_MAX_EXPERTS in kernels/mmq.cu).
const MQ_MAX_EXPERTS: usize = 1024;

/// Whether kernels/mmq.cu reads expert matrix `w`: its type, and columns in whole steps (64)
/// and, for the super-block types, whole blocks of 256.
fn mq_fits(w: &TensorRef) -> bool {
    use ds4::gguf::GgmlType as T;
    match w.ty {
        T::Q8_0 => w.cols.is_multiple_of(64),
        T::Q2_K | T::Q4_K | T::IQ2_XXS => w.cols.is_multiple_of(256),
        _ => false,
    }
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_route(
        &self,
        logits: &Tensor,
        bias: &[f32],
        tid2eid: Option<&[u32]>,
        scale: f32,
        rows: &Rows,
        ids: &mut Tensor,
        wts: &mut Tensor,
    ) -> BResult<()> {
        let (n, ne, k) = (rows.n(), logits.cols, ids.cols);
        want(logits, n, ne, "router logits")?;
        want(ids, n, k, "expert ids")?;
        want(wts, n, k, "expert weights")?;
        if bias.len() != ne || k > ne || ne > 1024 || k > 16 {
            return Err(err(format!(
                "router: {ne} experts, bias {}, k {k}",
                bias.len()
            )));
        }
        let tp = match tid2eid {
            Some(t) => self.p_u32(t)?,
            None => 0u64,
        };
        let (lp, bp, r, ip, wp) = (dp(logits)?, self.p(bias)?, drows(rows)?, dp(ids)?, dp(wts)?);
        // `route` keeps the norm planes (the experts read the same row): drop those of its
        // outputs.
        self.forget_planes(ip);
        self.forget_planes(wp);
        let (ne_i, k_i, fl) = (ne as i32, k as i32, WEIGHT_SUM_FLOOR);
        self.launch(
            "route",
            (n as u32, 1, 1),
            256,
            0,
            &mut kargs![&lp, &ne_i, &bp, &tp, &r.tokens, &k_i, &scale, &fl, &ip, &wp],
        )
    }

    /// `mid[m × ff] = silu(min(g, c))·clamp(u, ±c)·(wts[i] or 1)` of f32 g, u (temporaries).
    #[allow(clippy::too_many_arguments)]
    fn swiglu_rows(
        &self,
        g: u64,
        u: u64,
        m: usize,
        cols: usize,
        clamp: f32,
        wts: u64,
        mid: u64,
    ) -> BResult<()> {
        let (mm, c) = (m as i32, cols as i32);
        self.launch(
            "swiglu_rows",
            (blocks(m * cols), 1, 1),
            256,
            0,
            &mut kargs![&g, &u, &mm, &c, &clamp, &wts, &mid],
        )
    }

    /// Gate/up/SwiGLU then down of matrix `mat` of the stacks over `m` rows of x (row i taken
    /// from x[idx[i]] when idx is given), scaled per row by `wts` (or 1), into `out` `[m × E]`.
    #[allow(clippy::too_many_arguments)]
    fn ffn_rows(
        &self,
        gate: &TensorRef,
        up: &TensorRef,
        down: &TensorRef,
        mat: usize,
        x: u64,
        idx: u64,
        m: usize,
        clamp: f32,
        wts: u64,
        out: u64,
        num: Numerics,
    ) -> BResult<()> {
        let (e, ff) = (gate.cols, gate.rows);
        let (gw, uw, dw) = (self.w(gate)?, self.w(up)?, self.w(down)?);
        let mark = self.arena.mark();
        let (g, u, mid) = (
            self.scratch(m * ff * 4)?,
            self.scratch(m * ff * 4)?,
            self.scratch(m * ff * 4)?,
        );
        if num.fast {
            let x16 = self.to_f16(x, e, 0, idx, m, e)?;
            self.gemm(gw, mat, 0, ff, x16, e, m, m, g, ff)?;
            self.gemm(uw, mat, 0, ff, x16, e, m, m, u, ff)?;
            self.swiglu_rows(g, u, m, ff, clamp, wts, mid)?;
            let m16 = self.to_f16(mid, ff, 0, 0, m, ff)?;
            self.gemm(dw, mat, 0, down.rows, m16, ff, m, m, out, down.rows)?;
        } else {
            let xs = if idx != 0 {
                let xg = self.scratch(m * e * 4)?;
                let (mm, c) = (m as i32, e as i32);
                self.launch(
                    "gather_rows",
                    (blocks(m * e), 1, 1),
                    256,
                    0,
                    &mut kargs![&x, &idx, &mm, &c, &xg],
                )?;
                xg
            } else {
                x
            };
            self.mm_precise(gw, mat, 0, ff, xs, e, 0, m, g, ff, 0)?;
            self.mm_precise(uw, mat, 0, ff, xs, e, 0, m, u, ff, 0)?;
            self.swiglu_rows(g, u, m, ff, clamp, wts, mid)?;
            self.mm_precise(dw, mat, 0, down.rows, mid, ff, 0, m, out, down.rows, 0)?;
        }
        self.arena.release(mark);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_swiglu(
        &self,
        gate: &TensorRef,
        up: &TensorRef,
        x: &Tensor,
        clamp: f32,
        mid: &mut Tensor,
        num: Numerics,
    ) -> BResult<()> {
        let n = x.rows;
        want(x, n, gate.cols, "swiglu input")?;
        want(mid, n, gate.rows, "swiglu output")?;
        if gate.ty != up.ty || gate.rows != up.rows {
            return Err(err("swiglu: gate and up differ"));
        }
        let (gw, uw, xp, mp) = (self.w(gate)?, self.w(up)?, dp(x)?, dp(mid)?);
        self.forget_planes(mp);
        let ff = gate.rows;
        if num.fast && n == 1 {
            let mark = self.arena.mark();
            let (xq, xd) = self.quant_q8(gate.ty, xp, gate.cols, gate.cols, 1)?;
            // Warps per row as for a one-row product of ff rows (2 for the shared expert).
            let kspl = mv_split(ff, gate.cols);
            let grid = (ff.div_ceil(8 / kspl) as u32, 1, 1);
            let (zero, one, rp) = (0u64, 0u64, kspl as i32);
            self.launch(
                kname("gu", gate.ty, &gw)?,
                grid,
                256,
                0,
                &mut kargs![&gw, &uw, &xp, &xq, &xd, &zero, &one, &clamp, &mp, &rp],
            )?;
            self.arena.release(mark);
            return Ok(());
        }
        let mark = self.arena.mark();
        let (g, u) = (self.scratch(n * ff * 4)?, self.scratch(n * ff * 4)?);
        if num.fast {
            let x16 = self.to_f16(xp, gate.cols, 0, 0, n, gate.cols)?;
            self.gemm(gw, 0, 0, ff, x16, gate.cols, n, n, g, ff)?;
            self.gemm(uw, 0, 0, ff, x16, gate.cols, n, n, u, ff)?;
        } else {
            self.mm_precise(gw, 0, 0, ff, xp, gate.cols, 0, n, g, ff, 0)?;
            self.mm_precise(uw, 0, 0, ff, xp, gate.cols, 0, n, u, ff, 0)?;
        }
        self.swiglu_rows(g, u, n, ff, clamp, 0, mp)?;
        self.arena.release(mark);
        Ok(())
    }

    /// The 16-column sums of the f16 pairs `x16` of `slots` rows of `cols` that the K-quant
    /// expert kernels' minimum needs (kernels/mmq.cu `mq_xsum`), or 0 when no matrix of type
    /// `ty` reads them: once per activation, shared by the products that read it.
    fn mq_xsum(&self, ty: GgmlType, x16: u64, slots: usize, cols: usize) -> BResult<u64> {
        if !matches!(ty, GgmlType::Q2_K | GgmlType::Q4_K) {
            return Ok(0);
        }
        let xs = self.scratch(slots * (cols / 16) * 4)?;
        let xl = x16 + (slots * cols * 2) as u64;
        let (nn, c) = (slots as i32, cols as i32);
        self.launch(
            "mq_xsum",
            (blocks(slots * cols / 16), 1, 1),
            256,
            0,
            &mut kargs![&x16, &xl, &nn, &c, &xs],
        )?;
        Ok(xs)
    }

    /// `y[s][r] = W[e_s]·x16[s]` for the slots of every tile (expert, first slot, count) of
    /// `tiles_d`, r < w.rows, rows of y `y_stride` apart: kernels/mmq.cu on the f16 pairs
    /// `x16` of `slots` activation rows ([`CudaBackend::to_f16`]) and their sums `xs`
    /// ([`CudaBackend::mq_xsum`]).
    #[allow(clippy::too_many_arguments)]
    fn mq_experts(
        &self,
        w: crate::upload::Dw,
        ty: GgmlType,
        x16: u64,
        xs: u64,
        slots: usize,
        tiles_d: u64,
        n_tiles: usize,
        y: u64,
        y_stride: usize,
    ) -> BResult<()> {
        let xl = x16 + (slots * w.cols as usize * 2) as u64;
        let name = kname("mq", ty, &w)?;
        let ys = y_stride as i32;
        let grid = (
            (w.rows as usize).div_ceil(MQ_ROWS) as u32,
            n_tiles as u32,
            1,
        );
        self.launch(
            name,
            grid,
            128,
            0,
            &mut kargs![&w, &x16, &xl, &xs, &tiles_d, &y, &ys],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_moe_experts(
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
        let (n, e, ff, k) = (x.rows, x.cols, gate.rows, ids.cols);
        want(x, n, gate.cols, "experts input")?;
        want(ids, n, k, "expert ids")?;
        want(wts, n, k, "expert weights")?;
        want(out, n, down.rows, "experts output")?;
        if gate.ty != up.ty || down.cols != ff || down.rows != e {
            return Err(err("experts: gate, up and down do not fit together"));
        }
        let (xp, ip, wp, op) = (dp(x)?, dp(ids)?, dp(wts)?, dp(out)?);
        self.forget_planes(op);
        if num.fast && n == 1 {
            let (gw, uw, dw) = (self.w(gate)?, self.w(up)?, self.w(down)?);
            let mark = self.arena.mark();
            let mid = self.scratch(k * ff * 4)?;
            let (xq, xd) = self.quant_q8(gate.ty, xp, gate.cols, gate.cols, 1)?;
            // Warps per row as for one product of all k slots' rows (one at 6 × 2048).
            let kspl = mv_split(k * ff, gate.cols);
            let grid = (ff.div_ceil(8 / kspl) as u32, k as u32, 1);
            let rp = kspl as i32;
            self.launch(
                kname("gu", gate.ty, &gw)?,
                grid,
                256,
                0,
                &mut kargs![&gw, &uw, &xp, &xq, &xd, &ip, &wp, &clamp, &mid, &rp],
            )?;
            let (mq, md) = self.quant_q8(down.ty, mid, ff, ff, k)?;
            // Warps per output row (DS4_CUDA_DN_SPLIT): a power of two ≤ 8, each warp taking
            // every kspl-th slot.
            let kspl = self
                .opts_down_split()
                .clamp(1, 8)
                .next_power_of_two()
                .min(k.max(1).next_power_of_two());
            let grid = (e.div_ceil(8 / kspl) as u32, 1, 1);
            let (k_i, ks) = (k as i32, kspl as i32);
            self.launch(
                kname("dn", down.ty, &dw)?,
                grid,
                256,
                0,
                &mut kargs![&dw, &mid, &mq, &md, &ip, &k_i, &op, &ks],
            )?;
            self.arena.release(mark);
            return Ok(());
        }
        if num.fast
            && self.opts_tensor_core_experts()
            && mq_fits(gate)
            && mq_fits(down)
            && gate.n_mats <= MQ_MAX_EXPERTS
        {
            // Every expert of the layer in one tensor-core launch per matrix (kernels/mmq.cu),
            // the route entries grouped by expert on the device (group_slots): no host sync.
            let slots = n * k;
            let max_tiles = slots.div_ceil(MQ_TOK) + gate.n_mats;
            let mark = self.arena.mark();
            let (tmp, idx_d, w_d, slot_d) = (
                self.scratch(slots * 4)?,
                self.scratch(slots * 4)?,
                self.scratch(slots * 4)?,
                self.scratch(slots * 4)?,
            );
            let tiles_d = self.scratch(max_tiles * 3 * 4)?;
            let (m_i, k_i, ne, mt) = (slots as i32, k as i32, gate.n_mats as i32, max_tiles as i32);
            self.launch(
                "group_slots",
                (1, 1, 1),
                1024,
                0,
                &mut kargs![&ip, &wp, &m_i, &k_i, &ne, &tmp, &idx_d, &w_d, &slot_d, &tiles_d, &mt],
            )?;
            let (gw, uw, dw) = (self.w(gate)?, self.w(up)?, self.w(down)?);
            let x16 = self.to_f16(xp, e, 0, idx_d, slots, e)?;
            let xs = self.mq_xsum(gate.ty, x16, slots, e)?;
            let (g, u, mid) = (
                self.scratch(slots * ff * 4)?,
                self.scratch(slots * ff * 4)?,
                self.scratch(slots * ff * 4)?,
            );
            self.mq_experts(gw, gate.ty, x16, xs, slots, tiles_d, max_tiles, g, ff)?;
            self.mq_experts(uw, up.ty, x16, xs, slots, tiles_d, max_tiles, u, ff)?;
            self.swiglu_rows(g, u, slots, ff, clamp, w_d, mid)?;
            let m16 = self.to_f16(mid, ff, 0, 0, slots, ff)?;
            let ms = self.mq_xsum(down.ty, m16, slots, ff)?;
            let d = self.scratch(slots * e * 4)?;
            self.mq_experts(dw, down.ty, m16, ms, slots, tiles_d, max_tiles, d, e)?;
            let (nn, c) = (n as i32, e as i32);
            self.launch(
                "sum_slots",
                (blocks(n * e), 1, 1),
                256,
                0,
                &mut kargs![&d, &slot_d, &nn, &k_i, &c, &op],
            )?;
            self.arena.release(mark);
            return Ok(());
        }
        // Group rows by expert on the host (the ids come back once per layer).
        let host_ids = self.op_read_i32(ids)?;
        let host_w = self.op_read(wts, 0..n)?;
        // (token, weight) per expert.
        let mut by_expert: Vec<Vec<(i32, f32)>> = vec![Vec::new(); gate.n_mats];
        for (i, (&ex, &w)) in host_ids.iter().zip(&host_w).enumerate() {
            let ex = usize::try_from(ex)
                .ok()
                .filter(|&ex| ex < gate.n_mats)
                .ok_or_else(|| err(format!("expert id {ex} out of range")))?;
            by_expert[ex].push(((i / k) as i32, w));
        }
        // The route entries grouped by expert: (expert, first, count) spans of idx / wv.
        let mut idx = Vec::with_capacity(n * k);
        let mut wv = Vec::with_capacity(n * k);
        let mut spans = Vec::new();
        for (ex, list) in by_expert.iter().enumerate() {
            if !list.is_empty() {
                spans.push((ex, idx.len(), list.len()));
                for &(t, w) in list {
                    idx.push(t);
                    wv.push(w);
                }
            }
        }
        let mark = self.arena.mark();
        let (idx_d, w_d) = (self.scratch_from(&idx)?, self.scratch_from(&wv)?);
        let (total, zero) = ((n * e) as i64, 0f32);
        self.launch(
            "fill",
            (blocks(n * e), 1, 1),
            256,
            0,
            &mut kargs![&op, &total, &zero],
        )?;
        for (ex, off, m) in spans {
            let m2 = self.arena.mark();
            let d = self.scratch(m * e * 4)?;
            let (ie, we) = (idx_d + (off * 4) as u64, w_d + (off * 4) as u64);
            self.ffn_rows(gate, up, down, ex, xp, ie, m, clamp, we, d, num)?;
            let (mm, c) = (m as i32, e as i32);
            self.launch(
                "scatter_add",
                (blocks(m * e), 1, 1),
                256,
                0,
                &mut kargs![&d, &ie, &mm, &c, &op],
            )?;
            self.arena.release(m2);
        }
        // The host vectors above were copied from pageable memory (synchronous staging).
        self.arena.release(mark);
        Ok(())
    }
}
