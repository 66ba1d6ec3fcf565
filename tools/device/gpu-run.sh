#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there), from the repository root, with the bundle that
# tools/device/prepare.sh leaves in .devcarry/ (name .devcarry in the device call's `carry`).
#
#   gpu-run.sh check   GPU tests (every CUDA op vs the CPU, the whole model vs transformers and
#                      the CPU, graph replay), then a full-size q2 synthetic model: ds4-bench at
#                      2k and 8k, and a per-kernel profile of decode; ds4 is built meanwhile.
#   gpu-run.sh bench   ds4-bench --cuda and antirez/ds4's ds4-bench on the same synthetic file
#                      (decode 2k/8k/32k, prefill 2k/8k), then ds4-server serving a stream.
#                      $BENCH_AB (VAR=value settings, "-" the defaults): then decode at 2k each.
#   gpu-run.sh quick   for a short lease (about two minutes of commands): the GPU tests, then on
#                      the synthetic file ds4-bench at 2k/8k and the A/B runs of the launch
#                      switches at 2k ($QUICK_AB, space-separated VAR=value), the decode profile, and ds4 at 2k last if its build is done;
#                      every step appends to $OUT/summary.txt as it finishes. QUICK_NCU=REGEX
#                      adds ncu of those prefill kernels (4-layer file, 2048-token prompt).
#   gpu-run.sh timeline  (TL_AB="- old hs …", TL_TIMELINE="- VAR=v,VAR=v …") decode at each
#                      context of $TL_CTX (default 2048) per setting (an earlier build's too;
#                      "hs": --host-sample), then the decode timeline per setting at each
#                      context of $TL_TL_CTX (DS4_CUDA_TIMELINE=1, crates/ds4-cuda/src/timeline.rs).
#   gpu-run.sh ab      (AB="VAR=v - …") ds4-bench at 2k for each environment setting in turn.
#   gpu-run.sh ncu     the GPU tests, then ncu of every kernel of a decode step (CSV, summed per
#                      kernel by ncu-step.py) on a 4-layer file of the full-size shapes, the same
#                      file's replayed step without ncu, and the memory, stall and instruction
#                      sections of the kernels $NCU_KERNELS names (a regex; the decode products
#                      and the HC/norm kernels by default).
#
# Writes logs and CSVs under $OUT and prints a short table last.
set -uo pipefail
MODE="${1:-check}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, sub, "lib") for p in nvidia.__path__ for sub in os.listdir(p)))' 2>/dev/null); do
    [[ -d "$d" ]] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export DS4_REPO_ROOT="$ROOT" DS4_KERNEL_CACHE=/tmp/ds4-kernels
BIN=/tmp/ds4bin
mkdir -p "$BIN"
tar xJf .devcarry/bins.tar.xz -C "$BIN"
xz -dc .devcarry/tokenizer.json.xz > "$BIN/tokenizer.json"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"

# antirez/ds4, built in the background (its snapshot without the imatrix dataset).
mkdir -p /tmp/ds4src
xz -dc .devcarry/ds4-src.tar.xz | tar x -C /tmp/ds4src
(cd /tmp/ds4src && make ds4-bench ds4 CUDA_ARCH=sm_90 -j12 > "$OUT/ds4-build.log" 2>&1; echo "build exit $?" >> "$OUT/ds4-build.log") &
BUILD=$!

PROMPT=/tmp/ds4src/speed-bench/promessi_sposi.txt
synth() {
    mkdir -p /mnt/m && mount -t tmpfs -o size=100g tmpfs /mnt/m
    "$BIN/ds4-gguf" synth --layout q2 --tokenizer "$BIN/tokenizer.json" --out /mnt/m/q2.gguf 2>&1 | tail -1 | tee "$OUT/synth.txt"
}

