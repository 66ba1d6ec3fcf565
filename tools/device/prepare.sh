#!/usr/bin/env bash
# Builds what tools/device/gpu-run.sh runs on the GPU machine into .devcarry/ (git-ignored
# through .git/info/exclude; name it in the device call's `carry`): the stripped release
# binaries and the GPU test binary (xz), the V4 tokenizer (xz), and a snapshot of antirez/ds4
# for the comparison (pass its git directory as $1; fetched, never committed). The fixture
# models the GPU tests read are in tests/fixtures/model (name them in `carry` too).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
bash tools/make-test-models.sh
bash tools/fetch-tokenizer.sh
cargo build --release -p ds4-cli -p ds4-server --bins
test_bin=$(cargo test --release -p ds4-cuda --test cuda_vs_cpu --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_vs_cpu":
        print(m["executable"])')
rm -rf .devcarry && mkdir -p .devcarry/b
cp target/release/ds4 target/release/ds4-server target/release/ds4-bench target/release/ds4-gguf .devcarry/b/
cp "$test_bin" .devcarry/b/cuda_vs_cpu
strip .devcarry/b/*
tar cJf .devcarry/bins.tar.xz -C .devcarry/b .
rm -rf .devcarry/b
xz -9c tests/fixtures/tokenizer/tokenizer.json > .devcarry/tokenizer.json.xz
if [[ -n "${1:-}" ]]; then
    (git --git-dir="$1" archive --format=tar HEAD -- . ':(exclude)gguf-tools/imatrix/dataset' 2>/dev/null || true) | xz -9 > .devcarry/ds4-src.tar.xz
fi
du -sh .devcarry/*
