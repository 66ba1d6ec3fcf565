//! Chat messages as the official DeepSeek V4 encoder (`encoding_dsv4.py`) takes them, after the
//! OpenAI request has been mapped (`chat::request`). Plain data, no behaviour beyond
//! constructors; `chat::render` turns a list of them into prompt text (spec/serving.md §2).

use serde_json::{Map, Value};

/// Role of one input message. `tool` results are merged into user turns by the renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// System text (and, on the first one, the tool schemas).
    System,
    /// Developer text: rendered like a user turn with `<｜User｜>`, per the official encoder.
    Developer,
    /// User text.
    User,
    /// An earlier model turn: reasoning, content and tool calls.
    Assistant,
    /// A tool result, rendered as `<tool_result>…</tool_result>` inside a user turn.
    Tool,
}

/// Whether the prompt opens the assistant turn with `<think>` (thinking) or `</think>` (chat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkingMode {
    /// Non-thinking: the assistant prefix ends in `</think>`.
    Chat,
    /// Thinking: the assistant prefix ends in `<think>`.
    Thinking,
}

/// The `reasoning_effort` argument of the official encoder. Only `Max` changes the text
/// (the Think Max prefix, spec/serving.md §2.1); "high" renders like no effort at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningEffort {
    /// Think Max: the fixed "Reasoning Effort: Absolute maximum…" prefix after BOS.
    Max,
}

/// One tool call of an assistant message in the history.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The OpenAI tool-call id; used only to order the tool results that answer it.
    pub id: Option<String>,
    /// Function name, rendered raw into `name="…"`.
    pub name: String,
    /// Arguments object, in the client's key order.
    pub arguments: Map<String, Value>,
}

/// One message of the conversation, in the encoder's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// Text content (array content already joined; null is empty).
    pub content: String,
    /// Reasoning of an earlier assistant turn (`reasoning_content`).
    pub reasoning_content: Option<String>,
    /// Tool calls of an assistant turn, in order.
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: the id of the call this result answers.
    pub tool_call_id: Option<String>,
    /// Tool schemas (the OpenAI `function` objects), attached to a system message.
    pub tools: Vec<Value>,
    /// For an assistant turn with tool calls: the exact text the model sampled after the
    /// content through `</｜DSML｜tool_calls>`, rendered instead of the canonical DSML (exact
    /// tool replay, spec/serving.md §5.7). None renders the calls canonically.
    pub raw_dsml: Option<String>,
}

impl Message {
    /// A message with only a role and text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            reasoning_content: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            tools: Vec::new(),
            raw_dsml: None,
        }
    }
}
