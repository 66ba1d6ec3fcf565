#!/usr/bin/env bash
# The main job on a fresh clone: builds the release binaries and starts ds4-server on MODEL
# (first argument), or on a generated demo model with the real V4 vocabulary and random weights
# when no model is given (its replies are gibberish; the pipeline around it is real).
#
# It starts the way docs/api.md's examples assume: 127.0.0.1:8000, API key sk-local (or
# $DS4_API_KEY), and a 65536-token context, which fits a coding agent (Claude Code opens with
# ~12k prompt tokens). `-c N` / `--ctx N`, `--api-key KEY`, `--host H` and `--port P` change
# them; every other argument goes to ds4-server as is. Before serving it prints how to point
# `ds4 check` and each coding agent at the server.
#
# Usage: bash tools/demo.sh [MODEL.gguf] [-c N] [--api-key KEY] [--port P] [ds4-server flags...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODEL=""
if [[ $# -gt 0 && "$1" != -* ]]; then
    MODEL="$1"
    shift
fi
CTX=65536
KEY="${DS4_API_KEY:-sk-local}"
HOST=127.0.0.1
PORT=8000
REST=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -c | --ctx | --api-key | --host | --port)
            [[ $# -ge 2 ]] || { echo "demo.sh: $1 needs a value" >&2; exit 2; }
            case "$1" in
                -c | --ctx) CTX="$2" ;;
                --api-key) KEY="$2" ;;
                --host) HOST="$2" ;;
                --port) PORT="$2" ;;
            esac
            shift 2
            ;;
        --ctx=*) CTX="${1#--ctx=}"; shift ;;
        --api-key=*) KEY="${1#--api-key=}"; shift ;;
        --host=*) HOST="${1#--host=}"; shift ;;
        --port=*) PORT="${1#--port=}"; shift ;;
        *) REST+=("$1"); shift ;;
    esac
done
[[ "$CTX" =~ ^[0-9]+$ ]] || { echo "demo.sh: -c wants a token count, got \`$CTX\`" >&2; exit 2; }

bash tools/ensure-deps.sh
cargo build --release --bins
if [[ -z "$MODEL" ]]; then
    bash tools/fetch-tokenizer.sh
    MODEL="$ROOT/target/demo.gguf"
    if [[ ! -f "$MODEL" ]]; then
        ./target/release/ds4-gguf tiny --tokenizer tests/fixtures/tokenizer/tokenizer.json --out "$MODEL"
    fi
fi

URL="http://$HOST:$PORT"
[[ "$HOST" == localhost ]] && URL="http://127.0.0.1:$PORT"
OUTPUT=$((CTX < 32768 ? CTX / 2 : 32768))
if [[ "$CTX" -lt 32768 ]]; then
    echo "demo.sh: WARNING: a $CTX-token context is below what coding agents need (Claude Code opens" \
        "with ~12k prompt tokens); \`ds4 check\` will name it" >&2
fi
cat >&2 <<EOF

ds4 demo: $MODEL
  serving $URL, context $CTX tokens, API key $KEY (docs/api.md has every client's tested setup)

  Smoke test, every protocol:  DS4_API_KEY=$KEY ./target/release/ds4 check $URL

  Claude Code:
    ANTHROPIC_BASE_URL=$URL ANTHROPIC_AUTH_TOKEN=$KEY \\
    ANTHROPIC_MODEL=deepseek-v4-flash ANTHROPIC_SMALL_FAST_MODEL=deepseek-v4-flash \\
    CLAUDE_CODE_MAX_CONTEXT_TOKENS=$CTX CLAUDE_CODE_AUTO_COMPACT_WINDOW=$CTX claude

  Codex CLI: in ~/.codex/config.toml, then \`DS4_API_KEY=$KEY codex\`
    model = "deepseek-v4-flash"
    model_provider = "ds4"
    model_context_window = $CTX
    [model_providers.ds4]
    name = "ds4-server"
    base_url = "$URL/v1"
    env_key = "DS4_API_KEY"
    wire_api = "responses"

  opencode: in opencode.json, then \`opencode -m ds4/deepseek-v4-flash\`
    {"provider": {"ds4": {"npm": "@ai-sdk/openai-compatible", "name": "ds4-server",
      "options": {"baseURL": "$URL/v1", "apiKey": "$KEY"},
      "models": {"deepseek-v4-flash": {"name": "DeepSeek V4 Flash",
        "limit": {"context": $CTX, "output": $OUTPUT}}}}}}

  Pi: in ~/.pi/agent/models.json, then \`pi --provider ds4 --model deepseek-v4-flash\`
    {"providers": {"ds4": {"baseUrl": "$URL/v1", "api": "openai-completions", "apiKey": "$KEY",
      "compat": {"thinkingFormat": "deepseek", "supportsDeveloperRole": false},
      "models": [{"id": "deepseek-v4-flash", "reasoning": true,
        "contextWindow": $CTX, "maxTokens": $OUTPUT}]}}}

EOF
exec ./target/release/ds4-server -m "$MODEL" -c "$CTX" --host "$HOST" --port "$PORT" \
    --api-key "$KEY" ${REST[@]+"${REST[@]}"}
