//! OpenAI chat-completions request → encoder input → prompt text (spec/serving.md §2, §4.4,
//! §4.5). The mapping is deliberately small, so it can be mirrored line by line by
//! `tools/reference/chat_fixtures.py`:
//!
//! * `messages` keep their order. Roles: system, developer, user, assistant, tool. `content`
//!   is a string, null (→ "") or an array whose string parts and `text` fields are
//!   concatenated with no separator (other parts, e.g. images, are dropped).
//!   `reasoning_content` likewise. Assistant `tool_calls` are `[{id?, function: {name,
//!   arguments}}]`, where arguments is a JSON object or a string holding one. Tool messages
//!   carry `tool_call_id`. Other fields are ignored.
//! * Non-empty top-level `tools` (unless `tool_choice` is `"none"`) become the `tools` (their
//!   `function` objects) of the first system message; with no system message,
//!   `{"role":"system","content":""}` is inserted first.
//! * Thinking (ds4's resolution, §4.4): on by default with effort HIGH. `thinking` (bool or
//!   `{"type":"enabled"|"disabled"}`) and `think` (bool) set it, the last in key order winning;
//!   without either, `model` `"deepseek-chat"` turns it off and `"deepseek-reasoner"` on.
//!   `reasoning_effort`: `"max"` → MAX; `"xhigh"|"high"|"medium"|"low"|"minimal"` → HIGH;
//!   `"none"` → off; null → unchanged. MAX needs ctx ≥ 393216 tokens, else HIGH.
//! * The encoder gets `thinking_mode` "thinking" unless thinking is off ("chat"), and
//!   `reasoning_effort="max"` only for an effective MAX.

use serde_json::{Map, Value};

use super::message::{Message, ReasoningEffort, Role, ThinkingMode, ToolCall};
use super::render::encode_messages;

/// Smallest context that honours Think Max (`DS4_THINK_MAX_MIN_CONTEXT`, spec §2.1).
pub const THINK_MAX_MIN_CONTEXT: usize = 393_216;

/// The effective thinking level of a request, after the context gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkLevel {
    /// Thinking off: prompt ends in `</think>`.
    None,
    /// Thinking on: prompt ends in `<think>`.
    High,
    /// Think Max: HIGH plus the reasoning-effort prefix (ctx ≥ 393216 only).
    Max,
}

/// A request that failed to map; every variant names the field (a JSON path) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The body is not a JSON object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// A required field is absent.
    #[error("missing field `{field}`")]
    MissingField {
        /// JSON path of the field.
        field: String,
    },
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// JSON path of the field.
        field: String,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// A message role we do not know.
    #[error("field `{field}`: unknown role `{role}`")]
    UnknownRole {
        /// JSON path of the role.
        field: String,
        /// The role given.
        role: String,
    },
    /// A field has the right type but a value we cannot use.
    #[error("field `{field}`: {problem}")]
    BadValue {
        /// JSON path of the field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// The encoder input a request maps to.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderInput {
    /// Messages, tools attached to the first system message.
    pub messages: Vec<Message>,
    /// `thinking_mode` argument.
    pub thinking_mode: ThinkingMode,
    /// `reasoning_effort` argument.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Effective thinking level (what the sampler and output parser need).
    pub think: ThinkLevel,
    /// Whether tool schemas were rendered (DSML parsing and greedy forcing apply).
    pub tools_active: bool,
}

/// A rendered chat request: the prompt text plus the mode it was rendered in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// Prompt text, BOS first; tokenize with special-token recognition.
    pub prompt: String,
    /// `Chat` or `Thinking`: the output parser starts in reasoning for `Thinking`.
    pub thinking_mode: ThinkingMode,
    /// Effective thinking level after the context gate.
    pub think: ThinkLevel,
    /// Whether tools are active (DSML parsing and greedy forcing apply).
    pub tools_active: bool,
}

