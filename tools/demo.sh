#!/usr/bin/env bash
# The main job on a fresh clone: builds the release binaries and runs ds4 on MODEL (first
# argument), or on a generated demo model with the real V4 vocabulary and random weights when no
# model is given (its replies are gibberish; the pipeline around it is real).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cargo build --release --bins
MODEL="${1:-}"
if [[ -z "$MODEL" ]]; then
    bash tools/fetch-tokenizer.sh
    MODEL="$ROOT/target/demo.gguf"
    if [[ ! -f "$MODEL" ]]; then
        ./target/release/ds4-gguf tiny --tokenizer tests/fixtures/tokenizer/tokenizer.json --out "$MODEL"
    fi
fi
exec ./target/release/ds4 -m "$MODEL" -p "${DS4_DEMO_PROMPT:-Hello! Who are you?}" -n 32 --nothink
