//! Chat turns of the `ds4` command line (spec/serving.md §6.1, §2.1, §3.1): the token transcript
//! of a conversation, the thinking modes and their context gate, streaming a reply to the
//! terminal (reasoning, then content, DSML tool calls summarised, never raw) and the `ds4:`
//! timing line on stderr.
//!
//! The CLI builds prompt tokens piece by piece like ds4's `encode_chat_prompt`: special tokens by
//! id, the system and user texts with plain BPE, so special-token text typed by the user stays
//! text. For ordinary text this is exactly the official template (`chat::encode_messages`)
//! tokenized with special recognition; the tests check that.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;
use ds4::chat::render::{BOS, REASONING_EFFORT_MAX, THINK_START};
use ds4::chat::request::THINK_MAX_MIN_CONTEXT;
use ds4::chat::{OutputEvent, OutputParser, StopCause, ThinkingMode};
use ds4::engine::{Control, Engine, FinishCause, GenStats};
use ds4::sample::SamplerParams;
use ds4::tokenizer::Tokenizer;

/// The system prompt `ds4` uses unless `-sys/--system` says otherwise.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant";

/// The thinking level a user picked (`--nothink`, `--think`, `--think-max`; §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Think {
    /// `--nothink`: the assistant prefix ends in `</think>`.
    None,
    /// `--think` (the default): the assistant prefix ends in `<think>`.
    High,
    /// `--think-max`: thinking plus the Reasoning Effort prefix after BOS.
    Max,
}

impl Think {
    /// The level the context allows: Think Max needs a context of at least 393216 tokens and
    /// falls back to `High` below it (§2.1).
    pub fn gated(self, ctx_tokens: usize) -> Think {
        if self == Think::Max && ctx_tokens < THINK_MAX_MIN_CONTEXT {
            Think::High
        } else {
            self
        }
    }

    /// The warning `ds4` prints when Think Max is downgraded, if it is.
    pub fn gate_warning(self, ctx_tokens: usize) -> Option<String> {
        (self.gated(ctx_tokens) != self).then(|| {
            format!(
                "ds4: warning: --think-max needs a context of at least {THINK_MAX_MIN_CONTEXT} \
                 tokens (have {ctx_tokens}); using normal thinking"
            )
        })
    }

    /// How the assistant turn opens.
    pub fn mode(self) -> ThinkingMode {
        match self {
            Think::None => ThinkingMode::Chat,
            Think::High | Think::Max => ThinkingMode::Thinking,
        }
    }
}

/// What one reply may do: system prompt, thinking level (before the context gate), output
/// limit and sampling knobs.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// System text; empty means no system prompt.
    pub system: String,
    /// Requested thinking level.
    pub think: Think,
    /// Output limit per reply (`-n`), further limited by the free context.
    pub max_tokens: usize,
    /// Sampling knobs (`--temp --top-p --min-p --seed`).
    pub sampler: SamplerParams,
}

/// The exact token transcript of a CLI conversation (§6.1): the head (BOS, the Think Max prefix
/// when on, the system text) is rebuilt per turn; the turns after it are kept as sampled,
/// reasoning included, each closed by EOS.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    system: String,
    turns: Vec<u32>,
}

impl Transcript {
    /// An empty conversation with `system` as the system text ("" for none).
    pub fn new(system: impl Into<String>) -> Self {
        Transcript {
            system: system.into(),
            turns: Vec::new(),
        }
    }

    /// Forgets every turn (the system text stays).
    pub fn clear(&mut self) {
        self.turns.clear();
    }

    /// Tokens of the earlier turns.
    pub fn turns(&self) -> &[u32] {
        &self.turns
    }

    /// BOS, then the Think Max prefix (when `think` is `Max`) and the system text as one BPE
    /// span, as the official template renders them next to each other.
    pub fn head(&self, tok: &Tokenizer, think: Think) -> Vec<u32> {
        let mut text = String::new();
        if think == Think::Max {
            text.push_str(REASONING_EFFORT_MAX);
        }
        text.push_str(&self.system);
        let mut out = vec![tok.bos()];
        out.extend(tok.encode(&text, false));
        out
    }

    /// The prompt for the next reply: head, earlier turns, then
    /// `<｜User｜>TEXT<｜Assistant｜>` and `<think>` or `</think>`.
    pub fn prompt(&self, tok: &Tokenizer, user_text: &str, think: Think) -> Vec<u32> {
        let mut out = self.head(tok, think);
        out.extend_from_slice(&self.turns);
        out.push(tok.user());
        out.extend(tok.encode(user_text, false));
        out.push(tok.assistant());
        out.push(match think.mode() {
            ThinkingMode::Thinking => tok.think_open(),
            ThinkingMode::Chat => tok.think_close(),
        });
        out
    }

