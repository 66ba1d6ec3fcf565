//! The `ds4` interactive REPL (spec/serving.md §6.1): a `ds4> ` prompt with line editing and
//! history, slash commands, and a multi-turn conversation kept as its exact token transcript so
//! each turn only prefills the new user message. Ctrl+C during a reply stops the reply; at the
//! prompt it clears the line; Ctrl+D exits. When stdin is not a terminal, lines are read plainly.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use ds4::engine::Engine;
use rustyline::error::ReadlineError;

use crate::chat_cli::{reply, ChatOptions, Think, Transcript};

const HELP: &str = "\
commands:
  /help          this list
  /think         thinking on (the default)
  /think-max     Think Max (needs a context of at least 393216 tokens)
  /nothink       thinking off
  /ctx N         set the context to N tokens (starts a new session)
  /read FILE     send the file's content as the next user message
  /quit, /exit   leave (Ctrl+D too)
Ctrl+C stops a reply; anything else is sent as a user message.";

/// One line typed at the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A user message.
    Say(String),
    /// Nothing to do (an empty line).
    Empty,
    /// `/help`.
    Help,
    /// `/think`, `/think-max`, `/nothink`.
    SetThink(Think),
    /// `/ctx N`.
    SetCtx(usize),
    /// `/read FILE`.
    Read(PathBuf),
    /// `/quit` or `/exit`.
    Quit,
    /// A slash command we do not know, or one with a bad argument: the message to show.
    Invalid(String),
}

/// Parses one prompt line. Only lines starting with `/` are commands.
pub fn parse_line(line: &str) -> Command {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Command::Empty;
    }
    let Some(cmd) = trimmed.strip_prefix('/') else {
        return Command::Say(line.to_string());
    };
    let (name, arg) = match cmd.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (cmd, ""),
    };
    match (name, arg) {
        ("help", _) => Command::Help,
        ("think", "") => Command::SetThink(Think::High),
        ("think-max", "") => Command::SetThink(Think::Max),
        ("nothink", "") => Command::SetThink(Think::None),
        ("quit" | "exit", _) => Command::Quit,
        ("ctx", n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => Command::SetCtx(n),
            _ => Command::Invalid(format!("/ctx needs a positive token count, got `{n}`")),
        },
        ("read", "") => Command::Invalid("/read needs a file name".to_string()),
        ("read", f) => Command::Read(PathBuf::from(f)),
        _ => Command::Invalid(format!("unknown command `/{name}` (try /help)")),
    }
}

/// Where prompt lines come from.
enum Lines {
    /// A terminal: rustyline with history.
    Editor(Box<rustyline::DefaultEditor>),
    /// A pipe or file.
    Plain(std::io::StdinLock<'static>),
}

impl Lines {
    fn open() -> anyhow::Result<Lines> {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            let editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
            Ok(Lines::Editor(Box::new(editor)))
        } else {
            Ok(Lines::Plain(stdin.lock()))
        }
    }

    /// The next line; `None` at end of input. Ctrl+C at the prompt gives an empty line.
    fn next(&mut self) -> anyhow::Result<Option<String>> {
        match self {
            Lines::Editor(ed) => match ed.readline("ds4> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        // History is a convenience; a failure to record it is not an error.
                        let _ = ed.add_history_entry(line.as_str());
                    }
                    Ok(Some(line))
                }
                Err(ReadlineError::Interrupted) => Ok(Some(String::new())),
                Err(ReadlineError::Eof) => Ok(None),
                Err(e) => Err(e).context("reading the prompt"),
            },
            Lines::Plain(stdin) => {
                let mut line = String::new();
                if stdin.read_line(&mut line).context("reading stdin")? == 0 {
                    return Ok(None);
                }
                let end = line.trim_end_matches(['\n', '\r']).len();
                line.truncate(end);
                Ok(Some(line))
            }
        }
    }
}

