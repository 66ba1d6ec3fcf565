//! Anthropic Messages (spec/serving.md §4.5, §4.8, §4.9): `POST /v1/messages` and
//! `POST /v1/messages/count_tokens`. The request is mapped onto the OpenAI chat shape that
//! `ds4::chat::render_chat_request` renders (system parts joined with `\n`, `x-anthropic-*`
//! parts dropped, `role: "system"` messages kept at their place, `tool_result` blocks → tool
//! messages, `tool_use` → tool calls, `thinking` blocks → reasoning). Errors use the Anthropic
//! shape; `usage.input_tokens` is the real count of uncached prompt tokens (ds4 reports 0; we do
//! not copy that).
//!
//! As the Anthropic API does: thinking is off unless `thinking` asks for it (`enabled` or
//! `adaptive`; the `deepseek-reasoner` alias also turns it on), `output_config.effort` only sets
//! its level. Tools with `defer_loading: true` stay out of the prompt until a `tool_reference`
//! block in a `tool_result` names them (Claude Code's tool search); the reference renders as the
//! tool's schema in a `<functions>` block, the form Claude Code's `ToolSearch` tool promises.

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use ds4::chat::{FinishReason, OutputEvent};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Protocol};
use crate::request::{self, Knobs};
use crate::scheduler::{Finished, GenerationEvent, Usage};
use crate::sse::{self, StreamEncoder};
use crate::AppState;

/// Anthropic `stop_reason` for a finish.
/// Anthropic `stop_reason` and `stop_sequence` of a finished request.
fn stop_fields(f: &Finished) -> (&'static str, Value) {
    match &f.stop_sequence {
        Some(s) => ("stop_sequence", json!(s)),
        None => (stop_reason(&f.parsed.finish), Value::Null),
    }
}

fn stop_reason(finish: &FinishReason) -> &'static str {
    match finish {
        FinishReason::ToolCalls => "tool_use",
        FinishReason::Length => "max_tokens",
        FinishReason::Stop | FinishReason::Error(_) => "end_turn",
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({"input_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens),
        "output_tokens": u.completion_tokens, "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": 0})
}

/// Function schemas (`function` objects) of every request tool, deferred ones included.
type Schemas = std::collections::HashMap<String, Value>;

/// The text of a `tool_result`'s content: text blocks, and each run of `tool_reference` blocks
/// as a `<functions>` block of the referenced schemas; parts joined with `\n\n` (as the
/// official encoder joins tool-result parts). Media blocks are dropped.
fn tool_result_text(value: &Value, field: &str, schemas: &Schemas) -> Result<String, ApiError> {
    let Value::Array(blocks) = value else {
        return text_of(value, field);
    };
    let mut parts: Vec<String> = Vec::new();
    let mut refs: Vec<String> = Vec::new();
    let flush = |refs: &mut Vec<String>, parts: &mut Vec<String>| {
        if !refs.is_empty() {
            parts.push(format!("<functions>\n{}\n</functions>", refs.join("\n")));
            refs.clear();
        }
    };
    for b in blocks {
        let ty = b.get("type").and_then(Value::as_str).unwrap_or("");
        if ty == "tool_reference" {
            let name = b.get("tool_name").and_then(Value::as_str).unwrap_or("");
            refs.push(match schemas.get(name) {
                Some(f) => format!(
                    "<function>{}</function>",
                    ds4::chat::json::to_python_json(f)
                ),
                None => format!("<function>{{\"name\": {}}}</function>", json!(name)),
            });
            continue;
        }
        flush(&mut refs, &mut parts);
        match b {
            Value::String(s) => parts.push(s.clone()),
            _ if request::is_media_part(ty) => request::note_degraded(request::Degraded::Media, ty),
            _ => {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    parts.push(t.to_string());
                }
            }
        }
    }
    flush(&mut refs, &mut parts);
    Ok(parts.join("\n\n"))
}

fn text_of(value: &Value, field: &str) -> Result<String, ApiError> {
    match value {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match p {
                    Value::String(s) => out.push_str(s),
                    Value::Object(o) => {
                        if let Some(Value::String(s)) = o.get("text") {
                            out.push_str(s);
                        }
                    }
                    _ => {}
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::invalid(format!(
            "field `{field}` must be a string or an array of blocks"
        ))
        .param(field)),
    }
}

