//! Incremental parser of model output (spec/serving.md §2.5 parsing, §3.2 greedy DSML, §3.4,
//! pitfalls P7–P10): decoded text pieces in, reasoning / content / tool-call events out.
//!
//! Grammar (official `parse_message_from_completion_text` decides):
//! * thinking mode: everything before the first `</think>` is reasoning; DSML there is text;
//! * with tools active, `<｜DSML｜tool_calls>` opens a block; the content before it loses one
//!   trailing `"\n\n"` (the canonical separator), nothing more;
//! * a block holds `<｜DSML｜invoke name="N">` elements of `<｜DSML｜parameter name="K"
//!   string="true|false">BODY</｜DSML｜parameter>` (whitespace between tags is tolerated);
//!   `string="true"` (or no `string`) bodies are raw text, others raw JSON, both verbatim
//!   (no entity unescaping: the official encoder escapes nothing, so `parse(render(c)) == c`);
//! * arguments are the official decoder's `{"k": v, ...}` text, streamed as it is recognized;
//! * after `</｜DSML｜tool_calls>` the turn is over: later text is ignored, finish `tool_calls`.
//!
//! Markup never reaches content: a malformed block or one still open at the end finishes with
//! `FinishReason::Error`, except a length cut, which is `FinishReason::Length` with only the
//! invokes that closed in `tool_calls` (the open one is dropped; its `ToolCallStart` and argument
//! deltas were events, so a streaming encoder that must not show a partial call holds a call's
//! events until its `ToolCallEnd`). Input pieces are `&str` (UTF-8 reassembly is the
//! tokenizer's job).

use super::dsml::{
    decode_arguments, DsmlParam, DSML_TOKEN, INVOKE_END, INVOKE_START, PARAMETER_END,
    PARAMETER_START, TOOL_CALLS_END, TOOL_CALLS_START,
};
use super::json::{escape_python_json_into, python_json_string};
use super::message::ThinkingMode;
use super::render::THINK_END;

/// Longest tag header (`<｜DSML｜invoke name="…">`) we buffer before calling it malformed.
const MAX_HEADER_BYTES: usize = 4096;

/// One thing the client can be told as soon as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    /// More reasoning text.
    ReasoningDelta(String),
    /// More visible content.
    ContentDelta(String),
    /// A tool call's name is complete.
    ToolCallStart {
        /// 0-based position of the call in this turn.
        index: usize,
        /// Call id from the parser's id source.
        id: String,
        /// Function name.
        name: String,
    },
    /// More of the call's argument JSON text.
    ToolCallArgumentsDelta {
        /// Which call.
        index: usize,
        /// JSON text to append.
        delta: String,
    },
    /// The call's `</｜DSML｜invoke>` was read; its arguments are complete.
    ToolCallEnd {
        /// Which call.
        index: usize,
    },
}

/// Why generation stopped, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The model sampled EOS (or the tool block closed and the caller stopped).
    Eos,
    /// `max_tokens` or the context ran out.
    Length,
    /// A client stop sequence matched.
    StopSequence,
    /// Evaluation or transport failed.
    Error,
}

/// Why a turn ended in error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FinishError {
    /// A tool block was open when generation stopped.
    #[error("unterminated tool call")]
    UnterminatedToolCall,
    /// The text inside a tool block broke the grammar.
    #[error("malformed tool call: expected {expected}, found {found:?}")]
    MalformedToolCall {
        /// What the grammar allowed there.
        expected: &'static str,
        /// The offending text (truncated).
        found: String,
    },
    /// One invoke named the same parameter twice.
    #[error("duplicate parameter `{name}` in tool call")]
    DuplicateParameter {
        /// The repeated name.
        name: String,
    },
    /// Generation itself failed (`StopCause::Error`).
    #[error("generation failed")]
    Generation,
}

/// OpenAI-style finish reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop sequence.
    Stop,
    /// Out of tokens.
    Length,
    /// A tool block closed.
    ToolCalls,
    /// Something went wrong; see the error.
    Error(FinishError),
}

/// A completed tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToolCall {
    /// Call id.
    pub id: String,
    /// Function name.
    pub name: String,
    /// Argument JSON text (`decode_dsml_to_arguments` of the official encoder).
    pub arguments: String,
}

/// Everything a turn produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOutput {
    /// Reasoning text (thinking mode).
    pub reasoning: String,
    /// Visible content.
    pub content: String,
    /// Completed tool calls, in order.
    pub tool_calls: Vec<ParsedToolCall>,
    /// How the turn ended.
    pub finish: FinishReason,
}

