//! Tool calls end to end through random weights: the `test-hooks` build forces the sampled
//! tokens to a DSML block, and the real output parser, greedy forcing and protocol encoders run.
//! Run with `cargo test -p ds4-server --features test-hooks`.
#![cfg(feature = "test-hooks")]

mod common;

use common::{data_json, start, Opts};
use serde_json::{json, Value};

const DSML: &str = "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

fn tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_tool_call_is_parsed_and_streamed() {
    let s = start(Opts::default()).await;
    let body = json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [tool()], "max_tokens": 200, "ds4_test_output": DSML});
    let (status, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris", "days": 3}));

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (_, frames) = s.stream("/v1/chat/completions", &sbody).await;
    let chunks = data_json(&frames);
    let mut streamed = String::new();
    for c in &chunks {
        if let Some(a) = c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        {
            streamed.push_str(a);
        }
    }
    let streamed: Value = serde_json::from_str(&streamed).unwrap();
    assert_eq!(streamed, json!({"city": "Paris", "days": 3}));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_and_responses_tool_calls_use_their_shapes() {
    let s = start(Opts::default()).await;
    let atool = json!({"name": "get_weather", "input_schema": tool()["function"]["parameters"]});
    let body = json!({"model": "deepseek-chat", "max_tokens": 200, "tools": [atool],
        "messages": [{"role": "user", "content": "Weather?"}], "ds4_test_output": DSML});
    let (status, m) = s.post("/v1/messages", &body).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["stop_reason"], "tool_use");
    let block = m["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap();
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["input"], json!({"city": "Paris", "days": 3}));

    let rtool = json!({"type": "function", "name": "get_weather", "parameters": tool()["function"]["parameters"]});
    let body = json!({"model": "deepseek-chat", "max_output_tokens": 200, "tools": [rtool],
        "input": "Weather?", "ds4_test_output": DSML, "stream": true});
    let (_, frames) = s.stream("/v1/responses", &body).await;
    let events = data_json(&frames);
    let done = events
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .unwrap();
    let args: Value = serde_json::from_str(done["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris", "days": 3}));
    assert_eq!(events.last().unwrap()["type"], "response.completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_second_turn_continues_from_the_visible_transcript() {
    let s = start(Opts::default()).await;
    let first = json!({"model": "deepseek-reasoner", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hello"}], "ds4_test_output": "Let me think.</think>The answer."});
    let (_, r1) = s.post("/v1/chat/completions", &first).await;
    let msg = &r1["choices"][0]["message"];
    assert_eq!(msg["reasoning_content"], "Let me think.");
    assert_eq!(msg["content"], "The answer.");
    assert_eq!(r1["choices"][0]["finish_reason"], "stop");
    let u1 = &r1["usage"];
    // The replay drops the reasoning (as the template renders earlier turns); the live session
    // still holds it and is reused whole.
    let second = json!({"model": "deepseek-reasoner", "max_tokens": 2, "messages": [
        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "The answer."},
        {"role": "user", "content": "More"}]});
    let (_, r2) = s.post("/v1/chat/completions", &second).await;
    let cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        cached,
        u1["prompt_tokens"].as_u64().unwrap() + u1["completion_tokens"].as_u64().unwrap(),
        "{r1}\n{r2}"
    );
}
