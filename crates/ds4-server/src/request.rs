//! Parsing shared by every protocol (spec/serving.md §4.5): body checks (UTF-8, nesting ≤ 256,
//! JSON), sampling knobs, limits and stop strings, then the common step from a rendered prompt
//! to a [`GenerationRequest`] (tokenize, context check). No model here.

use ds4::chat::ThinkingMode;
use ds4::sample::SamplerParams;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::scheduler::GenerationRequest;

/// Deepest JSON nesting accepted (`JSON_MAX_NESTING`).
pub const MAX_NESTING: usize = 256;
/// Most JSON values (array elements, object members, containers) in one body. A parsed value
/// takes about 80 bytes, so `[0,0,0,…]` would otherwise turn 64 MiB into gigabytes; real
/// requests, long agent histories included, have tens of thousands.
pub const MAX_JSON_VALUES: usize = 1 << 20;
/// Fewest body bytes per JSON value (beyond the first [`MIN_JSON_VALUES_CAP`]): parsing then
/// costs at most about 10 × the body, which the body budget and the connection cap bound.
/// Real bodies have one value per 20 bytes or more (keys, text, schemas).
pub const BODY_BYTES_PER_JSON_VALUE: usize = 8;
/// Values always allowed, however short the body.
pub const MIN_JSON_VALUES_CAP: usize = 4096;
/// Largest request body (bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Model id listed by /v1/models and echoed when the client sends none.
pub const MODEL_ID: &str = "deepseek-v4-flash";

/// UTF-8, nesting and JSON checks; the body must be an object.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(format!(
            "request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            "request body is empty; send a JSON object",
        ));
    }
    let (depth, values) = json_shape(text.as_bytes());
    if depth > MAX_NESTING {
        return Err(ApiError::invalid(format!(
            "JSON nesting depth {depth} exceeds the limit of {MAX_NESTING}"
        )));
    }
    let cap = (body.len() / BODY_BYTES_PER_JSON_VALUE).clamp(MIN_JSON_VALUES_CAP, MAX_JSON_VALUES);
    if values > cap {
        return Err(ApiError::invalid(format!(
            "the JSON body holds about {values} values, more than the limit of {cap} (one per \
             {BODY_BYTES_PER_JSON_VALUE} bytes of body, at most {MAX_JSON_VALUES})"
        )));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = serde::Deserialize::deserialize(&mut de)
        .and_then(|v: Value| de.end().map(|()| v))
        .map_err(|e| ApiError::invalid(format!("invalid JSON request: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid("request body must be a JSON object")),
    }
}

/// Deepest `[`/`{` nesting outside strings (a cheap pre-scan so parsing never recurses deeper).
#[cfg(test)]
fn nesting_depth(bytes: &[u8]) -> usize {
    json_shape(bytes).0
}

/// Deepest `[`/`{` nesting outside strings, and an upper bound on the number of values
/// (containers plus separators, plus one): a cheap pre-scan, so parsing never recurses
/// deeper or allocates more than the limits allow.
fn json_shape(bytes: &[u8]) -> (usize, usize) {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    let mut values = 1usize;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
                values += 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => values += 1,
            _ => {}
        }
    }
    (max, values)
}

/// An optional number field.
pub fn opt_f32(obj: &Map<String, Value>, key: &str) -> Result<Option<f32>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64().map(|f| f as f32)),
        Some(_) => Err(ApiError::invalid(format!("field `{key}` must be a number")).param(key)),
    }
}

/// An optional integer field; negative values clamp to 0 (spec §4.5).
pub fn opt_count(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if n.as_i64().is_some() {
                Ok(Some(0))
            } else {
                Err(ApiError::invalid(format!("field `{key}` must be an integer")).param(key))
            }
        }
        Some(_) => Err(ApiError::invalid(format!("field `{key}` must be an integer")).param(key)),
    }
}

/// An optional bool field.
pub fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(format!("field `{key}` must be a boolean")).param(key)),
    }
}

/// An optional string field.
pub fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(format!("field `{key}` must be a string")).param(key)),
    }
}

/// `model`, or the default id.
pub fn model_name(obj: &Map<String, Value>) -> Result<String, ApiError> {
    Ok(opt_str(obj, "model")?.unwrap_or(MODEL_ID).to_string())
}

/// `temperature`, `top_p`, `min_p`, `top_k`, `seed` (the ones `keys` allows), validated.
pub fn sampler_params(
    obj: &Map<String, Value>,
    with_min_p_seed: bool,
) -> Result<SamplerParams, ApiError> {
    let mut p = SamplerParams::default();
    if let Some(t) = opt_f32(obj, "temperature")? {
        p.temperature = t;
    }
    if let Some(t) = opt_f32(obj, "top_p")? {
        p.top_p = t;
    }
    if let Some(k) = opt_count(obj, "top_k")? {
        p.top_k = u32::try_from(k)
            .unwrap_or(u32::MAX)
            .min(ds4::sample::MAX_TOP_K);
    }
    if with_min_p_seed {
        if let Some(m) = opt_f32(obj, "min_p")? {
            p.min_p = m;
        }
        p.seed = opt_count(obj, "seed")?.filter(|s| *s > 0);
    }
    p.validate().map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(p)
}

