//! Property test of the parsing layer: random and mutated request bodies, sent through
//! `router()` to every POST endpoint, never panic and always get a 2xx or a 4xx.

mod common;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::json;
use tower::ServiceExt;

const PATHS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
];

fn seeds() -> Vec<Vec<u8>> {
    [
        json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stop": ["x"]}),
        json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"}], "tools": [{"type": "function", "function": {"name": "f"}}], "max_tokens": 2, "stream": true}),
        json!({"prompt": ["hi"], "max_tokens": 2, "thinking": {"type": "disabled"}}),
        json!({"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "ok"}], "max_output_tokens": 2, "reasoning": {"effort": "low", "summary": "auto"}}),
        json!({"system": [{"type": "text", "text": "s"}], "max_tokens": 2, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "r"}]}]}], "stream": true}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn mutate(mut body: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let n = body.len().max(1);
        match *m {
            Mutation::Flip(i, b) => {
                if let Some(x) = body.get_mut(i % n) {
                    *x ^= b;
                }
            }
            Mutation::Insert(i, b) => body.insert((i % n).min(body.len()), b),
            Mutation::Delete(i) => {
                if !body.is_empty() {
                    body.remove(i % n);
                }
            }
        }
    }
    body
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop::sample::select(b"{}[]\",:0-9 a\\\xff".to_vec())
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        (-5i64..300).prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z<｜>/ ]{0,12}".prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 22] = [
    "model",
    "messages",
    "prompt",
    "input",
    "system",
    "tools",
    "tool_choice",
    "max_tokens",
    "max_output_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "stop_sequences",
    "stream",
    "stream_options",
    "thinking",
    "reasoning_effort",
    "reasoning",
];

/// A valid seed with one field replaced by an arbitrary value (type confusion).
fn replaced_field() -> impl Strategy<Value = Vec<u8>> {
    (
        0usize..5,
        prop::sample::select(FIELDS.to_vec()),
        json_value(),
    )
        .prop_map(|(i, key, value)| {
            let mut body: serde_json::Value =
                serde_json::from_slice(&seeds()[i]).expect("seed is JSON");
            body[key] = value;
            // Keep generation short whatever the field did.
            if key != "max_tokens" {
                body["max_tokens"] = json!(2);
                body["max_output_tokens"] = json!(2);
            }
            body.to_string().into_bytes()
        })
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        replaced_field(),
        prop::collection::vec(any::<u8>(), 0..200),
        (0usize..5, prop::collection::vec(mutation(), 1..6))
            .prop_map(|(i, m)| mutate(seeds()[i].clone(), &m)),
    ]
}

#[test]
fn random_and_mutated_bodies_get_2xx_or_4xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let state = common::state(&common::Opts {
        ctx: 256,
        ..Default::default()
    });
    let app = ds4_server::router(state);
    let config = ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let rng = proptest::test_runner::TestRng::deterministic_rng(
        proptest::test_runner::RngAlgorithm::ChaCha,
    );
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(config, rng);
    let ok = std::sync::atomic::AtomicUsize::new(0);
    let rejected = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&(0usize..5, body_strategy()), |(p, body)| {
            let app = app.clone();
            let status = rt.block_on(async move {
                let req = Request::post(PATHS[p])
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .expect("request");
                let resp = app.oneshot(req).await.expect("infallible");
                let status = resp.status();
                // Read streams to the end: the encoders run too.
                let _ = resp.into_body().collect().await.expect("body");
                status
            });
            prop_assert!(
                status.is_success() || status.is_client_error(),
                "status {status}"
            );
            let counter = if status.is_success() { &ok } else { &rejected };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .expect("property holds");
    let (ok, rejected) = (ok.into_inner(), rejected.into_inner());
    eprintln!("fuzz: {ok} accepted, {rejected} rejected");
    // Both paths ran: mutations that stay valid reach the engine, the rest are refused.
    assert!(ok > 0 && rejected > 0, "{ok} accepted, {rejected} rejected");
}
