//! `ds4 check [URL]`: smoke-tests a running ds4-server before a team points its coding agents at
//! it, and prints a pass/fail table a person can read. It drives every protocol (OpenAI chat,
//! completions and Responses, Anthropic Messages), streaming and not, a tool call and its
//! result turn on each, the API key, the context size and a too-long prompt.
//!
//! What each row expects is the official APIs' behaviour, the same as `tools/agents-check.sh`
//! checks with the real clients: OpenAI `finish_reason` stop/length/tool_calls and
//! `code: "context_length_exceeded"`; Responses `status` completed/incomplete with
//! `incomplete_details.reason: "max_output_tokens"`; Anthropic `stop_reason`
//! end_turn/max_tokens/tool_use/stop_sequence and the `prompt is too long: N tokens > M maximum`
//! wording Claude Code compacts on. A tool call the model chooses not to make is not a failure
//! (a demo model with random weights never makes one); a malformed one is.
//!
//! Plain HTTP only (the server binds loopback); no Python, no SDKs.

mod http;
mod protocols;

use std::io::Write;
use std::time::Duration;

use http::{Client, Key};
use protocols::{
    check_chat, check_completions, check_messages, check_responses, check_too_long, Outcome,
};
pub use protocols::{TOOL_PROMPT, TOOL_RESULT};

/// Smallest context this check accepts for coding agents: Claude Code 2.1.332 opens with
/// ~12k prompt tokens (Codex 0.171.0 ~9k, opencode 1.18.33 ~7k, Pi 0.73.1 ~1.5k; measured by
/// tools/agents-check.sh) and conversations grow from there.
pub const AGENT_MIN_CTX: u64 = 32768;

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Server base URL (`http://HOST:PORT` or `HOST:PORT`, with or without a trailing `/v1`).
    pub url: String,
    /// API key to send (`Authorization: Bearer` and `x-api-key`), if the server wants one.
    pub api_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was checked.
    pub name: String,
    /// Whether it behaved as the API says.
    pub pass: bool,
    /// What happened.
    pub detail: String,
}

/// Every row that ran, and why the rest did not (nothing listening, the key refused).
#[derive(Debug, Clone)]
pub struct Report {
    /// The server checked (`http://HOST:PORT`).
    pub base: String,
    /// Rows in the order they ran.
    pub rows: Vec<Row>,
    /// Why the check stopped early, if it did.
    pub stopped: Option<String>,
}

impl Report {
    /// Whether every row ran and passed.
    pub fn all_pass(&self) -> bool {
        self.stopped.is_none() && self.rows.iter().all(|r| r.pass)
    }

    /// The row named `name`.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    fn push(&mut self, name: &str, outcome: Outcome) -> bool {
        let (pass, detail) = match outcome {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.rows.push(Row {
            name: name.into(),
            pass,
            detail,
        });
        pass
    }
}

/// The base URL of `url`: `http://` added when no scheme is given, `/v1` and `/` trimmed.
fn base_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix("/v1").unwrap_or(url);
    if url.starts_with("http://") {
        Ok(url.to_string())
    } else if url.contains("://") {
        anyhow::bail!(
            "{url}: ds4 check talks plain HTTP (http://HOST:PORT) to a server on this machine or \
             network; put a TLS proxy's backend address here instead"
        )
    } else {
        Ok(format!("http://{url}"))
    }
}

/// Runs every check against the server.
pub fn check(opts: &CheckOptions) -> anyhow::Result<Report> {
    let base = base_url(&opts.url)?;
    let c = Client::new(base.clone(), opts.api_key.clone(), opts.timeout);
    let mut report = Report {
        base,
        rows: Vec::new(),
        stopped: None,
    };
    let health = c.request("/health", None, Key::None).and_then(|r| {
        r.expect_ok()?;
        Ok("GET /health → 200".to_string())
    });
    if !report.push("health", health) {
        report.stopped =
            Some("nothing answers there: is ds4-server running on that address?".into());
        return Ok(report);
    }
    if !report.push("auth: the key is accepted", key_accepted(&c)) {
        report.stopped = Some("the other checks need a key the server accepts".into());
        return Ok(report);
    }
    if c.has_key() {
        report.push("auth: no key or a wrong key is refused", key_required(&c));
    }
    let ctx = match context_length(&c) {
        Ok((id, ctx)) => {
            report.push("context fits a coding agent", context_fits(&id, ctx));
            Some(ctx)
        }
        Err(e) => {
            report.push("context fits a coding agent", Err(e));
            None
        }
    };
    for (name, stream) in [("", false), (", streaming", true)] {
        report.push(&format!("chat{name}"), check_chat(&c, stream, false));
        let outcome = check_chat(&c, stream, true);
        report.push(&format!("chat{name}: tool call + result"), outcome);
    }
    for (name, stream) in [("completions", false), ("completions, streaming", true)] {
        report.push(name, check_completions(&c, stream));
    }
    for (name, stream) in [("", false), (", streaming", true)] {
        report.push(
            &format!("responses{name}"),
            check_responses(&c, stream, false),
        );
        let outcome = check_responses(&c, stream, true);
        report.push(&format!("responses{name}: tool call + result"), outcome);
    }
    for (name, stream) in [("", false), (", streaming", true)] {
        report.push(
            &format!("messages{name}"),
            check_messages(&c, stream, false),
        );
        let outcome = check_messages(&c, stream, true);
        report.push(&format!("messages{name}: tool call + result"), outcome);
    }
    for (name, path) in [
        ("chat", "/v1/chat/completions"),
        ("completions", "/v1/completions"),
        ("responses", "/v1/responses"),
        ("messages", "/v1/messages"),
    ] {
        let outcome = match ctx {
            Some(ctx) => check_too_long(&c, path, ctx),
            None => Err("not run: the context size is unknown".into()),
        };
        report.push(&format!("too-long prompt: {name}"), outcome);
    }
    Ok(report)
}

