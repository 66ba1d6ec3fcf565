//! Responses tools (spec/serving.md §2.4, §4.5; OpenAI `openai-python` `types/responses`): the
//! request's `tools` → the function schemas the template renders, and the way back from a name
//! the model calls to the output item the client expects.
//!
//! * `function` → its schema. `custom` (Codex's freeform `apply_patch`) → a function with one
//!   string parameter `input` (the format's grammar goes into the description); its calls come
//!   back as `custom_tool_call` items with that string as `input`.
//! * `namespace` → its `function`/`custom` members, named `NS.NAME` in the prompt; calls come
//!   back with `name` and `namespace` apart.
//! * `tool_search` with `execution: "client"` → a function `tool_search` (its description and
//!   parameters); calls come back as `tool_search_call` items. Members with
//!   `defer_loading: true` are then left out of the prompt until a `tool_search_output` input item
//!   loads them: its tools are rendered into that tool result (so the prompt prefix stays put) and
//!   become callable. Without a client tool search, deferred tools are rendered up front.
//! * Hosted tools (`web_search`, `file_search`, a server `tool_search`, …) have no schema the
//!   model could call here: skipped, said once in the log and in docs/api.md.

use std::collections::HashMap;

use ds4::chat::ParsedToolCall;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// What kind of item a called name turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `function_call`.
    Function,
    /// `custom_tool_call` (freeform input).
    Custom,
    /// `tool_search_call` (client-executed tool search).
    ToolSearch,
}

/// A callable tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// Item kind of its calls.
    pub kind: Kind,
    /// Name on the wire.
    pub name: String,
    /// Namespace on the wire.
    pub namespace: Option<String>,
}

/// The tools of one request.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    /// Schemas to render, as OpenAI `{"type":"function","function":{…}}` objects.
    pub rendered: Vec<Value>,
    by_prompt_name: HashMap<String, Tool>,
}

fn bad(field: impl Into<String>, msg: impl std::fmt::Display) -> ApiError {
    let field = field.into();
    ApiError::invalid(format!("field `{field}`: {msg}")).param(field)
}

/// The name a tool has in the prompt.
pub fn prompt_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

/// The function schema (`function` object) of one `function` or `custom` tool.
fn schema_of(tool: &Map<String, Value>, kind: Kind, name: &str) -> Value {
    let mut f = Map::new();
    f.insert("name".into(), json!(name));
    match kind {
        Kind::Custom => {
            let mut desc = tool
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let format = tool.get("format");
            if let Some(def) = format
                .and_then(|f| f.get("definition"))
                .and_then(Value::as_str)
            {
                let syntax = format
                    .and_then(|f| f.get("syntax"))
                    .and_then(Value::as_str)
                    .unwrap_or("grammar");
                desc.push_str(&format!(
                    "\n\nThe `input` parameter is raw text (not JSON) in this {syntax} grammar:\n{def}"
                ));
            }
            f.insert("description".into(), json!(desc));
            f.insert(
                "parameters".into(),
                json!({"type": "object", "properties": {"input": {"type": "string",
                    "description": "The raw input of the tool, as free text."}},
                    "required": ["input"]}),
            );
        }
        Kind::Function | Kind::ToolSearch => {
            if let Some(d) = tool.get("description") {
                f.insert("description".into(), d.clone());
            }
            f.insert(
                "parameters".into(),
                tool.get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            );
        }
    }
    json!({"type": "function", "function": f})
}

