//! Request validation to the official APIs' rules (OpenAI Chat Completions, Completions and
//! Responses; Anthropic Messages), run on the parsed body before anything is rendered. Each
//! check answers a 400 in the protocol's own error shape (the handler sets it) naming the
//! field. Where the official API accepts a field that this server cannot honour (`n` > 1,
//! `logprobs`, `echo`, `best_of`, `suffix`, `logit_bias`), the answer is a 400 that says so,
//! never a silent 200.
//!
//! Kept apart from the protocol files on purpose: those map a valid body onto the chat
//! template; this says whether a body is valid. Differences from ds4 (spec §4.5, which
//! clamps negative limits to 0 and ignores `n`/`logprobs`) follow the official APIs.

use serde_json::{Map, Value};

use crate::error::ApiError;

type Obj = Map<String, Value>;

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message).param(field)
}

/// An integer field that must be ≥ `min` when present (null counts as absent).
fn int_at_least(obj: &Obj, field: &str, min: i64) -> Result<Option<i64>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX));
            match v {
                Some(v) if v >= min => Ok(Some(v)),
                Some(v) => Err(bad(
                    field,
                    format!(
                        "invalid `{field}`: integer below minimum value; expected a value \
                         >= {min}, but got {v}"
                    ),
                )),
                None => Err(bad(field, format!("field `{field}` must be an integer"))),
            }
        }
        Some(_) => Err(bad(field, format!("field `{field}` must be an integer"))),
    }
}

/// A number field in `[lo, hi]` when present.
fn number_in(obj: &Obj, field: &str, lo: f64, hi: f64) -> Result<(), ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (lo..=hi).contains(&v) => Ok(()),
            _ => Err(bad(
                field,
                format!("invalid `{field}`: {n} is outside the allowed range [{lo}, {hi}]"),
            )),
        },
        Some(_) => Err(bad(field, format!("field `{field}` must be a number"))),
    }
}

fn unsupported(field: &str, why: &str) -> ApiError {
    bad(
        field,
        format!("`{field}` is not supported by this server: {why}"),
    )
}

/// `n` / `best_of`: absent, null or 1 (one choice per request).
fn single_choice(obj: &Obj, field: &str) -> Result<(), ApiError> {
    match int_at_least(obj, field, 1)? {
        Some(n) if n > 1 => Err(unsupported(
            field,
            "it generates one choice per request; send n requests instead",
        )),
        _ => Ok(()),
    }
}

/// A field that must be absent, null or `false`.
fn off(obj: &Obj, field: &str, why: &str) -> Result<(), ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
        Some(Value::Bool(true)) => Err(unsupported(field, why)),
        Some(_) => Err(bad(field, format!("field `{field}` must be a boolean"))),
    }
}

/// A field that must be absent or null (any value asks for something not implemented).
fn absent(obj: &Obj, field: &str, why: &str) -> Result<(), ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(unsupported(field, why)),
    }
}

const NO_LOGPROBS: &str = "token log probabilities are not computed";

/// `logit_bias`: absent, null or an empty object.
fn no_logit_bias(obj: &Obj) -> Result<(), ApiError> {
    match obj.get("logit_bias") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(Value::Object(_)) => Err(unsupported(
            "logit_bias",
            "the sampler does not take per-token biases",
        )),
        Some(_) => Err(bad("logit_bias", "field `logit_bias` must be an object")),
    }
}

/// A required, non-empty array.
fn non_empty_array(obj: &Obj, field: &str) -> Result<(), ApiError> {
    match obj.get(field) {
        Some(Value::Array(items)) if items.is_empty() => Err(bad(
            field,
            format!("invalid `{field}`: empty array; expected an array with minimum length 1"),
        )),
        // Missing or mistyped: the protocol mapper says which.
        _ => Ok(()),
    }
}

