//! `ds4 check` against the real server app (`ds4_server::router`) on 127.0.0.1:0, serving a
//! tiny generated model with the real V4 vocabulary, and against a fake server that breaks the
//! protocols the ways issue #9 found them broken. With `--features test-hooks` a test script
//! forces the model to call `get_weather`, so every tool row sees a real call and result turn.
//! Needs tests/fixtures/tokenizer/tokenizer.json (`tools/fetch-tokenizer.sh`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ds4_cli::check::{check, print_table, CheckOptions, Report, TOOL_PROMPT, TOOL_RESULT};
use ds4_server::test_script::{Rule, TestScript};
use ds4_server::{router, AppState, ServerConfig};

/// Every row of a full run, in order.
const ALL_ROWS: [&str; 22] = [
    "health",
    "auth: the key is accepted",
    "auth: no key or a wrong key is refused",
    "context fits a coding agent",
    "chat",
    "chat: tool call + result",
    "chat, streaming",
    "chat, streaming: tool call + result",
    "completions",
    "completions, streaming",
    "responses",
    "responses: tool call + result",
    "responses, streaming",
    "responses, streaming: tool call + result",
    "messages",
    "messages: tool call + result",
    "messages, streaming",
    "messages, streaming: tool call + result",
    "too-long prompt: chat",
    "too-long prompt: completions",
    "too-long prompt: responses",
    "too-long prompt: messages",
];

const KEY: &str = "sk-check-test";

fn model_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("ds4-cli-check-tiny-2layer.gguf");
        if path.exists() {
            return path;
        }
        let tok = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tokenizer/tokenizer.json");
        let json = std::fs::read_to_string(&tok).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `bash tools/fetch-tokenizer.sh` first",
                tok.display()
            )
        });
        let meta = ds4::tokenizer::gguf_metadata_from_tokenizer_json(&json)
            .expect("tokenizer.json converts");
        let spec = ds4::tiny::TinySpec {
            tokenizer: Some(meta),
            layers: 2,
            ..ds4::tiny::TinySpec::default()
        };
        let w = ds4::tiny::generate(&spec).expect("tiny model generates");
        let tmp = dir.join(format!("ds4-cli-check-tiny-{}.tmp", std::process::id()));
        w.write_file(&tmp).expect("tiny model writes");
        std::fs::rename(&tmp, &path).expect("tiny model renames");
        path
    })
}

/// The forced turns: a `get_weather` call on the tool prompt, an answer on its result.
fn weather_script() -> TestScript {
    let call = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n\
        <｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n\
        </｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let rule = |contains: &str, output: &str| Rule {
        prompt_contains: Vec::new(),
        last_turn_contains: vec![contains.into()],
        last_turn_lacks: Vec::new(),
        output: output.into(),
        max_tokens: None,
    };
    TestScript::new(vec![
        rule(TOOL_RESULT, "It is sunny in Paris."),
        rule(TOOL_PROMPT, call),
    ])
}

/// Serves the real app on 127.0.0.1:0 from a thread of its own; returns `http://ADDR`.
fn serve(ctx: usize, api_key: Option<&str>) -> String {
    let file = ds4::gguf::GgufFile::open(model_path()).expect("model opens");
    let model = ds4::model::Model::from_file(Arc::new(file)).expect("model loads");
    let engine = ds4::engine::Engine::new(Arc::new(model), ds4::model::Precision::Default, ctx)
        .expect("engine starts");
    let config = ServerConfig {
        ctx_tokens: ctx,
        default_max_tokens: 16,
        api_key: api_key.map(str::to_string),
        cors: false,
        keepalive_ms: 5000,
        test_hooks: cfg!(feature = "test-hooks"),
        limits: Default::default(),
        kv_cache: None,
        tool_memory_max_ids: 100_000,
    };
    let state = AppState::new(engine, config, None).with_test_script(weather_script());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            tx.send(listener.local_addr().expect("local addr"))
                .expect("test waits for the address");
            axum::serve(listener, router(state)).await
        })
    });
    format!(
        "http://{}",
        rx.recv().expect("server thread sends its address")
    )
}