fn system_text(value: &Value) -> Result<String, ApiError> {
    let parts: Vec<String> = match value {
        Value::Null => return Ok(String::new()),
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("text").and_then(Value::as_str).map(str::to_string),
                _ => None,
            })
            .collect(),
        _ => {
            return Err(ApiError::invalid(
                "field `system` must be a string or an array of text blocks",
            )
            .param("system"))
        }
    };
    Ok(parts
        .into_iter()
        .filter(|p| !p.starts_with("x-anthropic-"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// One Anthropic message → OpenAI chat messages.
fn map_message(
    msg: &Value,
    path: &str,
    out: &mut Vec<Value>,
    schemas: &Schemas,
) -> Result<(), ApiError> {
    let obj = msg.as_object().ok_or_else(|| {
        ApiError::invalid(format!("field `{path}` must be an object")).param(path)
    })?;
    let role = match obj.get("role") {
        Some(Value::String(r)) if matches!(r.as_str(), "user" | "assistant" | "system") => {
            r.as_str()
        }
        Some(Value::String(r)) => {
            return Err(ApiError::invalid(format!(
                "field `{path}.role`: unknown role `{r}` (expected `user`, `assistant` or `system`)"
            ))
            .param(format!("{path}.role")))
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "field `{path}.role` must be `user`, `assistant` or `system`"
            ))
            .param(format!("{path}.role")))
        }
    };
    let content = obj.get("content").unwrap_or(&Value::Null);
    if role == "system" {
        // A system message in the conversation (the API's `role: "system"`, which Claude Code
        // uses for its environment section): its text, at its place.
        let text = text_of(content, &format!("{path}.content"))?;
        out.push(json!({"role": "system", "content": text}));
        return Ok(());
    }
    let blocks = match content {
        Value::Array(blocks) => blocks,
        other => {
            out.push(json!({"role": role, "content": text_of(other, &format!("{path}.content"))?}));
            return Ok(());
        }
    };
    let mut text = String::new();
    let mut reasoning: Option<String> = None;
    let mut calls = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let bpath = format!("{path}.content[{i}]");
        let b = match block {
            Value::String(s) => {
                text.push_str(s);
                continue;
            }
            Value::Object(b) => b,
            _ => {
                return Err(
                    ApiError::invalid(format!("field `{bpath}` must be a content block"))
                        .param(bpath),
                )
            }
        };
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(&text_of(
                b.get("text").unwrap_or(&Value::Null),
                &format!("{bpath}.text"),
            )?),
            Some("thinking") => reasoning
                .get_or_insert_with(String::new)
                .push_str(b.get("thinking").and_then(Value::as_str).unwrap_or("")),
            Some("redacted_thinking") => {}
            Some("tool_use") => {
                let name = b.get("name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(format!("field `{bpath}.name` must be a string"))
                        .param(format!("{bpath}.name"))
                })?;
                let input = match b.get("input") {
                    Some(Value::Object(m)) => Value::Object(m.clone()),
                    None | Some(Value::Null) => json!({}),
                    Some(_) => {
                        return Err(ApiError::invalid(format!(
                            "field `{bpath}.input` must be a JSON object"
                        ))
                        .param(format!("{bpath}.input")))
                    }
                };
                calls.push(json!({"id": b.get("id").cloned().unwrap_or(Value::Null),
                    "function": {"name": name, "arguments": input}}));
            }
            Some("tool_result") => {
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid(format!("field `{bpath}.tool_use_id` must be a string"))
                            .param(format!("{bpath}.tool_use_id"))
                    })?;
                let result = tool_result_text(
                    b.get("content").unwrap_or(&Value::Null),
                    &format!("{bpath}.content"),
                    schemas,
                )?;
                out.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
            }
            Some(ty @ ("image" | "document")) => {
                request::note_degraded(request::Degraded::Media, ty)
            }
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "field `{bpath}.type`: unsupported block type `{other}`"
                ))
                .param(format!("{bpath}.type")))
            }
            None => {
                return Err(
                    ApiError::invalid(format!("field `{bpath}.type` is missing"))
                        .param(format!("{bpath}.type")),
                )
            }
        }
    }
    if role == "assistant" {
        let mut m = json!({"role": "assistant", "content": text});
        if let Some(r) = reasoning {
            m["reasoning_content"] = json!(r);
        }
        if !calls.is_empty() {
            m["tool_calls"] = Value::Array(calls);
        }
        out.push(m);
    } else if !text.is_empty()
        || out
            .last()
            .and_then(|m| m.get("role"))
            .and_then(Value::as_str)
            != Some("tool")
    {
        out.push(json!({"role": "user", "content": text}));
    }
    Ok(())
}

