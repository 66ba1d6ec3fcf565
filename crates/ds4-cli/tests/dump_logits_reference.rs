//! The diagnostic interface of issue #2, end to end: `ds4 --model M --prompt-tokens …
//! --dump-logits OUT.npy --precise [--decode-from K]` on a transformers fixture model writes the
//! logits transformers computed (tools/reference/model_fixtures.py), for prefill and decode.

use std::path::PathBuf;
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/model")
        .join(rel)
}

/// Reads a float32 `.npy` written by `ds4` or numpy (format 1.0, C order).
fn read_npy(path: &std::path::Path) -> (Vec<f32>, String) {
    let b = std::fs::read(path).expect("read npy");
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = String::from_utf8_lossy(&b[10..10 + hlen]).to_string();
    let data = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (data, header)
}

fn dump(recipe: &str, decode_from: Option<usize>) -> (Vec<f32>, String) {
    let tokens: Vec<u32> = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{recipe}/tokens.json"))).expect("tokens"),
    )
    .expect("json");
    let list = tokens
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = std::env::temp_dir().join(format!(
        "ds4-dump-{}-{recipe}-{decode_from:?}.npy",
        std::process::id()
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ds4"));
    cmd.arg("--model")
        .arg(fixture(&format!("{recipe}/model.gguf")))
        .args(["--prompt-tokens", &list, "--precise", "--dump-logits"])
        .arg(&out);
    if let Some(k) = decode_from {
        cmd.args(["--decode-from", &k.to_string()]);
    }
    let o = cmd.output().expect("run ds4");
    assert!(
        o.status.success(),
        "ds4 failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    read_npy(&out)
}

#[test]
fn dump_logits_matches_transformers_in_prefill_and_decode() {
    let (want, _) = read_npy(&fixture("q2/logits_precise.npy"));
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for k in [None, Some(200)] {
        let (got, header) = dump("q2", k);
        assert!(header.contains("'shape': (260, 512)"), "{header}");
        let d = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            d / max_ref <= 1e-4,
            "decode_from {k:?}: max|Δ|/max|ref| = {}",
            d / max_ref
        );
    }
}
