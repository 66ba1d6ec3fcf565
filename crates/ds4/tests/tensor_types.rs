//! Every tensor type a file may use loads and runs (docs/models.md's table): dense matrices in
//! each of `DENSE_TYPES`, routed experts in each of `EXPERT_TYPES`. The proof that a type is
//! computed right has two halves: its dequantisation equals gguf-py's bit for bit
//! (`quant::fixtures`), and a model whose tensors are stored in that type gives exactly the
//! logits of the same model with every tensor re-encoded as the dequantised f32 values (below),
//! so nothing downstream of dequantisation depends on the type.

use std::sync::Arc;

use ds4::backend::CpuBackend;
use ds4::gguf::{GgmlType, GgufFile, GgufWriter};
use ds4::model::{Model, ModelError, Precision, WeightsError, DENSE_TYPES, EXPERT_TYPES};
use ds4::quant::dequantize;
use ds4::tiny::{generate, ExpertRecipe, TinySpec};

fn spec(recipe: ExpertRecipe, dense: Option<GgmlType>) -> TinySpec {
    TinySpec {
        layers: 4,
        // K-quant dense matrices need every row width to be a multiple of 256.
        q_lora: 256,
        o_lora: 128,
        recipe,
        dense,
        seed: 9,
        ..TinySpec::default()
    }
}

fn bytes_of(s: &TinySpec) -> Vec<u8> {
    let mut b = Vec::new();
    generate(s)
        .expect("generate")
        .write_to(&mut b)
        .expect("write");
    b
}

fn load(bytes: Vec<u8>) -> Result<Model, ModelError> {
    Model::from_file(Arc::new(GgufFile::from_bytes(bytes)?))
}

/// The same file with every tensor that is neither F32 nor I32 stored as its dequantised f32
/// values (lossless), so the model is the same function.
fn as_f32(bytes: Vec<u8>) -> Vec<u8> {
    let f = GgufFile::from_bytes(bytes).expect("parse");
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.add(k, v.clone()).expect("key");
    }
    for t in f.tensors() {
        let data = f.data_of(t).expect("data");
        let (ty, data) = match t.ty {
            GgmlType::F32 | GgmlType::I32 => (t.ty, data.to_vec()),
            ty => {
                let mut v = vec![0f32; t.n_elems as usize];
                dequantize(ty, data, &mut v).expect("dequantize");
                (
                    GgmlType::F32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            }
        };
        w.add_tensor(&t.name, &t.dims, ty, data).expect("tensor");
    }
    let mut out = Vec::new();
    w.write_to(&mut out).expect("write");
    out
}

/// Precise CPU logits of 40 tokens (prefill of 33, then 7 decode steps).
fn logits(m: &Model) -> Vec<f32> {
    let be = CpuBackend::new(m.file.clone());
    let tokens: Vec<u32> = (0..40u32)
        .map(|i| (i * 131 + 5) % m.config.n_vocab as u32)
        .collect();
    let mut s = m.new_session(&be, 1024).expect("session");
    let mut out = m
        .forward(&be, &mut s, &tokens[..33], Precision::Precise)
        .expect("prefill");
    for t in &tokens[33..] {
        out.extend(
            m.forward(&be, &mut s, std::slice::from_ref(t), Precision::Precise)
                .expect("decode"),
        );
    }
    out
}

fn assert_same_as_f32(s: &TinySpec, what: &str) {
    let b = bytes_of(s);
    let m = load(b.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let reference = load(as_f32(b)).expect("f32 copy loads");
    let (got, want) = (logits(&m), logits(&reference));
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite logits"
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: logit {i} is {g}, {w} with the tensors in f32"
        );
    }
}

#[test]
fn every_dense_type_gives_the_logits_of_its_f32_values() {
    for &ty in DENSE_TYPES.iter().filter(|&&t| t != GgmlType::F32) {
        assert_same_as_f32(&spec(ExpertRecipe::Q2, Some(ty)), &format!("dense {ty}"));
    }
}

#[test]
fn every_expert_type_gives_the_logits_of_its_f32_values() {
    for &ty in EXPERT_TYPES.iter().filter(|&&t| t != GgmlType::F32) {
        let recipe = ExpertRecipe::Types {
            gate_up: ty,
            down: ty,
        };
        assert_same_as_f32(&spec(recipe, None), &format!("experts {ty}"));
    }
}

#[test]
fn published_mixes_load() {
    // IQ2_XS / IQ3_XXS gate-up with K-quant down, as the i-quant mixes ship; MXFP4 experts
    // with BF16 dense tensors, as the FP4 checkpoint converts.
    for (gate_up, down, dense) in [
        (GgmlType::IQ2_XS, GgmlType::Q3_K, None),
        (GgmlType::IQ3_XXS, GgmlType::Q4_K, Some(GgmlType::Q6_K)),
        (GgmlType::MXFP4, GgmlType::MXFP4, Some(GgmlType::BF16)),
    ] {
        let s = spec(ExpertRecipe::Types { gate_up, down }, dense);
        assert_same_as_f32(&s, &format!("{gate_up}/{down} dense {dense:?}"));
    }
}

#[test]
fn rejects_i_quant_dense_matrix_with_the_accepted_types() {
    let s = spec(ExpertRecipe::Q2, Some(GgmlType::IQ2_XXS));
    let err = load(bytes_of(&s)).expect_err("IQ2_XXS dense");
    assert!(
        matches!(
            &err,
            ModelError::Weights(WeightsError::Type {
                found: GgmlType::IQ2_XXS,
                ..
            })
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("expected type F32 or F16 or BF16 or Q8_0 or Q2_K"),
        "{msg}"
    );
}

#[test]
fn rejects_rows_that_are_not_whole_blocks() {
    // q_lora = 128: attn_q_b rows of 128 are half a K-quant block.
    let s = TinySpec {
        q_lora: 128,
        ..spec(ExpertRecipe::Q2, Some(GgmlType::Q4_K))
    };
    let err = load(bytes_of(&s)).expect_err("half-block rows");
    assert!(
        matches!(
            &err,
            ModelError::Weights(WeightsError::RowBlocks {
                ty: GgmlType::Q4_K,
                cols: 128,
                ..
            })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("not whole Q4_K blocks of 256"),
        "{err}"
    );
}