/// An agent-sized server with a key, shared by the tests that need one.
fn agent_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| serve(32768, Some(KEY)))
}

/// A 1024-token server without a key.
fn small_open_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| serve(1024, None))
}

fn run(url: &str, key: Option<&str>) -> Report {
    check(&CheckOptions {
        url: url.into(),
        api_key: key.map(str::to_string),
        timeout: Duration::from_secs(300),
    })
    .expect("a valid URL")
}

fn table(report: &Report) -> String {
    let mut out = Vec::new();
    print_table(report, &mut out).expect("write to a Vec");
    String::from_utf8(out).expect("utf-8 table")
}

fn failing(report: &Report) -> Vec<&str> {
    report
        .rows
        .iter()
        .filter(|r| !r.pass)
        .map(|r| r.name.as_str())
        .collect()
}

#[test]
fn passes_every_row_against_an_agent_sized_server_with_a_key() {
    let report = run(agent_server(), Some(KEY));
    eprintln!("{}", table(&report)); // shown with --nocapture
    assert!(report.all_pass(), "{}", table(&report));
    let names: Vec<&str> = report.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ALL_ROWS);
    let detail = |name: &str| report.row(name).map(|r| r.detail.as_str()).unwrap_or("");
    assert!(detail("context fits a coding agent").contains("context 32768 tokens"));
    assert!(detail("too-long prompt: messages").contains("tokens > 32767 maximum"));
    assert!(detail("too-long prompt: chat").contains("context_length_exceeded"));
    if cfg!(feature = "test-hooks") {
        for name in ALL_ROWS
            .iter()
            .filter(|n| n.ends_with("tool call + result"))
        {
            assert_eq!(
                detail(name),
                r#"model called get_weather({"city":"Paris"}); result turn served"#,
                "{name}"
            );
        }
    }
}

#[test]
fn names_a_refused_key_and_a_missing_one_and_stops() {
    let url = agent_server();
    let wrong = run(url, Some("sk-not-this-one"));
    assert_eq!(
        failing(&wrong),
        ["auth: the key is accepted"],
        "{}",
        table(&wrong)
    );
    assert_eq!(wrong.rows.len(), 2, "nothing runs after a refused key");
    let row = wrong.row("auth: the key is accepted").expect("auth row");
    assert!(
        row.detail.starts_with("the server refused the key: 401"),
        "{}",
        row.detail
    );
    assert!(!wrong.all_pass());
    assert!(table(&wrong).contains("stopped: the other checks need a key the server accepts"));

    let missing = run(url, None);
    assert_eq!(failing(&missing), ["auth: the key is accepted"]);
    let row = missing.row("auth: the key is accepted").expect("auth row");
    assert!(
        row.detail
            .starts_with("the server wants a key: pass --api-key KEY"),
        "{}",
        row.detail
    );
}

#[test]
fn names_a_context_too_small_for_coding_agents() {
    let report = run(small_open_server(), None);
    assert_eq!(
        failing(&report),
        ["context fits a coding agent"],
        "{}",
        table(&report)
    );
    let row = report
        .row("context fits a coding agent")
        .expect("context row");
    assert!(
        row.detail.contains("context 1024 tokens is below 32768"),
        "{}",
        row.detail
    );
    assert!(row.detail.contains("-c 65536"), "{}", row.detail);
    let auth = report.row("auth: the key is accepted").expect("auth row");
    assert!(
        auth.detail.starts_with("the server needs no key"),
        "{}",
        auth.detail
    );
    assert!(report
        .row("too-long prompt: messages")
        .is_some_and(|r| r.pass));
}

#[test]
fn names_a_server_that_takes_requests_without_the_key() {
    let report = run(small_open_server(), Some(KEY));
    let row = report
        .row("auth: no key or a wrong key is refused")
        .expect("refusal row");
    assert!(!row.pass);
    assert!(
        row.detail.starts_with("no key → HTTP 200 (expected 401)"),
        "{}",
        row.detail
    );
}