/// The name of a tool: a non-empty string at `path`.
fn tool_name<'a>(v: Option<&'a Value>, path: &str) -> Result<&'a str, ApiError> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(bad(path, format!("field `{path}` must not be empty"))),
        None | Some(Value::Null) => Err(bad(path, format!("missing field `{path}`"))),
        Some(_) => Err(bad(path, format!("field `{path}` must be a string"))),
    }
}

/// The tool names of an OpenAI chat `tools` array (`{"type":"function","function":{name}}`).
fn chat_tool_names(obj: &Obj) -> Result<Vec<&str>, ApiError> {
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(t)) => t,
        // The mapper reports the type error.
        Some(_) => return Ok(Vec::new()),
    };
    let mut names = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        match t.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(ty)) if ty == "function" => {}
            Some(other) => {
                return Err(bad(
                    &format!("tools[{i}].type"),
                    format!(
                        "invalid `tools[{i}].type`: {other}; only `function` tools are supported"
                    ),
                ))
            }
        }
        let Some(f) = t.get("function") else {
            return Err(bad(
                &format!("tools[{i}].function"),
                format!("missing field `tools[{i}].function`"),
            ));
        };
        names.push(tool_name(
            f.get("name"),
            &format!("tools[{i}].function.name"),
        )?);
        if let Some(p) = f.get("parameters").filter(|p| !p.is_null()) {
            if !p.is_object() {
                return Err(bad(
                    &format!("tools[{i}].function.parameters"),
                    format!("field `tools[{i}].function.parameters` must be a JSON Schema object"),
                ));
            }
        }
    }
    Ok(names)
}

fn unknown_tool(field: &str, name: &str) -> ApiError {
    bad(
        field,
        format!("invalid `{field}`: tool `{name}` is not one of the request's `tools`"),
    )
}

/// OpenAI chat `tool_choice`: `none`, `auto`, `required`, or a function that is in `tools`.
/// (Forcing is not implemented: `required` and a named function act as `auto`, as in ds4.)
fn chat_tool_choice(obj: &Obj, names: &[&str]) -> Result<(), ApiError> {
    let field = "tool_choice";
    match obj.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if matches!(s.as_str(), "none" | "auto" | "required") => Ok(()),
        Some(Value::String(s)) => Err(bad(
            field,
            format!(
                "invalid `tool_choice` `{s}`: expected `none`, `auto`, `required` or a function"
            ),
        )),
        Some(Value::Object(c)) => match c.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = tool_name(
                    c.get("function").and_then(|f| f.get("name")),
                    "tool_choice.function.name",
                )?;
                if names.contains(&name) {
                    Ok(())
                } else {
                    Err(unknown_tool("tool_choice.function.name", name))
                }
            }
            Some("allowed_tools") => {
                let tools = c
                    .get("allowed_tools")
                    .and_then(|a| a.get("tools"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        bad(
                            "tool_choice.allowed_tools.tools",
                            "field `tool_choice.allowed_tools.tools` must be an array",
                        )
                    })?;
                for (i, t) in tools.iter().enumerate() {
                    let path = format!("tool_choice.allowed_tools.tools[{i}].function.name");
                    let name = tool_name(t.get("function").and_then(|f| f.get("name")), &path)?;
                    if !names.contains(&name) {
                        return Err(unknown_tool(&path, name));
                    }
                }
                Ok(())
            }
            _ => Err(bad(
                "tool_choice.type",
                "invalid `tool_choice.type`: expected `function` or `allowed_tools`",
            )),
        },
        Some(_) => Err(bad(
            field,
            "field `tool_choice` must be a string or an object",
        )),
    }
}

/// Penalties are accepted in range and have no effect (as DeepSeek's own API does for its
/// reasoning model); everything else that changes the output is honoured or refused.
fn openai_sampling(obj: &Obj) -> Result<(), ApiError> {
    number_in(obj, "temperature", 0.0, 2.0)?;
    number_in(obj, "top_p", 0.0, 1.0)?;
    number_in(obj, "presence_penalty", -2.0, 2.0)?;
    number_in(obj, "frequency_penalty", -2.0, 2.0)?;
    Ok(())
}

