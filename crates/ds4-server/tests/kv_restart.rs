//! The disk KV cache across real process lifetimes (issue 8 "Restart", "Faults"): the
//! `ds4-server` binary answers turn 1, gets SIGTERM and writes its shutdown checkpoint; a new
//! process answers turn 2 from it with the cold server's greedy answer. Then kill -9 during a
//! checkpoint write (stalled by the test hook `DS4_TEST_KV_WRITE_PAUSE_MS`) and during
//! generation: the next process cleans up, loads nothing broken and still answers like a cold
//! server; two processes share one directory. Run with `--features test-hooks`.
#![cfg(all(feature = "test-hooks", unix))]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kv::{content, turn1, turn2, usage};
use serde_json::{json, Value};

/// A `ds4-server` process and what it has logged.
struct Proc {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

const STARTUP: Duration = Duration::from_secs(60);

fn spawn(dir: Option<&Path>, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ds4-server"));
    cmd.args(["-m"])
        .arg(common::model_path())
        .args([
            "--cpu",
            "--port",
            "0",
            "-c",
            "1024",
            "-t",
            "2",
            "--test-hooks",
        ])
        .args(["--kv-cache-min-tokens", "4"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.arg("--kv-disk-dir").arg(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("ds4-server starts");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("listening on ").nth(1) {
                let _ = tx.send(url.trim().to_string());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let base = rx.recv_timeout(STARTUP).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("no `listening` line; log: {:#?}", log.lock().unwrap())
    });
    Proc { child, base, log }
}

impl Proc {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig}");
    }

    /// SIGTERM, then the exit status must be success.
    fn terminate(mut self) -> Vec<String> {
        self.signal("-TERM");
        let status = wait_exit(&mut self.child);
        assert!(status.success(), "exit {status:?}; log: {:#?}", self.log());
        self.log()
    }

    fn kill9(mut self) {
        self.signal("-KILL");
        wait_exit(&mut self.child);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    async fn chat(&self, body: &Value) -> Value {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        serde_json::from_str(&r.text().await.unwrap()).unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(t0.elapsed() < STARTUP, "the process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` every 20 ms for up to a minute.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < STARTUP, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(ext))
        .collect()
}

/// Every `.kv` file in `dir` is whole and valid.
fn all_valid(dir: &Path) {
    for p in files(dir, ".kv") {
        if p.to_string_lossy().contains(".tmp.") {
            panic!("leftover {}", p.display());
        }
        let b = std::fs::read(&p).unwrap();
        ds4::kvstore::format::decode(&b, 1 << 20)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

fn logged(log: &[String], text: &str) -> usize {
    log.iter().filter(|l| l.contains(text)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_restart_and_kill_9_keep_answers_equal_to_a_cold_server() {
    let dir = tempfile::tempdir().unwrap();
    let cold = spawn(None, &[]);
    let want = cold.chat(&turn2()).await;
    drop(cold);

    // Turn 1, then SIGTERM: the shutdown checkpoint holds all of it.
    let s1 = spawn(Some(dir.path()), &[]);
    let r1 = s1.chat(&turn1()).await;
    let (p1, _, c1) = usage(&r1);
    let log = s1.terminate();
    assert_eq!(logged(&log, "reason=\"shutdown\""), 1, "{log:#?}");
    all_valid(dir.path());

    // Turn 2 in a new process prefills only the new suffix and answers as a cold server does.
    let s2 = spawn(Some(dir.path()), &[]);
    let r2 = s2.chat(&turn2()).await;
    let (p2, cached, _) = usage(&r2);
    assert_eq!(cached, p1 + c1, "{r2}");
    assert_eq!(p2, usage(&want).0);
    assert_eq!(content(&r2), content(&want));
    s2.terminate();

    // kill -9 while a checkpoint is being written (the hook stalls it after the body).
    let s3 = spawn(Some(dir.path()), &[("DS4_TEST_KV_WRITE_PAUSE_MS", "60000")]);
    let base = s3.base.clone();
    let pending = tokio::spawn(async move {
        let body = json!({"model": "deepseek-chat", "max_tokens": 4,
            "messages": [{"role": "system", "content": "Another conversation entirely."},
                         {"role": "user", "content": "Hello"}]});
        let _ = reqwest::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
    });
    wait_for("a temporary checkpoint file", || {
        !files(dir.path(), ".tmp.").is_empty()
    });
    s3.kill9();
    let _ = pending.await;
    assert_eq!(files(dir.path(), ".tmp.").len(), 1);

    // The next process removes the leftover, loads only valid files, answers as before.
    let s4 = spawn(Some(dir.path()), &[]);
    let r4 = s4.chat(&turn2()).await;
    assert_eq!(usage(&r4).1, p1 + c1);
    assert_eq!(content(&r4), content(&want));
    let log = s4.log();
    assert_eq!(
        logged(&log, "removed leftover temporary file"),
        1,
        "{log:#?}"
    );
    assert!(files(dir.path(), ".tmp.").is_empty());
    all_valid(dir.path());

    // kill -9 in the middle of a long generation.
    let s5 = s4;
    let mut stream = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s5.base))
        .header("content-type", "application/json")
        .body(
            json!({"model": "deepseek-chat", "max_tokens": 900, "stream": true, "temperature": 0,
                "messages": [{"role": "user", "content": "Write a long story."}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("\"content\"") {
        let chunk = stream.chunk().await.unwrap().expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    s5.kill9();
    all_valid(dir.path());

    // Two processes on the one directory, each restarting the conversation.
    let (a, b) = (spawn(Some(dir.path()), &[]), spawn(Some(dir.path()), &[]));
    let t2 = turn2();
    let (ra, rb) = tokio::join!(a.chat(&t2), b.chat(&t2));
    for r in [&ra, &rb] {
        assert_eq!(usage(r).1, p1 + c1, "{r}");
        assert_eq!(content(r), content(&want));
    }
    let (la, lb) = (a.terminate(), b.terminate());
    for l in [&la, &lb] {
        assert_eq!(logged(l, "removed:"), 0, "no file was found bad: {l:#?}");
    }
    all_valid(dir.path());
}
