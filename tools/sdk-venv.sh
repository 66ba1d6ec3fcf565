#!/usr/bin/env bash
# Create .venv-sdk with the official OpenAI and Anthropic Python SDKs (exact pins) and pytest,
# for tests/sdk/ (the ds4-server SDK tests). Idempotent: reuses the venv when the pins match.
#
#   bash tools/sdk-venv.sh            # create/update .venv-sdk
#   .venv-sdk/bin/pytest tests/sdk    # run the tests (they build and start ds4-server themselves)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-sdk"
PYTHON="${PYTHON:-python3}"
PINS=(
    "openai==3.51.0"
    "anthropic==2.10.0"
    "httpx==0.28.1"
    "pytest==9.2.0"
)
STAMP="$VENV/.pins"
WANT="$(printf '%s\n' "${PINS[@]}")"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "sdk venv up to date: $VENV"
    exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
printf '%s\n' "$WANT" > "$STAMP"
echo "sdk venv ready: $VENV"