    /// Keeps what the session now holds after the head (the prompt's new turn and the sampled
    /// reply) as the transcript, closing the reply with EOS when it did not end with one.
    pub fn record(&mut self, tok: &Tokenizer, think: Think, prompt: &[u32], session: &[u32]) {
        let head = self.head(tok, think).len();
        let held = if session.starts_with(prompt) {
            session
        } else {
            prompt
        };
        self.turns = held.get(head..).unwrap_or_default().to_vec();
        if self.turns.last() != Some(&tok.eos()) {
            self.turns.push(tok.eos());
        }
    }
}

/// Whether `text` is an already-rendered chat (it starts with BOS) to tokenize as written.
pub fn is_rendered(text: &str) -> bool {
    text.starts_with(BOS)
}

/// How a rendered prompt opens the assistant turn: thinking when it ends in `<think>`.
pub fn rendered_mode(text: &str) -> ThinkingMode {
    if text.ends_with(THINK_START) {
        ThinkingMode::Thinking
    } else {
        ThinkingMode::Chat
    }
}

/// How reasoning is set apart from content on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A terminal: reasoning dimmed, a blank line before the content.
    Terminal,
    /// A pipe or file: reasoning, then a `---` line, then the content.
    Plain,
}

impl Style {
    /// `Terminal` when stdout is one.
    pub fn for_stdout() -> Style {
        if std::io::stdout().is_terminal() {
            Style::Terminal
        } else {
            Style::Plain
        }
    }

    fn reasoning_start(self) -> &'static str {
        match self {
            Style::Terminal => "\x1b[2m",
            Style::Plain => "",
        }
    }

    fn reasoning_end(self) -> &'static str {
        match self {
            Style::Terminal => "\x1b[0m\n\n",
            Style::Plain => "\n\n---\n\n",
        }
    }
}

/// Streams one reply to `out` through the output parser.
pub struct ReplyPrinter<W: Write> {
    parser: OutputParser,
    out: W,
    style: Style,
    in_reasoning: bool,
    last_char: Option<char>,
    error: Option<std::io::Error>,
}

impl<W: Write> ReplyPrinter<W> {
    /// A printer for a reply that opens in `mode`. DSML is recognised so tool-call markup is
    /// summarised rather than printed raw.
    pub fn new(out: W, mode: ThinkingMode, style: Style) -> Self {
        ReplyPrinter {
            parser: OutputParser::new(mode, true).with_call_ids(|i| format!("call_{i}")),
            out,
            style,
            in_reasoning: false,
            last_char: None,
            error: None,
        }
    }

    /// Prints what `piece` completes and says how generation should go on.
    pub fn piece(&mut self, piece: &str) -> Control {
        let events = self.parser.feed(piece);
        self.print(events);
        if self.error.is_some() || self.parser.is_done() {
            Control::Stop
        } else if self.parser.in_dsml_structure() {
            Control::ContinueGreedy
        } else {
            Control::Continue
        }
    }

    /// Flushes held text, ends the last line, and reports a write error if one happened.
    pub fn finish(mut self, cause: StopCause) -> std::io::Result<()> {
        let parser = std::mem::replace(
            &mut self.parser,
            OutputParser::new(ThinkingMode::Chat, false),
        );
        let (events, parsed) = parser.finish(cause);
        self.print(events);
        let open_line = self.last_char.is_some_and(|c| c != '\n');
        if self.in_reasoning && self.style == Style::Terminal {
            self.write("\x1b[0m");
        }
        if open_line {
            self.write("\n");
        }
        if let ds4::chat::FinishReason::Error(e) = parsed.finish {
            eprintln!("ds4: {e}");
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => self.out.flush(),
        }
    }

    fn print(&mut self, events: Vec<OutputEvent>) {
        for ev in events {
            match ev {
                OutputEvent::ReasoningDelta(t) => {
                    if !self.in_reasoning {
                        self.in_reasoning = true;
                        self.write(self.style.reasoning_start());
                    }
                    self.write(&t);
                }
                OutputEvent::ContentDelta(t) => {
                    self.end_reasoning();
                    self.write(&t);
                }
                OutputEvent::ToolCallStart { name, .. } => {
                    self.end_reasoning();
                    self.write(&format!("\n[tool call {name}] "));
                }
                OutputEvent::ToolCallArgumentsDelta { delta, .. } => self.write(&delta),
                OutputEvent::ToolCallEnd { .. } => self.write("\n"),
            }
        }
        if self.error.is_none() {
            if let Err(e) = self.out.flush() {
                self.error = Some(e);
            }
        }
    }

    fn end_reasoning(&mut self) {
        if self.in_reasoning {
            self.in_reasoning = false;
            self.write(self.style.reasoning_end());
        }
    }

    fn write(&mut self, s: &str) {
        if s.is_empty() || self.error.is_some() {
            return;
        }
        match self.out.write_all(s.as_bytes()) {
            Ok(()) => self.last_char = s.chars().last().or(self.last_char),
            Err(e) => self.error = Some(e),
        }
    }
}

