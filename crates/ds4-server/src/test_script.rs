//! Test only: `--test-script FILE` (a `test-hooks` build) forces the output of requests whose
//! body carries no `ds4_test_output`, chosen by the rendered prompt. Real clients (Claude Code,
//! Codex, opencode, Pi) cannot add a field to their requests, so `tools/agents-check.sh` drives a
//! tool round trip through them with a script like
//!
//! ```json
//! [{"last_turn_contains": ["ds4check-42"], "output": "The command printed ds4check-42."},
//!  {"last_turn_contains": ["ds4-agents-check"], "output": "<｜DSML｜tool_calls>…"},
//!  {"output": "ok"}]
//! ```
//!
//! Rules are tried in order; the first whose every condition holds gives the output. The last
//! turn is the prompt text after its last `<｜User｜>` (tool results included). In thinking mode
//! an output without `</think>` gets one in front (an empty reasoning), so the rule text is what
//! the client sees. No rule matching: the model samples as usual.

use std::path::Path;

use serde::Deserialize;

/// One rule of a test script.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Every string must occur somewhere in the rendered prompt.
    #[serde(default)]
    pub prompt_contains: Vec<String>,
    /// Every string must occur in the last user turn.
    #[serde(default)]
    pub last_turn_contains: Vec<String>,
    /// No string may occur in the last user turn.
    #[serde(default)]
    pub last_turn_lacks: Vec<String>,
    /// The forced text (its tokens, then EOS).
    pub output: String,
    /// Caps the request's output limit (to force a length cut).
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

/// What a matching rule forces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forced {
    /// Text whose tokens replace sampling.
    pub output: String,
    /// Output limit cap.
    pub max_tokens: Option<usize>,
}

/// A loaded script.
#[derive(Debug, Clone, Default)]
pub struct TestScript {
    rules: Vec<Rule>,
}

/// Why a script did not load.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The file could not be read.
    #[error("reading test script {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a JSON array of rules.
    #[error("test script {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

impl TestScript {
    /// Loads a JSON array of rules.
    pub fn load(path: &Path) -> Result<Self, ScriptError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: shown.clone(),
            source,
        })?;
        let rules = serde_json::from_str(&text).map_err(|source| ScriptError::Parse {
            path: shown,
            source,
        })?;
        Ok(TestScript { rules })
    }

    /// A script of `rules`.
    pub fn new(rules: Vec<Rule>) -> Self {
        TestScript { rules }
    }

    /// The forced output for a rendered `prompt`, if a rule matches.
    pub fn output_for(&self, prompt: &str) -> Option<Forced> {
        let user = ds4::chat::render::USER;
        let last_turn = prompt.rfind(user).map_or("", |i| &prompt[i + user.len()..]);
        let rule = self.rules.iter().find(|r| {
            r.prompt_contains
                .iter()
                .all(|s| prompt.contains(s.as_str()))
                && r.last_turn_contains
                    .iter()
                    .all(|s| last_turn.contains(s.as_str()))
                && !r
                    .last_turn_lacks
                    .iter()
                    .any(|s| last_turn.contains(s.as_str()))
        })?;
        let think_end = ds4::chat::render::THINK_END;
        let output = if prompt.ends_with(ds4::chat::render::THINK_START)
            && !rule.output.contains(think_end)
        {
            format!("{think_end}{}", rule.output)
        } else {
            rule.output.clone()
        };
        Some(Forced {
            output,
            max_tokens: rule.max_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(last: &[&str], lacks: &[&str], output: &str) -> Rule {
        Rule {
            prompt_contains: Vec::new(),
            last_turn_contains: last.iter().map(|s| s.to_string()).collect(),
            last_turn_lacks: lacks.iter().map(|s| s.to_string()).collect(),
            output: output.into(),
            max_tokens: None,
        }
    }

    #[test]
    fn first_matching_rule_on_the_last_turn_wins() {
        let script = TestScript::new(vec![
            rule(&["RESULT"], &[], "done"),
            rule(&["task"], &["RESULT"], "call"),
            rule(&[], &[], "fallback"),
        ]);
        let out = |p: &str| script.output_for(p).map(|f| f.output);
        let chat = "<｜begin▁of▁sentence｜><｜User｜>task<｜Assistant｜></think>";
        assert_eq!(out(chat).as_deref(), Some("call"));
        let after_tool = "<｜begin▁of▁sentence｜><｜User｜>task<｜Assistant｜></think>x\
            <｜end▁of▁sentence｜><｜User｜><tool_result>RESULT</tool_result><｜Assistant｜></think>";
        assert_eq!(out(after_tool).as_deref(), Some("done"));
        let other = "<｜begin▁of▁sentence｜><｜User｜>title please<｜Assistant｜></think>";
        assert_eq!(out(other).as_deref(), Some("fallback"));
    }

    #[test]
    fn thinking_prompts_get_an_empty_reasoning_in_front() {
        let script = TestScript::new(vec![rule(&[], &[], "hi")]);
        let p = "<｜begin▁of▁sentence｜><｜User｜>x<｜Assistant｜><think>";
        assert_eq!(
            script.output_for(p).map(|f| f.output).as_deref(),
            Some("</think>hi")
        );
        assert_eq!(TestScript::default().output_for(p), None);
    }
}
