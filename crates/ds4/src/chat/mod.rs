//! Chat layer (spec/serving.md §2–§3.2): OpenAI requests to DeepSeek V4 prompt text, and model
//! output back to reasoning, content and tool calls. Text only: tokenizing is `tokenizer`'s
//! job, sampling is `sample`'s.
//!
//! * `request`: OpenAI chat-completions body → encoder input (thinking controls, tools).
//! * `render`: the official DeepSeek V4 template (`encoding_dsv4.py`), byte for byte.
//! * `json`: Python `json.dumps` text, as the template embeds JSON.
//! * `dsml`: the tool-call grammar's canonical rendering.
//! * `output`: the incremental output parser (reasoning / content / DSML tool calls).

pub mod dsml;
pub mod json;
pub mod message;
pub mod output;
pub mod render;
pub mod request;

pub use message::{Message, ReasoningEffort, Role, ThinkingMode, ToolCall};
pub use output::{
    DsmlState, FinishError, FinishReason, OutputEvent, OutputParser, ParsedOutput, ParsedToolCall,
    StopCause,
};
pub use render::encode_messages;
pub use request::{
    map_chat_request, render_chat_request, render_chat_request_with, ChatError, RenderedChat,
    ThinkLevel,
};
