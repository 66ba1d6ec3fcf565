//! Every CUDA operation against the CPU reference, and the whole forward pass on CUDA against
//! transformers (the fixtures of tools/reference/model_fixtures.py). Needs a GPU: the tests are
//! `#[ignore]`d and run on the device machine with `--ignored` (docs/perf.md has the command).

use std::sync::Arc;

use ds4::backend::{Backend, CpuBackend};
use ds4::gguf::GgufFile;
use ds4::model::{Model, Precision};
use ds4::tiny::{generate, ExpertRecipe, TinySpec};
use ds4_cuda::CudaBackend;
use rand::{Rng, SeedableRng};

/// Per-op tolerance: the same f32 products summed in another order.
const OP_MAX_REL: f32 = 1e-5;
/// Whole-model precise tolerance against transformers (issue #2's gate).
const PRECISE_MAX_REL: f32 = 1e-4;

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let m = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()))
        / m
}

fn tiny(recipe: ExpertRecipe) -> Model {
    let mut b = Vec::new();
    generate(&TinySpec {
        recipe,
        layers: 4,
        ..TinySpec::default()
    })
    .expect("generate")
    .write_to(&mut b)
    .expect("write");
    Model::from_file(Arc::new(GgufFile::from_bytes(b).expect("parse"))).expect("bind")
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_matmul_matches_cpu() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for recipe in [ExpertRecipe::Q2, ExpertRecipe::Q4, ExpertRecipe::F16] {
        let m = tiny(recipe);
        let cpu = CpuBackend::new(m.file.clone());
        let gpu = CudaBackend::new(m.file.clone(), 0).expect("CUDA device");
        let l = &m.weights.layers[2];
        let c = l.attn_compressor.as_ref().expect("ratio-4 layer");
        let tensors = [
            &l.attn_q_a,
            &l.attn_q_b,
            &l.attn_output_b,
            &l.ffn_gate_inp,
            &c.kv,
            &l.hc_attn.func,
            &m.weights.output,
        ];
        for n in [1usize, 5, 17] {
            for w in tensors {
                let x: Vec<f32> = (0..n * w.cols).map(|_| rng.random::<f32>() - 0.5).collect();
                let rel = max_rel(
                    &gpu.matmul(w, &x, n).expect("gpu matmul"),
                    &cpu.matmul(w, &x, n).expect("cpu matmul"),
                );
                assert!(rel <= OP_MAX_REL, "{recipe:?} {} n={n}: {rel:e}", w.name);
            }
            for w in [&l.ffn_gate_exps, &l.ffn_up_exps, &l.ffn_down_exps] {
                let x: Vec<f32> = (0..n * w.cols).map(|_| rng.random::<f32>() - 0.5).collect();
                for e in [0, 7, 15] {
                    let rel = max_rel(
                        &gpu.matmul_expert(w, e, &x, n).expect("gpu matmul_expert"),
                        &cpu.matmul_expert(w, e, &x, n).expect("cpu matmul_expert"),
                    );
                    assert!(
                        rel <= OP_MAX_REL,
                        "{recipe:?} {} expert {e} n={n}: {rel:e}",
                        w.name
                    );
                }
            }
            let w = &l.attn_output_a;
            let x: Vec<f32> = (0..n * w.cols).map(|_| rng.random::<f32>() - 0.5).collect();
            let rel = max_rel(
                &gpu.matmul_rows(w, 64..128, &x, n).expect("gpu matmul_rows"),
                &cpu.matmul_rows(w, 64..128, &x, n).expect("cpu matmul_rows"),
            );
            assert!(rel <= OP_MAX_REL, "{recipe:?} output_a rows n={n}: {rel:e}");
        }
        eprintln!(
            "{recipe:?}: all CUDA matmuls within {OP_MAX_REL:e} of the CPU on {}",
            gpu.device_name()
        );
    }
}

/// `tests/fixtures/model/<rel>` under `DS4_REPO_ROOT` (set when the test binary runs away from
/// the tree it was built in, as on the device machine), else under this crate's repository.
fn fixture(rel: &str) -> std::path::PathBuf {
    let root = std::env::var_os("DS4_REPO_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    root.join("tests/fixtures/model").join(rel)
}

fn read_npy(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).expect("npy");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_forward_matches_transformers_precise() {
    for recipe in ["q2", "q4"] {
        let path = fixture(&format!("{recipe}/model.gguf"));
        let m = Model::from_file(Arc::new(GgufFile::open(&path).expect("fixture model")))
            .expect("bind");
        let tokens: Vec<u32> = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("{recipe}/tokens.json"))).expect("tokens"),
        )
        .expect("json");
        let gpu = CudaBackend::new(m.file.clone(), 0).expect("CUDA device");
        let mut s = m.new_session();
        let got = m
            .forward(&gpu, &mut s, &tokens, Precision::Precise)
            .expect("forward");
        let rel = max_rel(
            &got,
            &read_npy(&fixture(&format!("{recipe}/logits_precise.npy"))),
        );
        eprintln!("{recipe}: CUDA precise max|Δ|/max|ref| = {rel:.3e}");
        assert!(rel <= PRECISE_MAX_REL, "{recipe}: {rel:e}");
    }
}

/// Without a driver (CI, laptops) the backend is an error that says what is missing, not a
/// panic inside cudarc; with one, it starts.
#[test]
fn backend_start_reports_a_missing_driver() {
    let m = tiny(ExpertRecipe::F16);
    let present = ds4_cuda::driver_present();
    match CudaBackend::new(m.file.clone(), 0) {
        Err(ds4_cuda::CudaError::LibraryMissing(what)) => {
            assert!(!present && what.contains("libcuda"), "{what}")
        }
        Err(e) => assert!(present, "unexpected error without a driver: {e}"),
        Ok(_) => assert!(present, "started without a driver"),
    }
}