/// `POST /v1/chat/completions`.
pub fn chat(obj: &Obj) -> Result<(), ApiError> {
    non_empty_array(obj, "messages")?;
    int_at_least(obj, "max_tokens", 1)?;
    int_at_least(obj, "max_completion_tokens", 1)?;
    single_choice(obj, "n")?;
    off(obj, "logprobs", NO_LOGPROBS)?;
    absent(obj, "top_logprobs", NO_LOGPROBS)?;
    no_logit_bias(obj)?;
    openai_sampling(obj)?;
    let names = chat_tool_names(obj)?;
    chat_tool_choice(obj, &names)
}

/// `POST /v1/completions` (legacy: `max_tokens` may be 0).
pub fn completions(obj: &Obj) -> Result<(), ApiError> {
    int_at_least(obj, "max_tokens", 0)?;
    single_choice(obj, "n")?;
    single_choice(obj, "best_of")?;
    absent(obj, "logprobs", NO_LOGPROBS)?;
    off(
        obj,
        "echo",
        "the prompt is wrapped in the chat template and not echoed",
    )?;
    match obj.get("suffix") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(_) => {
            return Err(unsupported(
                "suffix",
                "fill-in-the-middle is not implemented",
            ))
        }
    }
    no_logit_bias(obj)?;
    openai_sampling(obj)
}

/// `POST /v1/responses`.
pub fn responses(obj: &Obj) -> Result<(), ApiError> {
    non_empty_array(obj, "input")?;
    // The official minimum is 16; any positive limit is accepted here.
    int_at_least(obj, "max_output_tokens", 1)?;
    int_at_least(obj, "max_tokens", 1)?;
    absent(obj, "top_logprobs", NO_LOGPROBS)?;
    if let Some(Value::Array(include)) = obj.get("include") {
        if include
            .iter()
            .any(|v| v.as_str() == Some("message.output_text.logprobs"))
        {
            return Err(unsupported("include", NO_LOGPROBS));
        }
    }
    number_in(obj, "temperature", 0.0, 2.0)?;
    number_in(obj, "top_p", 0.0, 1.0)?;
    if let Some(Value::Array(tools)) = obj.get("tools") {
        for (i, t) in tools.iter().enumerate() {
            if t.get("type").and_then(Value::as_str) == Some("function") {
                tool_name(t.get("name"), &format!("tools[{i}].name"))?;
            }
        }
    }
    Ok(())
}

/// The tool names of an Anthropic `tools` array.
fn anthropic_tool_names(obj: &Obj) -> Result<Vec<&str>, ApiError> {
    let Some(Value::Array(tools)) = obj.get("tools") else {
        return Ok(Vec::new());
    };
    let mut names = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        names.push(tool_name(t.get("name"), &format!("tools.{i}.name"))?);
        if let Some(s) = t.get("input_schema").filter(|s| !s.is_null()) {
            if !s.is_object() {
                return Err(bad(
                    &format!("tools.{i}.input_schema"),
                    format!("tools.{i}.input_schema: must be a JSON Schema object"),
                ));
            }
        }
    }
    Ok(names)
}

/// Anthropic `tool_choice`: `{type: auto|any|none}` or `{type: tool, name}` naming a tool.
fn anthropic_tool_choice(obj: &Obj, names: &[&str]) -> Result<(), ApiError> {
    let choice = match obj.get("tool_choice") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(c)) => c,
        Some(_) => return Err(bad("tool_choice", "tool_choice: must be an object")),
    };
    match choice.get("type").and_then(Value::as_str) {
        Some("auto" | "any" | "none") => Ok(()),
        Some("tool") => {
            let name = tool_name(choice.get("name"), "tool_choice.name")?;
            if names.contains(&name) {
                Ok(())
            } else {
                Err(unknown_tool("tool_choice.name", name))
            }
        }
        _ => Err(bad(
            "tool_choice.type",
            "tool_choice.type: expected `auto`, `any`, `tool` or `none`",
        )),
    }
}

