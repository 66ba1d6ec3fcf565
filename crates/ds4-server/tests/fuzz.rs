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

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
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
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    });
    runner
        .run(&(0usize..5, body_strategy()), |(p, body)| {
            let app = app.clone();
            let (status, _) = rt.block_on(async move {
                let req = Request::post(PATHS[p])
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .expect("request");
                let resp = app.oneshot(req).await.expect("infallible");
                let status = resp.status();
                let bytes = resp.into_body().collect().await.expect("body").to_bytes();
                (status, bytes)
            });
            prop_assert!(
                status.is_success() || status.is_client_error(),
                "status {status}"
            );
            Ok(())
        })
        .expect("property holds");
}
