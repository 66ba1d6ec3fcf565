//! Tests against gguf-py: the fixtures in `tests/fixtures/quant/` were written by
//! `tools/reference/quant_fixtures.py` (gguf==0.19.0, numpy 2.4.6, seed in the manifest).
//! Dequantisation must match gguf-py bit for bit; so must quantisation to F32/F16/BF16/Q8_0.

use std::path::PathBuf;

use super::{dequantize, quantize};
use crate::gguf::GgmlType;

struct Case {
    name: String,
    ty: GgmlType,
    n_elems: usize,
    quantized: Vec<u8>,
    dequantized: Vec<f32>,
    source: Option<Vec<f32>>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/quant")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn type_named(name: &str) -> GgmlType {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("type {name}"))
}

fn cases() -> Vec<Case> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&read("manifest.json")).expect("manifest.json parses");
    let cases = manifest["cases"].as_array().expect("cases array");
    cases
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            ty: type_named(c["type"].as_str().expect("type")),
            n_elems: c["n_elems"].as_u64().expect("n_elems") as usize,
            quantized: read(c["quantized"].as_str().expect("quantized")),
            dequantized: f32s(&read(c["dequantized"].as_str().expect("dequantized"))),
            source: c["source"].as_str().map(|s| f32s(&read(s))),
        })
        .collect()
}

#[test]
fn manifest_covers_every_stored_type() {
    let cases = cases();
    for ty in GgmlType::ALL
        .iter()
        .filter(|t| !matches!(t, GgmlType::I32 | GgmlType::Q8_K))
        .map(|t| t.name())
    {
        assert!(
            cases.iter().any(|c| c.ty.name() == ty),
            "no fixture for {ty}"
        );
    }
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    for case in cases() {
        assert_eq!(case.dequantized.len(), case.n_elems, "{}", case.name);
        let mut out = vec![0.0f32; case.n_elems];
        dequantize(case.ty, &case.quantized, &mut out).expect(&case.name);
        for (i, (got, want)) in out.iter().zip(&case.dequantized).enumerate() {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{} element {i}: got {got:e} ({:#010x}), want {want:e} ({:#010x})",
                case.name,
                got.to_bits(),
                want.to_bits()
            );
        }
    }
}

#[test]
fn quantize_matches_gguf_py_bit_for_bit() {
    let mut n = 0;
    for case in cases() {
        let Some(src) = &case.source else { continue };
        let got = quantize(case.ty, src).expect(&case.name);
        assert_eq!(got.len(), case.quantized.len(), "{}", case.name);
        let bs = case.ty.block_bytes();
        for (i, (g, w)) in got.chunks(bs).zip(case.quantized.chunks(bs)).enumerate() {
            assert_eq!(g, w, "{} block {i}", case.name);
        }
        n += 1;
    }
    assert_eq!(n, 4, "expected quantize fixtures for F32, F16, BF16, Q8_0");
}

#[test]
fn fixtures_include_the_edge_cases() {
    let cases = cases();
    let f16 = cases
        .iter()
        .find(|c| c.name == "f16_edges")
        .expect("f16_edges");
    assert!(f16.dequantized.iter().any(|v| v.is_infinite()));
    assert!(f16
        .dequantized
        .iter()
        .any(|v| v.is_subnormal() || (*v != 0.0 && v.abs() < 6.2e-5)));
    let q8 = cases
        .iter()
        .find(|c| c.name == "q8_0_quantize")
        .expect("q8_0_quantize");
    assert!(
        q8.quantized.chunks(34).any(|b| b.iter().all(|&v| v == 0)),
        "all-zero Q8_0 block"
    );
    let mx = cases
        .iter()
        .find(|c| c.name == "mxfp4_all_exponents")
        .expect("mxfp4_all_exponents");
    assert!(mx.dequantized.iter().any(|v| v.is_infinite()));
    assert!(mx.dequantized.iter().any(|v| v.is_subnormal()));
}

#[test]
fn all_grid_fixtures_reach_every_grid_entry() {
    use super::blocks::{as_blocks, BlockIQ2XS, BlockIQ3XXS};
    let cases = cases();
    let find = |n: &str| cases.iter().find(|c| c.name == n).expect(n);
    let mut seen = vec![false; 512];
    for b in as_blocks::<BlockIQ2XS>(&find("iq2_xs_all_grid").quantized) {
        (0..32).for_each(|g| seen[b.group(g).0] = true);
    }
    assert!(seen.iter().all(|&s| s), "IQ2_XS grid entries");
    let mut seen = vec![false; 256];
    for b in as_blocks::<BlockIQ3XXS>(&find("iq3_xxs_all_grid").quantized) {
        b.qs[..64].iter().for_each(|&g| seen[usize::from(g)] = true);
    }
    assert!(seen.iter().all(|&s| s), "IQ3_XXS grid entries");
}
