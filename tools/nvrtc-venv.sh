#!/usr/bin/env bash
# A venv with NVIDIA's NVRTC from PyPI (pinned), so the CUDA kernels can be compiled for sm_90
# on a machine without a GPU or CUDA toolkit. Prints the library folder to put on
# LD_LIBRARY_PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-nvrtc"
PIN="nvidia-cuda-nvrtc==13.0.88"
if [[ ! -f "$VENV/.pin" || "$(cat "$VENV/.pin")" != "$PIN" ]]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q "$PIN" >&2
    echo "$PIN" > "$VENV/.pin"
fi
dirname "$(find "$VENV" -name 'libnvrtc.so.13' | head -1)"