fn anthropic_common(obj: &Obj) -> Result<(), ApiError> {
    if matches!(obj.get("messages"), Some(Value::Array(m)) if m.is_empty()) {
        return Err(bad(
            "messages",
            "messages: at least one message is required",
        ));
    }
    let names = anthropic_tool_names(obj)?;
    anthropic_tool_choice(obj, &names)
}

/// `POST /v1/messages`: `max_tokens` is required, as in the Anthropic API (ds4 falls back to
/// `--tokens`, which generates until the context is full).
pub fn anthropic(obj: &Obj) -> Result<(), ApiError> {
    if int_at_least(obj, "max_tokens", 1)?.is_none() {
        return Err(bad("max_tokens", "max_tokens: Field required"));
    }
    number_in(obj, "temperature", 0.0, 1.0)?;
    number_in(obj, "top_p", 0.0, 1.0)?;
    int_at_least(obj, "top_k", 0)?;
    anthropic_common(obj)
}

/// `POST /v1/messages/count_tokens`.
pub fn anthropic_count_tokens(obj: &Obj) -> Result<(), ApiError> {
    anthropic_common(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Obj {
        v.as_object().cloned().expect("object")
    }

    fn err(r: Result<(), ApiError>) -> String {
        r.expect_err("refused").message
    }

    #[test]
    fn integer_limits_take_the_minimum_and_the_type() {
        assert!(int_at_least(&obj(json!({"a": 3})), "a", 1).is_ok());
        assert!(int_at_least(&obj(json!({"a": null})), "a", 1).is_ok());
        let e = int_at_least(&obj(json!({"a": -5})), "a", 1).unwrap_err();
        assert!(e.message.contains(">= 1, but got -5"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("a"));
        assert!(int_at_least(&obj(json!({"a": 1.5})), "a", 1).is_err());
        assert!(int_at_least(&obj(json!({"a": "3"})), "a", 1).is_err());
        // Beyond i64: still an integer, and large.
        assert_eq!(
            int_at_least(&obj(json!({"a": u64::MAX})), "a", 1).unwrap(),
            Some(i64::MAX)
        );
    }

    #[test]
    fn chat_tool_choice_must_name_a_listed_function() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let named = |n: &str| json!({"type": "function", "function": {"name": n}});
        assert!(chat(&obj(json!({"tools": tools, "tool_choice": named("f")}))).is_ok());
        let e = err(chat(&obj(
            json!({"tools": tools, "tool_choice": named("g")}),
        )));
        assert!(e.contains("`g` is not one of"), "{e}");
        let e = err(chat(&obj(json!({"tool_choice": named("g")}))));
        assert!(e.contains("`g`"), "{e}");
        assert!(chat(&obj(json!({"tools": tools, "tool_choice": "required"}))).is_ok());
        assert!(err(chat(&obj(json!({"tool_choice": "sometimes"})))).contains("sometimes"));
    }

    #[test]
    fn anthropic_tool_choice_must_name_a_listed_tool() {
        let tools = json!([{"name": "f", "input_schema": {"type": "object"}}]);
        let base = |choice: Value| {
            obj(
                json!({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                "tools": tools, "tool_choice": choice}),
            )
        };
        assert!(anthropic(&base(json!({"type": "tool", "name": "f"}))).is_ok());
        assert!(anthropic(&base(json!({"type": "any"}))).is_ok());
        assert!(err(anthropic(&base(json!({"type": "tool", "name": "g"})))).contains("`g`"));
        assert!(err(anthropic(&base(json!({"type": "maybe"})))).contains("tool_choice.type"));
    }
}