impl Tools {
    /// Maps a request's `tools` (absent or null: none).
    pub fn from_request(tools: Option<&Value>) -> Result<Tools, ApiError> {
        let items = match tools {
            None | Some(Value::Null) => return Ok(Tools::default()),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(bad("tools", "must be an array")),
        };
        let client_search = items.iter().any(|t| {
            t.get("type").and_then(Value::as_str) == Some("tool_search")
                && t.get("execution").and_then(Value::as_str) == Some("client")
        });
        let mut out = Tools::default();
        let mut hosted = Vec::new();
        for (i, t) in items.iter().enumerate() {
            let path = format!("tools[{i}]");
            let obj = t
                .as_object()
                .ok_or_else(|| bad(path.as_str(), "must be an object"))?;
            match obj.get("type").and_then(Value::as_str).unwrap_or("") {
                "function" | "custom" => out.add(obj, None, client_search, &path)?,
                "namespace" => {
                    let ns = obj
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(format!("{path}.name"), "must be a string"))?;
                    let members = obj
                        .get("tools")
                        .and_then(Value::as_array)
                        .ok_or_else(|| bad(format!("{path}.tools"), "must be an array"))?;
                    for (j, m) in members.iter().enumerate() {
                        let mpath = format!("{path}.tools[{j}]");
                        let m = m
                            .as_object()
                            .ok_or_else(|| bad(mpath.as_str(), "must be an object"))?;
                        out.add(m, Some(ns), client_search, &mpath)?;
                    }
                }
                "tool_search" if client_search => {
                    out.rendered
                        .push(schema_of(obj, Kind::ToolSearch, "tool_search"));
                    out.by_prompt_name.insert(
                        "tool_search".into(),
                        Tool {
                            kind: Kind::ToolSearch,
                            name: "tool_search".into(),
                            namespace: None,
                        },
                    );
                }
                other => hosted.push(if other.is_empty() { "untyped" } else { other }.to_string()),
            }
        }
        if !hosted.is_empty() {
            crate::request::note_degraded(
                crate::request::Degraded::HostedTools,
                &hosted.join(", "),
            );
        }
        Ok(out)
    }

    fn add(
        &mut self,
        obj: &Map<String, Value>,
        namespace: Option<&str>,
        client_search: bool,
        path: &str,
    ) -> Result<(), ApiError> {
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{path}.name"), "must be a string"))?;
        let kind = match obj.get("type").and_then(Value::as_str) {
            Some("custom") => Kind::Custom,
            _ => Kind::Function,
        };
        let pname = prompt_name(name, namespace);
        let deferred = client_search && obj.get("defer_loading") == Some(&Value::Bool(true));
        if !deferred {
            self.rendered.push(schema_of(obj, kind, &pname));
        }
        self.by_prompt_name.insert(
            pname,
            Tool {
                kind,
                name: name.to_string(),
                namespace: namespace.map(str::to_string),
            },
        );
        Ok(())
    }

    /// A `tool_search_output` item's `tools`: makes them callable and returns the text of the
    /// tool result (one schema line per tool, as in the tools block).
    pub fn load(&mut self, tools: &Value, path: &str) -> Result<String, ApiError> {
        let loaded = Tools::from_request(Some(tools)).map_err(|_| {
            bad(
                format!("{path}.tools"),
                "must be an array of function, custom or namespace tools",
            )
        })?;
        let mut lines = vec!["Loaded tools:".to_string()];
        for schema in &loaded.rendered {
            if let Some(f) = schema.get("function") {
                lines.push(ds4::chat::json::to_python_json(f));
            }
        }
        for (k, v) in loaded.by_prompt_name {
            self.by_prompt_name.entry(k).or_insert(v);
        }
        Ok(lines.join("\n"))
    }

    /// The tool a prompt name belongs to (a name the request did not define: a plain function).
    pub fn lookup(&self, prompt_name: &str) -> Tool {
        self.by_prompt_name
            .get(prompt_name)
            .cloned()
            .unwrap_or_else(|| Tool {
                kind: Kind::Function,
                name: prompt_name.to_string(),
                namespace: None,
            })
    }

    /// The output item of a parsed call: `function_call`, `custom_tool_call` or
    /// `tool_search_call`, with `status`.
    pub fn item(&self, call: &ParsedToolCall, id: &str, status: &str) -> Value {
        let tool = self.lookup(&call.name);
        let mut item = match tool.kind {
            Kind::Function => json!({"id": id, "type": "function_call", "status": status,
                "name": tool.name, "call_id": call.id, "arguments": call.arguments}),
            Kind::Custom => {
                let input = match serde_json::from_str::<Value>(&call.arguments) {
                    Ok(Value::Object(m)) => match m.get("input") {
                        Some(Value::String(s)) if m.len() == 1 => s.clone(),
                        _ => call.arguments.clone(),
                    },
                    _ => call.arguments.clone(),
                };
                json!({"id": id, "type": "custom_tool_call", "status": status,
                    "name": tool.name, "call_id": call.id, "input": input})
            }
            Kind::ToolSearch => {
                let arguments = serde_json::from_str::<Value>(&call.arguments)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                json!({"id": id, "type": "tool_search_call", "status": status,
                    "execution": "client", "call_id": call.id, "arguments": arguments})
            }
        };
        if let Some(ns) = tool.namespace {
            item["namespace"] = json!(ns);
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> ParsedToolCall {
        ParsedToolCall {
            id: "call_1".into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    #[test]
    fn custom_namespace_and_tool_search_tools_render_and_map_back() {
        let tools = json!([
            {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
            {"type": "custom", "name": "apply_patch", "description": "Edit files.",
             "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}},
            {"type": "namespace", "name": "agents", "description": "Sub-agents.",
             "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}},
                       {"type": "function", "name": "later", "defer_loading": true}]},
            {"type": "tool_search", "execution": "client", "description": "Find tools.",
             "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}},
            {"type": "web_search"}
        ]);
        let t = Tools::from_request(Some(&tools)).expect("maps");
        let names: Vec<&str> = t
            .rendered
            .iter()
            .filter_map(|s| s["function"]["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["exec_command", "apply_patch", "agents.spawn", "tool_search"]
        );
        let patch = &t.rendered[1]["function"];
        assert!(patch["description"]
            .as_str()
            .is_some_and(|d| d.contains("start: x")));
        assert_eq!(patch["parameters"]["required"], json!(["input"]));

        let item = t.item(
            &call("apply_patch", r#"{"input": "*** Begin Patch"}"#),
            "x",
            "completed",
        );
        assert_eq!(item["type"], "custom_tool_call");
        assert_eq!(item["input"], "*** Begin Patch");
        let item = t.item(&call("agents.spawn", "{}"), "x", "completed");
        assert_eq!(
            (&item["type"], &item["name"], &item["namespace"]),
            (&json!("function_call"), &json!("spawn"), &json!("agents"))
        );
        let item = t.item(&call("tool_search", r#"{"query": "x"}"#), "x", "completed");
        assert_eq!(item["type"], "tool_search_call");
        assert_eq!(item["execution"], "client");
        assert_eq!(item["arguments"], json!({"query": "x"}));
        // Deferred, but known: its calls still map back.
        assert_eq!(
            t.lookup("agents.later").namespace.as_deref(),
            Some("agents")
        );
    }

    #[test]
    fn deferred_tools_render_up_front_without_a_client_tool_search() {
        let tools = json!([{"type": "function", "name": "later", "defer_loading": true},
                           {"type": "tool_search"}]);
        let t = Tools::from_request(Some(&tools)).expect("maps");
        assert_eq!(t.rendered.len(), 1);
        assert_eq!(t.rendered[0]["function"]["name"], "later");
    }

    #[test]
    fn loaded_tools_become_callable_and_render_as_schema_lines() {
        let mut t = Tools::default();
        let text = t
            .load(
                &json!([{"type": "namespace", "name": "crm", "description": "CRM",
                    "tools": [{"type": "function", "name": "find", "description": "Find",
                               "parameters": {"type": "object"}}]}]),
                "input[3]",
            )
            .expect("loads");
        assert_eq!(
            text,
            "Loaded tools:\n{\"name\": \"crm.find\", \"description\": \"Find\", \"parameters\": {\"type\": \"object\"}}"
        );
        assert_eq!(t.lookup("crm.find").name, "find");
    }
}
