//! End-to-end tests of ds4-server on a tiny random model with the real vocabulary: every
//! endpoint, streaming shapes, stop and length limits, errors, auth, prefix reuse, cancellation.

mod common;

use common::{data_json, start, Opts};
use serde_json::{json, Value};

fn chat_body(extra: Value) -> Value {
    let mut b = json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 6, "temperature": 0});
    if let (Some(b), Value::Object(e)) = (b.as_object_mut(), extra) {
        b.extend(e);
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_models_list_the_one_model() {
    let s = start(Opts::default()).await;
    let r = s
        .client
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m: Value = serde_json::from_str(
        &s.client
            .get(format!("{}/v1/models", s.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m["data"][0]["id"], "deepseek-v4-flash");
    assert_eq!(m["data"][0]["context_length"], 1024);
    let one = s
        .client
        .get(format!("{}/v1/models/deepseek-v4-flash", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let none = s
        .client
        .get(format!("{}/v1/models/gpt-4", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
    let unknown = s
        .client
        .get(format!("{}/v2/nothing", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_reports_length_finish_and_usage() {
    let s = start(Opts::default()).await;
    let (status, body) = s.post("/v1/chat/completions", &chat_body(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "deepseek-chat");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert!(body["choices"][0]["message"]["content"].is_string());
    let u = &body["usage"];
    assert_eq!(u["completion_tokens"], 6);
    assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(u["total_tokens"], u["prompt_tokens"].as_u64().unwrap() + 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_is_role_deltas_finish_usage_done() {
    let s = start(Opts::default()).await;
    let body = chat_body(
        json!({"stream": true, "stream_options": {"include_usage": true}, "model": "deepseek-reasoner"}),
    );
    let (status, frames) = s.stream("/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(frames.last().unwrap().1, "[DONE]");
    let chunks = data_json(&frames);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    // Thinking mode: the text streams as reasoning_content.
    assert!(chunks[1..chunks.len() - 2]
        .iter()
        .all(|c| c["choices"][0]["delta"]["reasoning_content"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequence_cuts_the_text_and_finishes_stop() {
    let s = start(Opts::default()).await;
    let (_, first) = s
        .post(
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 8, "temperature": 0, "thinking": false}),
        )
        .await;
    let text = first["choices"][0]["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 4, "need some text, got {text:?}");
    // Same greedy request, stopping at a piece of the text seen before.
    let stop: String = chars[2..4].iter().collect();
    let (_, second) = s.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 8, "temperature": 0, "thinking": false, "stop": [stop.clone()]})).await;
    let cut = second["choices"][0]["text"].as_str().unwrap();
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert_eq!(cut, &text[..text.find(&stop).unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_stream_and_usage_report_real_input_tokens() {
    let s = start(Opts::default()).await;
    let body = json!({"model": "deepseek-chat", "max_tokens": 5, "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]});
    let (status, msg) = s.post("/v1/messages", &body).await;
    assert_eq!(status, 200, "{msg}");
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["stop_reason"], "max_tokens");
    assert_eq!(msg["content"][0]["type"], "text");
    let (_, count) = s.post("/v1/messages/count_tokens", &body).await;
    let input = count["input_tokens"].as_u64().unwrap();
    assert!(input > 0);
    let u = &msg["usage"];
    assert_eq!(
        u["input_tokens"].as_u64().unwrap() + u["cache_read_input_tokens"].as_u64().unwrap(),
        input
    );
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (_, frames) = s.stream("/v1/messages", &sbody).await;
    let names: Vec<&str> = frames
        .iter()
        .map(|(e, _)| e.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(
        &names[names.len() - 2..],
        &["message_delta", "message_stop"]
    );
    assert!(names.contains(&"content_block_start") && names.contains(&"content_block_stop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_and_completions_streams_are_well_formed() {
    let s = start(Opts::default()).await;
    let (status, resp) = s
        .post(
            "/v1/responses",
            &json!({"input": "Hello", "max_output_tokens": 4, "model": "deepseek-chat"}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["status"], "incomplete");
    assert_eq!(resp["output"][0]["type"], "message");
    let (_, frames) = s.stream("/v1/responses", &json!({"input": "Hello", "max_output_tokens": 4, "stream": true, "model": "deepseek-chat"})).await;
    let events = data_json(&frames);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64);
        assert_eq!(
            e.as_object().unwrap().keys().nth(1).map(String::as_str),
            Some("sequence_number")
        );
    }
    assert_eq!(events[0]["type"], "response.created");
    assert_eq!(events.last().unwrap()["type"], "response.incomplete");
    let (_, frames) = s
        .stream(
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 3, "stream": true}),
        )
        .await;
    assert_eq!(frames.last().unwrap().1, "[DONE]");
    let chunks = data_json(&frames);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_that_say_what_was_wrong() {
    let s = start(Opts {
        ctx: 64,
        ..Opts::default()
    })
    .await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/v1/chat/completions", b"{\"messages\": [".to_vec(), 400, "invalid JSON"),
        ("/v1/chat/completions", b"{\"messages\": \"\xff\xfe\"}".to_vec(), 400, "UTF-8"),
        ("/v1/chat/completions", format!("{{\"messages\": {}{}}}", "[".repeat(300), "]".repeat(300)).into_bytes(), 400, "nesting"),
        ("/v1/chat/completions", br#"{"messages": [{"role": "robot", "content": "x"}]}"#.to_vec(), 400, "unknown role"),
        ("/v1/chat/completions", br#"{"messages": "hi"}"#.to_vec(), 400, "must be an array"),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#.to_vec(), 400, "temperature"),
        ("/v1/chat/completions", br#"{"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{bad"}}]}]}"#.to_vec(), 400, "arguments"),
        ("/v1/chat/completions", format!(r#"{{"messages": [{{"role": "user", "content": "{}"}}]}}"#, "word ".repeat(200)).into_bytes(), 400, "maximum context length is 64 tokens"),
        ("/v1/messages", br#"{"max_tokens": 1, "messages": [{"role": "robot", "content": "x"}]}"#.to_vec(), 400, "unknown role"),
        ("/v1/responses", br#"{"input": "x", "previous_response_id": "resp_1"}"#.to_vec(), 400, "replay full input"),
        ("/v1/responses", br#"{"input": [{"type": "message", "role": "user", "content": [{"type": "audio_clip"}]}]}"#.to_vec(), 400, "not supported"),
        ("/v1/completions", br#"{"max_tokens": 3}"#.to_vec(), 400, "prompt"),
    ];
    for (path, body, want, needle) in cases {
        let (status, reply) = s.post_raw(path, body).await;
        assert_eq!(status, want, "{path}: {reply}");
        let msg = reply["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message in {reply}"));
        assert!(msg.contains(needle), "{path}: {msg:?} lacks {needle:?}");
        if path == "/v1/messages" {
            assert_eq!(reply["type"], "error");
        }
    }
    // Still serving.
    let (status, _) = s
        .post("/v1/chat/completions", &chat_body(json!({"max_tokens": 2})))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_on_every_endpoint_but_health() {
    let key = "s3cret-key";
    let s = start(Opts {
        api_key: Some(key.into()),
        ..Opts::default()
    })
    .await;
    let posts = [
        ("/v1/chat/completions", chat_body(json!({"max_tokens": 1}))),
        ("/v1/completions", json!({"prompt": "x", "max_tokens": 1})),
        (
            "/v1/responses",
            json!({"input": "x", "max_output_tokens": 1}),
        ),
        (
            "/v1/messages",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}),
        ),
        (
            "/v1/messages/count_tokens",
            json!({"messages": [{"role": "user", "content": "x"}]}),
        ),
    ];
    for (path, body) in &posts {
        let url = format!("{}{path}", s.base);
        let none = s
            .client
            .post(&url)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401, "{path}");
        let wrong = s
            .client
            .post(&url)
            .bearer_auth("s3cret-kez")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let bearer = s
            .client
            .post(&url)
            .bearer_auth(key)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(bearer.status(), 200, "{path}");
        let x = s
            .client
            .post(&url)
            .header("x-api-key", key)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(x.status(), 200, "{path}");
    }
    for path in ["/v1/models", "/v1/models/deepseek-v4-flash", "/metrics"] {
        let url = format!("{}{path}", s.base);
        assert_eq!(
            s.client.get(&url).send().await.unwrap().status(),
            401,
            "{path}"
        );
        assert_eq!(
            s.client
                .get(&url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    assert_eq!(
        s.client
            .get(format!("{}/health", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_turn_reuses_first_turn_prompt_and_output() {
    let s = start(Opts::default()).await;
    let first = chat_body(json!({"max_tokens": 5}));
    let (_, r1) = s.post("/v1/chat/completions", &first).await;
    let u1 = &r1["usage"];
    let answer = r1["choices"][0]["message"]["content"].as_str().unwrap();
    let second = chat_body(json!({"max_tokens": 3, "messages": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And then?"}]}));
    let (_, r2) = s.post("/v1/chat/completions", &second).await;
    let cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        cached,
        u1["prompt_tokens"].as_u64().unwrap() + u1["completion_tokens"].as_u64().unwrap(),
        "{r1}\n{r2}"
    );
    let metrics = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ds4_cache_hits_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_stream_stops_and_frees_the_engine() {
    let s = start(Opts {
        ctx: 4096,
        ..Opts::default()
    })
    .await;
    let body = chat_body(json!({"max_tokens": 3000, "stream": true}));
    let mut r = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let _ = r.chunk().await.unwrap();
    let _ = r.chunk().await.unwrap();
    drop(r);
    // The next request runs at once: the cancelled one stopped within a token.
    let t0 = std::time::Instant::now();
    let (status, reply) = s
        .post("/v1/chat/completions", &chat_body(json!({"max_tokens": 2})))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(20));
    // The worker decrements the depth just after sending the last event.
    let t1 = std::time::Instant::now();
    while s.state.scheduler.queue_depth() > 0 {
        assert!(
            t1.elapsed() < std::time::Duration::from_secs(20),
            "queue never drained"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_work_with_503() {
    let s = start(Opts::default()).await;
    s.state.scheduler.shutdown();
    let (status, reply) = s.post("/v1/chat/completions", &chat_body(json!({}))).await;
    assert_eq!(status, 503);
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
}

#[cfg(not(feature = "test-hooks"))]
#[test]
fn release_binary_rejects_the_test_hook_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ds4-server"))
        .args(["--test-hooks", "-m", "/nonexistent.gguf"])
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--test-hooks"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_adds_headers_and_answers_preflight() {
    let s = start(Opts {
        cors: true,
        ..Opts::default()
    })
    .await;
    let pre = s
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", s.base),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    let r = s
        .client
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-methods"],
        "GET, POST, OPTIONS"
    );
    let plain = start(Opts::default()).await;
    let r = plain
        .client
        .get(format!("{}/v1/models", plain.base))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_second_turn_reports_cache_read_tokens() {
    let s = start(Opts::default()).await;
    let first = json!({"model": "deepseek-chat", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Hello"}]});
    let (_, m1) = s.post("/v1/messages", &first).await;
    let text = m1["content"][0]["text"].as_str().unwrap();
    let u1 = &m1["usage"];
    let prompt1 =
        u1["input_tokens"].as_u64().unwrap() + u1["cache_read_input_tokens"].as_u64().unwrap();
    let second = json!({"model": "deepseek-chat", "max_tokens": 2, "messages": [
        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": text},
        {"role": "user", "content": "More"}]});
    let (_, m2) = s.post("/v1/messages", &second).await;
    assert_eq!(
        m2["usage"]["cache_read_input_tokens"].as_u64().unwrap(),
        prompt1 + u1["output_tokens"].as_u64().unwrap(),
        "{m1}\n{m2}"
    );
    assert!(m2["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_binary_cleanly() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ds4-server"))
        .args([
            "-m",
            common::model_path().to_str().unwrap(),
            "--port",
            "0",
            "-c",
            "256",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("listening on"));
    assert!(listening, "server never listened");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit {exit:?}");
}
