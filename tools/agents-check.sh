#!/usr/bin/env bash
# Real coding agents against ds4-server, unmodified, on loopback only (issue #9).
#
# Installs the pinned clients of tools/agents/package-lock.json (Claude Code 2.1.332, Codex CLI
# 0.171.0, opencode 1.18.33, Pi 0.73.1) into a cache folder, builds ds4-server with the
# test-only `test-hooks` feature, generates a model with the real V4 vocabulary (random
# weights), and runs each client's non-interactive mode through the configuration docs/api.md
# gives. A `--test-script` (tools/agents/*.json) forces the model's output by prompt, so every
# client makes a real tool round trip: the model calls the client's shell tool with
# `echo ds4check-$((6*7))`, the client runs it, and only a prompt holding its output
# (`ds4check-42`) gets the final answer `AGENTS-CHECK-DONE`.
#
# Per scenario it reports PASS when every request got a 2xx, no generation failed, the client
# printed no API error, and the round trip (or the scenario's own check) happened. The runs
# happen in a fresh network namespace holding only loopback (`unshare -rn`), so the clients
# cannot reach anything but our server; without unshare it falls back to dead proxy
# variables and says so.
#
# The last scenario, ds4-check, runs `ds4 check` against the same server binary.
#
# Usage: bash tools/agents-check.sh [SCENARIO...]   (default: all; `--list` names them)
# Env:   DS4_AGENTS_CACHE (default .cache/agents), DS4_AGENTS_OUT (traces and client output,
#        default target/agents-check), DS4_AGENTS_TIMEOUT (seconds per client run, default 240).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${DS4_AGENTS_CACHE:-$ROOT/.cache/agents}"
OUT="${DS4_AGENTS_OUT:-$ROOT/target/agents-check}"
TIMEOUT="${DS4_AGENTS_TIMEOUT:-240}"
CTX=65536
KEY=sk-agents-check
SCENARIOS=(claude claude-search claude-nothink codex codex-resume opencode opencode-cut pi ds4-check)

if [[ "${1:-}" == "--list" ]]; then
    printf '%s\n' "${SCENARIOS[@]}"
    exit 0
fi

