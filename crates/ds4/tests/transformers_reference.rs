//! The forward pass against HF transformers' DeepseekV4ForCausalLM (spec/references.md).
//! Fixtures: `tools/reference/model_fixtures.py` wrote each tiny model with gguf-py and the
//! logits transformers computed from gguf-py's dequantisation of the same tensors: plain for
//! `precise`, with hooks adding the FP8/FP4/f16 storage roundings for `default`. Recipes: f16,
//! q2, q4 (the published dense types), f16dense (every dense matrix F16, IQ3_XXS/Q6_K experts)
//! and mxfp4 (BF16 dense matrices, MXFP4 experts).

mod common;

use std::sync::Arc;

use ds4::backend::CpuBackend;
use ds4::gguf::GgufFile;
use ds4::model::{Model, Numerics, Precision};

/// Precise mode: max|Δ| / max|ref| over all logits (issue #2's gate).
const PRECISE_MAX_REL: f32 = 1e-4;
/// Default mode: share of positions whose argmax matches the reference.
const DEFAULT_MIN_ARGMAX_AGREEMENT: f64 = 0.97;
/// Default mode: median over positions of max|Δ_t| / max|ref_t|. The FP8/FP4 roundings are
/// discontinuous, so a few flips are expected and the maximum is no gate.
const DEFAULT_MAX_MEDIAN_REL: f32 = 1e-2;

struct Case {
    model: Model,
    tokens: Vec<u32>,
}

fn load(recipe: &str) -> Case {
    let dir = common::fixture(&format!("model/{recipe}"));
    let file = GgufFile::open(&dir.join("model.gguf")).expect("fixture model opens");
    let model = Model::from_file(Arc::new(file)).expect("fixture model validates");
    let tokens: Vec<u32> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("tokens.json")).expect("tokens.json"),
    )
    .expect("token list");
    Case { model, tokens }
}

fn reference(recipe: &str, name: &str, case: &Case) -> Vec<f32> {
    let (data, shape) = common::read_npy_f32(&common::fixture(&format!("model/{recipe}/{name}")));
    assert_eq!(
        shape,
        vec![case.tokens.len(), case.model.config.n_vocab],
        "{name} shape"
    );
    data
}

fn run(case: &Case, num: Numerics) -> Vec<f32> {
    let be = CpuBackend::new(case.model.file.clone());
    let mut sess = case.model.new_session(&be, 4096).expect("session");
    case.model
        .forward_with(&be, &mut sess, &case.tokens, num)
        .expect("forward")
}

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_d = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    max_d / max_ref
}

/// (argmax agreement, median per-position relative error).
fn default_gate(got: &[f32], want: &[f32], vocab: usize) -> (f64, f32) {
    let argmax = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > r[b] { i } else { b })
    };
    let mut agree = 0usize;
    let mut rels: Vec<f32> = Vec::new();
    for (g, w) in got.chunks(vocab).zip(want.chunks(vocab)) {
        agree += usize::from(argmax(g) == argmax(w));
        rels.push(max_rel(g, w));
    }
    rels.sort_by(f32::total_cmp);
    (agree as f64 / rels.len() as f64, rels[rels.len() / 2])
}

fn check_precise(recipe: &str) {
    let case = load(recipe);
    let want = reference(recipe, "logits_precise.npy", &case);
    let got = run(&case, Precision::Precise.numerics());
    let rel = max_rel(&got, &want);
    eprintln!("{recipe}: precise max|Δ|/max|ref| = {rel:.3e}");
    assert!(
        rel <= PRECISE_MAX_REL,
        "{recipe}: precise max|Δ|/max|ref| = {rel:.3e} > {PRECISE_MAX_REL:e}"
    );
}

fn check_default(recipe: &str) {
    let case = load(recipe);
    let want = reference(recipe, "logits_default.npy", &case);
    let vocab = case.model.config.n_vocab;
    let (agree, median) = default_gate(&run(&case, Precision::Default.numerics()), &want, vocab);
    eprintln!("{recipe}: default argmax agreement {agree:.4}, median rel {median:.3e}");
    assert!(
        agree >= DEFAULT_MIN_ARGMAX_AGREEMENT && median <= DEFAULT_MAX_MEDIAN_REL,
        "{recipe}: default argmax agreement {agree:.4}, median rel {median:.3e}"
    );
    // The gate must notice an engine that skips either simulation.
    for (what, num) in [
        (
            "fp8 kv",
            Numerics {
                fp8_kv: false,
                ..Precision::Default.numerics()
            },
        ),
        (
            "indexer fp4",
            Numerics {
                indexer_qat: false,
                ..Precision::Default.numerics()
            },
        ),
    ] {
        let (agree, median) = default_gate(&run(&case, num), &want, vocab);
        eprintln!("{recipe}: without {what}: agreement {agree:.4}, median rel {median:.3e}");
        assert!(
            agree < DEFAULT_MIN_ARGMAX_AGREEMENT || median > DEFAULT_MAX_MEDIAN_REL,
            "{recipe}: the default gate passes without {what} (agreement {agree:.4}, median {median:.3e})"
        );
    }
}

#[test]
fn precise_f16_experts_match_transformers() {
    check_precise("f16");
}

#[test]
fn precise_q2_recipe_matches_transformers() {
    check_precise("q2");
}

#[test]
fn precise_q4_recipe_matches_transformers() {
    check_precise("q4");
}

#[test]
fn default_f16_experts_match_hooked_transformers() {
    check_default("f16");
}

#[test]
fn default_q2_recipe_matches_hooked_transformers() {
    check_default("q2");
}

#[test]
fn default_q4_recipe_matches_hooked_transformers() {
    check_default("q4");
}

#[test]
fn precise_f16_dense_iq3_xxs_q6_k_experts_match_transformers() {
    check_precise("f16dense");
}

#[test]
fn precise_bf16_dense_mxfp4_experts_match_transformers() {
    check_precise("mxfp4");
}

#[test]
fn default_f16_dense_iq3_xxs_q6_k_experts_match_hooked_transformers() {
    check_default("f16dense");
}

#[test]
fn default_bf16_dense_mxfp4_experts_match_hooked_transformers() {
    check_default("mxfp4");
}

#[test]
fn fixture_sequence_makes_the_indexer_select() {
    let case = load("q2");
    let c = &case.model.config;
    let n = case.tokens.len();
    assert!(n / 128 >= 2, "ratio-128 compressor must emit ≥ 2 rows");
    assert!(
        n / 4 >= 3 * c.idx_topk,
        "ratio-4 rows must be several times the indexer top-k"
    );
    assert!(c.idx_heads >= 16 && c.n_layer >= 6);
}
