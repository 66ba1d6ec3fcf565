//! Replays of what real coding agents send (issue #9): request bodies captured from Claude Code
//! 2.1.332, Codex CLI 0.171.0, opencode 1.18.33 and Pi 0.73.1 by `tools/agents-check.sh`
//! (`--trace`), trimmed by `tools/agents/trim_capture.py` into `tests/fixtures/agents/`.
//! The expected behaviour is the official APIs': Anthropic's `MessageParam.role` is
//! `user | assistant | system` and a length stop is `stop_reason: "max_tokens"`; OpenAI chat's is
//! `finish_reason: "length"`; Responses items carry `status: in_progress | completed |
//! incomplete`, a length stop is `status: "incomplete"` with `incomplete_details.reason:
//! "max_output_tokens"`, and `custom` / `namespace` / `tool_search` tools are called through
//! `custom_tool_call` / namespaced `function_call` / `tool_search_call` items
//! (openai-python `types/responses`).

mod common;

use common::{data_json, start, Opts};
use serde_json::{json, Map, Value};

/// `(path, body)` of a fixture.
fn fixture(name: &str) -> (String, Value) {
    let path = format!(
        "{}/../../tests/fixtures/agents/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    (
        v["path"].as_str().unwrap_or_default().to_string(),
        v["body"].clone(),
    )
}

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().expect("fixture body is an object")
}

/// The prompt the server renders for a fixture body (no model needed).
fn prompt_of(path: &str, body: &Value) -> String {
    let chat = match path {
        "/v1/messages" => ds4_server::anthropic::to_chat_body(&obj(body)).expect("maps"),
        "/v1/responses" => {
            ds4_server::responses::to_chat_body(&obj(body))
                .expect("maps")
                .body
        }
        _ => body.clone(),
    };
    ds4::chat::render_chat_request(&chat, 65536)
        .expect("renders")
        .prompt
}

/// The text after the prompt's last `<｜User｜>`.
fn last_turn(prompt: &str) -> &str {
    let user = "<｜User｜>";
    prompt.rfind(user).map_or("", |i| &prompt[i + user.len()..])
}

/// The string `field` of each element of the array `items` (`body["tools"]`, `body["input"]`).
fn strings<'a>(items: &'a Value, field: &str) -> Vec<&'a str> {
    items
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i[field].as_str())
        .collect()
}

/// One conversation written for each protocol renders to the same prompt `want`.
#[track_caller]
fn assert_prompt_on_every_protocol(chat: Value, messages: Value, responses: Value, want: &str) {
    for (path, body) in [
        ("/v1/chat/completions", chat),
        ("/v1/messages", messages),
        ("/v1/responses", responses),
    ] {
        assert_eq!(prompt_of(path, &body), want, "{path}");
    }
}

/// A fixture body with a small output limit (the protocol's own field), for the tiny model.
fn limited(path: &str, body: &Value, n: u64) -> Value {
    let mut b = body.clone();
    let key = match path {
        "/v1/messages" => "max_tokens",
        "/v1/responses" => "max_output_tokens",
        _ => "max_completion_tokens",
    };
    if let Some(m) = b.as_object_mut() {
        m.remove("max_tokens");
        m.remove("max_completion_tokens");
        m.insert(key.into(), json!(n));
    }
    b
}

