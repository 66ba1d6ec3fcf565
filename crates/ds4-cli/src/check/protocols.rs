//! One check per protocol and mode: OpenAI chat, completions and Responses, Anthropic Messages,
//! each streaming and not, with and without a tool, and the too-long prompt on each. What a
//! check accepts is what the official API documents (the module doc of `check` lists it).
//!
//! A tool check sends `get_weather`; the model may call it or answer in text (random demo
//! weights never call it), both are right. A call must name the tool, carry a JSON object and
//! end the turn with the protocol's tool stop. Then the result turn (the model's call, or a
//! replayed one, and its output) must be served.

use serde_json::{json, Value};

use super::http::{frame_json, short, sse_frames, Client, Reply};

/// A row's outcome: `Ok(detail)` passes, `Err(detail)` fails.
pub(crate) type Outcome = Result<String, String>;

/// The user turn of every tool check; `tests/check.rs` forces a call on it.
pub const TOOL_PROMPT: &str = "What is the weather in Paris? Use the get_weather tool.";
/// The tool output of every result turn.
pub const TOOL_RESULT: &str = "sunny, 21 °C";

const MODEL: &str = "deepseek-chat";
/// A streamed call index above this is not a real one (and would make us allocate).
const MAX_TOOL_CALLS: usize = 128;

type Calls = Vec<(String, Value)>;

fn weather_schema() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
}

fn prompt(tools: bool) -> &'static str {
    if tools {
        TOOL_PROMPT
    } else {
        "Say hello."
    }
}

fn max_tokens(tools: bool) -> u64 {
    if tools {
        128
    } else {
        16
    }
}

/// The arguments text of a call must be a JSON object.
fn check_args(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(format!(
            "tool call arguments are not a JSON object: {}",
            short(text)
        )),
    }
}

fn check_calls_named(calls: &Calls) -> Result<(), String> {
    match calls.iter().find(|(n, _)| n != "get_weather") {
        Some((n, _)) => Err(format!("model called an unknown tool `{n}`")),
        None => Ok(()),
    }
}

/// The stop a turn must end with: `tool_stop` after calls, one of `others` without.
fn check_stop(field: &str, got: &str, calls: &Calls, tool_stop: &str, others: &[&str]) -> Outcome {
    let want: Vec<&str> = if calls.is_empty() {
        others.to_vec()
    } else {
        vec![tool_stop]
    };
    if want.contains(&got) {
        Ok(format!("{field} {got}"))
    } else {
        Err(format!("{field} `{got}`, expected one of {want:?}"))
    }
}

/// The call the result turn replays: the model's first, or a made-up one.
fn first_call(calls: Calls) -> (String, Value) {
    calls
        .into_iter()
        .next()
        .unwrap_or_else(|| ("get_weather".into(), json!({"city": "Paris"})))
}

fn tool_detail(calls: &Calls) -> String {
    match calls.first() {
        Some((name, args)) => format!("model called {name}({args})"),
        None => "model answered in text (no tool call; the protocol is still right)".into(),
    }
}

/// The result turn `body` (holding the call and its output) must be served.
fn result_turn(c: &Client, path: &str, body: &Value, calls: &Calls) -> Outcome {
    let detail = tool_detail(calls);
    let r = c.post(path, body)?;
    r.expect_ok()
        .map_err(|e| format!("{detail}; result turn: {e}"))?;
    Ok(format!("{detail}; result turn served"))
}

/// A stream must end with `data: [DONE]` (OpenAI chat and completions); the JSON frames.
fn done_terminated(r: &Reply) -> Result<Vec<Value>, String> {
    let frames = sse_frames(&r.text);
    if frames.last().map(|f| f.1.as_str()) != Some("[DONE]") {
        return Err("stream does not end with data: [DONE]".into());
    }
    frames
        .iter()
        .filter(|(_, data)| data != "[DONE]")
        .map(|(event, data)| match event.as_deref() {
            Some("error") => Err(format!("stream error event: {}", short(data))),
            _ => frame_json(data),
        })
        .collect()
}

// ------------------------------------------------------------------------------ chat