/// Maps an OpenAI chat-completions body and renders it (official template).
pub fn render_chat_request(body: &Value, ctx_tokens: usize) -> Result<RenderedChat, ChatError> {
    let input = map_chat_request(body, ctx_tokens)?;
    Ok(RenderedChat {
        prompt: encode_messages(&input.messages, input.thinking_mode, input.reasoning_effort),
        thinking_mode: input.thinking_mode,
        think: input.think,
        tools_active: input.tools_active,
    })
}

/// Maps an OpenAI chat-completions body to the encoder's input (see module docs).
pub fn map_chat_request(body: &Value, ctx_tokens: usize) -> Result<EncoderInput, ChatError> {
    let body = body.as_object().ok_or(ChatError::NotAnObject)?;
    let raw_messages = match body.get("messages") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(wrong_type("messages", "an array")),
        None => return Err(ChatError::MissingField { field: "messages".into() }),
    };
    let mut messages = raw_messages
        .iter()
        .enumerate()
        .map(|(i, m)| map_message(m, &format!("messages[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;

    let tools = map_tools(body)?;
    let tools_active = !tools.is_empty();
    if tools_active {
        match messages.iter_mut().find(|m| m.role == Role::System) {
            Some(system) => system.tools = tools,
            None => {
                let mut system = Message::new(Role::System, "");
                system.tools = tools;
                messages.insert(0, system);
            }
        }
    }

    let think = resolve_think(body, ctx_tokens)?;
    Ok(EncoderInput {
        messages,
        thinking_mode: if think == ThinkLevel::None { ThinkingMode::Chat } else { ThinkingMode::Thinking },
        reasoning_effort: (think == ThinkLevel::Max).then_some(ReasoningEffort::Max),
        think,
        tools_active,
    })
}

fn wrong_type(field: impl Into<String>, expected: &'static str) -> ChatError {
    ChatError::WrongType { field: field.into(), expected }
}

/// String, null or array-of-parts content → text (parts concatenated, non-text dropped).
fn content_text(value: Option<&Value>, field: &str) -> Result<Option<String>, ChatError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part {
                    Value::String(s) => text.push_str(s),
                    Value::Object(obj) => {
                        if let Some(Value::String(s)) = obj.get("text") {
                            text.push_str(s);
                        }
                    }
                    _ => {}
                }
            }
            Ok(Some(text))
        }
        Some(_) => Err(wrong_type(field, "a string, null or an array of content parts")),
    }
}

fn optional_string(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, ChatError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong_type(format!("{path}.{key}"), "a string or null")),
    }
}

fn map_message(value: &Value, path: &str) -> Result<Message, ChatError> {
    let obj = value.as_object().ok_or_else(|| wrong_type(path, "an object"))?;
    let role = match obj.get("role") {
        Some(Value::String(r)) => match r.as_str() {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(ChatError::UnknownRole { field: format!("{path}.role"), role: other.into() })
            }
        },
        Some(_) => return Err(wrong_type(format!("{path}.role"), "a string")),
        None => return Err(ChatError::MissingField { field: format!("{path}.role") }),
    };
    let content = content_text(obj.get("content"), &format!("{path}.content"))?.unwrap_or_default();
    if role == Role::Developer && content.is_empty() {
        // The official encoder asserts on an empty developer message.
        return Err(ChatError::BadValue {
            field: format!("{path}.content"),
            problem: "a developer message must have non-empty content".into(),
        });
    }
    let mut msg = Message::new(role, content);
    msg.reasoning_content =
        content_text(obj.get("reasoning_content"), &format!("{path}.reasoning_content"))?;
    msg.tool_call_id = optional_string(obj, "tool_call_id", path)?;
    if role == Role::Assistant {
        msg.tool_calls = map_tool_calls(obj.get("tool_calls"), &format!("{path}.tool_calls"))?;
    }
    Ok(msg)
}

