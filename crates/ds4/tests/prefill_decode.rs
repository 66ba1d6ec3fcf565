//! Prefill of many tokens and one-token decode must leave the same state and give the same
//! logits (spec/model.md §2.7), in both precisions.

use std::sync::Arc;

use ds4::backend::CpuBackend;
use ds4::gguf::GgufFile;
use ds4::model::{Model, Precision};
use ds4::tiny::{generate, ExpertRecipe, TinySpec};

/// Prefill and decode run the same kernels on different row counts; only summation order of
/// the batched expert path may differ.
const MAX_REL: f32 = 1e-5;

fn tiny(recipe: ExpertRecipe) -> Model {
    let spec = TinySpec {
        recipe,
        seed: 7,
        ..TinySpec::default()
    };
    let mut bytes = Vec::new();
    generate(&spec)
        .expect("generate")
        .write_to(&mut bytes)
        .expect("serialize");
    Model::from_file(Arc::new(GgufFile::from_bytes(bytes).expect("parse"))).expect("bind")
}

fn check(recipe: ExpertRecipe, prec: Precision) {
    let model = tiny(recipe);
    let be = CpuBackend::new(model.file.clone());
    let tokens: Vec<u32> = (0..280u32)
        .map(|i| (i * 7919 + 13) % model.config.n_vocab as u32)
        .collect();
    let mut a = model.new_session(&be, 4096).expect("session");
    let full = model.forward(&be, &mut a, &tokens, prec).expect("prefill");
    let k = 131;
    let mut b = model.new_session(&be, 4096).expect("session");
    let mut step = model
        .forward(&be, &mut b, &tokens[..k], prec)
        .expect("prefill part");
    for chunk in tokens[k..].chunks(1) {
        step.extend(model.forward(&be, &mut b, chunk, prec).expect("decode"));
    }
    let max_ref = full.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (i, d) = full
        .iter()
        .zip(&step)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        d / max_ref <= MAX_REL,
        "{recipe:?} {prec:?}: logit {i} differs by {d} (max |ref| {max_ref})"
    );
    assert_eq!(a.tokens, b.tokens);
    let (sa, sb) = (
        a.snapshot(&be).expect("snapshot"),
        b.snapshot(&be).expect("snapshot"),
    );
    assert_eq!(sa.kv.layers.len(), sb.kv.layers.len());
    for (la, lb) in sa.kv.layers.iter().zip(&sb.kv.layers) {
        assert_eq!(la.raw.len(), lb.raw.len());
        assert_eq!(la.comp.len(), lb.comp.len());
        assert_eq!(la.idx.len(), lb.idx.len());
    }
}

#[test]
fn prefill_then_decode_matches_single_prefill_precise() {
    check(ExpertRecipe::Q2, Precision::Precise);
}

#[test]
fn prefill_then_decode_matches_single_prefill_default() {
    check(ExpertRecipe::F16, Precision::Default);
}