if [[ "$MODE" == quick ]]; then
    S="$OUT/summary.txt"
    timeout 150 "$BIN/cuda_vs_cpu" --test-threads 1 --nocapture > "$OUT/tests.log" 2>&1
    echo "tests exit $?" >> "$OUT/tests.log"
    grep -E "^test |vs |test result|panicked|exit" "$OUT/tests.log" | head -30 >> "$S"
    synth; cat "$OUT/synth.txt" >> "$S"
    B=(-m /mnt/m/q2.gguf --cuda --prompt-file "$PROMPT" --step-mul 4)
    # A cold start: an empty kernel cache, so the load includes the NVRTC compile.
    DS4_KERNEL_CACHE=/tmp/ds4-cold "$BIN/ds4-bench" "${B[@]}" --ctx-start 2048 --ctx-max 2048 -n 4 --csv "$OUT/cold.csv" > "$OUT/cold.log" 2>&1
    echo "== cold start: $(grep -o 'load [0-9.]* s[^,]*' "$OUT/cold.log" | head -1)" >> "$S"
    "$BIN/ds4-bench" "${B[@]}" --ctx-start 2048 --ctx-max 8192 -n 32 --csv "$OUT/ours.csv" > "$OUT/ours.log" 2>&1
    { echo "== ours (defaults)"; cat "$OUT/ours.csv"; grep -E "ds4-bench:" "$OUT/ours.log"; } >> "$S"
    for v in ${QUICK_AB:-DS4_REPEAT=1 DS4_CUDA_PDL=0 DS4_REPEAT=2}; do
        env $v "$BIN/ds4-bench" "${B[@]}" --ctx-start 2048 --ctx-max 2048 -n 32 --csv "$OUT/ab.csv" > /dev/null 2>&1
        { echo "== ours, $v"; tail -n +2 "$OUT/ab.csv"; } >> "$S"
    done
    DS4_CUDA_PROFILE=1 "$BIN/ds4-bench" "${B[@]}" --ctx-start 2048 --ctx-max 2048 -n 8 --csv "$OUT/profile.csv" > "$OUT/profile.txt" 2>&1
    { echo "== profile"; grep -A24 "per decode step" "$OUT/profile.txt"; } >> "$S"
    if [[ -n "${QUICK_NCU:-}" ]]; then
        # Hardware counters of the prefill kernels named by the regex $QUICK_NCU, on a 4-layer
        # file of the full-size shapes with a 2048-token prompt.
        "$BIN/ds4-gguf" synth --layout q2 --layers 4 --tokenizer "$BIN/tokenizer.json" --out /mnt/m/l4.gguf > /dev/null 2>&1
        NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
        DS4_CUDA_GRAPHS=0 timeout 150 "$NCU" --clock-control none -k regex:"$QUICK_NCU" -c 6 \
            --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
            --section WarpStateStats --section Occupancy --section LaunchStats --section InstructionStats \
            "$BIN/ds4-bench" -m /mnt/m/l4.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 2048 -n 1 > "$OUT/ncu-prefill.txt" 2>&1
        { echo "== ncu"; grep -E "^  [a-z_0-9]+\(|^    Duration|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Registers Per Thread|Issue Slots Busy|Executed Ipc A|Block Limit|Stall|L1/TEX Hit|Shared Memory" "$OUT/ncu-prefill.txt" | head -80; } >> "$S"
    fi
    if grep -q "build exit 0" "$OUT/ds4-build.log" 2>/dev/null; then
        DS4_CUDA_COPY_MODEL=1 /tmp/ds4src/ds4-bench "${B[@]}" --ctx-start 2048 --ctx-max 2048 -n 32 --csv "$OUT/ds4.csv" > "$OUT/ds4.log" 2>&1
        { echo "== ds4"; cat "$OUT/ds4.csv"; } >> "$S"
    else
        echo "== ds4 build not done: $(tail -1 "$OUT/ds4-build.log" 2>/dev/null)" >> "$S"
    fi
    # Everything else in one archive: the device call brings back only a few files.
    (cd "$OUT" && tar czf /tmp/logs.tgz --exclude summary.txt . && find . -type f ! -name summary.txt -delete && mv /tmp/logs.tgz .)
    cat "$S"
    exit 0
fi