fn chat_body(stream: bool, tools: bool) -> Value {
    let mut b = json!({"model": MODEL, "temperature": 0, "stream": stream,
        "max_tokens": max_tokens(tools),
        "messages": [{"role": "user", "content": prompt(tools)}]});
    if tools {
        b["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
            "description": "Current weather of a city", "parameters": weather_schema()}}]);
    }
    if stream {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

/// The request the auth checks send (any generating endpoint would do).
pub(crate) fn small_chat_body() -> Value {
    chat_body(false, false)
}

/// `(finish_reason, calls, text)` of a streamed chat completion.
fn chat_stream(r: &Reply) -> Result<(String, Calls, String), String> {
    let mut finish = String::new();
    let mut text = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for v in done_terminated(r)? {
        if v["object"] != "chat.completion.chunk" {
            return Err(format!(
                "chunk object is {}, not chat.completion.chunk",
                v["object"]
            ));
        }
        let Some(choice) = v["choices"].get(0) else {
            continue; // the usage chunk
        };
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        for tc in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"]
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < MAX_TOOL_CALLS)
                .ok_or_else(|| format!("tool call delta with a bad index: {tc}"))?;
            if calls.len() <= i {
                calls.resize(i + 1, (String::new(), String::new()));
            }
            let call = calls.get_mut(i).expect("resized above to hold index i");
            call.0
                .push_str(tc["function"]["name"].as_str().unwrap_or(""));
            call.1
                .push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    let calls = calls
        .into_iter()
        .map(|(n, a)| check_args(&a).map(|v| (n, v)))
        .collect::<Result<_, _>>()?;
    Ok((finish, calls, text))
}

/// `(finish_reason, calls, text)` of a chat completion object.
fn chat_object(r: &Reply) -> Result<(String, Calls, String), String> {
    let v = r.json()?;
    if v["object"] != "chat.completion" {
        return Err(format!("object is {}, not chat.completion", v["object"]));
    }
    let choice = &v["choices"][0];
    let msg = &choice["message"];
    let calls: Vec<&Value> = msg["tool_calls"].as_array().into_iter().flatten().collect();
    // `content` is a string, or null when the message only calls tools.
    let has_content = msg["content"].is_string() || !calls.is_empty();
    if msg["role"] != "assistant" || !has_content {
        return Err(format!(
            "message is not an assistant message with content: {}",
            short(&msg.to_string())
        ));
    }
    let calls = calls
        .into_iter()
        .map(|c| {
            let args = check_args(c["function"]["arguments"].as_str().unwrap_or(""))?;
            Ok((
                c["function"]["name"].as_str().unwrap_or("").to_string(),
                args,
            ))
        })
        .collect::<Result<_, String>>()?;
    let finish = choice["finish_reason"].as_str().unwrap_or("").to_string();
    Ok((finish, calls, msg["content"].as_str().unwrap_or("").into()))
}

/// `POST /v1/chat/completions`: `finish_reason` stop/length, or tool_calls after calls.
pub(crate) fn check_chat(c: &Client, stream: bool, tools: bool) -> Outcome {
    let r = c.post("/v1/chat/completions", &chat_body(stream, tools))?;
    r.expect_ok()?;
    let (finish, calls, text) = if stream {
        chat_stream(&r)?
    } else {
        chat_object(&r)?
    };
    let stop = check_stop("finish", &finish, &calls, "tool_calls", &["stop", "length"])?;
    check_calls_named(&calls)?;
    if !tools {
        return Ok(format!("{stop}, {} chars", text.chars().count()));
    }
    let (name, args) = first_call(calls.clone());
    let mut body = chat_body(false, true);
    if let Some(m) = body["messages"].as_array_mut() {
        m.push(
            json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": "call_ds4check", "type": "function",
            "function": {"name": name, "arguments": args.to_string()}}]}),
        );
        m.push(json!({"role": "tool", "tool_call_id": "call_ds4check", "content": TOOL_RESULT}));
    }
    result_turn(c, "/v1/chat/completions", &body, &calls)
}

// ----------------------------------------------------------------------- completions