/// Posts a fixture the way its client does (streaming when the client streams) and checks the
/// protocol's own end of stream: Anthropic `message_stop`, Responses `response.completed` or
/// `response.incomplete`, chat `[DONE]`.
async fn serve_fixture(s: &common::Server, name: &str) {
    let (path, body) = fixture(name);
    let body = limited(&path, &body, 2);
    if body["stream"] == json!(true) {
        let (status, frames) = s.stream(&path, &body).await;
        assert_eq!(status, 200, "{name}: {frames:?}");
        let last = frames.last().map(|(e, d)| (e.clone(), d.clone()));
        match path.as_str() {
            "/v1/messages" => assert_eq!(last.and_then(|l| l.0).as_deref(), Some("message_stop")),
            "/v1/responses" => {
                // Two sampled tokens: a length stop, unless the random model sampled EOS.
                let end = data_json(&frames).last().cloned().unwrap_or_default();
                match end["type"].as_str() {
                    Some("response.incomplete") => assert_eq!(
                        end["response"]["incomplete_details"]["reason"],
                        "max_output_tokens"
                    ),
                    other => assert_eq!(other, Some("response.completed"), "{name}: {end}"),
                }
            }
            _ => assert_eq!(last.map(|l| l.1).as_deref(), Some("[DONE]"), "{name}"),
        }
    } else {
        let (status, reply) = s.post(&path, &body).await;
        assert_eq!(status, 200, "{name}: {reply}");
    }
}

fn opts() -> Opts {
    Opts {
        ctx: 8192,
        ..Opts::default()
    }
}

#[test]
fn claude_code_environment_system_message_joins_the_turn_that_gets_the_assistant_prefix() {
    let (path, body) = fixture("claude-code-first");
    assert_eq!(body["messages"][1]["role"], "system", "the captured shape");
    let prompt = prompt_of(&path, &body);
    // thinking {type: "adaptive"}: thinking on.
    assert!(prompt.ends_with("<｜Assistant｜><think>"), "{prompt}");
    let turn = last_turn(&prompt);
    assert!(turn.contains("ds4-agents-check:"), "{turn}");
    assert!(turn.contains("# Environment"), "{turn}");

    // Later turns keep the environment in the first user turn; the assistant turn has its
    // prefix and the tool result is the last turn.
    let (path, body) = fixture("claude-code-tool-result");
    let prompt = prompt_of(&path, &body);
    let first_user = prompt.find("<｜User｜>").unwrap_or(0);
    let env = prompt.find("# Environment").unwrap_or(0);
    let assistant = prompt.find("<｜Assistant｜>").unwrap_or(0);
    assert!(first_user < env && env < assistant, "{prompt}");
    assert!(last_turn(&prompt).starts_with("<tool_result>ds4check-42"));
}

