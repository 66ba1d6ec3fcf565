//! OpenAI chat-completions request → encoder input → prompt text (spec/serving.md §2, §4.4,
//! §4.5). The mapping is deliberately small, so it can be mirrored line by line by
//! `tools/reference/chat_fixtures.py`:
//!
//! * `messages` keep their order. Roles: system, developer, user, assistant, tool; a system
//!   message after the first non-system one is a user message (it joins the user turn at its
//!   place, which keeps the generation prefix; the template has no mid-conversation system
//!   slot), and a conversation of system messages only gets an empty user turn. `content`
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

/// As [`render_chat_request`], with exact tool replay (spec/serving.md §5.7): an assistant
/// message whose tool calls all carry ids for which `replay` knows one sampled DSML text gets
/// that text instead of the canonical rendering. `replay` gets the ids in call order.
pub fn render_chat_request_with(
    body: &Value,
    ctx_tokens: usize,
    replay: &dyn Fn(&[&str]) -> Option<String>,
) -> Result<RenderedChat, ChatError> {
    let mut input = map_chat_request(body, ctx_tokens)?;
    for m in &mut input.messages {
        if m.role != Role::Assistant || m.tool_calls.is_empty() {
            continue;
        }
        let ids: Option<Vec<&str>> = m.tool_calls.iter().map(|c| c.id.as_deref()).collect();
        m.raw_dsml = ids.and_then(|ids| replay(&ids));
    }
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
        None => {
            return Err(ChatError::MissingField {
                field: "messages".into(),
            })
        }
    };
    let mut messages = raw_messages
        .iter()
        .enumerate()
        .map(|(i, m)| map_message(m, &format!("messages[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    // A system message inside the conversation (Claude Code sends its environment that way)
    // has no place of its own in the template: it becomes user text at its position, so the
    // turn it joins still gets the `<｜Assistant｜>` prefix.
    match messages.iter().position(|m| m.role != Role::System) {
        Some(first_turn) => {
            for m in &mut messages[first_turn..] {
                if m.role == Role::System {
                    m.role = Role::User;
                }
            }
        }
        // Only system text: an empty user turn carries the generation prefix.
        None if !messages.is_empty() => messages.push(Message::new(Role::User, "")),
        None => {}
    }

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
        thinking_mode: if think == ThinkLevel::None {
            ThinkingMode::Chat
        } else {
            ThinkingMode::Thinking
        },
        reasoning_effort: (think == ThinkLevel::Max).then_some(ReasoningEffort::Max),
        think,
        tools_active,
    })
}

fn wrong_type(field: impl Into<String>, expected: &'static str) -> ChatError {
    ChatError::WrongType {
        field: field.into(),
        expected,
    }
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
        Some(_) => Err(wrong_type(
            field,
            "a string, null or an array of content parts",
        )),
    }
}

fn optional_string(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, ChatError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong_type(format!("{path}.{key}"), "a string or null")),
    }
}

