#!/usr/bin/env bash
# Runs every test of the project: fetches the pinned V4 tokenizer, regenerates the tiny test
# models (gguf-py, checked by sha256), then the Rust workspace tests in release mode (the
# forward-pass tests are slow in debug builds), the test-hooks server and `ds4 check` tests, the
# CUDA kernels (NVRTC compile check and the GPU tests on the CPU emulator), and the official
# openai/anthropic SDK tests against a running ds4-server. `.ci/run` runs exactly this after
# installing system packages.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/ensure-deps.sh
bash tools/fetch-tokenizer.sh
bash tools/make-test-models.sh
cargo test --workspace --release
cargo test --release -p ds4-server --features test-hooks --test tools --test agents
cargo test --release -p ds4-cli --features test-hooks --test check
# The CUDA kernels: compiled by the real NVRTC for sm_90 (PyPI, pinned; no GPU needed), then
# the GPU test suite on the CPU emulation of the driver (tools/cuda-emu).
NVRTC_LIB="$(bash tools/nvrtc-venv.sh)"
LD_LIBRARY_PATH="$NVRTC_LIB" cargo test --release -p ds4-cuda --test nvrtc_compile -- --nocapture
(eval "$(bash tools/cuda-emu/build.sh --env)" && cargo test --release -p ds4-cuda --test cuda_vs_cpu -- --test-threads 1)
# The disk KV cache through the server (in-process servers, then real processes: SIGTERM, kill -9).
cargo test --release -p ds4-server --features test-hooks --test kv_disk --test kv_restart
bash tools/sdk-venv.sh
.venv-sdk/bin/python -m pytest -q tests/sdk
