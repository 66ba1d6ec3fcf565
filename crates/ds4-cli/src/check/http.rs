//! The HTTP side of `ds4 check`: one blocking request at a time over plain HTTP (ureq, no TLS),
//! the key in the headers the clients send it in, and an SSE frame splitter. Every failure is a
//! `String` a person reads in the table; nothing here panics on what the server sends.

use std::time::Duration;

use serde_json::Value;

/// A reply: status and body text.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) text: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Result<Value, String> {
        serde_json::from_str(&self.text).map_err(|e| {
            format!(
                "HTTP {}: body is not JSON ({e}): {}",
                self.status,
                short(&self.text)
            )
        })
    }

    /// The message of an error body (OpenAI and Anthropic both nest it in `error`), or the text.
    pub(crate) fn error_message(&self) -> String {
        serde_json::from_str::<Value>(&self.text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| short(&self.text))
    }

    pub(crate) fn expect_ok(&self) -> Result<(), String> {
        if self.status == 200 {
            Ok(())
        } else {
            Err(format!("HTTP {}: {}", self.status, self.error_message()))
        }
    }
}

/// At most 160 characters of `s`, trimmed, for a table cell.
pub(crate) fn short(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Which key a request carries, in which header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Key {
    /// The given key (if any) as `Authorization: Bearer` and `x-api-key`.
    Given,
    /// The given key as `Authorization: Bearer` only (OpenAI SDKs, Codex, opencode, Pi,
    /// Claude Code with `ANTHROPIC_AUTH_TOKEN`).
    BearerOnly,
    /// The given key as `x-api-key` only (Anthropic SDKs, Claude Code with `ANTHROPIC_API_KEY`).
    XApiKeyOnly,
    /// No key.
    None,
    /// A key that is not the given one, in both headers.
    Wrong,
}

pub(crate) struct Client {
    base: String,
    key: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client of `base` (`http://HOST:PORT`, no trailing slash).
    pub(crate) fn new(base: String, key: Option<String>, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Client { base, key, agent }
    }

    pub(crate) fn has_key(&self) -> bool {
        self.key.is_some()
    }

    fn headers(&self, key: Key) -> (Option<String>, Option<String>) {
        let wrong = || format!("{}-wrong", self.key.as_deref().unwrap_or("ds4-check"));
        match key {
            Key::Given => (self.key.clone(), self.key.clone()),
            Key::BearerOnly => (self.key.clone(), None),
            Key::XApiKeyOnly => (None, self.key.clone()),
            Key::None => (None, None),
            Key::Wrong => (Some(wrong()), Some(wrong())),
        }
    }

    /// `GET path` when `body` is `None`, else `POST path` with the JSON body.
    pub(crate) fn request(
        &self,
        path: &str,
        body: Option<&Value>,
        key: Key,
    ) -> Result<Reply, String> {
        let url = format!("{}{path}", self.base);
        let (bearer, x_api_key) = self.headers(key);
        let method = if body.is_some() { "POST" } else { "GET" };
        let result = match body {
            None => {
                let mut req = self.agent.get(&url);
                if let Some(k) = &bearer {
                    req = req.header("authorization", format!("Bearer {k}"));
                }
                if let Some(k) = &x_api_key {
                    req = req.header("x-api-key", k);
                }
                req.call()
            }
            Some(body) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("content-type", "application/json");
                if let Some(k) = &bearer {
                    req = req.header("authorization", format!("Bearer {k}"));
                }
                if let Some(k) = &x_api_key {
                    req = req.header("x-api-key", k);
                }
                if path.starts_with("/v1/messages") {
                    req = req.header("anthropic-version", "2023-06-01");
                }
                req.send(body.to_string())
            }
        };
        let mut resp = result.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        Ok(Reply { status, text })
    }

    /// `POST path` with the given key.
    pub(crate) fn post(&self, path: &str, body: &Value) -> Result<Reply, String> {
        self.request(path, Some(body), Key::Given)
    }
}

/// SSE frames `(event name, data)` of a whole stream; comments (`: prefill`) skipped, `data:`
/// lines of one frame joined as the SSE spec joins them (with `\n`).
pub(crate) fn sse_frames(text: &str) -> Vec<(Option<String>, String)> {
    let mut frames = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let mut event = None;
        let mut data: Option<String> = None;
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = Some(e.trim().to_string());
            } else if let Some(d) = line.strip_prefix("data:") {
                let d = d.strip_prefix(' ').unwrap_or(d);
                match &mut data {
                    Some(buf) => {
                        buf.push('\n');
                        buf.push_str(d);
                    }
                    None => data = Some(d.to_string()),
                }
            }
        }
        if event.is_some() || data.is_some() {
            frames.push((event, data.unwrap_or_default()));
        }
    }
    frames
}

/// The JSON of one SSE `data:` payload.
pub(crate) fn frame_json(data: &str) -> Result<Value, String> {
    serde_json::from_str(data).map_err(|e| format!("SSE data is not JSON ({e}): {}", short(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sse_frames_and_skips_comments() {
        let frames =
            sse_frames(": prefill\n\nevent: message_start\ndata: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(
            frames,
            vec![
                (Some("message_start".into()), "{\"a\":1}".into()),
                (None, "[DONE]".into())
            ]
        );
    }

    #[test]
    fn joins_multi_line_sse_data_and_accepts_crlf() {
        let frames = sse_frames("event: x\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n");
        assert_eq!(frames, vec![(Some("x".into()), "{\"a\":\n1}".into())]);
        assert_eq!(
            frame_json(&frames[0].1).ok(),
            Some(serde_json::json!({"a": 1}))
        );
    }

    #[test]
    fn shortens_long_cells_on_a_char_boundary() {
        let s = "é".repeat(200);
        let cut = short(&s);
        assert_eq!(cut.chars().count(), 161);
        assert!(cut.ends_with('…'));
    }
}
