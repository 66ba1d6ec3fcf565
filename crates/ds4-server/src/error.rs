//! One error type for every handler, rendered once per protocol (spec/serving.md §4.6): the
//! OpenAI shape `{"error":{message,type,param?,code?}}` for chat, completions and Responses, the
//! Anthropic shape `{"type":"error","error":{type,message}}` for /v1/messages.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// Which wire protocol a request speaks (error shape, ids, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// `/v1/responses`.
    Responses,
    /// `/v1/messages`.
    Anthropic,
}

impl Protocol {
    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Chat => "chat",
            Protocol::Completions => "completions",
            Protocol::Responses => "responses",
            Protocol::Anthropic => "anthropic",
        }
    }
}

/// What kind of failure, which decides the status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// 400: the request is wrong.
    InvalidRequest,
    /// 401: missing or wrong API key.
    Unauthorized,
    /// 404: no such endpoint or model.
    NotFound,
    /// 408: the body did not arrive in time.
    Timeout,
    /// 413: body too large.
    PayloadTooLarge,
    /// 500: generation failed.
    Internal,
    /// 503: shutting down.
    Unavailable,
}

/// A client-facing error.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Decides status and `type`.
    pub kind: ApiErrorKind,
    /// What was wrong, in words.
    pub message: String,
    /// The request field at fault, if known.
    pub param: Option<String>,
    /// A machine-readable code (`context_length_exceeded`).
    pub code: Option<&'static str>,
    /// Extra fields of the error object (`n_prompt_tokens`, `n_ctx`).
    pub extra: Box<Map<String, Value>>,
    /// For a prompt that does not fit: `(prompt tokens, context tokens)`; the message then
    /// takes each protocol's own wording (see [`ApiError::context_exceeded`]).
    pub overflow: Option<(usize, usize)>,
    /// The overflow's prompt count is a lower bound (tokenizing stopped once it could not fit).
    pub overflow_lower_bound: bool,
    /// Shape to render.
    pub protocol: Protocol,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ApiErrorKind::InvalidRequest, message)
    }

    /// An error of `kind` with `message`, rendered in the OpenAI shape until
    /// [`ApiError::with_protocol`] says otherwise.
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            param: None,
            code: None,
            extra: Box::default(),
            overflow: None,
            overflow_lower_bound: false,
            protocol: Protocol::Chat,
        }
    }

    /// Names the field at fault.
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the protocol whose shape the error takes.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        if let Some(m) = self.overflow_message() {
            self.message = m;
        }
        self
    }

    /// The prompt does not fit the context (spec §4.6): 400 with code `context_length_exceeded`,
    /// `n_prompt_tokens` and `n_ctx`, and the message each API uses, because agents match it to
    /// decide to compact: Anthropic `prompt is too long: N tokens > M maximum` (Claude Code
    /// matches that exact form; M is the largest prompt that still leaves room for one output
    /// token), OpenAI chat and completions `This model's maximum context length is …`, Responses
    /// `Your input exceeds the context window of this model …`.
    pub fn context_exceeded(prompt: usize, ctx: usize, param: &str) -> Self {
        let mut e = Self::invalid(String::new()).param(param);
        e.code = Some("context_length_exceeded");
        e.extra.insert("n_prompt_tokens".into(), json!(prompt));
        e.extra.insert("n_ctx".into(), json!(ctx));
        e.overflow = Some((prompt, ctx));
        e.message = e.overflow_message().unwrap_or_default();
        e
    }

    /// The prompt does not fit, and counting stopped at `at_least` tokens (spec §4.6's error
    /// with a lower bound: the tokenizer gives up as soon as the prompt cannot fit). The OpenAI
    /// wordings say "at least"; Anthropic's keeps its exact form, which Claude Code parses.
    pub fn context_exceeded_at_least(at_least: usize, ctx: usize, param: &str) -> Self {
        let mut e = Self::context_exceeded(at_least, ctx, param);
        e.overflow_lower_bound = true;
        e.message = e.overflow_message().unwrap_or_default();
        e
    }

    fn overflow_message(&self) -> Option<String> {
        let (n, ctx) = self.overflow?;
        let n_text = if self.overflow_lower_bound {
            format!("at least {n}")
        } else {
            n.to_string()
        };
        Some(match self.protocol {
            Protocol::Anthropic => format!(
                "prompt is too long: {n} tokens > {} maximum",
                ctx.saturating_sub(1)
            ),
            Protocol::Chat => format!(
                "This model's maximum context length is {ctx} tokens. However, your messages \
                 resulted in {n_text} tokens. Please reduce the length of the messages."
            ),
            Protocol::Completions => format!(
                "This model's maximum context length is {ctx} tokens. However, your prompt \
                 resulted in {n_text} tokens. Please reduce the length of the prompt."
            ),
            Protocol::Responses => format!(
                "Your input exceeds the context window of this model ({n_text} tokens; the \
                 context is {ctx} tokens). Please adjust your input and try again."
            ),
        })
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ApiErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ApiErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiErrorKind::NotFound => StatusCode::NOT_FOUND,
            ApiErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn openai_type(&self) -> &'static str {
        match self.kind {
            ApiErrorKind::InvalidRequest
            | ApiErrorKind::PayloadTooLarge
            | ApiErrorKind::Timeout => "invalid_request_error",
            ApiErrorKind::Unauthorized => "authentication_error",
            ApiErrorKind::NotFound => "not_found_error",
            ApiErrorKind::Internal => "server_error",
            ApiErrorKind::Unavailable => "service_unavailable",
        }
    }

    fn anthropic_type(&self) -> &'static str {
        match self.kind {
            ApiErrorKind::InvalidRequest | ApiErrorKind::Timeout => "invalid_request_error",
            ApiErrorKind::Unauthorized => "authentication_error",
            ApiErrorKind::NotFound => "not_found_error",
            ApiErrorKind::PayloadTooLarge => "request_too_large",
            ApiErrorKind::Internal => "api_error",
            ApiErrorKind::Unavailable => "overloaded_error",
        }
    }

    /// The JSON body in this error's protocol shape.
    pub fn body(&self) -> Value {
        let mut inner = Map::new();
        if self.protocol == Protocol::Anthropic {
            inner.insert("type".into(), json!(self.anthropic_type()));
            inner.insert("message".into(), json!(self.message));
            inner.extend(self.extra.as_ref().clone());
            return json!({"type": "error", "error": inner});
        }
        inner.insert("message".into(), json!(self.message));
        inner.insert("type".into(), json!(self.openai_type()));
        inner.insert("param".into(), json!(self.param));
        inner.insert("code".into(), json!(self.code));
        inner.extend(self.extra.as_ref().clone());
        json!({ "error": inner })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.body())).into_response()
    }
}

impl From<ds4::chat::ChatError> for ApiError {
    fn from(e: ds4::chat::ChatError) -> Self {
        use ds4::chat::ChatError as C;
        let param = match &e {
            C::NotAnObject => None,
            C::MissingField { field }
            | C::WrongType { field, .. }
            | C::UnknownRole { field, .. }
            | C::BadValue { field, .. } => Some(field.clone()),
        };
        let mut err = ApiError::invalid(e.to_string());
        err.param = param;
        err
    }
}
