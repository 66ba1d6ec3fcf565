#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for the project's scripts: python3 with venv and pip
# (the tokenizer download, the gguf-py model generator, the SDK tests) and sha256sum. Needs root
# for apt-get when something is missing. A current Rust toolchain (rustup) must already be installed.
set -euo pipefail
need=()
command -v python3 >/dev/null || need+=(python3)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v sha256sum >/dev/null || need+=(coreutils)
command -v g++ >/dev/null || need+=(g++)  # tools/cuda-emu
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: missing ${need[*]}; install them (apt-get install -y ${need[*]})" >&2
        exit 1
    fi
    apt-get update -q && apt-get install -y -q "${need[@]}"
fi
if ! command -v cargo >/dev/null; then
    echo "error: cargo not found: install Rust (rustup) first" >&2
    exit 1
fi
