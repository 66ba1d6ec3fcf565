#!/usr/bin/env bash
# The main job on a fresh clone: builds the release binaries and starts ds4-server on MODEL
# (first argument), or on a generated demo model with the real V4 vocabulary and random weights
# when no model is given (its replies are gibberish; the pipeline around it is real). Extra
# arguments go to ds4-server (e.g. --port 8001 --api-key KEY). Binds 127.0.0.1:8000 by default.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/ensure-deps.sh
cargo build --release --bins
MODEL=""
if [[ $# -gt 0 && "$1" != -* ]]; then
    MODEL="$1"
    shift
fi
if [[ -z "$MODEL" ]]; then
    bash tools/fetch-tokenizer.sh
    MODEL="$ROOT/target/demo.gguf"
    if [[ ! -f "$MODEL" ]]; then
        ./target/release/ds4-gguf tiny --tokenizer tests/fixtures/tokenizer/tokenizer.json --out "$MODEL"
    fi
fi
exec ./target/release/ds4-server -m "$MODEL" -c 4096 "$@"
