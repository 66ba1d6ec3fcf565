//! Request validation to the official APIs' rules: bodies the OpenAI or Anthropic API refuses
//! get a 400 in the protocol's own error shape naming the field, fields the server cannot
//! honour (`n` > 1, `logprobs`, …) get a 400 that says so, and the valid neighbours of each
//! case still get a 200.

mod common;

use common::{start, Opts};
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const RESPONSES: &str = "/v1/responses";
const MESSAGES: &str = "/v1/messages";
const COUNT: &str = "/v1/messages/count_tokens";

fn user() -> Value {
    json!([{"role": "user", "content": "hi"}])
}

/// `base` with `extra`'s keys set (a null value removes the key).
fn with(base: Value, extra: Value) -> Value {
    let mut b = base;
    for (k, v) in extra.as_object().expect("object") {
        if v.is_null() {
            b.as_object_mut().expect("object").remove(k);
        } else {
            b[k] = v.clone();
        }
    }
    b
}

fn chat(extra: Value) -> Value {
    with(json!({"messages": user(), "max_tokens": 1}), extra)
}

fn completion(extra: Value) -> Value {
    with(json!({"prompt": "hi", "max_tokens": 1}), extra)
}

fn response(extra: Value) -> Value {
    with(json!({"input": "hi", "max_output_tokens": 1}), extra)
}

fn message(extra: Value) -> Value {
    with(json!({"messages": user(), "max_tokens": 1}), extra)
}

fn tool(name: &str) -> Value {
    json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}})
}