/// The `ds4:` stderr line after a reply: prefilled and generated tokens with their speeds.
pub fn timing_line(stats: &GenStats) -> String {
    let prefilled = stats.prompt_tokens.saturating_sub(stats.cached_tokens);
    let rate = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let mut line = format!(
        "ds4: prefill {prefilled} tok, {:.2} t/s, gen {} tok, {:.2} t/s",
        rate(prefilled, stats.prefill_secs),
        stats.completion_tokens,
        rate(stats.completion_tokens, stats.decode_secs),
    );
    if stats.cached_tokens > 0 {
        line.push_str(&format!(" ({} prompt tokens reused)", stats.cached_tokens));
    }
    line
}

/// Generates one reply to `prompt` and streams it to stdout; `interrupt` (Ctrl+C) stops it.
/// The output limit is `max_tokens` capped by the context left after the prompt.
pub fn reply(
    engine: &mut Engine,
    prompt: &[u32],
    mode: ThinkingMode,
    opts: &ChatOptions,
    interrupt: &AtomicBool,
) -> anyhow::Result<GenStats> {
    let free = engine.ctx().saturating_sub(prompt.len());
    if free == 0 {
        bail!(
            "the prompt of {} tokens fills the context of {} tokens (use /ctx N or -c N)",
            prompt.len(),
            engine.ctx()
        );
    }
    let max_tokens = opts.max_tokens.min(free);
    let mut printer = ReplyPrinter::new(std::io::stdout().lock(), mode, Style::for_stdout());
    let stats = engine.generate(prompt, max_tokens, opts.sampler, |piece| {
        let ctl = printer.piece(&piece.text);
        if interrupt.load(Ordering::Relaxed) {
            Control::Stop
        } else {
            ctl
        }
    })?;
    let cause = match stats.finish {
        FinishCause::Eos | FinishCause::Stopped => StopCause::Eos,
        FinishCause::Length => StopCause::Length,
    };
    printer.finish(cause)?;
    eprintln!("{}", timing_line(&stats));
    Ok(stats)
}

/// One shot (§6.1): a rendered prompt (starting with BOS) is tokenized as written with special
/// recognition; anything else becomes `[system] user` in the chosen thinking mode.
pub fn one_shot(engine: &mut Engine, opts: &ChatOptions, text: &str) -> anyhow::Result<()> {
    let (prompt, mode) = if is_rendered(text) {
        (engine.tokenizer.encode(text, true), rendered_mode(text))
    } else {
        if let Some(w) = opts.think.gate_warning(engine.ctx()) {
            eprintln!("{w}");
        }
        let think = opts.think.gated(engine.ctx());
        let transcript = Transcript::new(opts.system.clone());
        (
            transcript.prompt(&engine.tokenizer, text, think),
            think.mode(),
        )
    };
    reply(engine, &prompt, mode, opts, &AtomicBool::new(false))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn think_max_is_downgraded_below_384k_context() {
        assert_eq!(Think::Max.gated(32768), Think::High);
        assert!(Think::Max.gate_warning(32768).is_some());
        assert_eq!(Think::Max.gated(393_216), Think::Max);
        assert!(Think::Max.gate_warning(393_216).is_none());
        assert_eq!(Think::None.gated(10), Think::None);
    }

    #[test]
    fn rendered_prompts_are_recognised_by_bos() {
        assert!(is_rendered("<｜begin▁of▁sentence｜><｜User｜>hi"));
        assert!(!is_rendered("hi <｜begin▁of▁sentence｜>"));
        assert_eq!(
            rendered_mode("x<｜Assistant｜><think>"),
            ThinkingMode::Thinking
        );
        assert_eq!(
            rendered_mode("x<｜Assistant｜></think>"),
            ThinkingMode::Chat
        );
    }

    #[test]
    fn plain_printer_separates_reasoning_from_content() {
        let mut buf = Vec::new();
        let mut p = ReplyPrinter::new(&mut buf, ThinkingMode::Thinking, Style::Plain);
        for piece in ["let me", " think", "</think>", "Hello", "!"] {
            assert_eq!(p.piece(piece), Control::Continue);
        }
        p.finish(StopCause::Eos).expect("write to Vec");
        assert_eq!(
            String::from_utf8(buf).expect("utf-8"),
            "let me think\n\n---\n\nHello!\n"
        );
    }

    #[test]
    fn printer_summarises_tool_calls_and_stops_after_the_block() {
        let mut buf = Vec::new();
        let mut p = ReplyPrinter::new(&mut buf, ThinkingMode::Chat, Style::Plain);
        let text = "Sure\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter \
                    name=\"x\" string=\"true\">1</｜DSML｜parameter>\n</｜DSML｜invoke>\n\
                    </｜DSML｜tool_calls>";
        let mut last = Control::Continue;
        for c in text.chars() {
            last = p.piece(&c.to_string());
        }
        assert_eq!(last, Control::Stop);
        p.finish(StopCause::Eos).expect("write to Vec");
        let out = String::from_utf8(buf).expect("utf-8");
        assert!(!out.contains("DSML"), "{out:?}");
        assert!(out.contains("[tool call f] {\"x\": \"1\"}"), "{out:?}");
    }
}