/// What the next sampled token continues, for greedy DSML forcing (spec §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsmlState {
    /// Not in a tool block (reasoning, content, or after the block).
    Outside,
    /// Tags, attribute values, whitespace between tags, JSON outside strings, a partial tag.
    Structural,
    /// Inside a `string="true"` body.
    StringBody,
    /// Inside a string literal of a `string="false"` (JSON) body.
    JsonString,
}

/// Tracks whether a JSON body is inside a string literal.
#[derive(Debug, Clone, Copy, Default)]
struct JsonScan {
    in_string: bool,
    escaped: bool,
}

impl JsonScan {
    fn feed(&mut self, text: &str) {
        for c in text.chars() {
            if !self.in_string {
                self.in_string = c == '"';
            } else if self.escaped {
                self.escaped = false;
            } else if c == '\\' {
                self.escaped = true;
            } else if c == '"' {
                self.in_string = false;
            }
        }
    }
}

#[derive(Debug)]
enum State {
    Reasoning,
    Content,
    /// Between `<｜DSML｜tool_calls>`/`</｜DSML｜invoke>` and the next invoke or the block end.
    BeforeInvoke,
    /// Inside an invoke, between tags.
    InInvoke,
    /// Inside a parameter body.
    Body {
        string: bool,
        json: JsonScan,
    },
    Done,
    Failed(FinishError),
}

/// The call being read.
#[derive(Debug)]
struct OpenCall {
    index: usize,
    id: String,
    name: String,
    params: Vec<DsmlParam>,
}

type IdSource = Box<dyn FnMut(usize) -> String + Send>;

/// Streaming parser of one assistant turn. Feed decoded text with [`OutputParser::feed`],
/// end with [`OutputParser::finish`].
pub struct OutputParser {
    state: State,
    /// Text received but not yet classified (a possible partial tag, held whitespace).
    pending: String,
    tools_active: bool,
    reasoning: String,
    content: String,
    calls: Vec<ParsedToolCall>,
    open: Option<OpenCall>,
    next_id: IdSource,
}

impl std::fmt::Debug for OutputParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputParser")
            .field("state", &self.state)
            .field("pending", &self.pending)
            .field("tools_active", &self.tools_active)
            .finish_non_exhaustive()
    }
}

/// Length of the longest proper prefix of `marker` that `s` ends with.
fn partial_suffix_len(s: &str, marker: &str) -> usize {
    let max = s.len().min(marker.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&k| {
            let start = s.len() - k;
            s.is_char_boundary(start) && marker.as_bytes().starts_with(&s.as_bytes()[start..])
        })
        .unwrap_or(0)
}

/// Parses ` key="value"` pairs up to the end of a tag header (the text before `>`).
fn parse_attributes(header: &str) -> Option<Vec<(String, String)>> {
    let mut attrs = Vec::new();
    let mut rest = header;
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            return Some(attrs);
        }
        if trimmed.len() == rest.len() {
            return None; // attributes must be separated by whitespace
        }
        let (key, after) = trimmed.split_once("=\"")?;
        let (value, after) = after.split_once('"')?;
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        attrs.push((key.to_string(), value.to_string()));
        rest = after;
    }
}

/// Byte offset of the `>` closing a tag header, outside quoted attribute values.
fn header_end(s: &str) -> Option<usize> {
    let mut in_quote = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quote = !in_quote,
            '>' if !in_quote => return Some(i),
            _ => {}
        }
    }
    None
}

