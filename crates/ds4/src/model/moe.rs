//! The FFN sublayer (spec/model.md §2.5, pitfalls 10–11) as backend operations: `u =
//! RMSNorm(f_in)`, the sqrt-softplus router with a selection-only bias (hash routing from
//! `tid2eid` on the first layers), the routed experts with the clamped SwiGLU and the router
//! weight applied before `down`, and the shared expert. Reads `s.h`, which is already `u` (the
//! forward pass applies ffn_norm with the HC pre), writes `s.y`.

use super::config::Config;
use super::scratch::Scratch;
use super::weights::LayerWeights;
use super::Numerics;
use crate::backend::{BResult, Backend, Lane, Rows};

/// Runs layer `il`'s FFN for the chunk's rows.
pub fn moe(
    be: &dyn Backend,
    s: &mut Scratch,
    lw: &LayerWeights,
    rows: &Rows,
    il: usize,
    cfg: &Config,
    num: Numerics,
) -> BResult<()> {
    let clamp = cfg.swiglu_clamp[il];
    // §2.5 step 6: the shared expert (same clamp, no router weight) reads only `u`, so it runs
    // as a branch beside the routing and the routed experts.
    be.lane(Lane::Branch)?;
    let (sg, su) = (&lw.ffn_gate_shexp, &lw.ffn_up_shexp);
    be.swiglu(sg, su, &s.h, clamp, &mut s.shexp_mid, num)?;
    be.matmul(&lw.ffn_down_shexp, &s.shexp_mid, &mut s.shexp, num)?;
    be.lane(Lane::Main)?;
    be.matmul(&lw.ffn_gate_inp, &s.h, &mut s.router, num)?;
    let tid2eid = lw.ffn_gate_tid2eid.as_deref();
    let scale = cfg.expert_weights_scale;
    let (ids, wts) = (&mut s.expert_ids, &mut s.expert_w);
    be.route(&s.router, &lw.exp_probs_b, tid2eid, scale, rows, ids, wts)?;
    let (gate, up, down) = (&lw.ffn_gate_exps, &lw.ffn_up_exps, &lw.ffn_down_exps);
    let (ids, wts) = (&s.expert_ids, &s.expert_w);
    be.moe_experts(gate, up, down, &s.h, ids, wts, clamp, &mut s.y, num)?;
    be.lane(Lane::Join)?;
    be.add(&mut s.y, &s.shexp)
}
