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

#[test]
fn kv_inspect_reports_valid_and_invalid_cache_files() {
    use ds4::kvstore::{model_stamp, DirOptions, KeyKind, KvDir, SaveReason, StoreRequest};
    let model_path = tmp("kv-model.gguf");
    assert!(Command::new(env!("CARGO_BIN_EXE_ds4-gguf"))
        .args(["tiny", "--layers", "3", "--out"])
        .arg(&model_path)
        .status()
        .expect("run")
        .success());
    let m = ds4::model::Model::open(&model_path).expect("model");
    let be = ds4::backend::CpuBackend::new(m.file.clone());
    let mut s = m.new_session(&be, 256).expect("session");
    m.forward_last(
        &be,
        &mut s,
        &[5, 6, 7, 8, 9],
        ds4::model::Precision::Default,
    )
    .expect("prefill");
    let snap = s.snapshot(&be).expect("snapshot");
    let dir = tmp("kv-dir");
    let _ = std::fs::remove_dir_all(&dir);
    let opts = DirOptions {
        budget_bytes: 1 << 30,
        min_tokens: 1,
        reject_different_quant: false,
        max_tool_entries: 4,
    };
    let stamp = model_stamp(&m, ds4::model::Precision::Default);
    let (mut kv, _) = KvDir::open(&dir, stamp, &m.config, 256, opts).expect("open");
    for text in ["first prompt", "second prompt"] {
        kv.store(&StoreRequest {
            text,
            key_kind: KeyKind::Tokens,
            reason: SaveReason::Shutdown,
            snapshot: &snap,
            tools: &[],
        })
        .expect("store");
    }
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_ds4-gguf"))
            .arg("kv-inspect")
            .args(args)
            .arg(&dir)
            .output()
            .expect("run kv-inspect");
        (
            o.status.success(),
            String::from_utf8(o.stdout).expect("utf-8"),
        )
    };
    let (ok, text) = run(&["-m", model_path.to_str().unwrap(), "--show-text"]);
    assert!(ok, "{text}");
    assert_eq!(text.matches(": valid, ").count(), 2, "{text}");
    assert!(
        text.contains("reason shutdown") && text.contains("tokens 5"),
        "{text}"
    );
    assert!(text.contains("loads with the given model: yes"), "{text}");
    assert!(text.contains("\"first prompt\""), "{text}");
    assert!(text.contains("2 file(s), 0 invalid"), "{text}");
    // Damage one file's payload: reported invalid, exit status 1, nothing else changes.
    let victim = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut b = std::fs::read(&victim).unwrap();
    let n = b.len();
    b[n - 3] ^= 1;
    std::fs::write(&victim, &b).unwrap();
    let (ok, text) = run(&[]);
    assert!(!ok);
    assert!(
        text.contains("INVALID (payload: checksum mismatch"),
        "{text}"
    );
    assert!(text.contains("2 file(s), 1 invalid"), "{text}");
    assert!(
        !text.contains("prompt\""),
        "key text is private by default: {text}"
    );
}