/// The first present of `keys` as an output limit, else `default`.
pub fn max_tokens(
    obj: &Map<String, Value>,
    keys: &[&str],
    default: usize,
) -> Result<usize, ApiError> {
    for key in keys {
        if let Some(n) = opt_count(obj, key)? {
            return Ok(usize::try_from(n).unwrap_or(usize::MAX));
        }
    }
    Ok(default)
}

/// `stop` / `stop_sequences`: a string or an array of strings.
pub fn stops(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "field `{key}` must be a string or an array of strings"
        ))
        .param(key)
    };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Something the model cannot do, degraded the same way on every protocol (docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degraded {
    /// Image, audio and file parts are dropped: the model reads text only.
    Media,
    /// Hosted tools (web search, file search, a server-side tool search, …) are not offered
    /// to the model: nothing here can run them.
    HostedTools,
}

/// Logs a degradation once per process and kind (`detail` names what the first request held).
pub fn note_degraded(kind: Degraded, detail: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static MEDIA: AtomicBool = AtomicBool::new(false);
    static HOSTED: AtomicBool = AtomicBool::new(false);
    let (flag, what) = match kind {
        Degraded::Media => (
            &MEDIA,
            "image, audio and file content is dropped: DeepSeek V4 Flash reads text only",
        ),
        Degraded::HostedTools => (
            &HOSTED,
            "hosted tools are not offered to the model: this server cannot run them",
        ),
    };
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::warn!(detail, "{what} (logged once)");
    }
}

/// True for content parts that carry media rather than text, in any protocol's spelling.
pub fn is_media_part(ty: &str) -> bool {
    matches!(
        ty,
        "image" | "image_url" | "input_image" | "input_audio" | "input_file" | "file" | "document"
    )
}

/// What every protocol hands over after rendering.
struct Rendered {
    /// Prompt text.
    pub prompt: String,
    /// Output mode.
    pub thinking_mode: ThinkingMode,
    /// Tools on.
    pub tools_active: bool,
}

/// An OpenAI `{"type":"function","function":{name, description?, parameters}}` tool, the form
/// `ds4::chat` renders, from another protocol's tool (`schema` absent: an empty object).
pub fn function_tool(name: &str, description: Option<&Value>, schema: Option<&Value>) -> Value {
    let mut f = Map::new();
    f.insert("name".into(), Value::String(name.into()));
    if let Some(d) = description {
        f.insert("description".into(), d.clone());
    }
    f.insert(
        "parameters".into(),
        schema.cloned().unwrap_or_else(|| Value::Object(Map::new())),
    );
    serde_json::json!({"type": "function", "function": f})
}