fn map_tool_calls(value: Option<&Value>, path: &str) -> Result<Vec<ToolCall>, ChatError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(wrong_type(path, "an array or null")),
    };
    let mut calls = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let call_path = format!("{path}[{i}]");
        let obj = item.as_object().ok_or_else(|| wrong_type(call_path.as_str(), "an object"))?;
        let fn_path = format!("{call_path}.function");
        let function = match obj.get("function") {
            Some(Value::Object(f)) => f,
            Some(_) => return Err(wrong_type(fn_path, "an object")),
            None => return Err(ChatError::MissingField { field: fn_path }),
        };
        let name = match function.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(wrong_type(format!("{fn_path}.name"), "a string")),
            None => return Err(ChatError::MissingField { field: format!("{fn_path}.name") }),
        };
        let args_path = format!("{fn_path}.arguments");
        let arguments = match function.get("arguments") {
            Some(Value::Object(m)) => m.clone(),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(ChatError::BadValue {
                        field: args_path,
                        problem: "arguments must encode a JSON object".into(),
                    })
                }
                Err(e) => {
                    return Err(ChatError::BadValue {
                        field: args_path,
                        problem: format!("arguments are not valid JSON: {e}"),
                    })
                }
            },
            Some(_) => return Err(wrong_type(args_path, "a JSON object or a string holding one")),
            None => return Err(ChatError::MissingField { field: args_path }),
        };
        // The encoder orders results by `tc.get("id") or tc["function"].get("id")`.
        let id = match optional_string(obj, "id", &call_path)? {
            Some(id) if !id.is_empty() => Some(id),
            _ => optional_string(function, "id", &fn_path)?,
        };
        calls.push(ToolCall { id, name, arguments });
    }
    Ok(calls)
}

/// Top-level `tools` → the function schemas to render (empty when `tool_choice` is "none").
fn map_tools(body: &Map<String, Value>) -> Result<Vec<Value>, ChatError> {
    let items = match body.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(wrong_type("tools", "an array or null")),
    };
    if body.get("tool_choice").and_then(Value::as_str) == Some("none") {
        return Ok(Vec::new());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, tool)| match tool.get("function") {
            Some(f @ Value::Object(_)) => Ok(f.clone()),
            Some(_) => Err(wrong_type(format!("tools[{i}].function"), "an object")),
            None => Err(ChatError::MissingField { field: format!("tools[{i}].function") }),
        })
        .collect()
}

/// Thinking resolution of ds4's chat endpoint (spec §4.4), then the Think Max context gate.
fn resolve_think(body: &Map<String, Value>, ctx_tokens: usize) -> Result<ThinkLevel, ChatError> {
    let mut enabled = true;
    let mut explicit = false;
    let mut effort = ThinkLevel::High;
    for (key, value) in body {
        match (key.as_str(), value) {
            (_, Value::Null) => {}
            ("thinking" | "think", Value::Bool(b)) => {
                enabled = *b;
                explicit = true;
            }
            ("thinking", Value::Object(obj)) => {
                match obj.get("type").and_then(Value::as_str) {
                    Some("enabled") => enabled = true,
                    Some("disabled") => enabled = false,
                    _ => {}
                }
                explicit = true;
            }
            ("thinking", _) => return Err(wrong_type("thinking", "a bool or {\"type\": …}")),
            ("think", _) => return Err(wrong_type("think", "a bool")),
            ("reasoning_effort", Value::String(s)) => {
                effort = match s.as_str() {
                    "max" => ThinkLevel::Max,
                    "xhigh" | "high" | "medium" | "low" | "minimal" => ThinkLevel::High,
                    "none" => ThinkLevel::None,
                    other => {
                        return Err(ChatError::BadValue {
                            field: "reasoning_effort".into(),
                            problem: format!("unknown effort `{other}`"),
                        })
                    }
                }
            }
            ("reasoning_effort", _) => return Err(wrong_type("reasoning_effort", "a string or null")),
            _ => {}
        }
    }
    if !explicit {
        match body.get("model").and_then(Value::as_str) {
            Some("deepseek-chat") => enabled = false,
            Some("deepseek-reasoner") => enabled = true,
            _ => {}
        }
    }
    Ok(match (enabled, effort) {
        (false, _) | (_, ThinkLevel::None) => ThinkLevel::None,
        (true, ThinkLevel::Max) if ctx_tokens >= THINK_MAX_MIN_CONTEXT => ThinkLevel::Max,
        (true, _) => ThinkLevel::High,
    })
}