/// `POST /v1/completions`: `choices[0].text` and `finish_reason` stop/length.
pub(crate) fn check_completions(c: &Client, stream: bool) -> Outcome {
    let body = json!({"model": MODEL, "prompt": "Say hello.", "max_tokens": 16,
        "temperature": 0, "stream": stream});
    let r = c.post("/v1/completions", &body)?;
    r.expect_ok()?;
    let finish = if stream {
        let mut finish = String::new();
        for v in done_terminated(&r)? {
            if v["object"] != "text_completion" {
                return Err(format!(
                    "chunk object is {}, not text_completion",
                    v["object"]
                ));
            }
            if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                finish = f.to_string();
            }
        }
        finish
    } else {
        let v = r.json()?;
        if v["object"] != "text_completion" || !v["choices"][0]["text"].is_string() {
            return Err(format!(
                "not a text_completion with choices[0].text: {}",
                short(&r.text)
            ));
        }
        v["choices"][0]["finish_reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    check_stop("finish", &finish, &Vec::new(), "", &["stop", "length"])
}

// ------------------------------------------------------------------------- responses

fn responses_body(stream: bool, tools: bool) -> Value {
    let mut b = json!({"model": MODEL, "stream": stream, "max_output_tokens": max_tokens(tools),
        "input": [{"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": prompt(tools)}]}]});
    if tools {
        b["tools"] = json!([{"type": "function", "name": "get_weather",
            "description": "Current weather of a city", "parameters": weather_schema()}]);
    }
    b
}

/// `(status, calls)` of a response object: `completed`, or `incomplete` for the output limit.
fn response_object(v: &Value) -> Result<(String, Calls), String> {
    if v["object"] != "response" {
        return Err(format!("object is {}, not response", v["object"]));
    }
    let status = v["status"].as_str().unwrap_or("").to_string();
    match status.as_str() {
        "completed" => {}
        "incomplete" if v["incomplete_details"]["reason"] == "max_output_tokens" => {}
        "incomplete" => {
            return Err(format!(
                "incomplete with reason {}, expected max_output_tokens",
                v["incomplete_details"]["reason"]
            ))
        }
        other => {
            return Err(format!(
                "status `{other}`: {}",
                short(&v["error"].to_string())
            ))
        }
    }
    let mut calls = Vec::new();
    for item in v["output"].as_array().into_iter().flatten() {
        if item["type"] == "function_call" {
            if item["status"] != "completed" {
                return Err(format!("function_call with status {}", item["status"]));
            }
            let args = check_args(item["arguments"].as_str().unwrap_or(""))?;
            calls.push((item["name"].as_str().unwrap_or("").to_string(), args));
        }
    }
    Ok((status, calls))
}

/// The final response of a Responses stream: `response.created` first, sequence numbers in
/// order, `response.completed` or `response.incomplete` last.
fn responses_stream(r: &Reply) -> Result<(String, Calls), String> {
    let events = sse_frames(&r.text)
        .iter()
        .map(|(_, d)| frame_json(d))
        .collect::<Result<Vec<_>, _>>()?;
    if events.first().map(|e| &e["type"]) != Some(&json!("response.created")) {
        return Err("stream does not start with response.created".into());
    }
    for (i, e) in events.iter().enumerate() {
        if e["sequence_number"].as_u64() != u64::try_from(i).ok() {
            return Err(format!(
                "event {i} has sequence_number {}",
                e["sequence_number"]
            ));
        }
    }
    let last = events.last().cloned().unwrap_or_default();
    match last["type"].as_str() {
        Some("response.completed" | "response.incomplete") => response_object(&last["response"]),
        other => Err(format!(
            "stream ends with {other:?}: {}",
            short(&last.to_string())
        )),
    }
}

/// `POST /v1/responses`.
pub(crate) fn check_responses(c: &Client, stream: bool, tools: bool) -> Outcome {
    let r = c.post("/v1/responses", &responses_body(stream, tools))?;
    r.expect_ok()?;
    let (status, calls) = if stream {
        responses_stream(&r)?
    } else {
        response_object(&r.json()?)?
    };
    check_calls_named(&calls)?;
    if !tools {
        return Ok(format!("status {status}"));
    }
    let (name, args) = first_call(calls.clone());
    let mut body = responses_body(false, true);
    if let Some(input) = body["input"].as_array_mut() {
        input.push(
            json!({"type": "function_call", "call_id": "call_ds4check", "name": name,
            "arguments": args.to_string(), "status": "completed"}),
        );
        input.push(
            json!({"type": "function_call_output", "call_id": "call_ds4check",
            "output": TOOL_RESULT}),
        );
    }
    result_turn(c, "/v1/responses", &body, &calls)
}

// -------------------------------------------------------------------------- messages

fn messages_body(stream: bool, tools: bool) -> Value {
    let mut b = json!({"model": MODEL, "stream": stream, "max_tokens": max_tokens(tools),
        "messages": [{"role": "user", "content": prompt(tools)}]});
    if tools {
        b["tools"] = json!([{"name": "get_weather", "description": "Current weather of a city",
            "input_schema": weather_schema()}]);
    }
    b
}