#[test]
fn a_trailing_system_message_gets_the_assistant_prefix_on_every_protocol() {
    let chat = json!({"model": "deepseek-chat", "messages": [
        {"role": "user", "content": "hi"}, {"role": "system", "content": "Be brief."}]});
    let messages = json!({"model": "deepseek-chat", "max_tokens": 8, "messages": [
        {"role": "user", "content": "hi"}, {"role": "system", "content": "Be brief."}]});
    let responses = json!({"model": "deepseek-chat", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be brief."}]}]});
    let want = "<｜begin▁of▁sentence｜><｜User｜>hi\n\nBe brief.<｜Assistant｜></think>";
    assert_prompt_on_every_protocol(chat, messages, responses, want);
}

#[test]
fn claude_code_thinking_follows_the_thinking_field_as_on_the_anthropic_api() {
    let (path, body) = fixture("claude-code-no-thinking");
    assert!(body.get("thinking").is_none(), "the captured shape");
    assert!(prompt_of(&path, &body).ends_with("<｜Assistant｜></think>"));
    let (path, mut body) = fixture("claude-code-first");
    assert_eq!(body["thinking"]["type"], "adaptive");
    assert!(prompt_of(&path, &body).ends_with("<｜Assistant｜><think>"));
    body["thinking"] = json!({"type": "disabled"});
    assert!(prompt_of(&path, &body).ends_with("<｜Assistant｜></think>"));
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    assert!(prompt_of(&path, &body).ends_with("<｜Assistant｜><think>"));
}

#[test]
fn claude_code_tool_search_result_renders_the_referenced_tool_schema() {
    let (path, body) = fixture("claude-code-tool-search-result");
    let deferred: Vec<&str> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["defer_loading"] == json!(true))
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(deferred.contains(&"CronList"), "the captured shape");
    let prompt = prompt_of(&path, &body);
    let tools_end = prompt.find("<｜User｜>").unwrap_or(0);
    assert!(
        !prompt[..tools_end].contains("\"name\": \"CronList\"")
            && !prompt[..tools_end].contains("DeferredToolPlaceholder"),
        "deferred tools stay out of the tools block"
    );
    let turn = last_turn(&prompt);
    assert!(
        turn.starts_with(
            "<tool_result><functions>\n<function>{\"name\": \"CronList\", \"description\": "
        ),
        "{turn}"
    );
    assert!(
        turn.contains("</function>\n</functions></tool_result>"),
        "{turn}"
    );
}

#[test]
fn codex_tools_reach_the_prompt_custom_namespace_and_tool_search_included() {
    let (path, body) = fixture("codex-gpt-5.5-first");
    let types = strings(&body["tools"], "type");
    assert_eq!(types, ["function", "custom", "tool_search", "web_search"]);
    let prompt = prompt_of(&path, &body);
    for name in ["exec_command", "apply_patch", "tool_search"] {
        assert!(
            prompt.contains(&format!("{{\"name\": \"{name}\"")),
            "{name}"
        );
    }
    assert!(
        prompt.contains("*** Begin Patch"),
        "the grammar reaches the model"
    );
    assert!(!prompt.contains("web_search"), "hosted tools are skipped");

    let (path, body) = fixture("codex-first");
    assert_eq!(body["tools"][1]["type"], "namespace", "the captured shape");
    let prompt = prompt_of(&path, &body);
    assert!(
        prompt.contains("{\"name\": \"multi_agent_v1.close_agent\""),
        "namespaced member"
    );
}

#[test]
fn codex_resume_replays_incomplete_items_and_only_bad_statuses_are_refused() {
    let (path, body) = fixture("codex-resume-after-incomplete");
    let statuses = strings(&body["input"], "status");
    assert!(statuses.contains(&"incomplete"), "the captured shape");
    let prompt = prompt_of(&path, &body);
    assert!(
        prompt.contains("This answer is much"),
        "the cut turn is replayed"
    );
    for status in ["in_progress", "completed", "incomplete"] {
        let mut b = body.clone();
        b["input"][4]["status"] = json!(status);
        assert!(
            ds4_server::responses::to_chat_body(&obj(&b)).is_ok(),
            "{status}"
        );
    }
    let mut b = body;
    b["input"][4]["status"] = json!("bogus");
    let err = ds4_server::responses::to_chat_body(&obj(&b))
        .err()
        .expect("refused");
    assert_eq!(err.param.as_deref(), Some("input[4].status"));
}

#[test]
fn images_are_dropped_the_same_way_on_every_protocol() {
    let img = "data:image/png;base64,iVBORw0KGgo=";
    let chat = json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": img}}]}]});
    let messages = json!({"model": "deepseek-chat", "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]});
    let responses = json!({"model": "deepseek-chat", "input": [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": img}]}]});
    let want = "<｜begin▁of▁sentence｜><｜User｜>What is this?<｜Assistant｜></think>";
    assert_prompt_on_every_protocol(chat, messages, responses, want);
}

#[test]
fn pi_thinking_off_arrives_through_the_deepseek_compat() {
    let (path, body) = fixture("pi-first");
    assert_eq!(
        body["thinking"],
        json!({"type": "disabled"}),
        "the captured shape"
    );
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(prompt_of(&path, &body).ends_with("<｜Assistant｜></think>"));
    // Pi's default compat sends nothing when thinking is off (and `developer` for its system
    // prompt): the chat default, thinking on, applies. docs/api.md gives the compat block.
    let (path, body) = fixture("pi-default-compat-first");
    assert!(body.get("thinking").is_none() && body.get("reasoning_effort").is_none());
    assert_eq!(body["messages"][0]["role"], "developer");
    assert!(prompt_of(&path, &body).ends_with("<｜Assistant｜><think>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_captured_request_is_served_with_its_protocols_end_of_stream() {
    let s = start(opts()).await;
    for name in [
        "claude-code-first",
        "claude-code-tool-result",
        "claude-code-tool-search-result",
        "claude-code-no-thinking",
        "codex-first",
        "codex-gpt-5.5-first",
        "codex-resume-after-incomplete",
        "opencode-first",
        "opencode-tool-result",
        "pi-first",
    ] {
        serve_fixture(&s, name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_long_prompt_gets_each_apis_own_error() {
    let s = start(Opts {
        ctx: 256,
        ..Opts::default()
    })
    .await;
    // Claude Code compacts on exactly /^prompt is too long: \d+ tokens > \d+ maximum$/.
    let (path, body) = fixture("claude-code-first");
    let (status, r) = s.post(&path, &limited(&path, &body, 8)).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["type"], "error");
    assert_eq!(r["error"]["type"], "invalid_request_error");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    let n = r["error"]["n_prompt_tokens"].as_u64().unwrap_or(0);
    assert!(n > 256);
    assert_eq!(msg, format!("prompt is too long: {n} tokens > 255 maximum"));

    // Just over the context the count is exact, so the gap Claude Code drops (N − M) is the
    // real one; counting stops only at twice the context.
    let body =
        json!({"max_tokens": 8, "messages": [{"role": "user", "content": "word ".repeat(300)}]});
    let prompt = prompt_of("/v1/messages", &body);
    let exact = s.state.tokenizer.encode(&prompt, true).len() as u64;
    assert!((257..512).contains(&exact), "{exact}");
    let (status, r) = s.post("/v1/messages", &body).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(
        r["error"]["message"],
        format!("prompt is too long: {exact} tokens > 255 maximum")
    );

    for (name, wording) in [
        (
            "opencode-first",
            "This model's maximum context length is 256 tokens",
        ),
        (
            "codex-first",
            "Your input exceeds the context window of this model",
        ),
    ] {
        let (path, body) = fixture(name);
        let (status, r) = s.post(&path, &limited(&path, &body, 8)).await;
        assert_eq!(status, 400, "{name}: {r}");
        assert_eq!(r["error"]["code"], "context_length_exceeded", "{name}");
        assert_eq!(r["error"]["type"], "invalid_request_error", "{name}");
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.starts_with(wording), "{name}: {msg}");
    }
}

/// Forced outputs through the real parser and encoders (`--features test-hooks`).
#[cfg(feature = "test-hooks")]
mod forced {
    use super::*;

    const BASH: &str = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">echo this command is long enough to be cut by the output limit</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

    fn forced(mut body: Value, output: &str) -> Value {
        body["ds4_test_output"] = json!(output);
        body
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_length_cut_inside_a_tool_call_is_the_length_stop_and_no_call_on_every_protocol() {
        let s = start(opts()).await;
        // opencode (chat): 14 tokens end inside the call (its header or its command).
        let (path, body) = fixture("opencode-first");
        let cut = forced(limited(&path, &body, 14), &format!("</think>{BASH}"));
        let (status, frames) = s.stream(&path, &cut).await;
        assert_eq!(status, 200);
        let chunks = data_json(&frames);
        let finish = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
            .collect::<Vec<_>>();
        assert_eq!(finish, ["length"]);
        assert!(
            chunks
                .iter()
                .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()),
            "no piece of the cut call reaches the client"
        );
        let mut whole = cut.clone();
        whole["stream"] = json!(false);
        let (_, r) = s.post(&path, &whole).await;
        assert_eq!(r["choices"][0]["finish_reason"], "length", "{r}");
        assert!(
            r["choices"][0]["message"].get("tool_calls").is_none(),
            "{r}"
        );
        // The same call, not cut: one chunk holds it whole, then finish tool_calls.
        let full = forced(limited(&path, &body, 200), &format!("</think>{BASH}"));
        let (_, frames) = s.stream(&path, &full).await;
        let calls: Vec<Value> = data_json(&frames)
            .into_iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
            .collect();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0]["function"]["name"], "bash");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap_or(""))
                .unwrap_or_default();
        assert!(args["command"]
            .as_str()
            .is_some_and(|c| c.starts_with("echo")));

        // Claude Code (Anthropic): stop_reason max_tokens, no tool_use block in the message.
        let (path, body) = fixture("claude-code-first");
        let call = BASH.replace("\"bash\"", "\"Bash\"");
        let cut = forced(limited(&path, &body, 14), &format!("</think>{call}"));
        let (_, frames) = s.stream(&path, &cut).await;
        let delta = frames
            .iter()
            .find(|(e, _)| e.as_deref() == Some("message_delta"))
            .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(delta["delta"]["stop_reason"], "max_tokens", "{frames:?}");
        let mut whole = cut.clone();
        whole["stream"] = json!(false);
        let (_, m) = s.post(&path, &whole).await;
        assert_eq!(m["stop_reason"], "max_tokens", "{m}");
        assert!(
            m["content"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|b| b["type"] != "tool_use"),
            "{m}"
        );

        // Codex (Responses): incomplete / max_output_tokens, no function_call item.
        let (path, body) = fixture("codex-first");
        let call = BASH
            .replace("\"bash\"", "\"exec_command\"")
            .replace("\"command\"", "\"cmd\"");
        let cut = forced(limited(&path, &body, 14), &format!("</think>{call}"));
        let (_, frames) = s.stream(&path, &cut).await;
        let events = data_json(&frames);
        let end = events.last().cloned().unwrap_or_default();
        assert_eq!(end["type"], "response.incomplete", "{end}");
        assert_eq!(
            end["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert!(
            events.iter().all(|e| e["item"]["type"] != "function_call"),
            "{events:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn codex_custom_namespace_and_tool_search_calls_come_back_as_their_items() {
        let s = start(opts()).await;
        let (path, body) = fixture("codex-gpt-5.5-first");
        let patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch";
        let call = format!("</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"apply_patch\">\n<｜DSML｜parameter name=\"input\" string=\"true\">{patch}</｜DSML｜parameter>\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"tool_search\">\n<｜DSML｜parameter name=\"query\" string=\"true\">agents</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>");
        let req = forced(limited(&path, &body, 200), &call);
        let (status, frames) = s.stream(&path, &req).await;
        assert_eq!(status, 200);
        let events = data_json(&frames);
        let input_done = events
            .iter()
            .find(|e| e["type"] == "response.custom_tool_call_input.done")
            .cloned()
            .unwrap_or_default();
        assert_eq!(input_done["input"], patch);
        let end = events.last().cloned().unwrap_or_default();
        assert_eq!(end["type"], "response.completed", "{end}");
        let output = end["response"]["output"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let custom = output
            .iter()
            .find(|i| i["type"] == "custom_tool_call")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (&custom["name"], &custom["input"]),
            (&json!("apply_patch"), &json!(patch))
        );
        assert!(custom["call_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("call_")));
        let search = output
            .iter()
            .find(|i| i["type"] == "tool_search_call")
            .cloned()
            .unwrap_or_default();
        assert_eq!(search["execution"], "client");
        assert_eq!(search["arguments"], json!({"query": "agents"}));

        let (path, body) = fixture("codex-first");
        let call = "</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"multi_agent_v1.close_agent\">\n<｜DSML｜parameter name=\"target\" string=\"true\">a1</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
        let mut req = forced(limited(&path, &body, 200), call);
        req["stream"] = json!(false);
        let (_, r) = s.post(&path, &req).await;
        let item = r["output"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["type"] == "function_call")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (&item["name"], &item["namespace"]),
            (&json!("close_agent"), &json!("multi_agent_v1")),
            "{r}"
        );
    }
}