/// The REPL's state: the engine, the options and the conversation.
struct Repl {
    engine: Engine,
    opts: ChatOptions,
    transcript: Transcript,
    interrupt: Arc<AtomicBool>,
}

impl Repl {
    /// Sends one user message and streams the reply.
    fn say(&mut self, text: &str) -> anyhow::Result<()> {
        let think = self.opts.think.gated(self.engine.ctx());
        let prompt = self.transcript.prompt(&self.engine.tokenizer, text, think);
        self.interrupt.store(false, Ordering::Relaxed);
        reply(
            &mut self.engine,
            &prompt,
            think.mode(),
            &self.opts,
            &self.interrupt,
        )?;
        if self.interrupt.swap(false, Ordering::Relaxed) {
            eprintln!("ds4: stopped");
        }
        self.transcript.record(
            &self.engine.tokenizer,
            think,
            &prompt,
            self.engine.session_tokens(),
        );
        Ok(())
    }

    /// Runs one parsed line; `false` ends the REPL.
    fn run(&mut self, cmd: Command) -> bool {
        let result = match cmd {
            Command::Empty => Ok(()),
            Command::Quit => return false,
            Command::Help => {
                println!("{HELP}");
                Ok(())
            }
            Command::SetThink(t) => {
                self.opts.think = t;
                if let Some(w) = t.gate_warning(self.engine.ctx()) {
                    eprintln!("{w}");
                }
                Ok(())
            }
            Command::SetCtx(n) => {
                if let Err(e) = self.engine.set_ctx(n) {
                    eprintln!("ds4: {e:#}");
                }
                self.transcript.clear();
                eprintln!("ds4: context {n} tokens, new session");
                Ok(())
            }
            Command::Read(path) => std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))
                .and_then(|text| self.say(&text)),
            Command::Say(text) => self.say(&text),
            Command::Invalid(msg) => {
                eprintln!("ds4: {msg}");
                Ok(())
            }
        };
        if let Err(e) = result {
            eprintln!("ds4: error: {e:#}");
        }
        true
    }
}

/// Runs the REPL until `/quit`, `/exit` or end of input.
pub fn run_repl(engine: Engine, opts: ChatOptions) -> anyhow::Result<()> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl+C handler")?;
    if let Some(w) = opts.think.gate_warning(engine.ctx()) {
        eprintln!("{w}");
    }
    eprintln!(
        "ds4: context {} tokens; /help lists the commands",
        engine.ctx()
    );
    let mut repl = Repl {
        transcript: Transcript::new(opts.system.clone()),
        engine,
        opts,
        interrupt,
    };
    let mut lines = Lines::open()?;
    while let Some(line) = lines.next()? {
        if !repl.run(parse_line(&line)) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_messages() {
        assert_eq!(parse_line("  "), Command::Empty);
        assert_eq!(parse_line("hello"), Command::Say("hello".into()));
        assert_eq!(parse_line("/think"), Command::SetThink(Think::High));
        assert_eq!(parse_line("/think-max"), Command::SetThink(Think::Max));
        assert_eq!(parse_line("/nothink"), Command::SetThink(Think::None));
        assert_eq!(parse_line("/ctx 4096"), Command::SetCtx(4096));
        assert_eq!(parse_line("/read a b.txt"), Command::Read("a b.txt".into()));
        assert_eq!(parse_line("/quit"), Command::Quit);
        assert_eq!(parse_line("/exit"), Command::Quit);
        assert_eq!(parse_line("/help"), Command::Help);
    }

    #[test]
    fn rejects_bad_command_arguments() {
        assert!(matches!(parse_line("/ctx"), Command::Invalid(_)));
        assert!(matches!(parse_line("/ctx 0"), Command::Invalid(_)));
        assert!(matches!(parse_line("/ctx many"), Command::Invalid(_)));
        assert!(matches!(parse_line("/read"), Command::Invalid(_)));
        assert!(matches!(parse_line("/frobnicate"), Command::Invalid(_)));
    }
}