/// `(stop_reason, calls)` of a Messages stream: `message_start` … `message_stop`.
fn messages_stream(r: &Reply) -> Result<(String, Calls), String> {
    let frames = sse_frames(&r.text);
    let names: Vec<&str> = frames.iter().filter_map(|f| f.0.as_deref()).collect();
    if names.first() != Some(&"message_start") || names.last() != Some(&"message_stop") {
        return Err(format!(
            "events run {:?} … {:?}, expected message_start … message_stop",
            names.first(),
            names.last()
        ));
    }
    let mut stop = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for (event, data) in &frames {
        let v = frame_json(data)?;
        match event.as_deref() {
            Some("error") => return Err(format!("stream error event: {}", short(data))),
            Some("message_delta") => {
                stop = v["delta"]["stop_reason"].as_str().unwrap_or("").to_string()
            }
            Some("content_block_start") if v["content_block"]["type"] == "tool_use" => {
                let name = v["content_block"]["name"].as_str().unwrap_or("");
                calls.push((name.to_string(), String::new()));
            }
            Some("content_block_delta") if v["delta"]["type"] == "input_json_delta" => {
                if let Some(last) = calls.last_mut() {
                    last.1
                        .push_str(v["delta"]["partial_json"].as_str().unwrap_or(""));
                }
            }
            _ => {}
        }
    }
    let calls = calls
        .into_iter()
        .map(|(n, a)| check_args(if a.is_empty() { "{}" } else { &a }).map(|v| (n, v)))
        .collect::<Result<_, _>>()?;
    Ok((stop, calls))
}

/// `(stop_reason, calls)` of a message object.
fn message_object(r: &Reply) -> Result<(String, Calls), String> {
    let v = r.json()?;
    if v["type"] != "message" || v["role"] != "assistant" {
        return Err(format!("not an assistant message: {}", short(&r.text)));
    }
    let mut calls = Vec::new();
    for b in v["content"].as_array().into_iter().flatten() {
        if b["type"] == "tool_use" {
            if !b["input"].is_object() {
                return Err(format!("tool_use input is not an object: {}", b["input"]));
            }
            calls.push((
                b["name"].as_str().unwrap_or("").to_string(),
                b["input"].clone(),
            ));
        }
    }
    Ok((v["stop_reason"].as_str().unwrap_or("").to_string(), calls))
}

/// `POST /v1/messages`: `stop_reason` end_turn/max_tokens/stop_sequence, or tool_use.
pub(crate) fn check_messages(c: &Client, stream: bool, tools: bool) -> Outcome {
    let r = c.post("/v1/messages", &messages_body(stream, tools))?;
    r.expect_ok()?;
    let (stop, calls) = if stream {
        messages_stream(&r)?
    } else {
        message_object(&r)?
    };
    let others = ["end_turn", "max_tokens", "stop_sequence"];
    let stop = check_stop("stop_reason", &stop, &calls, "tool_use", &others)?;
    check_calls_named(&calls)?;
    if !tools {
        return Ok(stop);
    }
    let (name, input) = first_call(calls.clone());
    let mut body = messages_body(false, true);
    if let Some(m) = body["messages"].as_array_mut() {
        m.push(json!({"role": "assistant", "content": [{"type": "tool_use",
            "id": "toolu_ds4check", "name": name, "input": input}]}));
        m.push(json!({"role": "user", "content": [{"type": "tool_result",
            "tool_use_id": "toolu_ds4check", "content": TOOL_RESULT}]}));
    }
    result_turn(c, "/v1/messages", &body, &calls)
}

// -------------------------------------------------------------------------- too long

/// A user text of more than `ctx` tokens (" hello" is one token of the V4 vocabulary).
fn too_long_text(ctx: u64) -> String {
    let n = usize::try_from(ctx).unwrap_or(usize::MAX / 8);
    " hello".repeat(n.saturating_add(64))
}

