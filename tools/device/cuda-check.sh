#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there): the CUDA-vs-CPU op tests, the CUDA forward pass against
# the transformers fixtures, and ds4-bench on CPU and CUDA over a generated medium q2 model.
# Expects prebuilt x86-64 binaries in .devcarry/ (see tools/device/prepare.sh) and the fixture
# GGUFs under tests/fixtures/model/. Prints a short table last.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
# cudarc opens libcuda and libnvrtc at run time: put every CUDA library folder on the path.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, sub, "lib") for p in nvidia.__path__ for sub in os.listdir(p)))' 2>/dev/null); do
    [[ -d "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee "$OUT/cpu.txt"
export DS4_REPO_ROOT="$ROOT"
./.devcarry/cuda_vs_cpu --ignored --nocapture --test-threads 1 2>&1 | tee "$OUT/tests.log"
./.devcarry/ds4-gguf tiny --out /tmp/medium-q2.gguf --seed 3 --layers 8 --hidden 1024 --heads 8 \
    --head-dim 512 --q-lora 256 --o-groups 2 --o-lora 256 --swa 128 --idx-heads 16 --idx-topk 512 \
    --n-experts 32 --experts-used 6 --ff 512 --vocab 32768 --experts q2
BENCH=(--synthetic-prompt --ctx-start 512 --ctx-max 4096 --step-mul 2 -n 32)
./.devcarry/ds4-bench -m /tmp/medium-q2.gguf --cpu "${BENCH[@]}" --csv "$OUT/bench-cpu.csv" 2>&1 | tail -2
./.devcarry/ds4-bench -m /tmp/medium-q2.gguf --cuda "${BENCH[@]}" --csv "$OUT/bench-cuda.csv" 2>&1 | tail -2
# ds4 --cuda reproduces transformers through the CLI diagnostic, and ds4-server --cuda serves.
toks=$(python3 -c 'import json; print(",".join(map(str, json.load(open("tests/fixtures/model/q2/tokens.json")))))')
./.devcarry/ds4 --cuda -m tests/fixtures/model/q2/model.gguf --prompt-tokens "$toks" --precise --dump-logits /tmp/q2-cuda.npy
python3 -c 'import numpy as np; a=np.load("/tmp/q2-cuda.npy"); b=np.load("tests/fixtures/model/q2/logits_precise.npy"); print("ds4 --cuda dump-logits vs transformers: max rel %.3e" % (abs(a-b).max()/abs(b).max()))' | tee "$OUT/cli.txt"
./.devcarry/ds4-gguf tiny --tokenizer .devcarry/tokenizer.json --out /tmp/demo.gguf
./.devcarry/ds4-server -m /tmp/demo.gguf --cuda --port 8123 -c 4096 > "$OUT/server.log" 2>&1 &
for i in $(seq 60); do curl -sf localhost:8123/health >/dev/null && break; sleep 0.5; done
curl -s localhost:8123/v1/chat/completions -H 'content-type: application/json' \
    -d '{"model":"deepseek-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}' | tee "$OUT/server-reply.json"; echo
kill %1 2>/dev/null
echo "== tests"; grep -E "test result|CUDA precise|within|panicked" "$OUT/tests.log"
echo "== cpu"; cat "$OUT/bench-cpu.csv"
echo "== cuda"; cat "$OUT/bench-cuda.csv"
echo "== cli"; cat "$OUT/cli.txt"
echo "== server"; grep -o '"finish_reason":"[a-z]*"\|"completion_tokens":[0-9]*' "$OUT/server-reply.json"; grep -i "cuda" "$OUT/server.log" | head -2
