//! `ds4-gguf tiny` writes files that load as models and `inspect` lists them; bad arguments are
//! errors with a message, not panics.

use std::process::Command;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ds4-gguf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d.join(name)
}

#[test]
fn tiny_writes_a_loadable_model_for_every_recipe() {
    for recipe in ["q2", "q4", "f16"] {
        let out = tmp(&format!("{recipe}.gguf"));
        let st = Command::new(env!("CARGO_BIN_EXE_ds4-gguf"))
            .args(["tiny", "--layers", "3", "--experts", recipe, "--out"])
            .arg(&out)
            .status()
            .expect("run ds4-gguf");
        assert!(st.success(), "{recipe}");
        let file = ds4::gguf::GgufFile::open(&out).expect("open");
        let m = ds4::model::Model::from_file(std::sync::Arc::new(file)).expect("bind");
        assert_eq!(m.config.n_layer, 3);
        for key in [
            "deepseek4.context_length",
            "deepseek4.expert_gating_func",
            "deepseek4.rope.scaling.type",
        ] {
            assert!(m.file.get(key).is_some(), "llama.cpp key {key} missing");
        }
        let want = match recipe {
            "q2" => ds4::gguf::GgmlType::IQ2_XXS,
            "q4" => ds4::gguf::GgmlType::Q4_K,
            _ => ds4::gguf::GgmlType::F16,
        };
        assert_eq!(m.weights.layers[0].ffn_gate_exps.ty, want);
    }
}

#[test]
fn inspect_lists_keys_and_tensors() {
    let out = tmp("inspect.gguf");
    assert!(Command::new(env!("CARGO_BIN_EXE_ds4-gguf"))
        .args(["tiny", "--layers", "2", "--out"])
        .arg(&out)
        .status()
        .expect("run")
        .success());
    let o = Command::new(env!("CARGO_BIN_EXE_ds4-gguf"))
        .arg("inspect")
        .arg(&out)
        .output()
        .expect("run inspect");
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).expect("utf-8");
    assert!(text.contains("deepseek4.block_count = U32(2)"), "{text}");
    assert!(
        text.contains("blk.1.ffn_down_exps.weight") && text.contains("Q2_K"),
        "{text}"
    );
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let o = Command::new(env!("CARGO_BIN_EXE_ds4-gguf"))
        .args(["tiny", "--hidden", "100", "--out"])
        .arg(tmp("bad.gguf"))
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("multiples of 256"));
    let o = Command::new(env!("CARGO_BIN_EXE_ds4-gguf"))
        .args(["inspect", "/nonexistent/x.gguf"])
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/x.gguf"));
}
