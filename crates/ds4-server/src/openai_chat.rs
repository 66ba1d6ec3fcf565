//! OpenAI Chat Completions (spec/serving.md §4.5, §4.8, §4.9): `POST /v1/chat/completions`.
//! The request is rendered by `ds4::chat::render_chat_request`; the reply is a
//! `chat.completion` object or `chat.completion.chunk` SSE events (reasoning as
//! `reasoning_content`, each tool call in one chunk as soon as its invoke closes). A call is
//! never streamed piecemeal: OpenAI-compatible clients (the AI SDK under opencode) execute
//! whatever partial call is open when a stream ends, so a length cut inside a call must leave
//! nothing of it behind; while a call is held, each of its argument pieces sends an SSE comment
//! so the connection stays visibly alive.

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use ds4::chat::OutputEvent;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Protocol};
use crate::request::{self, Knobs};
use crate::scheduler::{finish_name, GenerationEvent, Usage};
use crate::sse::{self, StreamEncoder};
use crate::AppState;

/// `usage` object of OpenAI chat and completions.
/// The frames that end an OpenAI stream (chat and completions, spec §4.9): the usage chunk
/// of type `object` when `stream_options.include_usage` asked for it, then `[DONE]`.
pub(crate) fn stream_tail(
    id: &str,
    object: &str,
    created: u64,
    model: &str,
    usage: Option<&Usage>,
) -> Vec<String> {
    let mut frames = Vec::new();
    if let Some(u) = usage {
        frames.push(sse::data(
            &json!({"id": id, "object": object, "created": created,
            "model": model, "choices": [], "usage": usage_json(u)}),
        ));
    }
    frames.push("data: [DONE]\n\n".into());
    frames
}

/// An OpenAI stream that failed after its headers went out: an error event, then `[DONE]`.
pub(crate) fn stream_failed(msg: &str) -> Vec<String> {
    vec![
        sse::event(
            "error",
            &json!({"error": {"message": msg, "type": "server_error"}}),
        ),
        "data: [DONE]\n\n".into(),
    ]
}

pub fn usage_json(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": u.written_tokens()}})
}

/// `POST /v1/chat/completions`.
pub async fn handler(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match serve(app, body).await {
        Ok(r) => r,
        Err(e) => e.with_protocol(Protocol::Chat).into_response(),
    }
}

async fn serve(app: AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let obj = app.read_json(Some("/v1/chat/completions"), body)?;
    crate::validate::chat(&obj)?;
    let ctx = app.config.ctx_tokens;
    let model = request::model_name(&obj)?;
    let knobs = Knobs {
        max_tokens: request::max_tokens(
            &obj,
            &["max_completion_tokens", "max_tokens"],
            app.config.default_max_tokens,
        )?,
        params: request::sampler_params(&obj, true)?,
        stops: request::stops(&obj, "stop")?,
    };
    let stream = request::opt_bool(&obj, "stream")?.unwrap_or(false);
    let include_usage = request::include_usage(&obj);
    let forced = request::forced_output(&obj, app.config.test_hooks)?;
    note_media(&obj);
    let value = Value::Object(obj);
    let rx =
        request::submit_chat(&app, &value, ctx, knobs, true, "messages", "call_", forced).await?;
    let id = format!("chatcmpl-{}", app.next_id());
    let created = request::unix_now();
    if stream {
        let enc = ChatStream {
            id,
            model,
            created,
            include_usage,
            held: None,
        };
        return Ok(sse::response(rx, enc, app.keepalive()));
    }
    let done = sse::collect(rx).await?;
    let parsed = &done.finished.parsed;
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), json!(parsed.content));
    if !parsed.reasoning.is_empty() {
        message.insert("reasoning_content".into(), json!(parsed.reasoning));
    }
    if !parsed.tool_calls.is_empty() {
        let calls: Vec<Value> = parsed
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Json(
        json!({"id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_name(&parsed.finish)}],
        "usage": usage_json(&done.finished.usage)}),
    )
    .into_response())
}

/// Image, audio and file parts of chat messages are dropped by the mapping; say so (once).
fn note_media(obj: &Map<String, Value>) {
    let parts = obj
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten();
    for p in parts {
        if let Some(ty) = p.get("type").and_then(Value::as_str) {
            if request::is_media_part(ty) {
                request::note_degraded(request::Degraded::Media, ty);
                return;
            }
        }
    }
}

struct ChatStream {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// The call being generated: `(index, id, name, arguments so far)`.
    held: Option<(usize, String, String, String)>,
}

impl ChatStream {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        sse::data(
            &json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    }
}

impl StreamEncoder for ChatStream {
    fn encode(&mut self, event: GenerationEvent) -> Vec<String> {
        match event {
            GenerationEvent::Started { .. } => {
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            GenerationEvent::Text(_) => Vec::new(),
            GenerationEvent::Output(ev) => match ev {
                OutputEvent::ReasoningDelta(s) => {
                    vec![self.chunk(json!({"reasoning_content": s}), None)]
                }
                OutputEvent::ContentDelta(s) => vec![self.chunk(json!({"content": s}), None)],
                OutputEvent::ToolCallStart { index, id, name } => {
                    self.held = Some((index, id, name, String::new()));
                    vec![": tool call\n\n".into()]
                }
                OutputEvent::ToolCallArgumentsDelta { delta, .. } => {
                    if let Some((_, _, _, args)) = &mut self.held {
                        args.push_str(&delta);
                    }
                    vec![": tool call\n\n".into()]
                }
                OutputEvent::ToolCallEnd { .. } => match self.held.take() {
                    Some((index, id, name, args)) => vec![self.chunk(
                        json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                            "function": {"name": name, "arguments": args}}]}),
                        None,
                    )],
                    None => Vec::new(),
                },
            },
            GenerationEvent::Done(f) => {
                let mut frames = vec![self.chunk(json!({}), Some(finish_name(&f.parsed.finish)))];
                let usage = self.include_usage.then_some(&f.usage);
                frames.extend(stream_tail(
                    &self.id,
                    "chat.completion.chunk",
                    self.created,
                    &self.model,
                    usage,
                ));
                frames
            }
            GenerationEvent::Failed(msg) => stream_failed(&msg),
        }
    }
}