fn truncated(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Outcome of matching the front of `pending` against the tags allowed there.
enum TagMatch {
    /// Tag `i` of the list starts the text.
    Found(usize),
    /// The text could still become one of the tags.
    NeedMore,
    /// It cannot.
    Mismatch,
}

fn match_tag(s: &str, tags: &[&str]) -> TagMatch {
    if let Some(i) = tags.iter().position(|t| s.starts_with(t)) {
        return TagMatch::Found(i);
    }
    if tags.iter().any(|t| t.starts_with(s)) {
        TagMatch::NeedMore
    } else {
        TagMatch::Mismatch
    }
}

/// Default call ids: `call_` + 32 random hex digits.
fn random_call_id(_index: usize) -> String {
    format!("call_{:032x}", rand::random::<u128>())
}

impl OutputParser {
    /// A parser for one turn. `Thinking` starts inside reasoning (the prompt ended in
    /// `<think>`); DSML is only recognized when `tools_active`.
    pub fn new(mode: ThinkingMode, tools_active: bool) -> Self {
        OutputParser {
            state: match mode {
                ThinkingMode::Thinking => State::Reasoning,
                ThinkingMode::Chat => State::Content,
            },
            pending: String::new(),
            tools_active,
            reasoning: String::new(),
            content: String::new(),
            calls: Vec::new(),
            open: None,
            next_id: Box::new(random_call_id),
        }
    }

    /// Replaces the id source; it gets the call's index.
    pub fn with_call_ids(mut self, ids: impl FnMut(usize) -> String + Send + 'static) -> Self {
        self.next_id = Box::new(ids);
        self
    }

    /// True once `</｜DSML｜tool_calls>` was read: the caller should stop generating.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Where the text so far leaves the DSML grammar (spec §3.2).
    pub fn dsml_state(&self) -> DsmlState {
        match &self.state {
            State::Reasoning | State::Done | State::Failed(_) => DsmlState::Outside,
            State::Content => {
                if self.tools_active && self.pending.contains(&format!("<{DSML_TOKEN}")) {
                    DsmlState::Structural
                } else {
                    DsmlState::Outside
                }
            }
            State::BeforeInvoke | State::InInvoke => DsmlState::Structural,
            State::Body { string, json } => {
                if self.pending.len() >= 2 && partial_suffix_len(&self.pending, PARAMETER_END) >= 2
                {
                    DsmlState::Structural
                } else if *string {
                    DsmlState::StringBody
                } else if json.in_string {
                    DsmlState::JsonString
                } else {
                    DsmlState::Structural
                }
            }
        }
    }

    /// True when the next token should be greedy: inside DSML structure (spec §3.2).
    pub fn in_dsml_structure(&self) -> bool {
        self.dsml_state() == DsmlState::Structural
    }

    /// Feeds one decoded piece; returns the events it completes.
    pub fn feed(&mut self, piece: &str) -> Vec<OutputEvent> {
        let mut events = Vec::new();
        if matches!(self.state, State::Done | State::Failed(_)) {
            return events; // the turn is over; later text is ignored
        }
        self.pending.push_str(piece);
        while self.step(&mut events) {}
        events
    }

    /// Ends the turn: flushes held text and says how it finished.
    pub fn finish(mut self, cause: StopCause) -> (Vec<OutputEvent>, ParsedOutput) {
        let mut events = Vec::new();
        let pending = std::mem::take(&mut self.pending);
        let finish = match std::mem::replace(&mut self.state, State::Done) {
            State::Reasoning => {
                self.emit_reasoning(&mut events, &pending);
                Self::plain_finish(cause)
            }
            State::Content => {
                self.emit_content(&mut events, &pending);
                Self::plain_finish(cause)
            }
            // Out of tokens inside a block: the protocol's length stop. The call still open is
            // dropped (`calls` holds only invokes that closed), never reported as complete.
            State::BeforeInvoke | State::InInvoke | State::Body { .. } => match cause {
                StopCause::Length => FinishReason::Length,
                StopCause::Error => FinishReason::Error(FinishError::Generation),
                StopCause::Eos | StopCause::StopSequence => {
                    FinishReason::Error(FinishError::UnterminatedToolCall)
                }
            },
            State::Done => FinishReason::ToolCalls,
            State::Failed(e) => FinishReason::Error(e),
        };
        let output = ParsedOutput {
            reasoning: self.reasoning,
            content: self.content,
            tool_calls: self.calls,
            finish,
        };
        (events, output)
    }

    fn plain_finish(cause: StopCause) -> FinishReason {
        match cause {
            StopCause::Eos | StopCause::StopSequence => FinishReason::Stop,
            StopCause::Length => FinishReason::Length,
            StopCause::Error => FinishReason::Error(FinishError::Generation),
        }
    }

    fn emit_reasoning(&mut self, events: &mut Vec<OutputEvent>, text: &str) {
        if !text.is_empty() {
            self.reasoning.push_str(text);
            events.push(OutputEvent::ReasoningDelta(text.to_string()));
        }
    }

    fn emit_content(&mut self, events: &mut Vec<OutputEvent>, text: &str) {
        if !text.is_empty() {
            self.content.push_str(text);
            events.push(OutputEvent::ContentDelta(text.to_string()));
        }
    }

    fn emit_args(&mut self, events: &mut Vec<OutputEvent>, delta: String) {
        if let Some(call) = &self.open {
            if !delta.is_empty() {
                events.push(OutputEvent::ToolCallArgumentsDelta {
                    index: call.index,
                    delta,
                });
            }
        }
    }

    fn fail(&mut self, error: FinishError) {
        self.pending.clear();
        self.state = State::Failed(error);
    }

    fn malformed(&mut self, expected: &'static str) {
        let found = truncated(&self.pending);
        self.fail(FinishError::MalformedToolCall { expected, found });
    }

    /// Consumes what it can from `pending`; false when more input is needed.
    fn step(&mut self, events: &mut Vec<OutputEvent>) -> bool {
        match self.state {
            State::Reasoning => self.step_reasoning(events),
            State::Content => self.step_content(events),
            State::BeforeInvoke => self.step_before_invoke(events),
            State::InInvoke => self.step_in_invoke(events),
            State::Body { string, .. } => self.step_body(events, string),
            State::Done | State::Failed(_) => {
                self.pending.clear();
                false
            }
        }
    }

    fn step_reasoning(&mut self, events: &mut Vec<OutputEvent>) -> bool {
        let pending = std::mem::take(&mut self.pending);
        if let Some(p) = pending.find(THINK_END) {
            self.emit_reasoning(events, &pending[..p]);
            self.pending = pending[p + THINK_END.len()..].to_string();
            self.state = State::Content;
            return true;
        }
        let keep = partial_suffix_len(&pending, THINK_END);
        let (emit, held) = pending.split_at(pending.len() - keep);
        self.emit_reasoning(events, emit);
        self.pending = held.to_string();
        false
    }

    fn step_content(&mut self, events: &mut Vec<OutputEvent>) -> bool {
        let pending = std::mem::take(&mut self.pending);
        if !self.tools_active {
            self.emit_content(events, &pending);
            return false;
        }
        if let Some(p) = pending.find(TOOL_CALLS_START) {
            let before = &pending[..p];
            self.emit_content(events, before.strip_suffix("\n\n").unwrap_or(before));
            self.pending = pending[p + TOOL_CALLS_START.len()..].to_string();
            self.state = State::BeforeInvoke;
            return true;
        }
        // Hold a partial start tag and up to two newlines before it (the canonical separator).
        let mut keep = partial_suffix_len(&pending, TOOL_CALLS_START);
        for _ in 0..2 {
            if pending[..pending.len() - keep].ends_with('\n') {
                keep += 1;
            }
        }
        let (emit, held) = pending.split_at(pending.len() - keep);
        self.emit_content(events, emit);
        self.pending = held.to_string();
        false
    }

    /// Skips whitespace at the front of `pending`; false when nothing else is there yet.
    fn skip_whitespace(&mut self) -> bool {
        let trimmed = self.pending.trim_start();
        if trimmed.len() != self.pending.len() {
            self.pending = trimmed.to_string();
        }
        !self.pending.is_empty()
    }

    /// Splits a complete tag header off `pending` (after `tag`): its attributes, or None
    /// when more input is needed. Sets the failed state on a bad header.
    fn take_header(
        &mut self,
        tag: &str,
        expected: &'static str,
    ) -> Option<Option<Vec<(String, String)>>> {
        let rest = &self.pending[tag.len()..];
        let Some(end) = header_end(rest) else {
            if self.pending.len() > MAX_HEADER_BYTES {
                self.malformed(expected);
                return Some(None);
            }
            return None;
        };
        let attrs = parse_attributes(&rest[..end]);
        if attrs.is_none() {
            self.malformed(expected);
            return Some(None);
        }
        self.pending = rest[end + 1..].to_string();
        Some(attrs)
    }

    fn step_before_invoke(&mut self, events: &mut Vec<OutputEvent>) -> bool {
        if !self.skip_whitespace() {
            return false;
        }
        match match_tag(&self.pending, &[INVOKE_START, TOOL_CALLS_END]) {
            TagMatch::Found(0) => {
                let Some(attrs) =
                    self.take_header(INVOKE_START, "an invoke header with name=\"…\"")
                else {
                    return false;
                };
                let Some(attrs) = attrs else { return false };
                let Some(name) = attrs
                    .iter()
                    .find(|(k, _)| k == "name")
                    .map(|(_, v)| v.clone())
                else {
                    self.malformed("an invoke header with name=\"…\"");
                    return false;
                };
                let index = self.calls.len();
                let id = (self.next_id)(index);
                events.push(OutputEvent::ToolCallStart {
                    index,
                    id: id.clone(),
                    name: name.clone(),
                });
                self.open = Some(OpenCall {
                    index,
                    id,
                    name,
                    params: Vec::new(),
                });
                self.state = State::InInvoke;
                true
            }
            TagMatch::Found(_) => {
                self.state = State::Done;
                self.pending.clear();
                false
            }
            TagMatch::NeedMore => false,
            TagMatch::Mismatch => {
                self.malformed("<｜DSML｜invoke or </｜DSML｜tool_calls>");
                false
            }
        }
    }

    fn step_in_invoke(&mut self, events: &mut Vec<OutputEvent>) -> bool {
        if !self.skip_whitespace() {
            return false;
        }
        match match_tag(&self.pending, &[PARAMETER_START, INVOKE_END]) {
            TagMatch::Found(0) => {
                let expected = "a parameter header with name=\"…\" and string=\"true|false\"";
                let Some(attrs) = self.take_header(PARAMETER_START, expected) else {
                    return false;
                };
                let Some(attrs) = attrs else { return false };
                let name = attrs
                    .iter()
                    .find(|(k, _)| k == "name")
                    .map(|(_, v)| v.clone());
                let string = match attrs
                    .iter()
                    .find(|(k, _)| k == "string")
                    .map(|(_, v)| v.as_str())
                {
                    None | Some("true") => Some(true),
                    Some("false") => Some(false),
                    Some(_) => None,
                };
                let (Some(name), Some(string)) = (name, string) else {
                    self.malformed(expected);
                    return false;
                };
                let Some(call) = self.open.as_mut() else {
                    return false;
                };
                if call.params.iter().any(|(k, _, _)| *k == name) {
                    self.fail(FinishError::DuplicateParameter { name });
                    return false;
                }
                let mut delta = String::from(if call.params.is_empty() { "{" } else { ", " });
                delta.push_str(&python_json_string(&name));
                delta.push_str(": ");
                if string {
                    delta.push('"');
                }
                call.params.push((name, String::new(), string));
                self.emit_args(events, delta);
                self.state = State::Body {
                    string,
                    json: JsonScan::default(),
                };
                true
            }
            TagMatch::Found(_) => {
                self.pending = self.pending[INVOKE_END.len()..].to_string();
                if let Some(call) = self.open.take() {
                    let close = if call.params.is_empty() { "{}" } else { "}" };
                    events.push(OutputEvent::ToolCallArgumentsDelta {
                        index: call.index,
                        delta: close.into(),
                    });
                    events.push(OutputEvent::ToolCallEnd { index: call.index });
                    self.calls.push(ParsedToolCall {
                        id: call.id,
                        name: call.name,
                        arguments: decode_arguments(&call.params),
                    });
                }
                self.state = State::BeforeInvoke;
                true
            }
            TagMatch::NeedMore => false,
            TagMatch::Mismatch => {
                self.malformed("<｜DSML｜parameter or </｜DSML｜invoke>");
                false
            }
        }
    }

    fn step_body(&mut self, events: &mut Vec<OutputEvent>, string: bool) -> bool {
        let pending = std::mem::take(&mut self.pending);
        let (body, rest, closed) = match pending.find(PARAMETER_END) {
            Some(p) => (&pending[..p], &pending[p + PARAMETER_END.len()..], true),
            None => {
                let keep = partial_suffix_len(&pending, PARAMETER_END);
                let (body, held) = pending.split_at(pending.len() - keep);
                (body, held, false)
            }
        };
        if !body.is_empty() {
            let mut delta = String::new();
            if string {
                escape_python_json_into(&mut delta, body);
            } else {
                delta.push_str(body);
                if let State::Body { json, .. } = &mut self.state {
                    json.feed(body);
                }
            }
            if let Some((_, value, _)) = self.open.as_mut().and_then(|c| c.params.last_mut()) {
                value.push_str(body);
            }
            self.emit_args(events, delta);
        }
        self.pending = rest.to_string();
        if closed {
            if string {
                self.emit_args(events, "\"".into());
            }
            self.state = State::InInvoke;
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::dsml::render_tool_calls;
    use crate::chat::json::to_python_json;
    use crate::chat::message::ToolCall;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    fn parser(mode: ThinkingMode) -> OutputParser {
        OutputParser::new(mode, true).with_call_ids(|i| format!("call_{i}"))
    }

    /// Feeds `pieces`, checks that the events add up to the final output, returns it.
    fn run(mode: ThinkingMode, tools: bool, pieces: &[&str]) -> ParsedOutput {
        let mut p = OutputParser::new(mode, tools).with_call_ids(|i| format!("call_{i}"));
        let mut events = Vec::new();
        for piece in pieces {
            events.extend(p.feed(piece));
        }
        let (tail, out) = p.finish(StopCause::Eos);
        events.extend(tail);
        let (mut reasoning, mut content) = (String::new(), String::new());
        let mut args: Vec<String> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut ended = 0;
        for e in events {
            match e {
                OutputEvent::ReasoningDelta(s) => reasoning.push_str(&s),
                OutputEvent::ContentDelta(s) => content.push_str(&s),
                OutputEvent::ToolCallStart { index, id, name } => {
                    assert_eq!((index, id), (names.len(), format!("call_{}", names.len())));
                    names.push(name);
                    args.push(String::new());
                }
                OutputEvent::ToolCallArgumentsDelta { index, delta } => {
                    args[index].push_str(&delta)
                }
                OutputEvent::ToolCallEnd { index } => {
                    assert_eq!(index, ended);
                    ended += 1;
                }
            }
        }
        assert_eq!(reasoning, out.reasoning, "reasoning deltas add up");
        assert_eq!(content, out.content, "content deltas add up");
        assert_eq!(ended, out.tool_calls.len());
        for (i, call) in out.tool_calls.iter().enumerate() {
            assert_eq!(
                (&names[i], &args[i]),
                (&call.name, &call.arguments),
                "streamed call {i}"
            );
        }
        out
    }

    fn char_boundaries(s: &str) -> Vec<usize> {
        (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect()
    }

    fn mode_of(row: &Value) -> ThinkingMode {
        if row["thinking_mode"] == "thinking" {
            ThinkingMode::Thinking
        } else {
            ThinkingMode::Chat
        }
    }

    fn assert_matches_official(name: &str, out: &ParsedOutput, want: &Value) {
        assert_eq!(
            out.content,
            want["content"].as_str().unwrap_or(""),
            "{name}: content"
        );
        assert_eq!(
            out.reasoning,
            want["reasoning_content"].as_str().unwrap_or(""),
            "{name}: reasoning"
        );
        let want_calls = want["tool_calls"].as_array().cloned().unwrap_or_default();
        let got: Vec<(&str, &str)> = out
            .tool_calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect();
        let want_calls: Vec<(&str, &str)> = want_calls
            .iter()
            .map(|c| {
                (
                    c["function"]["name"].as_str().unwrap_or(""),
                    c["function"]["arguments"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(got, want_calls, "{name}: tool calls");
        let want_finish = if want_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        };
        assert_eq!(out.finish, want_finish, "{name}: finish");
    }

    /// tools/reference/chat_fixtures.py: assistant turns rendered by the official encoder, and
    /// its `parse_message_from_completion_text` of them.
    #[test]
    fn parses_official_completions_like_the_official_parser_however_split() {
        let path = format!(
            "{}/../../tests/fixtures/chat/parse_cases.jsonl",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        for (n, line) in text.lines().enumerate() {
            let row: Value = serde_json::from_str(line).expect("fixture line is JSON");
            let name = row["name"].as_str().unwrap_or("?");
            let completion = row["text"].as_str().unwrap_or("");
            let mode = mode_of(&row);
            assert_matches_official(name, &run(mode, true, &[completion]), &row["expected"]);
            let chars: Vec<String> = completion.chars().map(String::from).collect();
            let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
            assert_matches_official(name, &run(mode, true, &pieces), &row["expected"]);
            if n % 10 == 0 {
                for cut in char_boundaries(completion) {
                    let (a, b) = completion.split_at(cut);
                    assert_matches_official(name, &run(mode, true, &[a, b]), &row["expected"]);
                }
            }
        }
    }

    const CALL: &str = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"search\">\n\
<｜DSML｜parameter name=\"q\" string=\"true\">naïve \"x\" 😀\nline</｜DSML｜parameter>\n\
<｜DSML｜parameter name=\"opts\" string=\"false\">{\"a\": [1, {\"b\": \"</｜DSML｜\"}], \"c\": null}</｜DSML｜parameter>\n\
</｜DSML｜invoke>\n<｜DSML｜invoke name=\"now\">\n\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

    #[test]
    fn splits_reasoning_content_and_several_calls_at_every_byte_boundary() {
        let text = format!("plan </thin k><think>{}</think>Answer: ok{CALL}", "");
        for cut in char_boundaries(&text) {
            let (a, b) = text.split_at(cut);
            let out = run(ThinkingMode::Thinking, true, &[a, b]);
            assert_eq!(out.reasoning, "plan </thin k><think>");
            assert_eq!(out.content, "Answer: ok");
            assert_eq!(out.finish, FinishReason::ToolCalls);
            let calls: Vec<(&str, &str)> = out
                .tool_calls
                .iter()
                .map(|c| (c.name.as_str(), c.arguments.as_str()))
                .collect();
            assert_eq!(
                calls,
                vec![
                    ("search", "{\"q\": \"naïve \\\"x\\\" 😀\\nline\", \"opts\": {\"a\": [1, {\"b\": \"</｜DSML｜\"}], \"c\": null}}"),
                    ("now", "{}")
                ]
            );
        }
    }

    #[test]
    fn unterminated_block_finishes_with_error_and_leaks_no_markup() {
        let cut = CALL.find("</｜DSML｜invoke>").unwrap_or(0);
        let open = CALL.find("<｜DSML｜invoke").unwrap_or(0);
        for end in [open, cut, cut + 5, CALL.len() - 3] {
            let out = run(ThinkingMode::Chat, true, &["Hi", &CALL[..end]]);
            assert_eq!(out.content, "Hi", "prefix {end}");
            assert_eq!(
                out.finish,
                FinishReason::Error(FinishError::UnterminatedToolCall)
            );
        }
    }

    #[test]
    fn length_cut_inside_a_block_is_a_length_stop_with_only_closed_calls() {
        let two = format!(
            "{}{}",
            &CALL[..CALL.find("</｜DSML｜tool_calls>").unwrap_or(0)],
            "<｜DSML｜invoke name=\"now\">\n<｜DSML｜parameter name=\"tz\" string=\"true\">UT"
        );
        let first_end = CALL.find("</｜DSML｜invoke>").unwrap_or(0) + "</｜DSML｜invoke>".len();
        let open = CALL.find("<｜DSML｜invoke").unwrap_or(0);
        let cuts = [
            (open, 0),
            (open + "<｜DSML｜inv".len(), 0),
            (first_end - 3, 0),
            (first_end, 1),
            (two.len(), 2),
        ];
        for (end, closed) in cuts {
            let mut p = parser(ThinkingMode::Chat);
            p.feed("Hi");
            p.feed(&two[..end]);
            let (_, out) = p.finish(StopCause::Length);
            assert_eq!(out.finish, FinishReason::Length, "cut at {end}");
            assert_eq!(out.content, "Hi", "cut at {end}");
            assert_eq!(
                out.tool_calls.len(),
                closed,
                "cut at {end}: {:?}",
                out.tool_calls
            );
        }
    }

    #[test]
    fn a_partial_start_tag_at_the_end_is_content_and_finish_stop() {
        let out = run(ThinkingMode::Chat, true, &["Hi\n\n<｜DSML｜tool"]);
        assert_eq!(out.content, "Hi\n\n<｜DSML｜tool");
        assert_eq!(out.finish, FinishReason::Stop);
    }

    #[test]
    fn malformed_block_finishes_with_error() {
        let out = run(
            ThinkingMode::Chat,
            true,
            &["x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invok name=\"a\">"],
        );
        assert!(
            matches!(
                out.finish,
                FinishReason::Error(FinishError::MalformedToolCall { .. })
            ),
            "{:?}",
            out.finish
        );
        assert_eq!(out.content, "x");
        let dup = "<｜DSML｜tool_calls><｜DSML｜invoke name=\"f\"><｜DSML｜parameter name=\"a\">1</｜DSML｜parameter><｜DSML｜parameter name=\"a\">2</｜DSML｜parameter>";
        let out = run(ThinkingMode::Chat, true, &[dup]);
        assert_eq!(
            out.finish,
            FinishReason::Error(FinishError::DuplicateParameter { name: "a".into() })
        );
    }

    #[test]
    fn text_after_the_block_is_ignored_and_the_parser_reports_done() {
        let mut p = parser(ThinkingMode::Chat);
        p.feed("before");
        p.feed(CALL);
        assert!(p.is_done());
        assert!(p.feed("garbage <｜DSML｜tool_calls> more").is_empty());
        let (_, out) = p.finish(StopCause::Eos);
        assert_eq!(out.content, "before");
        assert_eq!(out.tool_calls.len(), 2);
        assert_eq!(out.finish, FinishReason::ToolCalls);
    }

    #[test]
    fn without_tools_or_inside_reasoning_dsml_is_plain_text() {
        let out = run(ThinkingMode::Chat, false, &["a", CALL]);
        assert_eq!(out.content, format!("a{CALL}"));
        assert!(out.tool_calls.is_empty());
        let out = run(ThinkingMode::Thinking, true, &[CALL, "</think>done"]);
        assert_eq!(
            (out.reasoning.as_str(), out.content.as_str()),
            (CALL, "done")
        );
        assert_eq!(out.finish, FinishReason::Stop);
    }

    #[test]
    fn length_stop_inside_reasoning_keeps_the_reasoning() {
        let mut p = parser(ThinkingMode::Thinking);
        p.feed("thinking </thi");
        let (events, out) = p.finish(StopCause::Length);
        assert_eq!(events, vec![OutputEvent::ReasoningDelta("</thi".into())]);
        assert_eq!(
            (out.reasoning.as_str(), out.finish),
            ("thinking </thi", FinishReason::Length)
        );
    }

    #[test]
    fn content_keeps_whitespace_except_the_canonical_separator() {
        let out = run(ThinkingMode::Chat, true, &["a \n\n\n", &CALL[2..]]);
        assert_eq!(out.content, "a \n");
        let out = run(ThinkingMode::Chat, true, &["a\n\n\n"]);
        assert_eq!(out.content, "a\n\n\n");
    }

    #[test]
    fn reports_dsml_structure_for_greedy_forcing() {
        let mut p = parser(ThinkingMode::Chat);
        let steps: [(&str, DsmlState); 9] = [
            ("Hello", DsmlState::Outside),
            ("\n\n<｜DSML｜", DsmlState::Structural),
            (
                "tool_calls>\n<｜DSML｜invoke name=\"f\">\n",
                DsmlState::Structural,
            ),
            (
                "<｜DSML｜parameter name=\"s\" string=\"true\">abc",
                DsmlState::StringBody,
            ),
            ("</", DsmlState::Structural),
            (
                "｜DSML｜parameter>\n<｜DSML｜parameter name=\"j\" string=\"false\">{\"k\": ",
                DsmlState::Structural,
            ),
            ("\"v", DsmlState::JsonString),
            ("\"}", DsmlState::Structural),
            (
                "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
                DsmlState::Outside,
            ),
        ];
        for (piece, want) in steps {
            p.feed(piece);
            assert_eq!(p.dsml_state(), want, "after {piece:?}");
            assert_eq!(p.in_dsml_structure(), want == DsmlState::Structural);
        }
        assert!(p.is_done());
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-zA-Z0-9 é日😀\"\\\\\n\t<>/&{}\\[\\]:,=]{0,12}".prop_map(Value::String),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-zé_]{1,5}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
            ]
        })
    }

    fn tool_call() -> impl Strategy<Value = ToolCall> {
        (
            "[a-zA-Z_][a-zA-Z0-9_.-]{0,10}",
            prop::collection::vec(("[a-zA-Z_ü][a-zA-Z0-9_]{0,6}", json_value()), 0..4),
        )
            .prop_map(|(name, kv)| ToolCall {
                id: None,
                name,
                arguments: kv.into_iter().collect(),
            })
    }

    fn dsml_soup() -> impl Strategy<Value = String> {
        let atoms = prop_oneof![
            Just(TOOL_CALLS_START.to_string()),
            Just(TOOL_CALLS_END.to_string()),
            Just(INVOKE_START.to_string()),
            Just(INVOKE_END.to_string()),
            Just(PARAMETER_START.to_string()),
            Just(PARAMETER_END.to_string()),
            Just(THINK_END.to_string()),
            Just(" name=\"n\"".to_string()),
            Just(" string=\"false\"".to_string()),
            "[a-z\"> \n<{}😀｜/]{0,4}",
        ];
        prop::collection::vec(atoms, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        #[test]
        fn parse_of_rendered_calls_gives_the_calls_back_however_chunked(
            calls in prop::collection::vec(tool_call(), 1..4),
            content in "[a-z 😀\n<]{0,10}",
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let text = format!("{content}{}", render_tool_calls(&calls));
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
            bounds.push(0);
            bounds.push(text.len());
            bounds.sort_unstable();
            let bounds: Vec<usize> = bounds.into_iter().filter(|&b| text.is_char_boundary(b)).collect();
            let pieces: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            let out = run(ThinkingMode::Chat, true, &pieces);
            prop_assert_eq!(out.finish, FinishReason::ToolCalls);
            prop_assert_eq!(out.content, content);
            prop_assert_eq!(out.tool_calls.len(), calls.len());
            for (got, want) in out.tool_calls.iter().zip(&calls) {
                prop_assert_eq!(&got.name, &want.name);
                prop_assert_eq!(&got.arguments, &to_python_json(&Value::Object(want.arguments.clone())));
            }
        }

        #[test]
        fn never_panics_and_events_always_add_up_on_arbitrary_text(
            text in dsml_soup(),
            thinking in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
            bounds.extend([0, text.len()]);
            bounds.sort_unstable();
            bounds.retain(|&b| text.is_char_boundary(b));
            let pieces: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            let mode = if thinking { ThinkingMode::Thinking } else { ThinkingMode::Chat };
            let out = run(mode, true, &pieces);
            if matches!(out.finish, FinishReason::Error(_) | FinishReason::ToolCalls) {
                prop_assert!(!out.content.contains(TOOL_CALLS_START));
            }
        }
    }
}
