//! Which model a cache file belongs to (docs/kv-format.md "Identity"). A snapshot is only
//! meaningful for the weights that computed it, but hashing 80 GB at startup is not an option:
//! the layout hash covers every hyperparameter that shapes or computes the state, the name,
//! type and shape of every dense tensor, and the first and last 4 KiB of each dense tensor's
//! data. Routed experts are left out, so that, as in ds4, a checkpoint written with the q2
//! experts loads with the q4 ones (spec §5.3, P18) unless `--kv-cache-reject-different-quant`
//! asks otherwise; their types are recorded separately in [`ModelStamp::expert_types`].

use std::fmt::Write;

use sha1::{Digest, Sha1};

use crate::gguf::GgmlType;
use crate::model::{Model, Precision};

use super::format::ModelStamp;

/// Bytes of each end of a dense tensor that go into the fingerprint.
const FINGERPRINT_BYTES: usize = 4096;

/// The stamp files written by `model` at `precision` carry.
pub fn model_stamp(model: &Model, precision: Precision) -> ModelStamp {
    let cfg = &model.config;
    let mut d = String::new();
    let _ = writeln!(d, "ds4-rs kv layout 1");
    for (k, v) in [
        ("n_layer", cfg.n_layer),
        ("n_embd", cfg.n_embd),
        ("n_vocab", cfg.n_vocab),
        ("n_head", cfg.n_head),
        ("head_dim", cfg.head_dim),
        ("n_rot", cfg.n_rot),
        ("q_lora", cfg.q_lora),
        ("o_groups", cfg.o_groups),
        ("o_lora", cfg.o_lora),
        ("n_expert", cfg.n_expert),
        ("n_expert_used", cfg.n_expert_used),
        ("ff_exp", cfg.ff_exp),
        ("n_hash_layer", cfg.n_hash_layer),
        ("n_swa", cfg.n_swa),
        ("idx_heads", cfg.idx_heads),
        ("idx_head_dim", cfg.idx_head_dim),
        ("idx_topk", cfg.idx_topk),
        ("n_hc", cfg.n_hc),
        ("sinkhorn_iters", cfg.sinkhorn_iters),
    ] {
        let _ = writeln!(d, "{k}={v}");
    }
    for (k, v) in [
        ("hc_eps", cfg.hc_eps),
        ("rope_base", cfg.rope_base),
        ("compress_rope_base", cfg.compress_rope_base),
        ("yarn_factor", cfg.yarn_factor),
        ("yarn_orig_ctx", cfg.yarn_orig_ctx),
        ("yarn_beta_fast", cfg.yarn_beta_fast),
        ("yarn_beta_slow", cfg.yarn_beta_slow),
        ("expert_weights_scale", cfg.expert_weights_scale),
        ("rms_eps", cfg.rms_eps),
    ] {
        let _ = writeln!(d, "{k}={:08x}", v.to_bits());
    }
    let _ = writeln!(d, "compress_ratios={:?}", cfg.compress_ratios);
    let clamp: Vec<u32> = cfg.swiglu_clamp.iter().map(|c| c.to_bits()).collect();
    let _ = writeln!(d, "swiglu_clamp={clamp:x?}");
    let mut h = Sha1::new();
    h.update(d.as_bytes());
    for t in model.file.tensors() {
        if is_routed_expert(&t.name) {
            continue;
        }
        h.update(format!("{} {} {:?}\n", t.name, t.ty.id(), t.dims).as_bytes());
        if let Some(data) = model.file.data_of(t) {
            let head = &data[..data.len().min(FINGERPRINT_BYTES)];
            let tail = &data[data.len().saturating_sub(FINGERPRINT_BYTES)..];
            h.update(head);
            h.update(tail);
        }
    }
    let layer0 = model.weights.layers.first();
    let expert_types = layer0.map_or([0; 3], |l| {
        [
            l.ffn_gate_exps.ty.id(),
            l.ffn_up_exps.ty.id(),
            l.ffn_down_exps.ty.id(),
        ]
    });
    ModelStamp {
        layout: h.finalize().into(),
        expert_types,
        quant_bits: layer0.map_or(0, |l| quant_bits(l.ffn_gate_exps.ty)),
        precision: precision_byte(precision),
    }
}

/// The stamp byte of a precision.
pub fn precision_byte(p: Precision) -> u8 {
    match p {
        Precision::Precise => 0,
        Precision::Default => 1,
    }
}

/// The name of a stamp's precision byte.
pub fn precision_name(b: u8) -> &'static str {
    match b {
        0 => "precise",
        1 => "default",
        _ => "unknown",
    }
}

/// Routed expert tensors (`blk.N.ffn_{gate,up,down}_exps.weight`): quantised differently in
/// the q2 and q4 files of the same model.
fn is_routed_expert(name: &str) -> bool {
    name.contains("_exps.")
}

/// ds4's "routed expert quant bits" (spec §5.4 byte 4) of the gate tensor's type.
fn quant_bits(ty: GgmlType) -> u8 {
    match ty {
        GgmlType::IQ2_XXS | GgmlType::Q2_K => 2,
        GgmlType::Q4_K => 4,
        GgmlType::Q8_0 | GgmlType::Q8_K => 8,
        GgmlType::F16 | GgmlType::BF16 => 16,
        GgmlType::F32 => 32,
        _ => 0,
    }
}
