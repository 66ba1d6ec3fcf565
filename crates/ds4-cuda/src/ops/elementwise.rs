//! Row-wise operations: the embedding lookup, RMSNorm (rows or per-head groups), RoPE of head
//! tails, the KV and indexer storage roundings, scale and add (kernels/norm_rope.cu,
//! kernels/numerics.cu).

use ds4::backend::{BResult, Rows, Tensor};
use ds4::model::rope::Rope;
use ds4::model::weights::TensorRef;
use ds4::model::Numerics;

use super::{blocks, dp, drows, err, want, RopeTab};
use crate::driver::kargs;
use crate::CudaBackend;

impl CudaBackend {
    pub(crate) fn op_embed(
        &self,
        w: &TensorRef,
        rows: &Rows,
        n_hc: usize,
        x: &mut Tensor,
    ) -> BResult<()> {
        want(x, rows.n(), n_hc * w.cols, "embed output")?;
        let (dw, r, xp) = (self.w(w)?, drows(rows)?, dp(x)?);
        let nhc = n_hc as i32;
        self.launch(
            "embed",
            (rows.n() as u32, 1, 1),
            256,
            0,
            &mut kargs![&dw, &r.tokens, &nhc, &xp],
        )
    }

    pub(crate) fn op_rms_norm(
        &self,
        x: &mut Tensor,
        w: Option<&[f32]>,
        group: usize,
        eps: f32,
    ) -> BResult<()> {
        if group == 0 || !x.cols.is_multiple_of(group) || w.is_some_and(|w| w.len() != group) {
            return Err(err(format!("rms_norm of {x:?} in groups of {group}")));
        }
        let wp = match w {
            Some(w) => self.p(w)?,
            None => 0u64,
        };
        let (xp, g) = (dp(x)?, group as i32);
        let n = (x.rows * x.cols / group) as u32;
        // A block per group; about four values per thread, so that a lone decode row of 4096
        // is not sixteen dependent steps of one small block.
        let threads = (group / 4).next_multiple_of(32).clamp(32, 1024) as u32;
        // A whole decode row also gets its 8-bit planes, for the products that read it next.
        let planes = (x.rows == 1 && group == x.cols)
            .then(|| self.planes_to_write(xp, group, 1))
            .flatten();
        let (q, d) = planes.map_or((0, 0), |(q, d, _)| (q, d));
        self.launch(
            "rms_norm",
            (n, 1, 1),
            threads,
            0,
            &mut kargs![&xp, &wp, &g, &eps, &q, &d],
        )?;
        if let Some((_, _, h)) = planes {
            self.hold_planes(h);
        }
        Ok(())
    }

    pub(crate) fn op_rope(
        &self,
        x: &mut Tensor,
        head_dim: usize,
        rope: &Rope,
        rows: &Rows,
        inverse: bool,
    ) -> BResult<()> {
        if head_dim == 0 || !x.cols.is_multiple_of(head_dim) || x.rows != rows.n() {
            return Err(err(format!("rope of {x:?} in heads of {head_dim}")));
        }
        let tab = RopeTab::for_heads(rope, head_dim)?;
        let (xp, r) = (dp(x)?, drows(rows)?);
        let (cols, hd, inv) = (x.cols as i32, head_dim as i32, inverse as i32);
        let grid = (x.rows as u32, (x.cols / head_dim) as u32, 1);
        self.launch(
            "rope",
            grid,
            32,
            0,
            &mut kargs![&xp, &cols, &hd, &r.pos, &tab, &inv],
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_head_norm_rope(
        &self,
        x: &mut Tensor,
        w: Option<&[f32]>,
        head_dim: usize,
        eps: f32,
        rope: &Rope,
        rows: &Rows,
    ) -> BResult<()> {
        if head_dim == 0
            || !x.cols.is_multiple_of(head_dim)
            || x.rows != rows.n()
            || w.is_some_and(|w| w.len() != head_dim)
        {
            return Err(err(format!(
                "head norm + rope of {x:?} in heads of {head_dim}"
            )));
        }
        let tab = RopeTab::for_heads(rope, head_dim)?;
        let wp = match w {
            Some(w) => self.p(w)?,
            None => 0u64,
        };
        let (xp, r) = (dp(x)?, drows(rows)?);
        let (hd, cols) = (head_dim as i32, x.cols as i32);
        let grid = (x.rows as u32, (x.cols / head_dim) as u32, 1);
        let threads = (head_dim / 4).next_multiple_of(32).clamp(32, 1024) as u32;
        self.launch(
            "head_norm_rope",
            grid,
            threads,
            0,
            &mut kargs![&xp, &wp, &hd, &eps, &cols, &r.pos, &tab],
        )
    }

    pub(crate) fn op_kv_round(&self, x: &mut Tensor, n_rot: usize, num: Numerics) -> BResult<()> {
        if !num.fp8_kv && !num.f16_rows {
            return Ok(());
        }
        if x.cols > 1024 || n_rot > x.cols {
            return Err(err(format!("kv_round of {x:?}")));
        }
        let (xp, cols, nr, f8, f16) = (
            dp(x)?,
            x.cols as i32,
            n_rot as i32,
            num.fp8_kv as i32,
            num.f16_rows as i32,
        );
        self.launch(
            "kv_round",
            (x.rows as u32, 1, 1),
            256,
            0,
            &mut kargs![&xp, &cols, &nr, &f8, &f16],
        )
    }

    pub(crate) fn op_indexer_qat(
        &self,
        x: &mut Tensor,
        head_dim: usize,
        num: Numerics,
    ) -> BResult<()> {
        if !num.indexer_qat {
            return Ok(());
        }
        if head_dim == 0
            || head_dim > 1024
            || !head_dim.is_power_of_two()
            || !x.cols.is_multiple_of(head_dim)
        {
            return Err(err(format!("indexer_qat of {x:?} in heads of {head_dim}")));
        }
        let (xp, hd) = (dp(x)?, head_dim as i32);
        let n = (x.rows * x.cols / head_dim) as u32;
        self.launch(
            "indexer_qat",
            (n, 1, 1),
            head_dim.max(32) as u32,
            0,
            &mut kargs![&xp, &hd],
        )
    }

    pub(crate) fn op_scale(&self, x: &mut Tensor, s: f32) -> BResult<()> {
        let (xp, n) = (dp(x)?, x.len() as i64);
        self.launch(
            "scale",
            (blocks(x.len()), 1, 1),
            256,
            0,
            &mut kargs![&xp, &n, &s],
        )
    }

    pub(crate) fn op_add(&self, y: &mut Tensor, x: &Tensor) -> BResult<()> {
        want(x, y.rows, y.cols, "add input")?;
        let (yp, xp, n) = (dp(y)?, dp(x)?, y.len() as i64);
        self.launch(
            "add",
            (blocks(y.len()), 1, 1),
            256,
            0,
            &mut kargs![&yp, &xp, &n],
        )
    }
}
