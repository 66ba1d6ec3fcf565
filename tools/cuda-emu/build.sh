#!/usr/bin/env bash
# Builds the CUDA emulator (tools/cuda-emu/README.md) into target/cuda-emu: fake libcuda,
# libnvrtc and libcublas, with emu.h beside them (the fake NVRTC forces it into every kernel
# module it compiles with g++). Point LD_LIBRARY_PATH there and ds4's CUDA backend runs on the
# CPU: `eval "$(bash tools/cuda-emu/build.sh --env)"`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SRC="$ROOT/tools/cuda-emu"
OUT="$ROOT/target/cuda-emu"
mkdir -p "$OUT"
build() { # name source [libs]
    local so="$OUT/$1" src="$SRC/$2"
    if [[ ! -f "$so" || "$src" -nt "$so" ]]; then
        g++ -O2 -std=c++17 -shared -fPIC -o "$so.tmp" "$src" "${@:3}" && mv "$so.tmp" "$so"
    fi
}
build libcuda.so libcuda.cpp -ldl
build libnvrtc.so libnvrtc.cpp -ldl
build libcublas.so libcublas.cpp
ln -sf libcuda.so "$OUT/libcuda.so.1"
cp -f "$SRC/emu.h" "$OUT/emu.h"
if [[ "${1:-}" == "--env" ]]; then
    echo "export LD_LIBRARY_PATH=\"$OUT:\${LD_LIBRARY_PATH:-}\" DS4_CUDA_EMU=1"
fi
