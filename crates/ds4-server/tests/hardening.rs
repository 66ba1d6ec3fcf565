//! Hardening: no connection, body or signal takes the server down or holds it forever. Raw
//! TCP clients send what well-behaved HTTP clients never do (half a request head, half a body,
//! nothing at all); the binary is run under a low descriptor limit and a memory cap, and is
//! stopped with signals. Timeouts are set to a second so the tests stay fast; every wait on
//! the server is bounded by a generous guard that only turns a hang into a failure.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{parse_sse, start, Opts};
use ds4_server::serve::ConnLimits;
use ds4_server::RequestLimits;
use serde_json::{json, Value};

/// Longest any single wait in these tests may take before it counts as a hang.
const GUARD: Duration = Duration::from_secs(60);

fn quick_conn() -> ConnLimits {
    ConnLimits {
        header_timeout: Duration::from_secs(1),
        ..ConnLimits::default()
    }
}

/// A blocking raw connection with the hang guard as its read timeout.
fn raw(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(GUARD)).expect("read timeout");
    s
}

/// Everything the server sends until it closes the connection.
fn read_to_close(mut s: TcpStream) -> String {
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        // A reset after the response is still a close.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection not closed by the server: {e}"),
    }
    String::from_utf8_lossy(&buf).into_owned()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_body_over_the_limit_is_refused_before_it_is_read() {
    let s = start(Opts::default()).await;
    let addr = s.addr;
    let reply = blocking(move || {
        let mut c = raw(addr);
        // The head promises 64 MiB + 1 and no byte of it follows.
        c.write_all(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 67108865\r\n\r\n",
        )
        .expect("write");
        read_to_close(c)
    })
    .await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    assert!(
        reply.contains("\"type\":\"error\""),
        "Anthropic shape: {reply}"
    );
    assert!(reply.contains("67108864 bytes"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_64_kib_gets_431() {
    let s = start(Opts::default()).await;
    let addr = s.addr;
    let reply = blocking(move || {
        let mut c = raw(addr);
        let head = format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70 * 1024)
        );
        // The server may answer and close before the client has sent it all.
        let _ = c.write_all(head.as_bytes());
        read_to_close(c)
    })
    .await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_too_slowly_gets_408_and_the_connection_closes() {
    let s = start(Opts {
        limits: RequestLimits {
            body_timeout: Duration::from_secs(1),
            ..RequestLimits::default()
        },
        ..Opts::default()
    })
    .await;
    let addr = s.addr;
    let reply = blocking(move || {
        let mut c = raw(addr);
        c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"messages\"")
            .expect("write");
        read_to_close(c)
    })
    .await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("--body-timeout-s"), "{reply}");
    // Still serving.
    let (status, _) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_sent_and_kept_alive_connections_are_closed_by_the_header_timeout() {
    let s = start(Opts {
        conn: quick_conn(),
        ..Opts::default()
    })
    .await;
    let addr = s.addr;
    let (idle, half, kept) = blocking(move || {
        let idle = raw(addr);
        let mut half = raw(addr);
        half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .expect("write");
        let mut kept = raw(addr);
        kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        (
            read_to_close(idle),
            read_to_close(half),
            read_to_close(kept),
        )
    })
    .await;
    assert!(!idle.contains("HTTP/1.1 200"), "{idle}");
    assert!(!half.contains("HTTP/1.1 200"), "{half}");
    // The kept-alive one got its answer, then was closed once idle.
    assert!(kept.starts_with("HTTP/1.1 200"), "{kept}");
    assert!(kept.contains("\"status\":\"ok\""), "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_header_timeout_runs_to_its_end() {
    // The head timeout only runs while a head is awaited, never while a response streams.
    let s = start(Opts {
        ctx: 4096,
        conn: quick_conn(),
        ..Opts::default()
    })
    .await;
    let body = json!({"model": "deepseek-chat", "stream": true, "max_tokens": 300,
        "temperature": 0, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "count"}]});
    let t0 = std::time::Instant::now();
    let (status, frames) = s.stream("/v1/chat/completions", &body).await;
    eprintln!("300-token stream took {:?}", t0.elapsed());
    assert_eq!(status, 200);
    assert_eq!(frames.last().map(|f| f.1.as_str()), Some("[DONE]"));
    let chunks = common::data_json(&frames);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_and_are_served_when_a_slot_frees() {
    let s = start(Opts {
        conn: ConnLimits {
            max_connections: 2,
            ..quick_conn()
        },
        ..Opts::default()
    })
    .await;
    let addr = s.addr;
    // Two idle sockets take both slots; /health waits in the backlog until they time out.
    let idle: Vec<TcpStream> = (0..2).map(|_| raw(addr)).collect();
    let r = s
        .client
        .get(format!("{}/health", s.base))
        .timeout(GUARD)
        .send()
        .await
        .expect("health answered");
    assert_eq!(r.status(), 200);
    for c in idle {
        assert!(!read_to_close(c).contains("HTTP"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_wait_for_the_body_budget_and_small_ones_do_not() {
    let s = start(Opts {
        limits: RequestLimits {
            body_budget_bytes: 128 * 1024,
            ..RequestLimits::default()
        },
        ..Opts::default()
    })
    .await;
    let full = s.state.admission.available_bytes();
    // A: declares 100 kB and sends a little: it holds most of the budget while it sends.
    let addr = s.addr;
    let mut a = raw(addr);
    a.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"messages\":",
    )
    .expect("write");
    let waited = tokio::time::timeout(GUARD, async {
        while s.state.admission.available_bytes() == full {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "A never took the budget");
    // B: another 100 kB body cannot fit beside A's, so it is not even read yet.
    let big = format!(
        "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}], \"max_tokens\": 1}}",
        "a ".repeat(50_000)
    );
    let client = s.client.clone();
    let url = format!("{}/v1/chat/completions", s.base);
    let mut b = tokio::spawn(async move {
        client
            .post(url)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut b)
            .await
            .is_err(),
        "B was answered while A held the budget"
    );
    // Small requests never wait for the budget.
    let (status, _) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200);
    // A finishes its body (a bad one): the budget frees and B is served.
    let reply = blocking(move || {
        a.write_all(&vec![b' '; 100_000 - 12]).expect("write");
        let mut r = BufReader::new(a);
        let mut line = String::new();
        r.read_line(&mut line).expect("status line");
        line
    })
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let b = tokio::time::timeout(GUARD, b)
        .await
        .expect("B answered")
        .expect("B task")
        .expect("B sent");
    assert_eq!(b, 400, "B's prompt is longer than the 1024-token context");
}

/// Streams a chat completion long enough to be running when the server stops, reads the first
/// frame, shuts down and returns every frame.
async fn stream_then_shutdown(path: &str, body: Value) -> (Vec<(Option<String>, String)>, usize) {
    let mut s = start(Opts {
        ctx: 4096,
        ..Opts::default()
    })
    .await;
    let mut r = s
        .client
        .post(format!("{}{path}", s.base))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("stream starts");
    assert_eq!(r.status(), 200);
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = r.chunk().await.expect("chunk").expect("more");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let cut = s.shutdown().await;
    while let Some(chunk) = r.chunk().await.expect("chunk") {
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    (parse_sse(&text), cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_running_chat_stream_with_an_error_event() {
    let body = json!({"model": "deepseek-chat", "stream": true, "max_tokens": 4000,
        "temperature": 0, "messages": [{"role": "user", "content": "count"}]});
    let (frames, cut) = stream_then_shutdown("/v1/chat/completions", body).await;
    assert_eq!(cut, 0, "the stream's connection closed before the deadline");
    let n = frames.len();
    assert!(n >= 3, "{frames:?}");
    assert_eq!(frames[n - 1].1, "[DONE]", "{frames:?}");
    assert_eq!(frames[n - 2].0.as_deref(), Some("error"), "{frames:?}");
    assert!(frames[n - 2].1.contains("shutting down"), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_running_anthropic_stream_with_an_error_event() {
    let body = json!({"model": "deepseek-chat", "stream": true, "max_tokens": 4000,
        "temperature": 0, "messages": [{"role": "user", "content": "count"}]});
    let (frames, cut) = stream_then_shutdown("/v1/messages", body).await;
    assert_eq!(cut, 0);
    let last = frames.last().expect("frames");
    assert_eq!(last.0.as_deref(), Some("error"), "{frames:?}");
    let v: Value = serde_json::from_str(&last.1).expect("json");
    assert_eq!(v["type"], "error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_stream_in_a_long_prefill_without_waiting_for_it() {
    let mut s = start(Opts {
        ctx: 32768,
        ..Opts::default()
    })
    .await;
    // About 20k prompt tokens: seconds of prefill on the tiny model.
    let body = json!({"model": "deepseek-chat", "stream": true, "max_tokens": 1,
        "messages": [{"role": "user", "content": "many words ".repeat(10_000)}]});
    let mut r = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("stream starts");
    // The role chunk goes out when the prefill starts.
    let first = r.chunk().await.expect("chunk").expect("first frame");
    assert!(std::str::from_utf8(&first).unwrap().contains("assistant"));
    assert!(s.state.scheduler.is_busy(), "prefill running");
    let cut = s.shutdown().await;
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.expect("chunk") {
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    // The stream ended with the error event while the engine was still prefilling.
    assert!(
        s.state.scheduler.is_busy(),
        "the test's prefill was too short to tell"
    );
    let frames = parse_sse(&text);
    let n = frames.len();
    assert_eq!(frames[n - 1].1, "[DONE]", "{frames:?}");
    assert_eq!(frames[n - 2].0.as_deref(), Some("error"), "{frames:?}");
    assert_eq!(cut, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_a_half_sent_body_with_503_at_once() {
    let mut s = start(Opts::default()).await;
    let full = s.state.admission.available_bytes();
    let mut c = raw(s.addr);
    c.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{",
    )
    .expect("write");
    let reader = tokio::task::spawn_blocking(move || read_to_close(c));
    // The request is being read once its size is taken from the budget.
    let admitted = tokio::time::timeout(GUARD, async {
        while s.state.admission.available_bytes() == full {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(admitted.is_ok(), "the request never reached the body read");
    // The body deadline is 30 s and the shutdown deadline 5 s: a 503 proves neither was waited.
    let cut = s.shutdown().await;
    let reply = reader.await.expect("reader");
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert_eq!(cut, 0);
}

// ---- the binary: descriptor limit, memory cap, signals, API key --------------------------

fn server_cmd(shell_prefix: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    let model = common::model_path();
    let mut line = format!(
        "{shell_prefix} exec '{}' -m '{}' --port 0",
        env!("CARGO_BIN_EXE_ds4-server"),
        model.display()
    );
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    cmd.args(["-c", &line])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts the binary and returns it with its address, once it listens.
fn spawn_server(
    shell_prefix: &str,
    args: &[&str],
) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut child = server_cmd(shell_prefix, args)
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx.recv_timeout(GUARD).expect("server never listened");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim().to_string();
        }
    };
    (child, addr, rx)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig}");
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if t0.elapsed() > GUARD {
            let _ = child.kill();
            panic!("server did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(GUARD)).expect("timeout");
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    read_to_close(c)
}

#[cfg(unix)]
#[test]
fn hundreds_of_idle_sockets_under_a_low_descriptor_limit_do_not_stop_health() {
    // 128 descriptors: the default cap leaves 64 for connections; 300 idle sockets are many
    // more than the process could hold open, so without the cap accept would hit EMFILE and
    // without the header timeout /health would never be reached.
    let (mut child, addr, _log) = spawn_server(
        "ulimit -n 128 &&",
        &["-c", "256", "--header-timeout-s", "1"],
    );
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let reply = http_get(&addr, "/health");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    drop(idle);
    let reply = http_get(&addr, "/v1/models");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child).success());
}

#[cfg(unix)]
#[test]
fn sighup_is_a_graceful_stop() {
    let (mut child, addr, _log) = spawn_server("", &["-c", "256"]);
    assert!(http_get(&addr, "/health").starts_with("HTTP/1.1 200"));
    signal(&child, "-HUP");
    let status = wait_exit(&mut child);
    assert!(status.success(), "SIGHUP killed the process: {status:?}");
}

#[cfg(unix)]
#[test]
fn sigterm_drops_half_sent_requests_and_exits_without_waiting_for_them() {
    let (mut child, addr, log) = spawn_server("", &["-c", "256", "--shutdown-timeout-s", "30"]);
    let mut head = TcpStream::connect(&addr).expect("connect");
    head.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        .expect("write");
    let mut body = TcpStream::connect(&addr).expect("connect");
    body.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        .expect("write");
    // Both requests are in the server before the signal.
    assert!(http_get(&addr, "/health").starts_with("HTTP/1.1 200"));
    signal(&child, "-TERM");
    head.set_read_timeout(Some(GUARD)).expect("timeout");
    body.set_read_timeout(Some(GUARD)).expect("timeout");
    // Closed without an answer (head) or with a 503 (body; closed unanswered if the signal
    // came before its head was parsed).
    assert!(!read_to_close(head).contains("HTTP/1.1 200"));
    let reply = read_to_close(body);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 503"),
        "{reply}"
    );
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
    let lines: Vec<String> = log.try_iter().collect();
    assert!(
        !lines.iter().any(|l| l.contains("deadline passed")),
        "shutdown waited for the deadline: {lines:?}"
    );
}

#[cfg(unix)]
#[test]
fn empty_or_whitespace_api_keys_are_refused_at_start_up() {
    let bin = env!("CARGO_BIN_EXE_ds4-server");
    for (flag, env) in [
        (Some(""), None),
        (None, Some("")),
        (None, Some("   ")),
        (Some(" k "), None),
    ] {
        let mut cmd = Command::new(bin);
        cmd.args(["-m", "/nonexistent.gguf"])
            .env_remove("DS4_API_KEY");
        if let Some(k) = flag {
            cmd.args(["--api-key", k]);
        }
        if let Some(k) = env {
            cmd.env("DS4_API_KEY", k);
        }
        let out = cmd.output().expect("binary runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag:?} {env:?}: {err}");
        assert!(
            err.contains("API key") && err.contains("DS4_API_KEY"),
            "{err}"
        );
        assert!(
            !err.contains("nonexistent"),
            "checked before the model: {err}"
        );
    }
}

/// `VmHWM` (peak resident memory) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Sends `n` chat requests with `prompt` at once; each must be refused as too long.
fn flood(addr: &str, prompt: &str, n: usize) {
    let body = Arc::new(
        json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 4}).to_string(),
    );
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let (addr, body) = (addr.to_string(), body.clone());
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(&addr).expect("connect");
                c.set_read_timeout(Some(GUARD)).expect("timeout");
                write!(
                    c,
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .expect("head");
                c.write_all(body.as_bytes()).expect("body");
                read_to_close(c)
            })
        })
        .collect();
    for c in clients {
        let reply = c.join().expect("client");
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{}",
            &reply[..reply.len().min(300)]
        );
        assert!(reply.contains("context_length_exceeded"), "{reply}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn floods_of_huge_prompts_fit_a_fixed_memory_cap() {
    // The case: one 50 MB prompt without spaces cost +2.9 GB before it was refused,
    // and eight at once ran a 24 GB machine out of memory. Under a 3 GB address-space cap
    // (arenas limited so the cap measures the heap), all eight must get their 400 and the
    // server must stay up, with peak resident memory under 1.5 GiB (about 0.9 GiB measured on
    // 2 cores; more cores tokenize up to 4 prompts at once).
    let (mut child, addr, _log) =
        spawn_server("ulimit -v 3000000 && MALLOC_ARENA_MAX=2", &["-c", "32768"]);
    let idle_kib = peak_rss_kib(child.id());
    // 8 × 50 MB: refused from their length. 16 × 4 MB of one letter: short enough for the
    // length bound, refused from the letter count. 8 × 1 MB of ".-": merged for real (two at a
    // time), then refused.
    flood(&addr, &"x".repeat(50_000_000), 8);
    flood(&addr, &"x".repeat(4_000_000), 16);
    flood(&addr, &".-".repeat(500_000), 8);
    let peak_kib = peak_rss_kib(child.id());
    eprintln!("prompt floods: peak rss {peak_kib} KiB (idle {idle_kib} KiB)");
    assert!(
        peak_kib < 1536 * 1024,
        "peak resident memory {peak_kib} KiB"
    );
    assert!(http_get(&addr, "/health").starts_with("HTTP/1.1 200"));
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child).success());
}