# ---------------------------------------------------------------- preparation (network)
prepare() {
    bash tools/ensure-deps.sh
    bash tools/fetch-tokenizer.sh
    mkdir -p "$CACHE" "$OUT"
    if ! cmp -s tools/agents/package-lock.json "$CACHE/package-lock.json" \
        || [[ ! -x "$CACHE/node_modules/.bin/pi" ]]; then
        cp tools/agents/package.json tools/agents/package-lock.json "$CACHE/"
        (cd "$CACHE" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    cargo build --release --features ds4-server/test-hooks -p ds4-server -p ds4-cli --bins
    # Two layers (no compressed attention): the protocol is what is checked, prefill speed
    # is what the clients wait for.
    if [[ ! -f target/agents-check.gguf ]]; then
        ./target/release/ds4-gguf tiny --layers 2 \
            --tokenizer tests/fixtures/tokenizer/tokenizer.json --out target/agents-check.gguf
    fi
}

# ---------------------------------------------------------------- one scenario (loopback)
BIN="$CACHE/node_modules/.bin"
TASK='ds4-agents-check: run the shell command `echo ds4check-$((6*7))` and tell me what it printed.'

# start_server NAME SCRIPT [extra flags]: sets PORT and SERVER_PID; trace in $OUT/NAME.trace.
start_server() {
    local name=$1 script=$2
    shift 2
    ./target/release/ds4-server -m target/agents-check.gguf -c "$CTX" --port 0 \
        --api-key "$KEY" --trace "$OUT/$name.trace" --test-script "tools/agents/$script" "$@" \
        >"$OUT/$name.server.log" 2>&1 &
    SERVER_PID=$!
    PORT=""
    for _ in $(seq 100); do
        PORT=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' \
            "$OUT/$name.server.log" | head -1)
        [[ -n "$PORT" ]] && break
        sleep 0.1
    done
    [[ -n "$PORT" ]] || { cat "$OUT/$name.server.log" >&2; return 1; }
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

# A fresh home and work folder per scenario, outside any git checkout: no user config leaks
# in, nothing of this repository leaks into the prompts.
fresh_dirs() {
    local name=$1
    mkdir -p "$SCRATCH/$name.home" "$SCRATCH/$name.work"
    export HOME="$SCRATCH/$name.home" XDG_CONFIG_HOME="$SCRATCH/$name.home/.config"
    export XDG_DATA_HOME="$SCRATCH/$name.home/.local/share"
    export XDG_CACHE_HOME="$SCRATCH/$name.home/.cache"
    export XDG_STATE_HOME="$SCRATCH/$name.home/.local/state"
    WORKDIR="$SCRATCH/$name.work"
}

# run_client NAME CMD...: output in $OUT/NAME.out / .err, exit code in $OUT/NAME.rc.
run_client() {
    local name=$1
    shift
    local rc=0
    (cd "$WORKDIR" && timeout "$TIMEOUT" "$@" </dev/null >"$OUT/$name.out" 2>"$OUT/$name.err") || rc=$?
    echo "$rc" >"$OUT/$name.rc"
}

# Checks of a trace: the statuses and finishes it recorded.
trace_statuses() { sed -n 's/.*"event":"status".*"status":\([0-9]*\).*/\1/p' "$1"; }
non_2xx() { trace_statuses "$1" | grep -cv '^2' || true; }
n_requests() { trace_statuses "$1" | wc -l; }
failed_generations() { grep -c '"event":"finish".*"finish":"error"' "$1" || true; }
# trace_has FILE EVENT TEXT: some EVENT record of the trace holds TEXT (a fixed string). No
# `grep -q` at the end of a pipe: it exits at the first hit, the writer dies of SIGPIPE, and
# under pipefail a hit would read as a miss.
trace_has() {
    local hits
    hits=$(grep -F "\"event\":\"$2\"" "$1" | grep -cF -- "$3" || true)
    [[ "$hits" -gt 0 ]]
}
# A request whose last user turn held the tool's output reached the server.
round_trip() { trace_has "$1" request 'ds4check-42'; }

RESULTS=()
record() { # record NAME RESULT DETAIL
    RESULTS+=("$(printf '%-16s %-5s %s' "$1" "$2" "$3")")
}

# verdict NAME CLIENT_OK ROUND_TRIP_OK DETAIL
verdict() {
    local name=$1 client_ok=$2 rt_ok=$3 detail=$4
    local trace="$OUT/$name.trace" bad fails n
    n=$(n_requests "$trace")
    bad=$(non_2xx "$trace")
    fails=$(failed_generations "$trace")
    local result=PASS
    if [[ "$n" -eq 0 || "$bad" -ne 0 || "$fails" -ne 0 || "$client_ok" != yes || "$rt_ok" != yes ]]; then
        result=FAIL
    fi
    record "$name" "$result" "requests=$n non-2xx=$bad failed-generations=$fails client-ok=$client_ok check=$rt_ok; $detail"
}

ok_if() { if "$@"; then echo yes; else echo no; fi; }

claude_env() {
    export ANTHROPIC_BASE_URL="http://127.0.0.1:$PORT" ANTHROPIC_AUTH_TOKEN="$KEY"
    export ANTHROPIC_MODEL=deepseek-v4-flash ANTHROPIC_SMALL_FAST_MODEL=deepseek-v4-flash
    export CLAUDE_CODE_MAX_CONTEXT_TOKENS="$CTX" CLAUDE_CODE_AUTO_COMPACT_WINDOW="$CTX"
    export DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 DISABLE_AUTOUPDATER=1
    export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
}

claude_ok() { # the JSON result says no error and carries the marker
    grep -q '"is_error":false' "$OUT/$1.out" && grep -q "$2" "$OUT/$1.out"
}

scenario_claude() {
    fresh_dirs claude
    start_server claude claude.json
    claude_env
    run_client claude "$BIN/claude" -p "$TASK" --output-format json --allowedTools Bash
    stop_server
    verdict claude "$(ok_if claude_ok claude AGENTS-CHECK-DONE)" "$(ok_if round_trip "$OUT/claude.trace")" \
        "Bash tool round trip, thinking {type: adaptive}"
}

# Claude Code's tool search: the model asks ToolSearch for a deferred tool; the tool_result
# holds tool_reference blocks, which must reach the model as that tool's schema.
scenario_claude-search() {
    fresh_dirs claude-search
    start_server claude-search claude-search.json
    claude_env # tool search is on by default in Claude Code 2.1.332, even on a custom base URL
    run_client claude-search "$BIN/claude" -p 'ds4-agents-check-search: load the CronList tool.' \
        --output-format json --allowedTools ToolSearch
    stop_server
    local seen=no
    trace_has "$OUT/claude-search.trace" request '<function>{\"name\": \"CronList\"' && seen=yes
    verdict claude-search "$(ok_if claude_ok claude-search AGENTS-CHECK-SEARCH-DONE)" "$seen" \
        "ToolSearch → tool_reference rendered as the CronList schema"
}

# Thinking off from Claude Code: every generating prompt must end in `</think>`.
scenario_claude-nothink() {
    fresh_dirs claude-nothink
    start_server claude-nothink claude.json
    claude_env
    export CLAUDE_CODE_DISABLE_THINKING=1
    run_client claude-nothink "$BIN/claude" -p "$TASK" --output-format json --allowedTools Bash
    unset CLAUDE_CODE_DISABLE_THINKING
    stop_server
    local think=no
    if round_trip "$OUT/claude-nothink.trace" \
        && ! trace_has "$OUT/claude-nothink.trace" request '<think>","cache'; then
        think=yes
    fi
    verdict claude-nothink "$(ok_if claude_ok claude-nothink AGENTS-CHECK-DONE)" "$think" \
        "CLAUDE_CODE_DISABLE_THINKING=1: no prompt opened <think>"
}

codex_config() { # codex_config NAME
    export CODEX_HOME="$HOME/.codex" DS4_API_KEY="$KEY"
    mkdir -p "$CODEX_HOME"
    cat >"$CODEX_HOME/config.toml" <<EOF
model = "deepseek-v4-flash"
model_provider = "ds4"
model_context_window = $CTX
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.ds4]
name = "ds4-server"
base_url = "http://127.0.0.1:$PORT/v1"
env_key = "DS4_API_KEY"
wire_api = "responses"
EOF
}

codex_ok() { # no error line, and the last message carries the marker
    ! grep -q '^ERROR' "$OUT/$1.err" "$OUT/$1.out" && grep -q "$2" "$OUT/$1.last"
}

scenario_codex() {
    fresh_dirs codex
    start_server codex codex.json
    codex_config codex
    run_client codex "$BIN/codex" exec --skip-git-repo-check \
        --dangerously-bypass-approvals-and-sandbox -o "$OUT/codex.last" "$TASK"
    stop_server
    verdict codex "$(ok_if codex_ok codex AGENTS-CHECK-DONE)" "$(ok_if round_trip "$OUT/codex.trace")" \
        "exec_command round trip"
}

# A turn cut by the output limit leaves items with status "incomplete"; the next turn
# (`codex exec resume`) replays them and must be served.
scenario_codex-resume() {
    fresh_dirs codex-resume
    start_server codex-resume codex.json
    codex_config codex-resume
    run_client codex-resume "$BIN/codex" exec --skip-git-repo-check \
        --dangerously-bypass-approvals-and-sandbox -o "$OUT/codex-resume.first" \
        'ds4-agents-check-long: write a long answer.'
    mv "$OUT/codex-resume.out" "$OUT/codex-resume.first.out"
    mv "$OUT/codex-resume.err" "$OUT/codex-resume.first.err"
    run_client codex-resume "$BIN/codex" exec --skip-git-repo-check \
        --dangerously-bypass-approvals-and-sandbox -o "$OUT/codex-resume.last" resume --last "$TASK"
    stop_server
    local cut=no replayed=no
    grep -q 'max_output_tokens' "$OUT/codex-resume.first.err" "$OUT/codex-resume.first.out" && cut=yes
    trace_has "$OUT/codex-resume.trace" body 'status\":\"incomplete' && replayed=yes
    local check=no
    [[ "$cut" == yes && "$replayed" == yes ]] && round_trip "$OUT/codex-resume.trace" && check=yes
    # The first run's `Incomplete response returned` is the expected report of the cut.
    verdict codex-resume "$(ok_if codex_ok codex-resume AGENTS-CHECK-DONE)" "$check" \
        "first turn cut (incomplete/max_output_tokens: $cut), resume replayed incomplete items: $replayed"
}

opencode_config() { # opencode_config NAME
    cat >"$WORKDIR/opencode.json" <<EOF
{
  "\$schema": "https://opencode.ai/config.json",
  "provider": {
    "ds4": {
      "npm": "@ai-sdk/openai-compatible",
      "name": "ds4-server",
      "options": { "baseURL": "http://127.0.0.1:$PORT/v1", "apiKey": "$KEY" },
      "models": {
        "deepseek-v4-flash": {
          "name": "DeepSeek V4 Flash",
          "limit": { "context": $CTX, "output": 32768 }
        }
      }
    }
  },
  "model": "ds4/deepseek-v4-flash",
  "small_model": "ds4/deepseek-v4-flash",
  "autoupdate": false,
  "share": "disabled",
  "permission": { "bash": "allow" }
}
EOF
    export OPENCODE_DISABLE_AUTOUPDATE=1 OPENCODE_DISABLE_MODELS_FETCH=1
    export OPENCODE_DISABLE_LSP_DOWNLOAD=1 OPENCODE_DISABLE_SHARE=1
}

opencode_ok() { # no error event, and the text carries the marker
    ! grep -q '"type":"error"' "$OUT/$1.out" && grep -q "$2" "$OUT/$1.out"
}

scenario_opencode() {
    fresh_dirs opencode
    start_server opencode opencode.json
    opencode_config opencode
    run_client opencode "$BIN/opencode" run --format json -m ds4/deepseek-v4-flash "$TASK"
    stop_server
    verdict opencode "$(ok_if opencode_ok opencode AGENTS-CHECK-DONE)" \
        "$(ok_if round_trip "$OUT/opencode.trace")" "bash round trip"
}

# The output limit cuts the model inside its tool call: the client must see a length stop and
# must not run the partial call (no request with a tool result may follow).
scenario_opencode-cut() {
    fresh_dirs opencode-cut
    start_server opencode-cut opencode.json
    opencode_config opencode-cut
    run_client opencode-cut "$BIN/opencode" run --format json -m ds4/deepseek-v4-flash \
        'ds4-agents-check-cut: run a command.'
    stop_server
    local check=no
    if grep -q '"finish":"length"' "$OUT/opencode-cut.trace" \
        && ! trace_has "$OUT/opencode-cut.trace" request 'tool_result'; then
        check=yes
    fi
    local client=no
    grep -q '"type":"error"' "$OUT/opencode-cut.out" || client=yes
    verdict opencode-cut "$client" "$check" "length cut inside a bash call: finish length, call not run"
}

scenario_pi() {
    fresh_dirs pi
    start_server pi pi.json
    mkdir -p "$HOME/.pi/agent"
    cat >"$HOME/.pi/agent/models.json" <<EOF
{
  "providers": {
    "ds4": {
      "baseUrl": "http://127.0.0.1:$PORT/v1",
      "api": "openai-completions",
      "apiKey": "$KEY",
      "compat": { "thinkingFormat": "deepseek", "supportsDeveloperRole": false },
      "models": [{ "id": "deepseek-v4-flash", "reasoning": true,
                   "contextWindow": $CTX, "maxTokens": 32768 }]
    }
  }
}
EOF
    export PI_OFFLINE=1
    run_client pi "$BIN/pi" --offline --no-session -p --provider ds4 --model deepseek-v4-flash \
        --thinking off "$TASK"
    stop_server
    local client=no think=no
    ! grep -qi 'error' "$OUT/pi.err" && grep -q AGENTS-CHECK-DONE "$OUT/pi.out" && client=yes
    if round_trip "$OUT/pi.trace" \
        && ! trace_has "$OUT/pi.trace" request '<think>","cache'; then
        think=yes
    fi
    verdict pi "$client" "$think" "bash round trip, --thinking off reaches the server (no <think>)"
}

# `ds4 check` against the same server binary: every protocol, streaming and not, auth, the
# too-long prompt, and a forced get_weather call with its result turn on each of the 6 tool rows.
# Its own 401s and 400s are what it provokes, so the verdict is its table, not the trace.
scenario_ds4-check() {
    fresh_dirs ds4-check
    start_server ds4-check ds4-check.json
    run_client ds4-check "$ROOT/target/release/ds4" check "http://127.0.0.1:$PORT" --api-key "$KEY"
    stop_server
    local client=no calls
    [[ "$(cat "$OUT/ds4-check.rc")" == 0 ]] && grep -q ' 0 failed$' "$OUT/ds4-check.out" && client=yes
    calls=$(grep -c 'model called get_weather({"city":"Paris"}); result turn served' \
        "$OUT/ds4-check.out" || true)
    local result=FAIL
    [[ "$client" == yes && "$calls" -eq 6 ]] && result=PASS
    record ds4-check "$result" "$(tail -1 "$OUT/ds4-check.out"); forced tool round trips=$calls/6"
}

run_all() {
    SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/ds4-agents-check.XXXXXX")"
    trap 'rm -rf "$SCRATCH"' EXIT
    local list=("$@")
    [[ ${#list[@]} -eq 0 ]] && list=("${SCENARIOS[@]}")
    for s in "${list[@]}"; do
        echo "agents-check: $s" >&2
        "scenario_$s" || record "$s" FAIL "scenario aborted (see $OUT/$s.*)"
    done
    echo
    printf '%-16s %-5s %s\n' scenario result detail
    printf '%s\n' "${RESULTS[@]}"
    printf '%s\n' "${RESULTS[@]}" >"$OUT/results.txt"
    ! printf '%s\n' "${RESULTS[@]}" | grep -q ' FAIL '
}

if [[ "${1:-}" == "--isolated" ]]; then
    shift
    ip link set lo up 2>/dev/null || true
    run_all "$@"
    exit $?
fi

prepare
if unshare -rn true 2>/dev/null; then
    echo "agents-check: clients run in a network namespace with loopback only" >&2
    exec unshare -rn bash "$0" --isolated "$@"
fi
echo "agents-check: WARNING: no network namespace (unshare -rn failed); outside traffic is only" \
    "refused through dead proxy variables" >&2
export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9
export http_proxy=$HTTP_PROXY https_proxy=$HTTPS_PROXY all_proxy=$ALL_PROXY NO_PROXY=127.0.0.1,localhost
run_all "$@"
