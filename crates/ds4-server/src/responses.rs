//! OpenAI Responses (spec/serving.md §4.4, §4.5, §4.8, §4.9): `POST /v1/responses`, stateless.
//! Input items map onto the OpenAI chat shape that `ds4::chat::render_chat_request` renders;
//! `previous_response_id`/`conversation` are refused (replay the full input). Reasoning is
//! reported only with the `reasoning.summary` opt-in. Streaming events carry
//! `sequence_number` as their second key and no `event:` line; function-call arguments arrive
//! in one delta after generation.

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use ds4::chat::{FinishReason, OutputEvent, ParsedOutput};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Protocol};
use crate::request::{self, Knobs};
use crate::responses_tools::{self, Tools};
use crate::scheduler::{random_hex, GenerationEvent, Usage};
use crate::sse::{self, StreamEncoder};
use crate::AppState;

fn bad(field: impl Into<String>, msg: impl std::fmt::Display) -> ApiError {
    let field = field.into();
    ApiError::invalid(format!("field `{field}`: {msg}")).param(field)
}

fn block_text(content: &Value, path: &str) -> Result<String, ApiError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (i, p) in parts.iter().enumerate() {
                let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
                match (ty, p.get("text")) {
                    (
                        "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text",
                        Some(Value::String(s)),
                    ) => out.push_str(s),
                    (ty, _) if request::is_media_part(ty) => {
                        request::note_degraded(request::Degraded::Media, ty)
                    }
                    _ => {
                        return Err(bad(
                            format!("{path}[{i}]"),
                            format!("content part type `{ty}` is not supported (text only)"),
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(bad(
            path,
            "must be a string, null or an array of content parts",
        )),
    }
}

fn output_text(output: &Value) -> String {
    match output {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Item statuses the API returns (`in_progress`, `completed`, `incomplete`); clients replay
/// them as they got them (Codex keeps the items of a turn cut short), so all three are accepted.
const ITEM_STATUSES: [&str; 3] = ["in_progress", "completed", "incomplete"];

/// Appends a tool call to the assistant message `out` ends with, or to a new one.
fn push_call(
    out: &mut Vec<Value>,
    call: Value,
    last_is_assistant: &mut bool,
    pending_reasoning: &mut Option<String>,
) {
    match out.last_mut() {
        Some(m) if *last_is_assistant => {
            if let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) {
                calls.push(call);
            } else {
                m["tool_calls"] = json!([call]);
            }
        }
        _ => {
            let mut m = json!({"role": "assistant", "content": "", "tool_calls": [call]});
            if let Some(r) = pending_reasoning.take() {
                m["reasoning_content"] = json!(r);
            }
            out.push(m);
            *last_is_assistant = true;
        }
    }
}

/// Input items → chat messages (spec §4.5); `tool_search_output` items load tools into `tools`.
fn map_input(input: &Value, out: &mut Vec<Value>, tools: &mut Tools) -> Result<(), ApiError> {
    let items = match input {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(items) => items,
        _ => return Err(bad("input", "must be a string or an array of items")),
    };
    let mut pending_reasoning: Option<String> = None;
    let mut last_is_assistant = false;
    for (i, item) in items.iter().enumerate() {
        let path = format!("input[{i}]");
        let obj = item
            .as_object()
            .ok_or_else(|| bad(path.as_str(), "must be an object"))?;
        match obj.get("status") {
            None | Some(Value::Null) => {}
            Some(Value::String(st)) if ITEM_STATUSES.contains(&st.as_str()) => {}
            Some(other) => {
                return Err(bad(
                    format!("{path}.status"),
                    format!("must be one of `in_progress`, `completed`, `incomplete`, not {other}"),
                ))
            }
        }
        let ty = obj.get("type").and_then(Value::as_str).unwrap_or("message");
        match ty {
            "message" => {
                let role = obj.get("role").and_then(Value::as_str).unwrap_or("user");
                if !matches!(role, "user" | "assistant" | "system" | "developer") {
                    return Err(bad(
                        format!("{path}.role"),
                        format!("unknown role `{role}`"),
                    ));
                }
                let text = block_text(
                    obj.get("content").unwrap_or(&Value::Null),
                    &format!("{path}.content"),
                )?;
                let mut m = json!({"role": role, "content": text});
                if role == "assistant" {
                    if let Some(r) = pending_reasoning.take() {
                        m["reasoning_content"] = json!(r);
                    }
                }
                out.push(m);
                last_is_assistant = role == "assistant";
            }
            "function_call" | "custom_tool_call" | "tool_search_call" => {
                let name = if ty == "tool_search_call" {
                    "tool_search".to_string()
                } else {
                    let name = obj
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(format!("{path}.name"), "must be a string"))?;
                    responses_tools::prompt_name(name, obj.get("namespace").and_then(Value::as_str))
                };
                let id = obj
                    .get("call_id")
                    .or_else(|| obj.get("id"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let arguments = match ty {
                    "function_call" => obj.get("arguments").cloned().unwrap_or_else(|| json!("{}")),
                    "custom_tool_call" => {
                        json!({"input": obj.get("input").cloned().unwrap_or(Value::Null)})
                    }
                    _ => match obj.get("arguments") {
                        Some(a @ Value::Object(_)) => a.clone(),
                        _ => json!({}),
                    },
                };
                let call = json!({"id": id, "function": {"name": name, "arguments": arguments}});
                push_call(out, call, &mut last_is_assistant, &mut pending_reasoning);
            }
            "tool_search_output" => {
                let id = obj.get("call_id").and_then(Value::as_str).unwrap_or("");
                let text = tools.load(obj.get("tools").unwrap_or(&Value::Null), &path)?;
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                last_is_assistant = false;
            }
            "function_call_output" | "custom_tool_call_output" => {
                let id = obj
                    .get("call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{path}.call_id"), "must be a string"))?;
                let text = output_text(obj.get("output").unwrap_or(&Value::Null));
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                last_is_assistant = false;
            }
            "reasoning" => {
                let mut text = String::new();
                for key in ["summary", "content"] {
                    if let Some(Value::Array(parts)) = obj.get(key) {
                        for p in parts {
                            if let Some(s) = p.get("text").and_then(Value::as_str) {
                                text.push_str(s);
                            }
                        }
                    }
                }
                pending_reasoning
                    .get_or_insert_with(String::new)
                    .push_str(&text);
            }
            "compaction" | "context_compaction" => {}
            other => {
                return Err(bad(
                    format!("{path}.type"),
                    format!("item type `{other}` is not supported"),
                ))
            }
        }
    }
    Ok(())
}

/// A Responses request in the terms the template renders.
pub struct ChatRequest {
    /// The OpenAI chat body.
    pub body: Value,
    /// Whether reasoning is reported (`reasoning.summary` opt-in).
    pub summary: bool,
    /// The tools, for mapping calls back to items.
    pub tools: Tools,
}

/// The chat body a Responses request renders as, whether reasoning is reported, and its tools.
pub fn to_chat_body(obj: &Map<String, Value>) -> Result<ChatRequest, ApiError> {
    for key in ["previous_response_id", "conversation"] {
        if obj.get(key).is_some_and(|v| !v.is_null()) {
            return Err(bad(key, "is not supported; replay full input instead"));
        }
    }
    let mut messages = Vec::new();
    if let Some(instr) = request::opt_str(obj, "instructions")? {
        messages.push(json!({"role": "system", "content": instr}));
    }
    let mut tools = Tools::from_request(obj.get("tools"))?;
    map_input(
        obj.get("input")
            .ok_or_else(|| ApiError::invalid("missing field `input`").param("input"))?,
        &mut messages,
        &mut tools,
    )?;
    let mut body = Map::new();
    if let Some(m) = obj.get("model") {
        body.insert("model".into(), m.clone());
    }
    body.insert("messages".into(), Value::Array(messages));
    match obj.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "auto" => {}
        Some(Value::String(s)) if s == "none" => {
            body.insert("tool_choice".into(), json!("none"));
        }
        Some(Value::String(s)) => {
            return Err(bad("tool_choice", format!("tool_choice={s} not supported")))
        }
        Some(_) => return Err(bad("tool_choice", "forced tool_choice not supported")),
    }
    if !tools.rendered.is_empty() {
        body.insert("tools".into(), Value::Array(tools.rendered.clone()));
    }
    let mut summary = false;
    match obj.get("reasoning") {
        None | Some(Value::Null) => {}
        Some(Value::Object(r)) => {
            if let Some(effort) = r.get("effort").filter(|e| !e.is_null()) {
                // An explicit effort overrides the model alias (spec §4.4, P3).
                body.insert("thinking".into(), json!(effort.as_str() != Some("none")));
                body.insert("reasoning_effort".into(), effort.clone());
            }
            summary = matches!(
                r.get("summary").and_then(Value::as_str),
                Some("auto" | "concise" | "detailed")
            );
        }
        Some(_) => return Err(bad("reasoning", "must be an object")),
    }
    Ok(ChatRequest {
        body: Value::Object(body),
        summary,
        tools,
    })
}

/// `POST /v1/responses`.
pub async fn handler(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match serve(app, body).await {
        Ok(r) => r,
        Err(e) => e.with_protocol(Protocol::Responses).into_response(),
    }
}

struct Ids {
    resp: String,
    rs: String,
    msg: String,
}

async fn serve(app: AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let obj = app.read_json(Some("/v1/responses"), body)?;
    crate::validate::responses(&obj)?;
    let ctx = app.config.ctx_tokens;
    let model = request::model_name(&obj)?;
    let knobs = Knobs {
        max_tokens: request::max_tokens(
            &obj,
            &["max_output_tokens", "max_tokens"],
            app.config.default_max_tokens,
        )?,
        params: request::sampler_params(&obj, false)?,
        stops: Vec::new(),
    };
    let stream = request::opt_bool(&obj, "stream")?.unwrap_or(false);
    let forced = request::forced_output(&obj, app.config.test_hooks)?;
    let chat = to_chat_body(&obj)?;
    let rx =
        request::submit_chat(&app, &chat.body, ctx, knobs, true, "input", "call_", forced).await?;
    let reply = Reply {
        ids: Ids {
            resp: format!("resp_{}", random_hex(24)),
            rs: format!("rs_{}", random_hex(24)),
            msg: format!("msg_{}", random_hex(24)),
        },
        model,
        created: request::unix_now(),
        summary: chat.summary,
        tools: chat.tools,
    };
    if stream {
        let enc = ResponsesStream {
            reply,
            seq: 0,
            next_index: 0,
            rs_index: None,
            msg_index: None,
            reasoning: String::new(),
            text: String::new(),
        };
        return Ok(sse::response(rx, enc, app.keepalive()));
    }
    let done = sse::collect(rx).await?;
    let out = response_object(
        &reply,
        &done.finished.parsed,
        &done.finished.usage,
        &mut Vec::new(),
    );
    Ok(Json(out).into_response())
}

/// What every output of one response shares.
struct Reply {
    ids: Ids,
    model: String,
    created: u64,
    summary: bool,
    tools: Tools,
}

fn status_of(finish: &FinishReason) -> (&'static str, &'static str) {
    match finish {
        FinishReason::Length => ("incomplete", "incomplete"),
        FinishReason::Error(_) => ("failed", "incomplete"),
        _ => ("completed", "completed"),
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({"input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": u.written_tokens()},
        "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens})
}

fn reasoning_item(ids: &Ids, status: &str, text: &str) -> Value {
    json!({"id": ids.rs, "type": "reasoning", "status": status, "summary": [{"type": "summary_text", "text": text}]})
}

fn message_item(ids: &Ids, status: &str, text: &str) -> Value {
    json!({"id": ids.msg, "type": "message", "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

/// The whole response object; `calls` receives the tool-call items (for streaming). A length
/// stop is `incomplete` with `incomplete_details.reason` `max_output_tokens`, as the API says;
/// only calls whose invoke closed are items (a call cut off by the limit is dropped).
fn response_object(
    reply: &Reply,
    parsed: &ParsedOutput,
    usage: &Usage,
    calls: &mut Vec<Value>,
) -> Value {
    let ids = &reply.ids;
    let (status, item_status) = status_of(&parsed.finish);
    let mut output = Vec::new();
    if reply.summary && !parsed.reasoning.is_empty() {
        output.push(reasoning_item(ids, item_status, &parsed.reasoning));
    }
    if !parsed.content.is_empty() || parsed.tool_calls.is_empty() {
        output.push(message_item(ids, item_status, &parsed.content));
    }
    for c in &parsed.tool_calls {
        let prefix = match reply.tools.lookup(&c.name).kind {
            responses_tools::Kind::Function => "fc",
            responses_tools::Kind::Custom => "ctc",
            responses_tools::Kind::ToolSearch => "tsc",
        };
        let id = format!("{prefix}_{}", random_hex(24));
        let item = reply.tools.item(c, &id, "completed");
        calls.push(item.clone());
        output.push(item);
    }
    let mut obj = json!({"id": ids.resp, "object": "response", "created_at": reply.created,
        "status": status, "model": reply.model});
    if let FinishReason::Length = parsed.finish {
        obj["incomplete_details"] = json!({"reason": "max_output_tokens"});
    }
    if let FinishReason::Error(e) = &parsed.finish {
        obj["error"] = json!({"code": "server_error", "message": e.to_string()});
    }
    obj["output"] = Value::Array(output);
    obj["usage"] = usage_json(usage);
    obj
}

struct ResponsesStream {
    reply: Reply,
    seq: u64,
    next_index: usize,
    rs_index: Option<usize>,
    msg_index: Option<usize>,
    reasoning: String,
    text: String,
}

impl ResponsesStream {
    fn ev(&mut self, ty: &str, fields: Value) -> String {
        let mut m = Map::new();
        m.insert("type".into(), json!(ty));
        m.insert("sequence_number".into(), json!(self.seq));
        self.seq += 1;
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        sse::data(&Value::Object(m))
    }

    fn finish(&mut self, parsed: &ParsedOutput, usage: &Usage, out: &mut Vec<String>) {
        let (status, item_status) = status_of(&parsed.finish);
        if let Some(i) = self.rs_index {
            let text = self.reasoning.clone();
            let rs = self.reply.ids.rs.clone();
            let done_status = if self.msg_index.is_some() || !parsed.tool_calls.is_empty() {
                "completed"
            } else {
                item_status
            };
            out.push(self.ev(
                "response.reasoning_summary_text.done",
                json!({"item_id": rs, "output_index": i, "summary_index": 0, "text": text}),
            ));
            out.push(self.ev("response.reasoning_summary_part.done", json!({"item_id": rs, "output_index": i, "summary_index": 0, "part": {"type": "summary_text", "text": text}})));
            let item = reasoning_item(&self.reply.ids, done_status, &text);
            out.push(self.ev(
                "response.output_item.done",
                json!({"output_index": i, "item": item}),
            ));
        }
        if self.msg_index.is_none() && parsed.tool_calls.is_empty() {
            self.open_message(out);
        }
        if let Some(i) = self.msg_index {
            let text = self.text.clone();
            let msg = self.reply.ids.msg.clone();
            out.push(self.ev(
                "response.output_text.done",
                json!({"item_id": msg, "output_index": i, "content_index": 0, "text": text}),
            ));
            out.push(self.ev("response.content_part.done", json!({"item_id": msg, "output_index": i, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}})));
            let item = message_item(&self.reply.ids, item_status, &text);
            out.push(self.ev(
                "response.output_item.done",
                json!({"output_index": i, "item": item}),
            ));
        }
        let mut calls = Vec::new();
        let mut resp = response_object(&self.reply, parsed, usage, &mut calls);
        for call in calls {
            self.call_events(call, out);
        }
        // The streamed text is what the client saw; keep the final object consistent with it.
        if let Some(arr) = resp["output"].as_array_mut() {
            arr.retain(|item| item["type"] != "reasoning" || self.rs_index.is_some());
        }
        let terminal = match status {
            "incomplete" => "response.incomplete",
            "failed" => "response.failed",
            _ => "response.completed",
        };
        resp["status"] = json!(status);
        out.push(self.ev(terminal, json!({"response": resp})));
    }

    /// The events of one finished tool-call item: added, its input (in one delta), done. A
    /// `custom_tool_call` streams `input`, a `tool_search_call` has no input events.
    fn call_events(&mut self, call: Value, out: &mut Vec<String>) {
        let i = self.next_index;
        self.next_index += 1;
        let id = call["id"].clone();
        let mut added = call.clone();
        added["status"] = json!("in_progress");
        match call["type"].as_str() {
            Some("function_call") => {
                added["arguments"] = json!("");
                out.push(self.ev(
                    "response.output_item.added",
                    json!({"output_index": i, "item": added}),
                ));
                out.push(self.ev(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": i, "delta": call["arguments"]}),
                ));
                let mut done = json!({"item_id": id, "output_index": i, "name": call["name"],
                    "arguments": call["arguments"]});
                if let Some(ns) = call.get("namespace") {
                    done["namespace"] = ns.clone();
                }
                out.push(self.ev("response.function_call_arguments.done", done));
            }
            Some("custom_tool_call") => {
                added["input"] = json!("");
                out.push(self.ev(
                    "response.output_item.added",
                    json!({"output_index": i, "item": added}),
                ));
                out.push(self.ev(
                    "response.custom_tool_call_input.delta",
                    json!({"item_id": id, "output_index": i, "delta": call["input"]}),
                ));
                out.push(self.ev(
                    "response.custom_tool_call_input.done",
                    json!({"item_id": id, "output_index": i, "input": call["input"]}),
                ));
            }
            _ => out.push(self.ev(
                "response.output_item.added",
                json!({"output_index": i, "item": added}),
            )),
        }
        out.push(self.ev(
            "response.output_item.done",
            json!({"output_index": i, "item": call}),
        ));
    }

    fn open_message(&mut self, out: &mut Vec<String>) -> usize {
        if let Some(i) = self.msg_index {
            return i;
        }
        let i = self.next_index;
        self.next_index += 1;
        self.msg_index = Some(i);
        let item = json!({"id": self.reply.ids.msg, "type": "message", "status": "in_progress", "role": "assistant", "content": []});
        out.push(self.ev(
            "response.output_item.added",
            json!({"output_index": i, "item": item}),
        ));
        let msg = self.reply.ids.msg.clone();
        out.push(self.ev("response.content_part.added", json!({"item_id": msg, "output_index": i, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})));
        i
    }
}

impl StreamEncoder for ResponsesStream {
    fn encode(&mut self, event: GenerationEvent) -> Vec<String> {
        let mut out = Vec::new();
        match event {
            GenerationEvent::Started { .. } => {
                let resp = json!({"id": self.reply.ids.resp, "object": "response", "created_at": self.reply.created,
                    "status": "in_progress", "model": self.reply.model, "output": []});
                out.push(self.ev("response.created", json!({"response": resp.clone()})));
                out.push(self.ev("response.in_progress", json!({"response": resp})));
            }
            GenerationEvent::Text(_)
            | GenerationEvent::Output(OutputEvent::ToolCallStart { .. })
            | GenerationEvent::Output(OutputEvent::ToolCallArgumentsDelta { .. })
            | GenerationEvent::Output(OutputEvent::ToolCallEnd { .. }) => {}
            GenerationEvent::Output(OutputEvent::ReasoningDelta(s)) => {
                self.reasoning.push_str(&s);
                if self.reply.summary {
                    let i = match self.rs_index {
                        Some(i) => i,
                        None => {
                            let i = self.next_index;
                            self.next_index += 1;
                            self.rs_index = Some(i);
                            let item = json!({"id": self.reply.ids.rs, "type": "reasoning", "status": "in_progress", "summary": []});
                            out.push(self.ev(
                                "response.output_item.added",
                                json!({"output_index": i, "item": item}),
                            ));
                            let rs = self.reply.ids.rs.clone();
                            out.push(self.ev("response.reasoning_summary_part.added", json!({"item_id": rs, "output_index": i, "summary_index": 0, "part": {"type": "summary_text", "text": ""}})));
                            i
                        }
                    };
                    let rs = self.reply.ids.rs.clone();
                    out.push(self.ev(
                        "response.reasoning_summary_text.delta",
                        json!({"item_id": rs, "output_index": i, "summary_index": 0, "delta": s}),
                    ));
                }
            }
            GenerationEvent::Output(OutputEvent::ContentDelta(s)) => {
                let i = self.open_message(&mut out);
                self.text.push_str(&s);
                let msg = self.reply.ids.msg.clone();
                out.push(self.ev(
                    "response.output_text.delta",
                    json!({"item_id": msg, "output_index": i, "content_index": 0, "delta": s}),
                ));
            }
            GenerationEvent::Done(f) => self.finish(&f.parsed, &f.usage, &mut out),
            GenerationEvent::Failed(msg) => {
                out.push(sse::event(
                    "error",
                    &json!({"error": {"message": msg, "type": "server_error"}}),
                ));
            }
        }
        out
    }
}