/// The key (or no key) is let through, in each header the clients send it in.
fn key_accepted(c: &Client) -> Outcome {
    let models = c.request("/v1/models", None, Key::BearerOnly)?;
    match (models.status, c.has_key()) {
        (200, false) => {
            return Ok("the server needs no key (anyone who reaches its address can use it)".into())
        }
        (200, true) => {}
        (401, true) => {
            return Err(format!(
                "the server refused the key: 401 {}; pass the key ds4-server was started \
                 with (--api-key KEY or DS4_API_KEY)",
                models.error_message()
            ))
        }
        (401, false) => {
            return Err(format!(
                "the server wants a key: pass --api-key KEY or set DS4_API_KEY (401 {})",
                models.error_message()
            ))
        }
        (status, _) => {
            return Err(format!(
                "GET /v1/models → HTTP {status}: {}",
                models.error_message()
            ))
        }
    }
    let body = serde_json::json!({"model": "deepseek-chat",
        "messages": [{"role": "user", "content": "Hello"}]});
    let count = c.request("/v1/messages/count_tokens", Some(&body), Key::XApiKeyOnly)?;
    if count.status != 200 {
        return Err(format!(
            "`Authorization: Bearer` is accepted, but `x-api-key` (Anthropic clients) is not: \
             POST /v1/messages/count_tokens → HTTP {}: {}",
            count.status,
            count.error_message()
        ));
    }
    Ok("200 with `Authorization: Bearer KEY` and with `x-api-key: KEY`".into())
}

/// Requests without the key or with a wrong one are refused with 401.
fn key_required(c: &Client) -> Outcome {
    for (what, key) in [("no key", Key::None), ("a wrong key", Key::Wrong)] {
        let r = c.request(
            "/v1/chat/completions",
            Some(&protocols::small_chat_body()),
            key,
        )?;
        if r.status != 401 {
            return Err(format!(
                "{what} → HTTP {} (expected 401): the server takes requests without your key; \
                 start it with --api-key KEY",
                r.status
            ));
        }
    }
    Ok("401 on /v1/chat/completions without the key and with a wrong one".into())
}

/// `(model id, context_length)` from `GET /v1/models`.
fn context_length(c: &Client) -> Result<(String, u64), String> {
    let r = c.request("/v1/models", None, Key::Given)?;
    r.expect_ok()?;
    let v = r.json()?;
    let model = &v["data"][0];
    let id = model["id"].as_str().unwrap_or("?").to_string();
    match model["context_length"].as_u64() {
        Some(ctx) => Ok((id, ctx)),
        None => Err(format!(
            "GET /v1/models gives no data[0].context_length: {}",
            http::short(&r.text)
        )),
    }
}

fn context_fits(id: &str, ctx: u64) -> Outcome {
    if ctx >= AGENT_MIN_CTX {
        Ok(format!("{id}: context {ctx} tokens"))
    } else {
        Err(format!(
            "{id}: context {ctx} tokens is below {AGENT_MIN_CTX}: coding agents open with up to \
             ~12k prompt tokens (Claude Code) and grow; restart ds4-server with -c 65536 or more"
        ))
    }
}

/// Prints the table; true when every row ran and passed.
pub fn print_table(report: &Report, out: &mut impl Write) -> std::io::Result<bool> {
    writeln!(out, "ds4 check {}", report.base)?;
    let width = report
        .rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0);
    for r in &report.rows {
        let mark = if r.pass { "PASS" } else { "FAIL" };
        writeln!(out, "  {mark}  {:<width$}  {}", r.name, r.detail)?;
    }
    let failed = report.rows.iter().filter(|r| !r.pass).count();
    let passed = report.rows.len() - failed;
    match &report.stopped {
        Some(why) => writeln!(out, "{passed} passed, {failed} failed; stopped: {why}")?,
        None => writeln!(out, "{passed} passed, {failed} failed")?,
    }
    Ok(report.all_pass())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_takes_host_port_and_trims_v1() {
        assert_eq!(
            base_url("127.0.0.1:8000").ok().as_deref(),
            Some("http://127.0.0.1:8000")
        );
        assert_eq!(
            base_url("http://localhost:8000/v1/").ok().as_deref(),
            Some("http://localhost:8000")
        );
        let err = base_url("https://example.com").expect_err("no TLS");
        assert!(format!("{err}").contains("plain HTTP"), "{err}");
    }

    #[test]
    fn table_names_each_failure_and_why_it_stopped() {
        let report = Report {
            base: "http://127.0.0.1:1".into(),
            rows: vec![
                Row {
                    name: "health".into(),
                    pass: true,
                    detail: "GET /health → 200".into(),
                },
                Row {
                    name: "auth: the key is accepted".into(),
                    pass: false,
                    detail: "the server refused the key".into(),
                },
            ],
            stopped: Some("the other checks need a key the server accepts".into()),
        };
        let mut out = Vec::new();
        assert!(!print_table(&report, &mut out).expect("write to a Vec"));
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "ds4 check http://127.0.0.1:1\n\
             \x20 PASS  health                     GET /health → 200\n\
             \x20 FAIL  auth: the key is accepted  the server refused the key\n\
             1 passed, 1 failed; stopped: the other checks need a key the server accepts\n"
        );
    }
}
