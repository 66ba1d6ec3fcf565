#!/usr/bin/env bash
# Builds what tools/device/cuda-check.sh runs on the GPU machine into .devcarry/ (git-ignored
# through .git/info/exclude; name it in the device call's `carry`), stripped to fit the 64 MiB
# transfer limit, and makes sure the fixture GGUFs exist.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
bash tools/make-test-models.sh
cargo build --release -p ds4-cli --bins
test_bin=$(cargo test --release -p ds4-cuda --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_vs_cpu":
        print(m["executable"])')
rm -rf .devcarry && mkdir -p .devcarry
cp target/release/ds4 target/release/ds4-server target/release/ds4-bench target/release/ds4-gguf "$test_bin" .devcarry/
bash tools/fetch-tokenizer.sh
cp tests/fixtures/tokenizer/tokenizer.json .devcarry/
mv ".devcarry/$(basename "$test_bin")" .devcarry/cuda_vs_cpu
strip .devcarry/ds4 .devcarry/ds4-server .devcarry/ds4-bench .devcarry/ds4-gguf .devcarry/cuda_vs_cpu
du -sh .devcarry