/// The OpenAI chat body an Anthropic request renders as.
pub fn to_chat_body(obj: &Map<String, Value>) -> Result<Value, ApiError> {
    let (tools, schemas) = map_tools(obj)?;
    let mut messages = Vec::new();
    let system = system_text(obj.get("system").unwrap_or(&Value::Null))?;
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    match obj.get("messages") {
        Some(Value::Array(items)) => {
            for (i, m) in items.iter().enumerate() {
                map_message(m, &format!("messages[{i}]"), &mut messages, &schemas)?;
            }
        }
        Some(_) => {
            return Err(ApiError::invalid("field `messages` must be an array").param("messages"))
        }
        None => return Err(ApiError::invalid("missing field `messages`").param("messages")),
    }
    let mut body = Map::new();
    if let Some(m) = obj.get("model") {
        body.insert("model".into(), m.clone());
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = tools {
        body.insert("tools".into(), Value::Array(tools));
    }
    if obj
        .get("tool_choice")
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        == Some("none")
    {
        body.insert("tool_choice".into(), json!("none"));
    }
    // Thinking controls keep their key order (the last explicit one wins).
    for (k, v) in obj {
        match k.as_str() {
            "thinking" | "think" | "reasoning_effort" => {
                body.insert(k.clone(), v.clone());
            }
            "output_config" if !obj.contains_key("reasoning_effort") => {
                if let Some(e) = v.get("effort") {
                    body.insert("reasoning_effort".into(), e.clone());
                }
            }
            _ => {}
        }
    }
    // No `thinking` means no thinking on this API (the ds4 `think`/`reasoning_effort` fields and
    // the `deepseek-reasoner` alias still decide when present).
    let explicit = ["thinking", "think", "reasoning_effort"]
        .iter()
        .any(|k| obj.get(*k).is_some_and(|v| !v.is_null()));
    if !explicit && obj.get("model").and_then(Value::as_str) != Some("deepseek-reasoner") {
        body.insert("thinking".into(), json!(false));
    }
    Ok(Value::Object(body))
}

/// The request's tools: the schemas to render (`None` without `tools`), and every tool's
/// `function` object by name (deferred ones too, for `tool_reference`).
fn map_tools(obj: &Map<String, Value>) -> Result<(Option<Vec<Value>>, Schemas), ApiError> {
    let mut schemas = Schemas::new();
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => return Ok((None, schemas)),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(ApiError::invalid("field `tools` must be an array").param("tools")),
    };
    let mut mapped = Vec::new();
    let mut hosted = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        // Server tools (`web_search_20250305`, `code_execution_…`) name a versioned type and
        // carry no schema: nothing here can run them.
        match t.get("type").and_then(Value::as_str) {
            Some(ty) if ty != "custom" && t.get("input_schema").is_none() => {
                hosted.push(ty.to_string());
                continue;
            }
            _ => {}
        }
        let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(format!("field `tools[{i}].name` must be a string"))
                .param(format!("tools[{i}].name"))
        })?;
        let tool = request::function_tool(name, t.get("description"), t.get("input_schema"));
        schemas.insert(name.to_string(), tool["function"].clone());
        if t.get("defer_loading") != Some(&Value::Bool(true)) {
            mapped.push(tool);
        }
    }
    if !hosted.is_empty() {
        request::note_degraded(request::Degraded::HostedTools, &hosted.join(", "));
    }
    Ok((Some(mapped), schemas))
}

