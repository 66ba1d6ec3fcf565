//! End-to-end tests of the `ds4` binary (spec/serving.md §6.1) on a tiny generated model that
//! carries the real DeepSeek V4 vocabulary (built once per test run with `ds4-gguf tiny`).
//! Needs tests/fixtures/tokenizer/tokenizer.json (`tools/fetch-tokenizer.sh`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use ds4::chat::{encode_messages, Message, ReasoningEffort, Role, ThinkingMode};
use ds4::tokenizer::Tokenizer;
use ds4_cli::chat_cli::{Think, Transcript};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tokenizer_json() -> PathBuf {
    let p = repo_root().join("tests/fixtures/tokenizer/tokenizer.json");
    assert!(
        p.is_file(),
        "missing {}: run tools/fetch-tokenizer.sh first",
        p.display()
    );
    p
}

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let json = std::fs::read_to_string(tokenizer_json()).expect("read tokenizer.json");
        let meta = ds4::tokenizer::gguf_metadata_from_tokenizer_json(&json)
            .expect("convert tokenizer.json");
        Tokenizer::from_metadata(|k| meta.iter().find(|(n, _)| n == k).map(|(_, v)| v))
            .expect("build tokenizer")
    })
}

/// The tiny model, generated once per test binary.
fn tiny_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ds4-cli-tests");
        std::fs::create_dir_all(&dir).expect("create test dir");
        let out = dir.join("tiny-real-vocab.gguf");
        let run = Command::new(env!("CARGO_BIN_EXE_ds4-gguf"))
            .args(["tiny", "--tokenizer"])
            .arg(tokenizer_json())
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run ds4-gguf");
        assert!(
            run.status.success(),
            "ds4-gguf tiny failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        out
    })
}

fn ds4(args: &[&str]) -> Output {
    ds4_with_stdin(args, None)
}

fn ds4_with_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ds4"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ds4");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for ds4")
}

fn model_arg() -> &'static str {
    tiny_model().to_str().expect("utf-8 temp path")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn dump_tokens_prints_the_tokenizer_ids_then_one_line_per_token() {
    let text = "<｜begin▁of▁sentence｜><｜User｜>Ciao, come stai?<｜Assistant｜></think>";
    let out = ds4(&["-m", model_arg(), "--dump-tokens", "-p", text]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let mut lines = stdout.lines();
    let ids = tokenizer().encode(text, true);
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    assert_eq!(
        lines.next(),
        Some(format!("[{}]", list.join(", ")).as_str())
    );
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest.len(), ids.len());
    for (line, id) in rest.iter().zip(&ids) {
        let vocab = tokenizer().token_text(*id).expect("known id");
        assert_eq!(*line, format!("{id:6}  {vocab}"));
    }
}

