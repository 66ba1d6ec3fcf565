//! The disk KV cache through the HTTP API (issue 8): a shutdown checkpoint resumes the next
//! turn in a new server, bad files never change an answer, two agents alternating prefill only
//! their new suffixes, the directory stays under its quota, exact DSML replay survives a
//! restart. In-process servers over one directory; `kv_restart.rs` does the same with real
//! processes, signals and kill -9. Run with `--features test-hooks` (forced outputs).
#![cfg(feature = "test-hooks")]

mod common;

use std::path::Path;

use common::kv::{content, turn1, turn2, usage, ANSWER};
use common::{start, Opts, Server};
use ds4_server::kvcache::KvCacheConfig;
use serde_json::{json, Value};

fn kv(dir: &Path) -> KvCacheConfig {
    KvCacheConfig {
        min_tokens: 4,
        ..KvCacheConfig::new(dir.to_path_buf())
    }
}

fn opts(kv_cache: Option<KvCacheConfig>) -> Opts {
    Opts {
        kv_cache,
        ..Opts::default()
    }
}

async fn chat(s: &Server, body: &Value) -> Value {
    let (status, r) = s.post("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{r}");
    r
}

async fn metric(s: &Server, name: &str) -> u64 {
    let text = s.state.metrics.render(0);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

fn kv_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kv"))
        .collect();
    v.sort();
    v
}

/// Turn 2 on a server that never saw turn 1 and has no disk cache: the reference answer.
async fn cold_turn2() -> Value {
    let cold = start(opts(None)).await;
    chat(&cold, &turn2()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_resumes_turn_two_from_the_shutdown_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = start(opts(Some(kv(dir.path())))).await;
    let r1 = chat(&a, &turn1()).await;
    assert_eq!(content(&r1), ANSWER);
    let (p1, _, c1) = usage(&r1);
    // The same server answering turn 2 from memory: what the restarted one must match exactly.
    let mut live = start(opts(None)).await;
    chat(&live, &turn1()).await;
    let from_memory = chat(&live, &turn2()).await;
    live.shutdown().await;
    a.shutdown_and_checkpoint().await;
    assert!(metric(&a, "ds4_kv_disk_writes_total").await >= 1);

    let b = start(opts(Some(kv(dir.path())))).await;
    let r2 = chat(&b, &turn2()).await;
    let (p2, cached, _) = usage(&r2);
    assert_eq!(
        cached,
        p1 + c1,
        "turn 2 reuses all of turn 1 from disk: {r2}"
    );
    let cold = cold_turn2().await;
    assert_eq!(
        usage(&cold).0,
        p2,
        "same effective prompt as a cold tokenization"
    );
    assert_eq!(content(&r2), content(&from_memory), "disk = memory");
    assert_eq!(content(&r2), content(&cold), "disk = cold server");
    assert_eq!(metric(&b, "ds4_kv_disk_hits_total").await, 1);
    assert!(metric(&b, "ds4_kv_disk_read_bytes_total").await > 0);
    assert_eq!(metric(&b, "ds4_cached_tokens_total").await, cached);

    // Anthropic reports the disk hit as cache reads.
    let c = start(opts(Some(kv(dir.path())))).await;
    let body = json!({"model": "deepseek-chat", "max_tokens": 4,
        "system": "You are a geography tutor.",
        "messages": [{"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": ANSWER},
                     {"role": "user", "content": "And of Italy?"}]});
    let (status, m) = c.post("/v1/messages", &body).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["usage"]["cache_read_input_tokens"], p1 + c1, "{m}");
}

/// A copy of `bytes` with byte `i` flipped.
fn flip(bytes: &[u8], i: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[i] ^= 0x40;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_removed_and_answers_match_a_cold_server() {
    // A real checkpoint of turn 1 (the shutdown one is the longest).
    let src = tempfile::tempdir().unwrap();
    let mut a = start(opts(Some(kv(src.path())))).await;
    chat(&a, &turn1()).await;
    a.shutdown_and_checkpoint().await;
    let longest = kv_files(src.path())
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let name = longest.file_name().unwrap().to_owned();
    let good = std::fs::read(&longest).unwrap();
    let cold = cold_turn2().await;
    let other_model = other_model_file();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("flipped header byte", flip(&good, 40)),
        ("flipped payload byte", flip(&good, good.len() - 100)),
        ("zero length", Vec::new()),
        (
            "random bytes",
            (0..good.len()).map(|i| (i * 131 + 7) as u8).collect(),
        ),
    ];
    for (what, bytes) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(&name), &bytes).unwrap();
        let s = start(opts(Some(kv(dir.path())))).await;
        let r = chat(&s, &turn2()).await;
        assert_eq!(usage(&r).1, 0, "{what}: nothing may be reused");
        assert_eq!(content(&r), content(&cold), "{what}");
        assert!(
            !dir.path().join(&name).exists(),
            "{what}: the bad file stays"
        );
    }
    // A valid file of a model with other dimensions, under its own name.
    let dir = tempfile::tempdir().unwrap();
    let (other_name, other_bytes) = other_model;
    std::fs::write(dir.path().join(&other_name), &other_bytes).unwrap();
    let s = start(opts(Some(kv(dir.path())))).await;
    assert!(!dir.path().join(&other_name).exists());
    assert_eq!(content(&chat(&s, &turn2()).await), content(&cold));
}