/// A prompt longer than the context: 400 `context_length_exceeded` (OpenAI), 400
/// `invalid_request_error` "prompt is too long: N tokens > M maximum" (Anthropic; Claude Code
/// compacts the conversation when it reads this wording, and only then).
pub(crate) fn check_too_long(c: &Client, path: &str, ctx: u64) -> Outcome {
    let text = too_long_text(ctx);
    let body = match path {
        "/v1/completions" => json!({"model": MODEL, "prompt": text, "max_tokens": 4}),
        "/v1/responses" => json!({"model": MODEL, "input": text, "max_output_tokens": 4}),
        _ => {
            json!({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": text}]})
        }
    };
    let r = c.post(path, &body)?;
    if r.status != 400 {
        return Err(format!(
            "HTTP {} (expected 400): {}",
            r.status,
            r.error_message()
        ));
    }
    let v = r.json()?;
    let msg = v["error"]["message"].as_str().unwrap_or("");
    if path == "/v1/messages" {
        let anthropic = v["type"] == "error" && v["error"]["type"] == "invalid_request_error";
        return match parse_too_long(msg) {
            Some((n, m)) if n > m && anthropic => Ok(format!(
                "400 \"prompt is too long: {n} tokens > {m} maximum\""
            )),
            _ => Err(format!(
                "400, but not Anthropic's invalid_request_error `prompt is too long: N tokens > M \
                 maximum` (Claude Code cannot compact): {}",
                short(&r.text)
            )),
        };
    }
    if v["error"]["code"] != "context_length_exceeded" {
        return Err(format!(
            "400 with code {}, expected context_length_exceeded: {msg}",
            v["error"]["code"]
        ));
    }
    Ok(format!("400 context_length_exceeded: {}", short(msg)))
}

/// `prompt is too long: N tokens > M maximum` → (N, M).
fn parse_too_long(msg: &str) -> Option<(u64, u64)> {
    let rest = msg
        .strip_prefix("prompt is too long: ")?
        .strip_suffix(" maximum")?;
    let (n, m) = rest.split_once(" tokens > ")?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Reply {
        Reply {
            status: 200,
            text: text.into(),
        }
    }

    #[test]
    fn parses_anthropics_too_long_wording_only() {
        assert_eq!(
            parse_too_long("prompt is too long: 208310 tokens > 200000 maximum"),
            Some((208310, 200000))
        );
        assert_eq!(
            parse_too_long("Prompt has 5 tokens, but the configured context size is 4 tokens"),
            None
        );
        assert_eq!(
            parse_too_long("prompt is too long: 5 tokens > 4 maximum."),
            None
        );
    }

    #[test]
    fn joins_streamed_chat_tool_call_deltas() {
        let c = |d: &str| {
            format!("data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,{d}}}]}}\n\n")
        };
        let text = [
            c(r#""delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}"#),
            c(r#""delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}"#),
            c(r#""delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}"#),
            c(r#""delta":{},"finish_reason":"tool_calls""#),
            "data: [DONE]\n\n".into(),
        ]
        .concat();
        let (finish, calls, _) = chat_stream(&reply(&text)).expect("a valid stream");
        assert_eq!(finish, "tool_calls");
        assert_eq!(
            calls,
            vec![("get_weather".into(), json!({"city": "Paris"}))]
        );
    }

    #[test]
    fn refuses_a_streamed_call_with_broken_arguments_or_a_huge_index() {
        let broken = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\
            \"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"get_weather\",\
            \"arguments\":\"{\\\"city\\\": \\\"Par\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n\
            data: [DONE]\n\n";
        let err = chat_stream(&reply(broken)).expect_err("broken arguments");
        assert!(err.contains("not a JSON object"), "{err}");
        let huge = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\
            \"delta\":{\"tool_calls\":[{\"index\":18446744073709551615}]}}]}\n\ndata: [DONE]\n\n";
        let err = chat_stream(&reply(huge)).expect_err("huge index");
        assert!(err.contains("bad index"), "{err}");
    }

    #[test]
    fn a_tool_call_must_end_with_the_tool_stop() {
        let calls = vec![("get_weather".to_string(), json!({}))];
        assert!(check_stop("finish", "stop", &calls, "tool_calls", &["stop"]).is_err());
        assert!(check_stop("finish", "tool_calls", &calls, "tool_calls", &["stop"]).is_ok());
        assert!(check_stop("finish", "tool_calls", &Vec::new(), "tool_calls", &["stop"]).is_err());
    }

    #[test]
    fn an_incomplete_response_must_name_the_output_limit() {
        let ok = json!({"object": "response", "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"}, "output": []});
        assert!(response_object(&ok).is_ok());
        let bad = json!({"object": "response", "status": "incomplete",
            "incomplete_details": {"reason": "content_filter"}, "output": []});
        assert!(response_object(&bad).is_err());
        let failed = json!({"object": "response", "status": "failed", "output": []});
        assert!(response_object(&failed).is_err());
    }
}
