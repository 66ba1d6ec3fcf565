//! The KV compressors (kernels/compressor.cu): the rows completed in the chunk are pooled,
//! normed, RoPE'd, rounded and stored by `comp_emit`, then `comp_frontier` leaves the frontier
//! as the token-by-token loop would.

use ds4::backend::{BResult, CompStream, Rows, SessionState, Tensor};
use ds4::model::config::Config;
use ds4::model::rope::Rope;
use ds4::model::weights::CompressorWeights;
use ds4::model::Numerics;

use super::{dp, drows, dstate, err, want, RopeTab};
use crate::driver::kargs;
use crate::CudaBackend;

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_compress(
        &self,
        st: &SessionState,
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
        let ds = dstate(st)?;
        let l = ds
            .layers
            .get(il)
            .ok_or_else(|| err(format!("layer {il} outside the session")))?;
        let ratio = l.ratio;
        let (d, fr_kv, fr_sc, out, width, sim) = match stream {
            CompStream::Attn if ratio != 0 => {
                (cfg.head_dim, l.fr_kv, l.fr_sc, l.comp, l.fr_w, num.fp8_kv)
            }
            CompStream::Indexer if ratio == 4 => (
                cfg.idx_head_dim,
                l.ifr_kv,
                l.ifr_sc,
                l.idx,
                l.ifr_w,
                num.indexer_qat,
            ),
            _ => return Err(err(format!("layer {il} has no {stream:?} compressor"))),
        };
        let n = rows.n();
        want(kv, n, width, "compressor kv")?;
        want(score, n, width, "compressor score")?;
        if d > 512 || w.ape.len() != ratio * width || w.norm.len() != d {
            return Err(err("compressor weights do not match its width"));
        }
        let tab = RopeTab::new(rope)?;
        let (kp, sp, ap, np, r) = (
            dp(kv)?,
            dp(score)?,
            self.p(&w.ape)?,
            self.p(&w.norm)?,
            drows(rows)?,
        );
        let (n_i, ratio_i, d_i, strm, sim_i, f16) = (
            n as i32,
            ratio as i32,
            d as i32,
            (stream == CompStream::Indexer) as i32,
            sim as i32,
            num.f16_rows as i32,
        );
        let (eps, cap) = (cfg.rms_eps, l.comp_cap as i32);
        let grid = (n / ratio + 1) as u32;
        self.launch(
            "comp_emit",
            (grid, 1, 1),
            d.div_ceil(32) as u32 * 32,
            0,
            &mut kargs![
                &kp, &sp, &ap, &fr_kv, &fr_sc, &np, &r.pos, &n_i, &ratio_i, &d_i, &tab, &strm,
                &sim_i, &f16, &eps, &out, &cap
            ],
        )?;
        let elems = if ratio == 4 { 4 } else { ratio } * width;
        let w_i = width as i32;
        self.launch(
            "comp_frontier",
            (elems.div_ceil(256) as u32, 1, 1),
            256,
            0,
            &mut kargs![&kp, &sp, &ap, &fr_kv, &fr_sc, &r.pos, &n_i, &ratio_i, &w_i],
        )
    }
}
