//! The two-turn conversation the disk KV cache tests resume across servers (`kv_disk.rs`
//! in-process, `kv_restart.rs` with real processes): turn 1 forces [`ANSWER`], turn 2 asks
//! a follow-up greedily, so a resumed server must give the cold server's answer.

use serde_json::{json, Value};

pub const ANSWER: &str = "Paris is the capital of France.";

pub fn turn1() -> Value {
    json!({"model": "deepseek-chat", "max_tokens": 40,
        "messages": [{"role": "system", "content": "You are a geography tutor."},
                     {"role": "user", "content": "What is the capital of France?"}],
        "ds4_test_output": ANSWER})
}

pub fn turn2() -> Value {
    json!({"model": "deepseek-chat", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "system", "content": "You are a geography tutor."},
                     {"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": ANSWER},
                     {"role": "user", "content": "And of Italy?"}]})
}

/// `(prompt_tokens, cached_tokens, completion_tokens)` of an OpenAI chat response.
pub fn usage(r: &Value) -> (u64, u64, u64) {
    let u = &r["usage"];
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    )
}

/// The text of the first choice.
pub fn content(r: &Value) -> &str {
    r["choices"][0]["message"]["content"].as_str().unwrap()
}