#[test]
fn names_an_address_where_nothing_listens() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let report = run(&format!("127.0.0.1:{port}"), None);
    assert_eq!(failing(&report), ["health"]);
    assert_eq!(report.rows.len(), 1);
    assert!(table(&report).contains("stopped: nothing answers there: is ds4-server running"));
}

#[test]
fn ds4_check_exits_0_on_all_pass_and_1_naming_the_failure() {
    let url = agent_server();
    let out = Command::new(env!("CARGO_BIN_EXE_ds4"))
        .args(["check", url, "--api-key", "sk-wrong"])
        .env_remove("DS4_API_KEY")
        .output()
        .expect("run ds4 check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("  FAIL  auth: the key is accepted  the server refused the key"),
        "{stdout}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_ds4"))
        .args(["check", &format!("{url}/v1")])
        .env("DS4_API_KEY", KEY)
        .output()
        .expect("run ds4 check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("  PASS  ")).count(),
        22,
        "{stdout}"
    );
    assert!(stdout.ends_with("22 passed, 0 failed\n"), "{stdout}");
}

// ------------------------------------------------------------------- a broken server

/// A server that breaks the protocols the ways issue #9 found: chat reports a cut as
/// `finish_reason: "error"`, Messages words a too-long prompt its own way (Claude Code cannot
/// compact), Responses fails, completions is missing.
fn broken_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream);
        }
    });
    url
}

fn answer(stream: std::net::TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let (status, json) = match path.as_str() {
        "/health" => (200, r#"{"status":"ok"}"#.to_string()),
        "/v1/models" => (200, r#"{"object":"list","data":[{"id":"broken","context_length":65536}]}"#.into()),
        "/v1/chat/completions" => (200, r#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"{\"ci"},"finish_reason":"error"}]}"#.into()),
        "/v1/responses" => (200, r#"{"object":"response","status":"failed","error":{"message":"cut"},"output":[]}"#.into()),
        "/v1/messages/count_tokens" => (200, r#"{"input_tokens":3}"#.into()),
        "/v1/messages" => (400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"Prompt has 70000 tokens, but the context is 65536"}}"#.into()),
        _ => (404, r#"{"error":{"message":"unknown endpoint","type":"not_found_error"}}"#.into()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
        json.len()
    )
}

#[test]
fn names_each_protocol_a_broken_server_gets_wrong() {
    let report = run(&broken_server(), None);
    let text = table(&report);
    let detail = |name: &str| {
        report
            .row(name)
            .map(|r| r.detail.clone())
            .unwrap_or_default()
    };
    assert!(report.row("health").is_some_and(|r| r.pass), "{text}");
    assert!(
        report
            .row("context fits a coding agent")
            .is_some_and(|r| r.pass),
        "{text}"
    );
    assert!(
        detail("chat").starts_with("finish `error`, expected one of"),
        "{text}"
    );
    assert!(
        detail("chat: tool call + result").starts_with("finish `error`"),
        "{text}"
    );
    assert!(detail("chat, streaming").contains("[DONE]"), "{text}");
    assert!(detail("completions").starts_with("HTTP 404"), "{text}");
    assert!(detail("responses").starts_with("status `failed`"), "{text}");
    assert!(
        detail("messages").starts_with("HTTP 400: Prompt has 70000 tokens"),
        "{text}"
    );
    assert!(
        detail("too-long prompt: messages").contains("Claude Code cannot compact"),
        "{text}"
    );
    assert!(
        detail("too-long prompt: chat").starts_with("HTTP 200 (expected 400)"),
        "{text}"
    );
    let passing: Vec<&str> = report
        .rows
        .iter()
        .filter(|r| r.pass)
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        passing,
        [
            "health",
            "auth: the key is accepted",
            "context fits a coding agent"
        ]
    );
    assert!(!report.all_pass());
}