fn anthropic_tool(name: &str) -> Value {
    json!({"name": name, "input_schema": {"type": "object"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_400_in_the_protocol_shape_naming_the_field() {
    let s = start(Opts::default()).await;
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        // (path, body, param, needle in the message)
        (
            CHAT,
            chat(json!({"max_tokens": -5})),
            "max_tokens",
            ">= 1, but got -5",
        ),
        (
            CHAT,
            chat(json!({"max_tokens": 0})),
            "max_tokens",
            ">= 1, but got 0",
        ),
        (
            CHAT,
            chat(json!({"max_completion_tokens": -1})),
            "max_completion_tokens",
            "got -1",
        ),
        (
            CHAT,
            chat(json!({"messages": []})),
            "messages",
            "empty array",
        ),
        (CHAT, chat(json!({"n": 2})), "n", "one choice per request"),
        (CHAT, chat(json!({"n": 0})), "n", ">= 1"),
        (
            CHAT,
            chat(json!({"logprobs": true})),
            "logprobs",
            "not supported",
        ),
        (
            CHAT,
            chat(json!({"top_logprobs": 3})),
            "top_logprobs",
            "not supported",
        ),
        (
            CHAT,
            chat(json!({"logit_bias": {"42": 100}})),
            "logit_bias",
            "not supported",
        ),
        (
            CHAT,
            chat(json!({"temperature": 2.5})),
            "temperature",
            "range [0, 2]",
        ),
        (CHAT, chat(json!({"top_p": 1.5})), "top_p", "range [0, 1]"),
        (
            CHAT,
            chat(json!({"presence_penalty": 3})),
            "presence_penalty",
            "range",
        ),
        (
            CHAT,
            chat(json!({"tools": [{"type": "function", "function": {}}]})),
            "tools[0].function.name",
            "missing",
        ),
        (
            CHAT,
            chat(json!({"tools": [{"type": "function", "function": {"name": ""}}]})),
            "tools[0].function.name",
            "empty",
        ),
        (
            CHAT,
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}),
            ),
            "tools[0].function.parameters",
            "JSON Schema",
        ),
        (
            CHAT,
            chat(
                json!({"tools": [tool("f")], "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            ),
            "tool_choice.function.name",
            "`g` is not one of",
        ),
        (
            CHAT,
            chat(json!({"tool_choice": {"type": "function", "function": {"name": "g"}}})),
            "tool_choice.function.name",
            "`g`",
        ),
        (
            CHAT,
            chat(json!({"tools": [tool("f")], "tool_choice": "sometimes"})),
            "tool_choice",
            "sometimes",
        ),
        (
            COMPLETIONS,
            completion(json!({"max_tokens": -3})),
            "max_tokens",
            ">= 0, but got -3",
        ),
        (COMPLETIONS, completion(json!({"n": 3})), "n", "one choice"),
        (
            COMPLETIONS,
            completion(json!({"best_of": 2})),
            "best_of",
            "one choice",
        ),
        (
            COMPLETIONS,
            completion(json!({"logprobs": 2})),
            "logprobs",
            "not supported",
        ),
        (
            COMPLETIONS,
            completion(json!({"echo": true})),
            "echo",
            "not supported",
        ),
        (
            COMPLETIONS,
            completion(json!({"suffix": "}"})),
            "suffix",
            "fill-in-the-middle",
        ),
        (
            RESPONSES,
            response(json!({"max_output_tokens": -1})),
            "max_output_tokens",
            "got -1",
        ),
        (
            RESPONSES,
            response(json!({"input": []})),
            "input",
            "empty array",
        ),
        (
            RESPONSES,
            response(json!({"top_logprobs": 2})),
            "top_logprobs",
            "not supported",
        ),
        (
            RESPONSES,
            response(json!({"include": ["message.output_text.logprobs"]})),
            "include",
            "not supported",
        ),
        (
            RESPONSES,
            response(json!({"tools": [{"type": "function", "name": ""}]})),
            "tools[0].name",
            "empty",
        ),
        (
            RESPONSES,
            response(json!({"temperature": -1})),
            "temperature",
            "range",
        ),
        (
            MESSAGES,
            message(json!({"max_tokens": null})),
            "max_tokens",
            "Field required",
        ),
        (
            MESSAGES,
            message(json!({"max_tokens": -1})),
            "max_tokens",
            "got -1",
        ),
        (
            MESSAGES,
            message(json!({"max_tokens": 0})),
            "max_tokens",
            "got 0",
        ),
        (
            MESSAGES,
            message(json!({"messages": []})),
            "messages",
            "at least one message",
        ),
        (
            MESSAGES,
            message(json!({"temperature": 1.5})),
            "temperature",
            "range [0, 1]",
        ),
        (MESSAGES, message(json!({"top_k": -1})), "top_k", ">= 0"),
        (
            MESSAGES,
            message(json!({"tools": [{"input_schema": {}}]})),
            "tools.0.name",
            "missing",
        ),
        (
            MESSAGES,
            message(
                json!({"tools": [anthropic_tool("f")], "tool_choice": {"type": "tool", "name": "g"}}),
            ),
            "tool_choice.name",
            "`g` is not one of",
        ),
        (
            MESSAGES,
            message(json!({"tools": [anthropic_tool("f")], "tool_choice": {"type": "tool"}})),
            "tool_choice.name",
            "missing",
        ),
        (
            MESSAGES,
            message(json!({"tool_choice": {"type": "sometimes"}})),
            "tool_choice.type",
            "expected",
        ),
        (
            COUNT,
            json!({"messages": []}),
            "messages",
            "at least one message",
        ),
        (
            COUNT,
            json!({"messages": user(), "tools": [{"name": 3}]}),
            "tools.0.name",
            "must be a string",
        ),
    ];
    for (path, body, param, needle) in cases {
        let (status, reply) = s.post(path, &body).await;
        assert_eq!(status, 400, "{path} {body}: {reply}");
        let err = &reply["error"];
        let msg = err["message"].as_str().unwrap_or_else(|| panic!("{reply}"));
        assert!(
            msg.contains(needle),
            "{path} {body}: {msg:?} lacks {needle:?}"
        );
        if path == MESSAGES || path == COUNT {
            assert_eq!(reply["type"], "error", "Anthropic shape: {reply}");
            assert_eq!(err["type"], "invalid_request_error", "{reply}");
        } else {
            assert_eq!(err["type"], "invalid_request_error", "{reply}");
            assert_eq!(err["param"], param, "{path} {body}: {reply}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_valid_neighbours_of_each_refused_case_are_served() {
    let s = start(Opts::default()).await;
    let cases: Vec<(&str, Value)> = vec![
        (
            CHAT,
            chat(json!({"n": 1, "logprobs": false, "top_logprobs": null, "logit_bias": {}})),
        ),
        (
            CHAT,
            chat(json!({"max_tokens": null, "max_completion_tokens": 1})),
        ),
        (
            CHAT,
            chat(
                json!({"temperature": 2, "top_p": 0.5, "presence_penalty": -2, "frequency_penalty": 1}),
            ),
        ),
        (
            CHAT,
            chat(
                json!({"tools": [tool("f")], "tool_choice": {"type": "function", "function": {"name": "f"}}}),
            ),
        ),
        (
            CHAT,
            chat(json!({"tools": [tool("f")], "tool_choice": "required"})),
        ),
        (
            CHAT,
            chat(json!({"tools": [tool("f")], "tool_choice": "none"})),
        ),
        (
            COMPLETIONS,
            completion(json!({"max_tokens": 0, "n": 1, "best_of": 1, "echo": false, "suffix": ""})),
        ),
        (
            RESPONSES,
            response(json!({"include": ["reasoning.encrypted_content"]})),
        ),
        (MESSAGES, message(json!({"temperature": 1, "top_k": 0}))),
        (
            MESSAGES,
            message(
                json!({"tools": [anthropic_tool("f")], "tool_choice": {"type": "tool", "name": "f"}}),
            ),
        ),
        (
            MESSAGES,
            message(json!({"tools": [anthropic_tool("f")], "tool_choice": {"type": "any"}})),
        ),
        (
            COUNT,
            json!({"messages": user(), "tools": [anthropic_tool("f")]}),
        ),
    ];
    for (path, body) in cases {
        let (status, reply) = s.post(path, &body).await;
        assert_eq!(status, 200, "{path} {body}: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_over_the_context_is_refused_with_a_lower_bound_and_the_context() {
    let s = start(Opts {
        ctx: 64,
        ..Opts::default()
    })
    .await;
    // 5 MB without a space: refused from its length alone.
    let body = chat(json!({"messages": [{"role": "user", "content": "x".repeat(5 << 20)}]}));
    let (status, reply) = s.post(CHAT, &body).await;
    assert_eq!(status, 400, "{reply}");
    let err = &reply["error"];
    assert_eq!(err["code"], "context_length_exceeded");
    assert_eq!(err["n_ctx"], 64);
    assert!(err["n_prompt_tokens"].as_u64().unwrap() >= 64, "{reply}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("However, your messages resulted in at least "),
        "{reply}"
    );
    let body = json!({"messages": [{"role": "user", "content": "word ".repeat(100)}]});
    let (status, reply) = s.post(COUNT, &body).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["type"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_millions_of_tiny_values_is_refused_before_parsing() {
    let s = start(Opts::default()).await;
    let body = format!(
        "{{\"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}], \"x\": [{}0]}}",
        "0,".repeat(1 << 20)
    );
    let (status, reply) = s.post_raw(CHAT, body.into_bytes()).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("values"));
}