fn map_message(value: &Value, path: &str) -> Result<Message, ChatError> {
    let obj = value
        .as_object()
        .ok_or_else(|| wrong_type(path, "an object"))?;
    let role = match obj.get("role") {
        Some(Value::String(r)) => match r.as_str() {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(ChatError::UnknownRole {
                    field: format!("{path}.role"),
                    role: other.into(),
                })
            }
        },
        Some(_) => return Err(wrong_type(format!("{path}.role"), "a string")),
        None => {
            return Err(ChatError::MissingField {
                field: format!("{path}.role"),
            })
        }
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
    msg.reasoning_content = content_text(
        obj.get("reasoning_content"),
        &format!("{path}.reasoning_content"),
    )?;
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
        let obj = item
            .as_object()
            .ok_or_else(|| wrong_type(call_path.as_str(), "an object"))?;
        let fn_path = format!("{call_path}.function");
        let function = match obj.get("function") {
            Some(Value::Object(f)) => f,
            Some(_) => return Err(wrong_type(fn_path, "an object")),
            None => return Err(ChatError::MissingField { field: fn_path }),
        };
        let name = match function.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(wrong_type(format!("{fn_path}.name"), "a string")),
            None => {
                return Err(ChatError::MissingField {
                    field: format!("{fn_path}.name"),
                })
            }
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
            Some(_) => {
                return Err(wrong_type(
                    args_path,
                    "a JSON object or a string holding one",
                ))
            }
            None => return Err(ChatError::MissingField { field: args_path }),
        };
        // The encoder orders results by `tc.get("id") or tc["function"].get("id")`.
        let id = match optional_string(obj, "id", &call_path)? {
            Some(id) if !id.is_empty() => Some(id),
            _ => optional_string(function, "id", &fn_path)?,
        };
        calls.push(ToolCall {
            id,
            name,
            arguments,
        });
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
            None => Err(ChatError::MissingField {
                field: format!("tools[{i}].function"),
            }),
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
            ("reasoning_effort", _) => {
                return Err(wrong_type("reasoning_effort", "a string or null"))
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture_rows(name: &str) -> Vec<Value> {
        let path = format!(
            "{}/../../tests/fixtures/chat/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        text.lines()
            .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
            .collect()
    }

    /// tools/reference/chat_fixtures.py: random OpenAI requests (and the five official test
    /// prompts) rendered by the official encoder through the same mapping.
    #[test]
    fn renders_every_fixture_request_byte_identical_to_the_official_encoder() {
        let rows = fixture_rows("render_cases.jsonl");
        assert!(
            rows.len() >= 200,
            "expected at least 200 cases, found {}",
            rows.len()
        );
        let mut failures = Vec::new();
        for row in &rows {
            let name = row["name"].as_str().unwrap_or("?");
            let ctx = row["ctx"]
                .as_u64()
                .and_then(|c| usize::try_from(c).ok())
                .unwrap_or(0);
            let want_mode = match row["thinking_mode"].as_str() {
                Some("chat") => ThinkingMode::Chat,
                _ => ThinkingMode::Thinking,
            };
            match render_chat_request(&row["request"], ctx) {
                Ok(r)
                    if r.prompt == row["prompt"].as_str().unwrap_or("")
                        && r.thinking_mode == want_mode => {}
                Ok(r) => {
                    let want = row["prompt"].as_str().unwrap_or("");
                    let at = r
                        .prompt
                        .bytes()
                        .zip(want.bytes())
                        .take_while(|(a, b)| a == b)
                        .count();
                    let from = at.saturating_sub(60);
                    failures.push(format!(
                        "{name}: mode {:?} (want {want_mode:?}), first difference at byte {at}:\n got  {:?}\n want {:?}",
                        r.thinking_mode,
                        r.prompt.get(from..(at + 80).min(r.prompt.len())).unwrap_or(""),
                        want.get(from..(at + 80).min(want.len())).unwrap_or("")
                    ));
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases differ:\n{}",
            failures.len(),
            rows.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn official_test_prompts_render_without_thinking_or_system() {
        let rows = fixture_rows("render_cases.jsonl");
        let official: Vec<&Value> = rows
            .iter()
            .filter(|r| {
                r["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("official_prompt_"))
            })
            .collect();
        assert_eq!(official.len(), 5);
        for row in official {
            let rendered =
                render_chat_request(&row["request"], 32768).expect("official prompt renders");
            let user = row["request"]["messages"][0]["content"]
                .as_str()
                .unwrap_or("");
            assert_eq!(
                rendered.prompt,
                format!("<｜begin▁of▁sentence｜><｜User｜>{user}<｜Assistant｜></think>")
            );
            assert_eq!(rendered.think, ThinkLevel::None);
        }
    }

    #[test]
    fn thinking_is_on_by_default_and_max_needs_a_long_context() {
        let body =
            json!({"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "max"});
        assert_eq!(
            map_chat_request(&body, 32768).map(|i| i.think),
            Ok(ThinkLevel::High)
        );
        assert_eq!(
            map_chat_request(&body, THINK_MAX_MIN_CONTEXT).map(|i| i.think),
            Ok(ThinkLevel::Max)
        );
        let chat = json!({"model": "deepseek-chat", "messages": [], "reasoning_effort": "high"});
        assert_eq!(
            map_chat_request(&chat, 32768).map(|i| i.think),
            Ok(ThinkLevel::None)
        );
        let explicit =
            json!({"model": "deepseek-chat", "messages": [], "thinking": {"type": "enabled"}});
        assert_eq!(
            map_chat_request(&explicit, 32768).map(|i| i.think),
            Ok(ThinkLevel::High)
        );
        let last_wins = json!({"messages": [], "thinking": false, "think": true});
        assert_eq!(
            map_chat_request(&last_wins, 32768).map(|i| i.think),
            Ok(ThinkLevel::High)
        );
        let none = json!({"messages": [], "think": true, "reasoning_effort": "none"});
        assert_eq!(
            map_chat_request(&none, 32768).map(|i| i.think),
            Ok(ThinkLevel::None)
        );
    }

    #[test]
    fn rejects_bad_requests_naming_the_field() {
        let cases = [
            (json!([]), ChatError::NotAnObject),
            (
                json!({}),
                ChatError::MissingField {
                    field: "messages".into(),
                },
            ),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                ChatError::UnknownRole {
                    field: "messages[0].role".into(),
                    role: "robot".into(),
                },
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                ChatError::WrongType {
                    field: "messages[0].content".into(),
                    expected: "a string, null or an array of content parts",
                },
            ),
            (
                json!({"messages": [], "reasoning_effort": "extreme"}),
                ChatError::BadValue {
                    field: "reasoning_effort".into(),
                    problem: "unknown effort `extreme`".into(),
                },
            ),
            (
                json!({"messages": [], "tools": [{"type": "function"}]}),
                ChatError::MissingField {
                    field: "tools[0].function".into(),
                },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(map_chat_request(&body, 32768), Err(want), "body {body}");
        }
        let bad_args = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c1", "function": {"name": "f", "arguments": "{not json"}}]}]});
        match map_chat_request(&bad_args, 32768) {
            Err(ChatError::BadValue { field, .. }) => {
                assert_eq!(field, "messages[0].tool_calls[0].function.arguments")
            }
            other => panic!("expected BadValue, got {other:?}"),
        }
        let array_args = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": "[1]"}}]}]});
        assert!(matches!(
            map_chat_request(&array_args, 32768),
            Err(ChatError::BadValue { .. })
        ));
        let empty_dev = json!({"messages": [{"role": "developer", "content": ""}]});
        assert!(matches!(
            map_chat_request(&empty_dev, 32768),
            Err(ChatError::BadValue { .. })
        ));
    }

    #[test]
    fn tools_go_to_the_first_system_message_or_a_new_empty_one() {
        let tool = json!({"type": "function", "function": {"name": "f", "parameters": {}}});
        let body = json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}],
                          "tools": [tool.clone()]});
        let input = map_chat_request(&body, 32768).expect("maps");
        assert_eq!(input.messages.len(), 2);
        assert_eq!(input.messages[0].tools, vec![tool["function"].clone()]);
        // A system message after the conversation started is user text; the tools get a system
        // message of their own at the head.
        let late = json!({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
                          "tools": [tool.clone()]});
        let input = map_chat_request(&late, 32768).expect("maps");
        let roles: Vec<Role> = input.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::User]);
        assert_eq!(input.messages[0].tools, vec![tool["function"].clone()]);
        let no_system = json!({"messages": [{"role": "user", "content": "a"}], "tools": [tool]});
        let input = map_chat_request(&no_system, 32768).expect("maps");
        assert_eq!(input.messages[0], {
            let mut m = Message::new(Role::System, "");
            m.tools = input.messages[0].tools.clone();
            m
        });
        assert!(input.tools_active);
        let hidden =
            json!({"messages": [], "tools": [{"function": {"name": "f"}}], "tool_choice": "none"});
        let input = map_chat_request(&hidden, 32768).expect("maps");
        assert!(!input.tools_active && input.messages.is_empty());
    }
}
