//! The indexer's scores and per-row top-k (kernels/indexer.cu). The score grid is sized by
//! the batch's `visible_cap`, a power of two, so a recorded decode step serves every position
//! up to it; blocks past a row's visible rows exit.

use ds4::backend::{BResult, Rows, SessionState, Tensor};

use super::{dp, drows, dstate, err, want};
use crate::driver::kargs;
use crate::CudaBackend;

/// Indexer rows a block of `idx_scores_rows` scores (IDXR_ROWS: a lane each).
const IDXR_ROWS: usize = 32;

impl CudaBackend {
    pub(crate) fn op_indexer_select(
        &self,
        st: &SessionState,
        il: usize,
        q: &Tensor,
        wts: &Tensor,
        rows: &Rows,
        sel: &mut Tensor,
    ) -> BResult<()> {
        let n = rows.n();
        let (topk, nh) = (sel.cols, wts.cols);
        if nh == 0 || nh > 64 || !q.cols.is_multiple_of(nh) || q.cols / nh > 128 {
            return Err(err(format!("indexer q {q:?} with {nh} heads")));
        }
        let dh = q.cols / nh;
        want(q, n, nh * dh, "indexer q")?;
        want(wts, n, nh, "indexer weights")?;
        want(sel, n, topk, "indexer selection")?;
        let ds = dstate(st)?;
        let l = ds
            .layers
            .get(il)
            .ok_or_else(|| err(format!("layer {il} outside the session")))?;
        let cap = rows.visible_cap(4);
        if cap > l.comp_cap.next_power_of_two() {
            return Err(err("more indexer rows than the session holds"));
        }
        let mark = self.arena.mark();
        let scores = self.scratch(n * cap * 4)?;
        let (qp, wp, r, sp) = (dp(q)?, dp(wts)?, drows(rows)?, dp(sel)?);
        let (ratio, nh_i, dh_i, cap_i, k_i) = (4i32, nh as i32, dh as i32, cap as i32, topk as i32);
        if n == 1 && dh.is_multiple_of(4) && self.opts_idx_rows() {
            // A decode row: lanes over its visible rows (kernels/indexer.cu idx_scores_rows).
            let smem = ((nh * dh + IDXR_ROWS * (dh + 4)) * 4) as u32;
            self.launch(
                "idx_scores_rows",
                (1, cap.div_ceil(IDXR_ROWS) as u32, 1),
                256,
                smem,
                &mut kargs![&qp, &wp, &l.idx, &r.pos, &ratio, &nh_i, &dh_i, &scores, &cap_i],
            )?;
        } else {
            // Rows a warp of idx_scores scores: one for a decode row, so that its visible rows
            // still spread over the device; four in a chunk, whose blocks each stage one row's
            // queries.
            let rpw = if n == 1 { 1 } else { 4 };
            let smem = ((nh * (dh + 1) + 8 * rpw * dh) * 4) as u32;
            let rpw_i = rpw as i32;
            self.launch(
                "idx_scores",
                (n as u32, cap.div_ceil(8 * rpw) as u32, 1),
                256,
                smem,
                &mut kargs![
                    &qp, &wp, &l.idx, &r.pos, &ratio, &nh_i, &dh_i, &scores, &cap_i, &rpw_i
                ],
            )?;
        }
        self.launch(
            "idx_topk",
            (n as u32, 1, 1),
            1024,
            0,
            &mut kargs![&scores, &cap_i, &r.pos, &ratio, &k_i, &sp],
        )?;
        self.arena.release(mark);
        Ok(())
    }
}