/// `POST /v1/messages`.
pub async fn handler(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match serve(app, body).await {
        Ok(r) => r,
        Err(e) => e.with_protocol(Protocol::Anthropic).into_response(),
    }
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}` of the rendered prompt.
pub async fn count_tokens(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let obj = app.read_json(None, body)?;
        crate::validate::anthropic_count_tokens(&obj)?;
        let chat = to_chat_body(&obj)?;
        let rendered = ds4::chat::render_chat_request(&chat, app.config.ctx_tokens)?;
        let ctx = app.config.ctx_tokens;
        let (_, tokens) = request::tokenize_bounded(&app, rendered.prompt, ctx, "messages").await?;
        let n = tokens.len();
        Ok::<_, ApiError>(Json(json!({"input_tokens": n})).into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.with_protocol(Protocol::Anthropic).into_response())
}

async fn serve(app: AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let obj = app.read_json(Some("/v1/messages"), body)?;
    crate::validate::anthropic(&obj)?;
    let ctx = app.config.ctx_tokens;
    let model = request::model_name(&obj)?;
    let knobs = Knobs {
        max_tokens: request::max_tokens(&obj, &["max_tokens"], app.config.default_max_tokens)?,
        params: request::sampler_params(&obj, false)?,
        stops: request::stops(&obj, "stop_sequences")?,
    };
    let stream = request::opt_bool(&obj, "stream")?.unwrap_or(false);
    let forced = request::forced_output(&obj, app.config.test_hooks)?;
    let chat = to_chat_body(&obj)?;
    let rx =
        request::submit_chat(&app, &chat, ctx, knobs, true, "messages", "toolu_", forced).await?;
    let id = format!("chatcmpl-{}", app.next_id());
    if stream {
        let enc = MessagesStream {
            id,
            model,
            next_index: 0,
            open: None,
            sent_thinking: false,
            sent_other: false,
        };
        return Ok(sse::response(rx, enc, app.keepalive()));
    }
    let done = sse::collect(rx).await?;
    let parsed = &done.finished.parsed;
    let mut content = Vec::new();
    if !parsed.reasoning.is_empty() {
        content.push(json!({"type": "thinking", "thinking": parsed.reasoning, "signature": id}));
    }
    if !parsed.content.is_empty() {
        content.push(json!({"type": "text", "text": parsed.content}));
    }
    for c in &parsed.tool_calls {
        let input = serde_json::from_str::<Value>(&c.arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
    }
    if parsed.content.is_empty() && parsed.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": ""}));
    }
    let (stop_reason, stop_sequence) = stop_fields(&done.finished);
    Ok(Json(
        json!({"id": id, "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
        "usage": usage_json(&done.finished.usage)}),
    )
    .into_response())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    Tool,
}

struct MessagesStream {
    id: String,
    model: String,
    next_index: usize,
    open: Option<Block>,
    sent_thinking: bool,
    sent_other: bool,
}

impl MessagesStream {
    fn close(&mut self, out: &mut Vec<String>) {
        let Some(kind) = self.open.take() else { return };
        let index = self.next_index - 1;
        if kind == Block::Thinking {
            out.push(sse::event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "signature_delta", "signature": self.id}}),
            ));
        }
        out.push(sse::event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }

    fn open(&mut self, kind: Block, block: Value, out: &mut Vec<String>) -> usize {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some(kind);
        out.push(sse::event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn delta(&mut self, kind: Block, delta: Value, out: &mut Vec<String>) {
        if self.open != Some(kind) {
            let block = match kind {
                Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                _ => json!({"type": "text", "text": ""}),
            };
            self.open(kind, block, out);
        }
        let index = self.next_index - 1;
        out.push(sse::event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }
}

impl StreamEncoder for MessagesStream {
    fn encode(&mut self, event: GenerationEvent) -> Vec<String> {
        let mut out = Vec::new();
        match event {
            GenerationEvent::Started {
                prompt_tokens,
                cached_tokens,
            } => {
                out.push(sse::event("message_start", &json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": prompt_tokens.saturating_sub(cached_tokens), "output_tokens": 0,
                        "cache_read_input_tokens": cached_tokens, "cache_creation_input_tokens": 0}}})));
            }
            GenerationEvent::Text(_) => {}
            GenerationEvent::Output(ev) => match ev {
                OutputEvent::ReasoningDelta(s) => {
                    self.sent_thinking = true;
                    self.delta(
                        Block::Thinking,
                        json!({"type": "thinking_delta", "thinking": s}),
                        &mut out,
                    );
                }
                OutputEvent::ContentDelta(s) => {
                    self.sent_other = true;
                    self.delta(
                        Block::Text,
                        json!({"type": "text_delta", "text": s}),
                        &mut out,
                    );
                }
                OutputEvent::ToolCallStart { id, name, .. } => {
                    self.sent_other = true;
                    self.open(
                        Block::Tool,
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                        &mut out,
                    );
                }
                OutputEvent::ToolCallArgumentsDelta { delta, .. } => {
                    if self.open == Some(Block::Tool) {
                        let index = self.next_index - 1;
                        out.push(sse::event(
                            "content_block_delta",
                            &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": delta}}),
                        ));
                    }
                }
                OutputEvent::ToolCallEnd { .. } => self.close(&mut out),
            },
            GenerationEvent::Done(f) => {
                self.close(&mut out);
                if !self.sent_other {
                    self.open(Block::Text, json!({"type": "text", "text": ""}), &mut out);
                    self.close(&mut out);
                }
                let (stop_reason, stop_sequence) = stop_fields(&f);
                out.push(sse::event(
                    "message_delta",
                    &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": usage_json(&f.usage)}),
                ));
                out.push(sse::event("message_stop", &json!({"type": "message_stop"})));
            }
            GenerationEvent::Failed(msg) => {
                out.push(sse::event(
                    "error",
                    &json!({"type": "error", "error": {"type": "api_error", "message": msg}}),
                ));
            }
        }
        out
    }
}
