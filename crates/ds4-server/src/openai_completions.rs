//! OpenAI legacy Completions (spec/serving.md §2.3, §4.5, §4.8, §4.9): `POST /v1/completions`.
//! The prompt is wrapped in the fixed chat template (system "You are a helpful assistant", the
//! prompt as the user turn); the reply is the raw generation (reasoning and `</think>` included
//! in thinking mode).

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Protocol};
use crate::openai_chat::{stream_failed, stream_tail, usage_json};
use crate::request::{self, Knobs};
use crate::scheduler::{finish_name, GenerationEvent};
use crate::sse::{self, StreamEncoder};
use crate::AppState;

/// System text of the completions template.
const SYSTEM: &str = "You are a helpful assistant";

fn prompt_of(obj: &Map<String, Value>) -> Result<String, ApiError> {
    match obj.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(items)) => items
            .iter()
            .find_map(|v| v.as_str().map(str::to_string))
            .ok_or_else(|| {
                ApiError::invalid("field `prompt` must hold at least one string").param("prompt")
            }),
        Some(_) => Err(
            ApiError::invalid("field `prompt` must be a string or an array of strings")
                .param("prompt"),
        ),
        None => Err(ApiError::invalid("missing field `prompt`").param("prompt")),
    }
}

/// `POST /v1/completions`.
pub async fn handler(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    match serve(app, body).await {
        Ok(r) => r,
        Err(e) => e.with_protocol(Protocol::Completions).into_response(),
    }
}

async fn serve(app: AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let obj = app.read_json(Some("/v1/completions"), body)?;
    crate::validate::completions(&obj)?;
    let ctx = app.config.ctx_tokens;
    let model = request::model_name(&obj)?;
    let prompt = prompt_of(&obj)?;
    let knobs = Knobs {
        max_tokens: request::max_tokens(&obj, &["max_tokens"], app.config.default_max_tokens)?,
        params: request::sampler_params(&obj, true)?,
        stops: request::stops(&obj, "stop")?,
    };
    let stream = request::opt_bool(&obj, "stream")?.unwrap_or(false);
    let include_usage = request::include_usage(&obj);
    let forced = request::forced_output(&obj, app.config.test_hooks)?;
    let mut chat = Map::new();
    for (k, v) in &obj {
        if matches!(
            k.as_str(),
            "model" | "thinking" | "think" | "reasoning_effort"
        ) {
            chat.insert(k.clone(), v.clone());
        }
    }
    chat.insert(
        "messages".into(),
        json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]),
    );
    let rx = request::submit_chat(
        &app,
        &Value::Object(chat),
        ctx,
        knobs,
        false,
        "prompt",
        "call_",
        forced,
    )
    .await?;
    let id = format!("cmpl-{}", app.next_id());
    let created = request::unix_now();
    if stream {
        let enc = CompletionStream {
            id,
            model,
            created,
            include_usage,
        };
        return Ok(sse::response(rx, enc, app.keepalive()));
    }
    let done = sse::collect(rx).await?;
    Ok(Json(json!({"id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"text": done.text, "index": 0, "finish_reason": finish_name(&done.finished.parsed.finish)}],
        "usage": usage_json(&done.finished.usage)}))
    .into_response())
}

struct CompletionStream {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
}

impl CompletionStream {
    fn chunk(&self, text: &str, finish: Option<&str>) -> String {
        sse::data(
            &json!({"id": self.id, "object": "text_completion", "created": self.created,
            "model": self.model, "choices": [{"text": text, "index": 0, "finish_reason": finish}]}),
        )
    }
}

impl StreamEncoder for CompletionStream {
    fn encode(&mut self, event: GenerationEvent) -> Vec<String> {
        match event {
            GenerationEvent::Started { .. } | GenerationEvent::Output(_) => Vec::new(),
            GenerationEvent::Text(t) => vec![self.chunk(&t, None)],
            GenerationEvent::Done(f) => {
                let mut frames = vec![self.chunk("", Some(finish_name(&f.parsed.finish)))];
                let usage = self.include_usage.then_some(&f.usage);
                frames.extend(stream_tail(
                    &self.id,
                    "text_completion",
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