/// OpenAI `stream_options.include_usage` (false when absent).
pub fn include_usage(obj: &Map<String, Value>) -> bool {
    obj.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Shared knobs of a request.
pub struct Knobs {
    /// Output limit.
    pub max_tokens: usize,
    /// Sampling.
    pub params: SamplerParams,
    /// Stop strings.
    pub stops: Vec<String>,
}

/// The common tail of every generating endpoint: renders an OpenAI-shaped chat body with
/// DeepSeek's template, tokenizes it off the async workers, checks the context and queues the
/// generation. `tools` = false ignores the body's tools (completions). `param` names the
/// request field a context error points at; `call_id_prefix` starts tool-call ids.
#[allow(clippy::too_many_arguments)]
pub async fn submit_chat(
    app: &crate::AppState,
    chat: &Value,
    ctx_tokens: usize,
    knobs: Knobs,
    tools: bool,
    param: &str,
    call_id_prefix: &'static str,
    forced_output: Option<String>,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<crate::scheduler::GenerationEvent>, ApiError> {
    let r = match &app.tool_memory {
        Some(tm) => ds4::chat::render_chat_request_with(chat, ctx_tokens, &|ids| tm.lookup(ids))?,
        None => ds4::chat::render_chat_request(chat, ctx_tokens)?,
    };
    let mut knobs = knobs;
    let forced_output = match (&app.test_script, forced_output) {
        (Some(script), None) if app.config.test_hooks => script.output_for(&r.prompt).map(|f| {
            if let Some(cap) = f.max_tokens {
                knobs.max_tokens = knobs.max_tokens.min(cap);
            }
            f.output
        }),
        (_, forced) => forced,
    };
    let rendered = Rendered {
        prompt: r.prompt,
        thinking_mode: r.thinking_mode,
        tools_active: tools && r.tools_active,
    };
    let gen = build_generation(
        app,
        ctx_tokens,
        rendered,
        knobs,
        param,
        call_id_prefix,
        forced_output,
    )
    .await?;
    app.scheduler.submit(gen)
}

/// Tokenizes and checks the context (spec §4.6: prompt ≥ ctx → 400, `param` names the field).
async fn build_generation(
    app: &crate::AppState,
    ctx_tokens: usize,
    rendered: Rendered,
    knobs: Knobs,
    param: &str,
    call_id_prefix: &'static str,
    forced_output: Option<String>,
) -> Result<GenerationRequest, ApiError> {
    // Tokenizing a long prompt is CPU work: keep it off the async workers. It stops at twice
    // the context, so a huge prompt costs what two full contexts cost, not more.
    let (prompt, tokens) = tokenize_bounded(app, rendered.prompt, ctx_tokens, param).await?;
    Ok(GenerationRequest {
        prompt_text: prompt,
        prompt_tokens: tokens,
        max_tokens: knobs.max_tokens,
        params: knobs.params,
        stops: knobs.stops,
        thinking_mode: rendered.thinking_mode,
        tools_active: rendered.tools_active,
        call_id_prefix,
        forced_output,
    })
}

/// Prompts of at least this many bytes tokenize one per slot of [`crate::AppState`]'s
/// `tokenize_slots`; shorter ones never wait.
pub const LARGE_PROMPT_BYTES: usize = 64 * 1024;

/// Tokens of `prompt` if it fits a context of `ctx_tokens` (fewer than `ctx_tokens` tokens),
/// on a blocking thread; the text comes back for the caller to keep. A large prompt waits for
/// a tokenizer slot first, so however many arrive at once, only a few cost CPU and memory
/// together (each bounded by twice the context, see `Tokenizer::encode_bounded`).
///
/// A prompt that does not fit is the 400 of [`ApiError::context_exceeded`] (`param` names the
/// field). It is counted exactly up to twice the context, and beyond that reported as "at
/// least" that many: Claude Code reads N of `prompt is too long: N tokens > M maximum` to
/// decide how much of the conversation to drop, so N − M must be the real overshoot whenever
/// that is below a whole context (a bare lower bound just over M would make it drop almost
/// nothing and fail again).
pub async fn tokenize_bounded(
    app: &crate::AppState,
    prompt: String,
    ctx_tokens: usize,
    param: &str,
) -> Result<(String, Vec<u32>), ApiError> {
    let slot = if prompt.len() >= LARGE_PROMPT_BYTES {
        Some(
            app.tokenize_slots
                .clone()
                .acquire_owned()
                .await
                .expect("invariant: the tokenizer slots are never closed"),
        )
    } else {
        None
    };
    let tokenizer = app.tokenizer.clone();
    let count_limit = ctx_tokens.saturating_mul(2).max(1);
    let (prompt, tokens) = tokio::task::spawn_blocking(move || {
        let tokens = tokenizer.encode_bounded(&prompt, true, count_limit);
        drop(slot);
        (prompt, tokens)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            crate::error::ApiErrorKind::Internal,
            format!("tokenizer task failed: {e}"),
        )
    })?;
    match tokens {
        Ok(tokens) if tokens.len() < ctx_tokens => Ok((prompt, tokens)),
        Ok(tokens) => Err(ApiError::context_exceeded(tokens.len(), ctx_tokens, param)),
        Err(e) => Err(ApiError::context_exceeded_at_least(
            e.at_least, ctx_tokens, param,
        )),
    }
}

/// The test hook field (honoured only when the server runs with `--test-hooks`).
pub fn forced_output(obj: &Map<String, Value>, enabled: bool) -> Result<Option<String>, ApiError> {
    if !enabled {
        return Ok(None);
    }
    Ok(opt_str(obj, "ds4_test_output")?.map(str::to_string))
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_scan_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[{{"}"#), 1);
        assert_eq!(nesting_depth(br#"[[["\"]"]]]"#), 3);
    }

    #[test]
    fn rejects_deep_nesting_non_utf8_and_non_objects() {
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert!(parse_body(deep.as_bytes())
            .unwrap_err()
            .message
            .contains("nesting"));
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(250), "]".repeat(250));
        assert!(parse_body(ok.as_bytes()).is_ok());
        // Dense values: fine while few, refused once more than one per 8 bytes.
        let dense = |n: usize| format!("{{\"a\":[{}0]}}", "0,".repeat(n));
        assert!(parse_body(dense(4000).as_bytes()).is_ok());
        let e = parse_body(dense(30_000).as_bytes()).unwrap_err();
        assert!(e.message.contains("values"), "{}", e.message);
        let sparse = format!("{{\"a\":[{}0]}}", "0,        ".repeat(30_000));
        assert!(parse_body(sparse.as_bytes()).is_ok());
        assert!(parse_body(b"{\"a\":\"\xff\"}")
            .unwrap_err()
            .message
            .contains("UTF-8"));
        assert!(parse_body(b"[1]").unwrap_err().message.contains("object"));
        assert!(parse_body(b"{\"a\":")
            .unwrap_err()
            .message
            .contains("invalid JSON"));
    }
}
