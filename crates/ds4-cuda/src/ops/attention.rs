//! The raw window and sink attention (kernels/attention.cu): rows are pushed into the layer's
//! ring at their positions; attention runs as slices of each row's visible rows (16 slices for
//! one-row decode by default, so the grid fills the device: CudaOptions::attn_splits) and a
//! combine with the sink. Chunks of rows whose stored rows are f16-exact (the default
//! precision) run `attn_mma` instead: the same
//! attention on the tensor cores, 16 heads of one row a block, the sink folded in.

use ds4::backend::{BResult, Rows, SessionState, Tensor};
use ds4::model::config::Config;
use ds4::model::Numerics;

use ds4::model::rope::Rope;

use super::{dp, drows, dstate, err, want, RopeTab};
use crate::driver::kargs;
use crate::CudaBackend;

/// Rows of a chunk from which attention runs on the tensor cores (fewer: attn_partial, whose
/// head-group blocks fill the device better for a handful of rows).
const MMA_ROWS: usize = 8;

/// The widest head the attention kernels hold (ATT_HD_MAX in kernels/attention.cu).
const ATT_HD_MAX: usize = 512;

impl CudaBackend {
    pub(crate) fn op_raw_push(
        &self,
        st: &SessionState,
        il: usize,
        kv: &Tensor,
        rows: &Rows,
    ) -> BResult<()> {
        let ds = dstate(st)?;
        let l = ds
            .layers
            .get(il)
            .ok_or_else(|| err(format!("layer {il} outside the session")))?;
        want(kv, rows.n(), self.cfg.head_dim, "raw_push rows")?;
        let (kp, r) = (dp(kv)?, drows(rows)?);
        let (hd, ring) = (kv.cols as i32, ds.ring as i32);
        self.launch(
            "raw_push",
            (rows.n() as u32, 1, 1),
            128,
            0,
            &mut kargs![&kp, &hd, &r.pos, &l.raw, &ring],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_attention(
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
        let (hd, nh, n) = (cfg.head_dim, cfg.n_head, rows.n());
        want(q, n, nh * hd, "attention q")?;
        want(out, n, nh * hd, "attention output")?;
        if hd > ATT_HD_MAX {
            return Err(err(format!(
                "head dim {hd}: the attention kernels take at most {ATT_HD_MAX}"
            )));
        }
        let ds = dstate(st)?;
        let l = ds
            .layers
            .get(il)
            .ok_or_else(|| err(format!("layer {il} outside the session")))?;
        let (selp, topk) = match sel {
            Some(s) => {
                want(s, n, s.cols, "attention selection")?;
                (dp(s)?, s.cols as i32)
            }
            None => (0u64, 0i32),
        };
        let (nh_i, hd_i, ring, swa, ratio) = (
            nh as i32,
            hd as i32,
            ds.ring as i32,
            cfg.n_swa as i32,
            l.ratio as i32,
        );
        let scale = 1.0f32 / (hd as f32).sqrt();
        let (qp, r, op, sp) = (dp(q)?, drows(rows)?, dp(out)?, self.p(sinks)?);
        if self.opts_tensor_core_attention()
            && num.fast
            && num.f16_rows
            && n >= MMA_ROWS
            && hd % 64 == 0
            && hd <= 512
        {
            self.launch(
                "attn_mma",
                (n as u32, nh.div_ceil(16) as u32, 1),
                128,
                0,
                &mut kargs![
                    &qp, &nh_i, &hd_i, &l.raw, &ring, &swa, &l.comp, &ratio, &selp, &topk, &r.pos,
                    &scale, &sp, &op
                ],
            )?;
            return self.op_rope(out, hd, rope, rows, true);
        }
        let splits = if n == 1 { self.opts_attn_splits() } else { 1 };
        let mark = self.arena.mark();
        let part = self.scratch(n * nh * splits * (hd + 2) * 4)?;
        let sp_i = splits as i32;
        let grid = (n as u32, nh.div_ceil(8) as u32, splits as u32);
        self.launch(
            "attn_partial",
            grid,
            256,
            0,
            &mut kargs![
                &qp, &nh_i, &hd_i, &l.raw, &ring, &swa, &l.comp, &ratio, &selp, &topk, &r.pos,
                &sp_i, &scale, &part
            ],
        )?;
        // The combine also applies the inverse RoPE and, for a decode row, writes the planes
        // of the grouped output projection's activation (its groups of nh·hd / o_groups).
        let tab = RopeTab::for_heads(rope, hd)?;
        let groups = cfg.o_groups.max(1);
        let gw = nh * hd / groups;
        let planes = (n == 1 && (nh * hd).is_multiple_of(groups))
            .then(|| self.planes_to_write(op, gw, groups))
            .flatten();
        let (pq, pd) = planes.map_or((0, 0), |(q, d, _)| (q, d));
        let gw_i = gw as i32;
        self.launch(
            "attn_combine",
            (n as u32, nh as u32, 1),
            hd.min(256) as u32,
            0,
            &mut kargs![&part, &sp, &nh_i, &hd_i, &sp_i, &op, &r.pos, &tab, &pq, &pd, &gw_i],
        )?;
        if let Some((_, _, h)) = planes {
            self.hold_planes(h);
        }
        self.arena.release(mark);
        Ok(())
    }
}
