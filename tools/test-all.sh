#!/usr/bin/env bash
# Runs every test of the project: fetches the pinned V4 tokenizer, regenerates the tiny test
# models (gguf-py, checked by sha256), then the Rust workspace tests in release mode (the
# forward-pass tests are slow in debug builds), the test-hooks server and `ds4 check` tests, and
# the official openai/anthropic SDK tests against a running ds4-server. `.ci/run` runs exactly
# this after installing system packages.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/ensure-deps.sh
bash tools/fetch-tokenizer.sh
bash tools/make-test-models.sh
cargo test --workspace --release
cargo test --release -p ds4-server --features test-hooks --test tools --test agents
cargo test --release -p ds4-cli --features test-hooks --test check
bash tools/sdk-venv.sh
.venv-sdk/bin/python -m pytest -q tests/sdk
