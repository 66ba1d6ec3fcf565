#!/usr/bin/env python3
"""Turns a request body captured by `ds4-server --trace` into a committed replay fixture.

Usage: trim_capture.py TRACE INDEX OUT [--tools NAME,NAME...] [--path /v1/messages]

TRACE is a trace of tools/agents-check.sh (target/agents-check/NAME.trace), INDEX the 0-based
number of the `body` event (counting only bodies sent to --path, default any), OUT the fixture.
The body keeps the exact shape the client sent (every field, every nesting, every type); only
sizes shrink, so the replay tests stay fast:
  * strings longer than 240 characters keep their first 200 and get " [trimmed]";
  * with --tools, only the named tools stay in `tools` (the others are dropped whole);
  * identifiers of the machine that ran the client (Claude Code `metadata.user_id`, Codex
    `client_metadata`, `prompt_cache_key`) become "trimmed".
Plain Python 3, no packages.
"""
import json
import sys

LIMIT, KEEP = 240, 200
PRIVATE = {"user_id", "client_metadata", "prompt_cache_key"}


def trim(value, key=None):
    if key in PRIVATE:
        return "trimmed" if isinstance(value, str) else {"trimmed": True}
    if isinstance(value, str):
        return value if len(value) <= LIMIT else value[:KEEP] + " [trimmed]"
    if isinstance(value, list):
        return [trim(v) for v in value]
    if isinstance(value, dict):
        return {k: trim(v, k) for k, v in value.items()}
    return value


def tool_name(t):
    return t.get("name") or t.get("function", {}).get("name") or t.get("type")


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("index", type=int)
    ap.add_argument("out")
    ap.add_argument("--tools")
    ap.add_argument("--path")
    a = ap.parse_args()
    bodies = []
    with open(a.trace, encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            if e.get("event") == "body" and (a.path is None or e["path"] == a.path):
                bodies.append((e["path"], json.loads(e["body"])))
    req_path, body = bodies[a.index]
    if a.tools and isinstance(body.get("tools"), list):
        keep = set(a.tools.split(","))
        body["tools"] = [t for t in body["tools"] if tool_name(t) in keep]
    fixture = {"path": req_path, "body": trim(body)}
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