if [[ "$MODE" == timeline ]]; then
    # On the full-size q2 file at 2k, after the GPU tests (TL_TESTS=0 skips them): decode per
    # setting of $TL_AB in turn (space-separated VAR=value[,VAR=value…], "-" the defaults; one
    # that starts with "old" runs .devcarry/old-bench.xz, an earlier commit's ds4-bench, for an
    # A/B of two builds in one call: "old" or "old,VAR=value"), then the decode timeline
    # (DS4_CUDA_TIMELINE=1: every kernel's start as it really runs, graphs, dependent launch
    # and branches on) for each setting of $TL_TIMELINE (default "-").
    S="$OUT/summary.txt"
    if [[ "${TL_TESTS:-1}" != 0 ]]; then
        timeout 150 "$BIN/cuda_vs_cpu" --test-threads 1 --nocapture > "$OUT/tests.log" 2>&1
        echo "tests exit $?" >> "$OUT/tests.log"
        grep -E "^test |vs |test result|panicked|exit" "$OUT/tests.log" | head -30 >> "$S"
    fi
    synth; cat "$OUT/synth.txt" >> "$S"
    [[ -f .devcarry/old-bench.xz ]] && xz -dc .devcarry/old-bench.xz > /tmp/old-bench && chmod +x /tmp/old-bench
    setting() { # $1: a setting; prints "bench args-and-env…" ("hs": this build with --host-sample)
        local b="$BIN/ds4-bench" v="$1" a=""
        if [[ "$v" == old* ]]; then b=/tmp/old-bench; v=${v#old}; v=${v#,}; fi
        if [[ "$v" == hs* ]]; then a="--host-sample"; v=${v#hs}; v=${v#,}; fi
        v=${v:--}; v=${v/#-/DS4_AB=1}
        echo "$b $a|${v//,/ }"
    }
    for c in ${TL_CTX:-2048}; do
        B=(-m /mnt/m/q2.gguf --cuda --synthetic-prompt --ctx-start "$c" --ctx-max "$c")
        for v in ${TL_AB:-}; do
            IFS='|' read -r cmd envs <<< "$(setting "$v")"
            env $envs $cmd "${B[@]}" -n 64 --csv "$OUT/ab.csv" > /dev/null 2>&1
            echo "== $c $v: $(tail -n 1 "$OUT/ab.csv")" >> "$S"
        done
    done
    i=0
    for c in ${TL_TL_CTX:-2048}; do
        B=(-m /mnt/m/q2.gguf --cuda --synthetic-prompt --ctx-start "$c" --ctx-max "$c")
        for v in ${TL_TIMELINE:--}; do
            IFS='|' read -r cmd envs <<< "$(setting "$v")"
            env $envs DS4_CUDA_TIMELINE=1 $cmd "${B[@]}" -n 32 > "$OUT/timeline$i.txt" 2>&1
            { echo "== timeline, $c $v"; grep -A60 "CUDA timeline" "$OUT/timeline$i.txt"; } >> "$S"
            i=$((i + 1))
        done
    done
    (cd "$OUT" && tar czf /tmp/logs.tgz --exclude summary.txt . && find . -type f ! -name summary.txt -delete && mv /tmp/logs.tgz .)
    cat "$S"
    exit 0
fi

if [[ "$MODE" == ab ]]; then
    # Decode/prefill at 2k for each setting in $AB (space-separated VAR=value, "-" for the
    # defaults), in the given order, on the synthetic q2 file; one CSV line each.
    synth
    B=(-m /mnt/m/q2.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 2048 -n 32)
    for v in ${AB:--}; do
        env ${v/#-/DS4_AB=1} "$BIN/ds4-bench" "${B[@]}" --csv "$OUT/ab.csv" > "$OUT/ab.log" 2>&1
        echo "$v $(tail -n 1 "$OUT/ab.csv") $(grep -o 'load [0-9.]* s' "$OUT/ab.log")" | tee -a "$OUT/summary.txt"
    done
    exit 0
fi

if [[ "$MODE" == ncu ]]; then
    # Every kernel of the last decode steps on a 4-layer file of the full-size shapes (ncu's
    # kernel replay backs up device memory: too slow with the whole model loaded), as CSV, then
    # the memory and stall sections of the decode products.
    # The GPU tests first (every kernel against the CPU), then the counters.
    timeout 150 "$BIN/cuda_vs_cpu" --test-threads 1 --nocapture > "$OUT/tests.log" 2>&1
    echo "tests exit $?" >> "$OUT/tests.log"
    mkdir -p /mnt/m && mount -t tmpfs -o size=30g tmpfs /mnt/m
    "$BIN/ds4-gguf" synth --layout q2 --layers 4 --tokenizer "$BIN/tokenizer.json" --out /mnt/m/l4.gguf > "$OUT/synth.txt" 2>&1
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    L4=(-m /mnt/m/l4.gguf --cuda --prompt-file "$PROMPT" --ctx-start 64 --ctx-max 64 -n 3)
    if [[ "${NCU_ALL:-1}" != 0 ]]; then
        DS4_CUDA_GRAPHS=0 timeout 200 "$NCU" --clock-control none --cache-control none --csv --section SpeedOfLight -c 900 \
            "$BIN/ds4-bench" "${L4[@]}" > "$OUT/ncu-all.csv" 2> "$OUT/ncu-all.err"
    fi
    DS4_CUDA_GRAPHS=0 timeout 150 "$NCU" --clock-control none --cache-control none -k regex:"${NCU_KERNELS:-^(mv_q8_0|gu_iq2_xxs|dn_q2_k|hc_step|rms_norm)\$}" -c "${NCU_COUNT:-12}" \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats --section InstructionStats \
        "$BIN/ds4-bench" "${L4[@]}" > "$OUT/ncu-decode.txt" 2>&1
    # The replayed step of the same file without ncu, for the sum of kernel durations to meet.
    for v in - ${NCU_AB:-}; do
        env ${v/#-/DS4_AB=1} "$BIN/ds4-bench" -m /mnt/m/l4.gguf --cuda --prompt-file "$PROMPT" --ctx-start 64 --ctx-max 64 -n 64 --csv "$OUT/l4ab.csv" > "$OUT/l4.log" 2>&1
        echo "$v $(tail -n 1 "$OUT/l4ab.csv")" >> "$OUT/l4.csv"
    done
    S="$OUT/summary.txt"
    grep -E "^test |vs |test result|panicked|exit" "$OUT/tests.log" | head -30 > "$S"
    { echo "== 4-layer file, replayed decode (no ncu)"; cat "$OUT/l4.csv"; } >> "$S"
    [[ -f "$OUT/ncu-all.csv" ]] && { echo "== ncu durations"; python3 tools/device/ncu-step.py "$OUT/ncu-all.csv" 2>&1 | head -60; } >> "$S"
    { echo "== ncu decode kernels"; grep -E "^  [a-z_0-9]+ \(|^    Duration|DRAM Throughput|L1/TEX Cache Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Registers Per Thread|Issue Slots Busy|Executed Ipc A|Stall|L1/TEX Hit|Mem Pipes Busy" "$OUT/ncu-decode.txt" | head -150; } >> "$S"
    (cd "$OUT" && tar czf /tmp/logs.tgz --exclude summary.txt . && find . -type f ! -name summary.txt -delete && mv /tmp/logs.tgz .)
    cat "$S"
    exit 0
fi

if [[ "$MODE" == check ]]; then
    timeout 300 "$BIN/cuda_vs_cpu" --test-threads 1 --nocapture > "$OUT/tests.log" 2>&1
    echo "tests exit $?" >> "$OUT/tests.log"
    synth
    wait $BUILD
    "$BIN/ds4-bench" -m /mnt/m/q2.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 8192 --step-mul 4 -n 32 --csv "$OUT/ours.csv" > "$OUT/ours.log" 2>&1
    DS4_CUDA_PROFILE=1 "$BIN/ds4-bench" -m /mnt/m/q2.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 2048 -n 16 --csv "$OUT/profile.csv" > "$OUT/profile.txt" 2>&1
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    DS4_CUDA_GRAPHS=0 timeout 240 "$NCU" --clock-control none -k regex:"^(gu_iq2_xxs|dn_q2_k|mv_q8_0|mv_f16|attn_partial|quant_q8)$" -c 14 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats --section LaunchStats \
        "$BIN/ds4-bench" -m /mnt/m/q2.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 2048 -n 2 > "$OUT/ncu.txt" 2>&1
    echo "== tests"; grep -E "^test |vs |test result|panicked|exit" "$OUT/tests.log" | head -30
    echo "== synth"; cat "$OUT/synth.txt"
    echo "== ours"; cat "$OUT/ours.csv"; grep -E "ds4-bench|ds4:|error" "$OUT/ours.log"
    echo "== profile"; grep -A40 "CUDA profile" "$OUT/profile.txt" | head -45
    echo "== ncu"; grep -E "^  [a-z_0-9]+\(|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Block Limit|Grid Size|One or More|Stall|Warp Cycles Per Issued" "$OUT/ncu.txt" | head -120
    echo "== ds4 build"; tail -1 "$OUT/ds4-build.log"
    exit 0
fi

# bench
timeout 300 "$BIN/cuda_vs_cpu" --test-threads 1 --nocapture > "$OUT/tests.log" 2>&1
echo "tests exit $?" >> "$OUT/tests.log"
synth
wait $BUILD
"$BIN/ds4-bench" -m /mnt/m/q2.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 32768 --step-mul 4 -n 64 --csv "$OUT/ours.csv" > "$OUT/ours.log" 2>&1
DS4_CUDA_COPY_MODEL=1 /tmp/ds4src/ds4-bench -m /mnt/m/q2.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 32768 --step-mul 4 -n 64 --csv "$OUT/ds4.csv" > "$OUT/ds4.log" 2>&1
# BENCH_SERVER=0 and BENCH_PROFILE=0 skip the server's stream and the event profile (a short lease).
if [[ "${BENCH_SERVER:-1}" != 0 ]]; then
"$BIN/ds4-server" -m /mnt/m/q2.gguf --cuda --port 8123 -c 8192 > "$OUT/server.log" 2>&1 &
SRV=$!
for i in $(seq 120); do curl -sf localhost:8123/health >/dev/null && break; sleep 1; done
curl -sN localhost:8123/v1/chat/completions -H 'content-type: application/json' \
    -d '{"model":"deepseek-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":16,"stream":true}' > "$OUT/server-stream.txt"
kill $SRV 2>/dev/null; wait $SRV 2>/dev/null
fi
[[ "${BENCH_PROFILE:-1}" != 0 ]] && DS4_CUDA_PROFILE=1 "$BIN/ds4-bench" -m /mnt/m/q2.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 2048 -n 16 --csv "$OUT/profile.csv" > "$OUT/profile.txt" 2>&1
# $BENCH_AB (space-separated settings, each VAR=value[,VAR=value…] or "-" for the defaults):
# decode at 2k per setting, in turn.
for v in ${BENCH_AB:-}; do
    v2=${v/#-/DS4_AB=1}
    env ${v2//,/ } "$BIN/ds4-bench" -m /mnt/m/q2.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 2048 -n 32 --csv "$OUT/ab.csv" > /dev/null 2>&1
    echo "$v $(tail -n +2 "$OUT/ab.csv")" >> "$OUT/bench-ab.txt"
done
# The same prefill with the routed experts on the per-expert split-f16 GEMMs (A/B of mq_experts).
[[ "${BENCH_MQ0:-1}" != 0 ]] && DS4_CUDA_MQ=0 "$BIN/ds4-bench" -m /mnt/m/q2.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 2048 -n 8 --csv "$OUT/nomq.csv" > "$OUT/nomq.log" 2>&1
# Where a prefill chunk's time goes, kernels (cuBLAS's too) and the gaps between them: nsys on a
# 2048-token prompt of a 4-layer file ($BENCH_NSYS=0 skips it: up to four minutes).
NSYS=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -1)
if [[ -n "$NSYS" && "${BENCH_NSYS:-1}" != 0 ]]; then
    "$BIN/ds4-gguf" synth --layout q2 --layers 4 --tokenizer "$BIN/tokenizer.json" --out /mnt/m/q2l4.gguf > /dev/null 2>&1
    DS4_CUDA_GRAPHS=0 timeout 120 "$NSYS" profile -o /tmp/pre --force-overwrite true --stats=false \
        "$BIN/ds4-bench" -m /mnt/m/q2l4.gguf --cuda --prompt-file "$PROMPT" --ctx-start 2048 --ctx-max 2048 -n 1 > "$OUT/nsys.log" 2>&1
    timeout 120 "$NSYS" stats -r cuda_gpu_kern_sum,cuda_api_sum,cuda_gpu_mem_time_sum -f csv -o "$OUT/nsys" /tmp/pre.nsys-rep >> "$OUT/nsys.log" 2>&1
else
    echo "no nsys" > "$OUT/nsys.log"
fi
echo "== tests"; grep -E "^test |vs |test result|panicked|exit" "$OUT/tests.log" | head -30
echo "== profile"; grep -A32 "per decode step" "$OUT/profile.txt" | head -34; grep -A14 "per prefill chunk" "$OUT/profile.txt"
echo "== nsys (4 layers, 2048-token prefill)"; for f in "$OUT"/nsys_*.csv; do echo "-- $f"; head -16 "$f" | cut -c1-160; done; tail -3 "$OUT/nsys.log"
echo "== synth"; cat "$OUT/synth.txt"
echo "== ours"; cat "$OUT/ours.csv"; grep -E "ds4-bench|ds4:|error" "$OUT/ours.log"
echo "== ds4"; cat "$OUT/ds4.csv"; tail -3 "$OUT/ds4.log"
echo "== ours, DS4_CUDA_MQ=0"; cat "$OUT/nomq.csv"
if [[ -f "$OUT/bench-ab.txt" ]]; then echo "== A/B at 2k (setting, then the csv row)"; cat "$OUT/bench-ab.txt"; fi
echo "== server"; grep -c '^data: {' "$OUT/server-stream.txt"; tail -2 "$OUT/server-stream.txt"; grep -i "cuda" "$OUT/server.log" | head -2
(cd "$OUT" && tar czf /tmp/logs.tgz . && find . -type f -delete && mv /tmp/logs.tgz .)
