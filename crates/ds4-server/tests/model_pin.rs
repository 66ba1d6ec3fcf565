//! `ds4-server --model-sha256`: a model whose hash differs from the pin is refused before the
//! server listens; the right pin serves (issue 11).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Longest a start-up may take before the test gives up.
const GUARD: Duration = Duration::from_secs(120);

#[test]
fn wrong_pin_is_refused_before_listening_and_the_right_one_serves() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ds4-server-pin");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("pin dir");
    let model = dir.join("pinned.gguf");
    std::fs::copy(common::model_path(), &model).expect("copy model");
    let right = ds4::pin::sha256_file(&model, &mut |_, _| {}).expect("hash");
    let bin = env!("CARGO_BIN_EXE_ds4-server");
    let out = Command::new(bin)
        .arg("-m")
        .arg(&model)
        .args(["--port", "0", "--model-sha256", &"ab".repeat(32)])
        .output()
        .expect("binary runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refusing to load") && err.contains(&right),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
    // The right pin: the server comes up (the hash is now remembered, not recomputed).
    let mut child = Command::new(bin)
        .arg("-m")
        .arg(&model)
        .args(["--port", "0", "--model-sha256", &right])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let listening = loop {
        match rx.recv_timeout(GUARD) {
            Ok(line) if line.contains("listening on http://") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "server never listened: {seen:?}");
    assert!(
        !seen.iter().any(|l| l.contains("hashing the model")),
        "rehashed: {seen:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