/// A valid checkpoint written by a 2-layer tiny model whose key text is turn 2's prefix.
fn other_model_file() -> (String, Vec<u8>) {
    use ds4::kvstore::{model_stamp, DirOptions, KeyKind, KvDir, SaveReason, StoreRequest};
    let spec = ds4::tiny::TinySpec {
        layers: 2,
        ..ds4::tiny::TinySpec::default()
    };
    let mut b = Vec::new();
    ds4::tiny::generate(&spec)
        .unwrap()
        .write_to(&mut b)
        .unwrap();
    let m = ds4::model::Model::from_file(std::sync::Arc::new(
        ds4::gguf::GgufFile::from_bytes(b).unwrap(),
    ))
    .unwrap();
    let be = ds4::backend::CpuBackend::new(m.file.clone());
    let mut sess = m.new_session(&be, 256).unwrap();
    m.forward_last(
        &be,
        &mut sess,
        &[1, 2, 3, 4, 5, 6],
        ds4::model::Precision::Default,
    )
    .unwrap();
    let snap = sess.snapshot(&be).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = DirOptions {
        budget_bytes: 1 << 30,
        min_tokens: 1,
        reject_different_quant: false,
        max_tool_entries: 4,
    };
    let stamp = model_stamp(&m, ds4::model::Precision::Default);
    let (mut kv, _) = KvDir::open(dir.path(), stamp, &m.config, 256, opts).unwrap();
    let (out, _) = kv
        .store(&StoreRequest {
            text: "<｜begin▁of▁sentence｜>",
            key_kind: KeyKind::Tokens,
            reason: SaveReason::Cold,
            snapshot: &snap,
            tools: &[],
        })
        .unwrap();
    let ds4::kvstore::StoreOutcome::Written { name, .. } = out else {
        panic!("{out:?}")
    };
    let bytes = std::fs::read(dir.path().join(&name)).unwrap();
    (name, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_cache_directory_does_not_stop_the_server() {
    let base = tempfile::tempdir().unwrap();
    let file = base.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let s = start(opts(Some(kv(&file)))).await;
    let r = chat(&s, &turn2()).await;
    assert_eq!(content(&r), content(&cold_turn2().await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_alternating_prefill_only_their_new_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(opts(Some(kv(dir.path())))).await;
    let systems = [
        "You are agent A, a careful coder.",
        "You are agent B, a terse reviewer.",
    ];
    let mut history: [Vec<Value>; 2] = [
        vec![json!({"role": "system", "content": systems[0]})],
        vec![json!({"role": "system", "content": systems[1]})],
    ];
    let mut seen = [0u64; 2]; // tokens each agent's previous turn ended with
    for turn in 0..10 {
        for agent in 0..2 {
            history[agent].push(
                json!({"role": "user", "content": format!("Step {turn} for agent {agent}.")}),
            );
            let answer = format!("Agent {agent} did step {turn}.");
            let body = json!({"model": "deepseek-chat", "max_tokens": 20,
                "messages": history[agent], "ds4_test_output": answer});
            let r = chat(&s, &body).await;
            let (prompt, cached, completion) = usage(&r);
            if turn > 0 {
                let suffix = prompt - seen[agent];
                assert!(
                    prompt - cached <= suffix,
                    "agent {agent} turn {turn}: prefilled {} tokens, new suffix is {suffix}",
                    prompt - cached
                );
            }
            seen[agent] = prompt + completion;
            history[agent].push(json!({"role": "assistant", "content": answer}));
        }
    }
    assert!(metric(&s, "ds4_kv_disk_hits_total").await >= 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_stays_under_its_quota_over_many_conversations() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 2u64 << 20;
    let s = start(opts(Some(KvCacheConfig {
        space_mb: 2,
        ..kv(dir.path())
    })))
    .await;
    let du = || -> u64 {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    for i in 0..12 {
        let body = json!({"model": "deepseek-chat", "max_tokens": 20,
            "messages": [{"role": "system", "content": format!("Conversation {i}.")},
                         {"role": "user", "content": "Tell me something."}],
            "ds4_test_output": format!("Fact number {i}.")});
        chat(&s, &body).await;
        assert!(
            du() <= budget,
            "after conversation {i}: {} > {budget}",
            du()
        );
    }
    assert!(metric(&s, "ds4_kv_disk_evictions_total").await > 0);
    assert!(metric(&s, "ds4_kv_disk_bytes").await <= budget);
}

const DSML: &str = "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n  <｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

fn tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}})
}

/// Turn 2 of a tool conversation: the client echoes the call as JSON, reformatted.
fn tool_turn2(id: &str) -> Value {
    json!({"model": "deepseek-chat", "max_tokens": 2, "tools": [tool()], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": id, "type": "function",
            "function": {"name": "get_weather", "arguments": "{ \"days\": 3, \"city\": \"Paris\" }"}}]},
        {"role": "tool", "tool_call_id": id, "content": "Sunny"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_dsml_replay_survives_a_restart_and_can_be_turned_off() {
    for replay in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let o = Opts {
            tool_memory_max_ids: if replay { 100 } else { 0 },
            ..opts(Some(kv(dir.path())))
        };
        let mut a = start(o.clone()).await;
        let body = json!({"model": "deepseek-chat", "max_tokens": 200, "tools": [tool()],
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "ds4_test_output": format!("Checking.\n\n{DSML}")});
        let r1 = chat(&a, &body).await;
        let call = &r1["choices"][0]["message"]["tool_calls"][0];
        let id = call["id"].as_str().unwrap().to_string();
        let (p1, _, c1) = usage(&r1);
        a.shutdown_and_checkpoint().await;
        // The tool memory came back from the checkpoint's tool map: the reformatted call renders
        // to the sampled bytes (odd indentation included) and all of turn 1 is reused.
        let b = start(o).await;
        let r2 = chat(&b, &tool_turn2(&id)).await;
        let cached = usage(&r2).1;
        // Generation stopped at the block's end; every sampled token is in the live session.
        let live = p1 + c1;
        if replay {
            assert_eq!(cached, live, "{r2}");
        } else {
            assert!(
                cached < live,
                "canonical DSML differs from the sampled bytes: {r2}"
            );
        }
    }
}

fn headers(dir: &Path) -> Vec<ds4::kvstore::Header> {
    kv_files(dir)
        .iter()
        .map(|p| ds4::kvstore::Header::decode(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continued_checkpoints_fall_on_the_interval_and_long_hits_are_replaced() {
    use ds4::kvstore::SaveReason;
    let dir = tempfile::tempdir().unwrap();
    let every16 = KvCacheConfig {
        cold_max_tokens: 0,
        continued_interval_tokens: 16,
        boundary_align_tokens: 0,
        ..kv(dir.path())
    };
    let mut a = start(opts(Some(every16))).await;
    let mut body = turn1();
    body["ds4_test_output"] = json!(format!("{ANSWER} {ANSWER} {ANSWER}"));
    let (p1, _, c1) = usage(&chat(&a, &body).await);
    // Checked after each prefill chunk (which end on the multiples) and before each decoded
    // token is evaluated; EOS, the last token, is evaluated without a check.
    let last_checked = p1 + c1 - 2;
    let want: Vec<u32> = (1..=last_checked / 16).map(|k| 16 * k as u32).collect();
    assert!(
        want.iter().any(|&t| u64::from(t) > p1),
        "some during decode: {want:?}"
    );
    let mut got: Vec<u32> = headers(dir.path()).iter().map(|h| h.tokens).collect();
    got.sort();
    assert_eq!(got, want);
    assert!(headers(dir.path())
        .iter()
        .all(|h| h.reason == SaveReason::Continued));
    a.shutdown_and_checkpoint().await;

    // A hit longer than --kv-cache-cold-max-tokens is replaced by the live session's next
    // checkpoint (here the shutdown one), not deleted at load.
    let longest = *want.last().unwrap();
    let short_cold = KvCacheConfig {
        cold_max_tokens: 8,
        continued_interval_tokens: 0,
        ..kv(dir.path())
    };
    let mut b = start(opts(Some(short_cold))).await;
    let mut t2 = turn2();
    t2["messages"][2]["content"] = body["ds4_test_output"].clone();
    let r2 = chat(&b, &t2).await;
    assert_eq!(
        usage(&r2).1,
        p1 + c1,
        "the shutdown checkpoint is the longest prefix"
    );
    let before: Vec<u32> = headers(dir.path()).iter().map(|h| h.tokens).collect();
    assert!(before.contains(&((p1 + c1) as u32)) && before.contains(&longest));
    b.shutdown_and_checkpoint().await;
    let after = headers(dir.path());
    assert!(
        !after.iter().any(|h| h.tokens == (p1 + c1) as u32),
        "superseded file stays"
    );
    assert!(after
        .iter()
        .any(|h| h.reason == SaveReason::Shutdown && h.tokens > (p1 + c1) as u32));
}