#[test]
fn render_chat_prints_the_rendered_request_byte_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let req = dir.path().join("req.json");
    let body = serde_json::json!({
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "easy"},
            {"role": "user", "content": "And 3+3?\n"}
        ],
        "thinking": {"type": "enabled"}
    });
    std::fs::write(&req, body.to_string()).expect("write request");
    let out = ds4(&["--render-chat", req.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let expected = ds4::chat::render_chat_request(&body, 32768).expect("render");
    assert_eq!(
        String::from_utf8(out.stdout).expect("utf-8"),
        expected.prompt
    );
}

#[test]
fn render_chat_reports_a_bad_request_with_exit_code_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let req = dir.path().join("bad.json");
    std::fs::write(&req, r#"{"model":"x"}"#).expect("write request");
    let out = ds4(&["--render-chat", req.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(stderr_of(&out).contains("messages"), "{}", stderr_of(&out));
}

#[test]
fn one_shot_generates_and_prints_a_timing_line() {
    let out = ds4(&[
        "-m",
        model_arg(),
        "-p",
        "hello",
        "-n",
        "8",
        "--seed",
        "1",
        "--temp",
        "0",
    ]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    let timing = err
        .lines()
        .find(|l| l.starts_with("ds4: prefill "))
        .unwrap_or_else(|| panic!("no timing line in {err:?}"));
    assert!(
        timing.contains("prefill 10 tok") && timing.contains("t/s, gen "),
        "{timing}"
    );
}

#[test]
fn think_max_is_downgraded_with_a_warning_below_384k() {
    let out = ds4(&[
        "-m",
        model_arg(),
        "-p",
        "hi",
        "-n",
        "1",
        "--temp",
        "0",
        "-c",
        "512",
        "--think-max",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("warning: --think-max"));
}

#[test]
fn dump_logits_writes_an_npy_of_tokens_by_vocab() {
    let dir = tempfile::tempdir().expect("temp dir");
    let npy = dir.path().join("logits.npy");
    let out = ds4(&[
        "-m",
        model_arg(),
        "--prompt-tokens",
        "0,19923,2058",
        "--decode-from",
        "1",
        "--dump-logits",
        npy.to_str().expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let vocab = ds4_cli::load_model(tiny_model())
        .expect("load tiny model")
        .config
        .n_vocab;
    let bytes = std::fs::read(&npy).expect("read npy");
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).expect("ascii header");
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(
        header.contains(&format!("'shape': (3, {vocab})")),
        "{header}"
    );
    assert_eq!(bytes.len(), 10 + hlen + 3 * vocab * 4);
    let finite = bytes[10 + hlen..]
        .chunks_exact(4)
        .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite());
    assert!(finite, "non-finite logits");
}

#[test]
fn one_shot_tokenizes_a_rendered_prompt_file_as_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("prompt.txt");
    let text = "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi there<｜Assistant｜></think>";
    std::fs::write(&file, text).expect("write prompt");
    let out = ds4(&[
        "-m",
        model_arg(),
        "--prompt-file",
        file.to_str().expect("utf-8 path"),
        "-n",
        "2",
        "--temp",
        "0",
        "-c",
        "512",
    ]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    let n = tokenizer().encode(text, true).len();
    assert!(err.contains(&format!("ds4: prefill {n} tok")), "{err}");
}

#[test]
fn repl_reads_piped_commands_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("message.txt");
    std::fs::write(&file, "a message from a file").expect("write message");
    let input = format!(
        "/nothink\nhello\n/bogus\n/read {}\n/quit\nnever sent\n",
        file.display()
    );
    let out = ds4_with_stdin(
        &[
            "-m",
            model_arg(),
            "-n",
            "4",
            "--seed",
            "1",
            "--temp",
            "0",
            "-c",
            "512",
        ],
        Some(&input),
    );
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    let timings: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("ds4: prefill "))
        .collect();
    assert_eq!(timings.len(), 2, "{err}");
    assert!(
        timings[1].contains("prompt tokens reused"),
        "second turn should extend the first: {err}"
    );
    assert!(err.contains("unknown command `/bogus`"), "{err}");
}

#[test]
fn cli_prompts_equal_the_official_template_tokenized_with_specials() {
    let tok = tokenizer();
    let user = "Scrivi una funzione Python che inverte una stringa.\n\nGrazie!";
    for system in ["You are a helpful assistant", ""] {
        for (think, mode, effort) in [
            (Think::None, ThinkingMode::Chat, None),
            (Think::High, ThinkingMode::Thinking, None),
            (
                Think::Max,
                ThinkingMode::Thinking,
                Some(ReasoningEffort::Max),
            ),
        ] {
            let mut msgs = Vec::new();
            if !system.is_empty() {
                msgs.push(Message::new(Role::System, system));
            }
            msgs.push(Message::new(Role::User, user));
            let official = tok.encode(&encode_messages(&msgs, mode, effort), true);
            let cli = Transcript::new(system).prompt(tok, user, think);
            assert_eq!(cli, official, "system {system:?}, {think:?}");
        }
    }
}

#[test]
fn cli_transcript_keeps_the_reply_and_closes_it_with_eos() {
    let tok = tokenizer();
    let mut t = Transcript::new("");
    let prompt = t.prompt(tok, "hi", Think::None);
    let reply = tok.encode("Hello!", false);
    let session: Vec<u32> = prompt.iter().chain(&reply).copied().collect();
    t.record(tok, Think::None, &prompt, &session);
    let next = t.prompt(tok, "more", Think::None);
    let mut expected = session.clone();
    expected.push(tok.eos());
    assert!(next.starts_with(&expected));
    // The same conversation rendered by the official template (non-thinking keeps the reply).
    let mut msgs = vec![Message::new(Role::User, "hi")];
    msgs.push(Message::new(Role::Assistant, "Hello!"));
    msgs.push(Message::new(Role::User, "more"));
    let official = tok.encode(&encode_messages(&msgs, ThinkingMode::Chat, None), true);
    assert_eq!(next, official);
}

#[test]
fn model_sha256_refuses_a_wrong_file_and_remembers_a_right_one() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ds4-cli-pin");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("pin dir");
    let model = dir.join("pinned.gguf");
    std::fs::copy(tiny_model(), &model).expect("copy model");
    let m = model.to_str().expect("utf-8 path");
    let right = ds4::pin::sha256_file(&model, &mut |_, _| {}).expect("hash");
    let wrong = "0".repeat(64);
    let gen = |pin: &str| ds4(&["-m", m, "--model-sha256", pin, "-p", "hi", "-n", "1"]);
    let out = gen(&wrong);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("has SHA-256 {right}")) && err.contains("refusing to load"),
        "{err}"
    );
    assert!(
        !err.contains("ds4: prefill"),
        "generated despite the pin: {err}"
    );
    // The hash computed for the refusal is remembered next to the file.
    let record = ds4::pin::record_path(&model);
    assert_eq!(
        ds4::pin::remembered(&model).as_deref(),
        Some(right.as_str())
    );
    let out = gen(&right.to_uppercase());
    assert!(out.status.success(), "{}", stderr_of(&out));
    // A remembered hash is trusted only for the same size and mtime: a changed file is rehashed.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&model)
        .expect("open model")
        .write_all(b"x")
        .expect("append");
    assert_eq!(ds4::pin::remembered(&model), None);
    let out = gen(&right);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("refusing to load"));
    assert!(record.exists());
    let out = ds4(&["-m", m, "--model-sha256", "xyz", "-p", "hi"]);
    assert!(
        stderr_of(&out).contains("is not a SHA-256"),
        "{}",
        stderr_of(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
