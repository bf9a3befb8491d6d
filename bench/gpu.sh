#!/usr/bin/env bash
# The benchmark on a GPU machine (the device tool's H200, or any Linux box with a CUDA GPU and its Vulkan driver).
# It builds its own models (bench/synth_gguf.py: real shapes, random weights) and llama.cpp with CUDA from the
# llama-cpp-python 0.3.36 sources, then runs ours and llama.cpp on the same files and token ids. Steps, run back to
# back on one machine (each call of the device tool may run several):
#   bench/gpu.sh setup             Vulkan loader, wheels into /tmp/site; llama.cpp's CUDA build starts in the background
#   bench/gpu.sh models NAME...    synthetic GGUFs into /root/models (NAME = shape:mix, e.g. llama-3.1-8b:Q4_K_M)
#   bench/gpu.sh kernels [ARGS]    bench/kernels.py: each decode GEMV / prefill GEMM alone at real shapes
#   bench/gpu.sh probe             bench/gemv_probe.py: stand-alone GEMV probes, with and without naga's checks
#   bench/gpu.sh floor             bench/dispatch_floor.py: the cost of an empty dependent dispatch
#   bench/gpu.sh timing NAME...    bench/gpu_timing.py: GPU us and bytes/s per kernel group, decode and prefill
#   bench/gpu.sh tune NAME...      load-time tuning twice from scratch (two processes): the shapes it picks
#   bench/gpu.sh peer REPS NAME... waits for the llama.cpp build; ours and llama.cpp, REPS processes per model
#   bench/gpu.sh ours REPS NAME... / llama REPS NAME...: the two sides of peer apart (ours while llama.cpp builds)
#   bench/gpu.sh test ARGS...      pytest ARGS on the GPU (kernels only a GPU has, e.g. cooperative matrices)
# Needs next to the repository (or in it): .gl (Vulkan loader debs), .whl (wgpu wheels), .lcp (llama_src.tgz,
# llama_cpp_py.tgz), .bench/smol_tok.gguf (the tokenizer the models get). Environment: BW = peak memory bandwidth in
# GB/s (default 4800: H200), OUT = where JSON goes (one JSON object a line per file), CORES = cores for our process,
# OURS_ARGS = extra bench/decode.py flags for our engine (e.g. --checks off).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CARRY=$ROOT; [ -d "$CARRY/.gl" ] || CARRY=$(dirname "$ROOT")
BW=${BW:-4800}
OUT=${OUT:-/tmp/bench_out}
CORES=${CORES:-0,1}
MODELS=/root/models
LCP=/root/lcp
KEEP=/root/keep  # what later calls on the same machine read ($OUT is emptied before each call)
mkdir -p "$OUT" "$MODELS" "$KEEP"
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:/root/lcpy:$ROOT XDG_RUNTIME_DIR=/tmp
file() { echo "$MODELS/${1%%:*}-${1##*:}.gguf"; }
# The prefill GEMM that timed fastest for model $1 in the timing step (empty, the engine's default, when none was).
fastest_gemm() {
  python3 -c "
import json
best = {}
for line in open('$KEEP/timing.jsonl'):
    d = json.loads(line)
    if d['model'] == '$1' and d['tokens'] > 1:
        best[d['gemm']] = d['gpu_us_per_step_without_inner_timestamps']
print(min(best, key=best.get) if best else '')" 2>/dev/null
}
compact() { python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))'; }
# Wait for the llama.cpp build that setup started (up to 10 minutes); fail at once where none was started (a fresh
# machine, or setup with NOBUILD) or it failed, instead of waiting out the limit.
wait_llama() {
  [ -f $LCP/build.log ] || { echo "no llama.cpp build on this machine: run 'bench/gpu.sh setup' without NOBUILD first"; return 1; }
  for _ in $(seq 120); do
    [ -f $LCP/done ] && return 0
    pgrep -f "cmake --build $LCP/build" > /dev/null || pgrep -f "cmake -S $LCP/llama.cpp" > /dev/null || {
      [ -f $LCP/done ] && return 0; echo "the llama.cpp build stopped without finishing:"; tail -5 $LCP/build.log; return 1; }
    sleep 5
  done
  echo "the llama.cpp build did not finish in 10 minutes"; return 1
}
models_present() {  # NAME...: every model file there, else say which step makes them
  for m in "$@"; do [ -f "$(file "$m")" ] || { echo "$(file "$m") is missing: run 'bench/gpu.sh models $m' first"; return 1; }; done
}
step=$1; shift
case "$step" in
setup)
  for f in "$CARRY"/.gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$CARRY"/.whl/*.whl $(ls "$ROOT"/.whl/*.whl 2>/dev/null)
  mkdir -p /root/lcpy "$LCP" && tar -xzf "$CARRY/.lcp/llama_cpp_py.tgz" -C /root/lcpy
  [ -n "${NOBUILD:-}" ] && { nvidia-smi --query-gpu=name,driver_version --format=csv; exit 0; }
  tar -xzf "$CARRY/.lcp/llama_src.tgz" -C "$LCP"
  setsid nohup bash -c "cmake -S $LCP/llama.cpp -B $LCP/build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release && \
    taskset -c 4-15 cmake --build $LCP/build -j 12 --target llama && touch $LCP/done" > $LCP/build.log 2>&1 < /dev/null &
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  ;;
models)
  for m in "$@"; do
    [ -f "$(file "$m")" ] || taskset -c 2,3 python3 bench/synth_gguf.py --shape "${m%%:*}" --mix "${m##*:}" \
      --tokenizer "$CARRY/.bench/smol_tok.gguf" --out "$(file "$m")" > "$OUT/synth_${m/:/_}.tmp" &
  done
  wait
  cat "$OUT"/synth_*.tmp >> "$OUT/models.jsonl" 2>/dev/null; rm -f "$OUT"/synth_*.tmp
  ls -la "$MODELS"
  ;;
kernels)  # [ARGS...] for bench/kernels.py; TAG names the output ($OUT/kernels$TAG.json)
  taskset -c "$CORES" timeout 400 python3 bench/kernels.py --bandwidth-gbs "$BW" "$@" > "$OUT/kernels${TAG:-}.json"
  ;;
probe)  # bench/gemv_probe.py: what limits a GEMV (stand-alone probe kernels, with and without naga's checks)
  taskset -c "$CORES" timeout 400 python3 bench/gemv_probe.py --bandwidth-gbs "$BW" "$@" > "$OUT/probe.json"
  ;;
floor)
  taskset -c "$CORES" timeout 60 python3 bench/dispatch_floor.py | compact >> "$OUT/floor.jsonl"
  ;;
timing)  # NAME... ; BASELINE=NAME also times that model's decode with the previous default kernel (GEMV/64)
  for m in "$@"; do
    configs=("--context 512")
    [ "${BASELINE:-}" = "$m" ] && configs+=("--context 512 --gemv GEMV/64")
    configs+=("--prefill 256 --prefill-pos 256" "--prefill 256 --prefill-pos 256 --gemm GEMM_RT/64")
    [ -n "${RT128:-}" ] && configs+=("--prefill 256 --prefill-pos 256 --gemm GEMM_RT/128")
    for args in "${configs[@]}"; do
      taskset -c "$CORES" timeout 200 python3 bench/gpu_timing.py --model "$(file "$m")" --bandwidth-gbs "$BW" $args \
        | python3 -c "import json,sys; d=json.load(sys.stdin); d['model']='$m'; d['args']='$args'; print(json.dumps(d))" \
        >> "$OUT/timing.jsonl"
      tail -1 "$OUT/timing.jsonl" | tee -a "$KEEP/timing.jsonl" | cut -c1-300
    done
  done
  ;;
tune)
  for m in "$@"; do
    for i in 1 2; do
      HOME=/tmp/fresh_${i}_$RANDOM taskset -c "$CORES" timeout 300 python3 bench/decode.py --model "$(file "$m")" --no-peer \
        --prompt-tokens 64 --decode-tokens 32 \
        | python3 -c "import json,sys; d=json.load(sys.stdin); d['model']='$m'; d['process']=$i; print(json.dumps(d))" \
        >> "$OUT/tune.jsonl"
    done
  done
  ;;
peer)
  reps=$1; shift
  models_present "$@" || exit 1
  wait_llama || exit 1
  tail -3 $LCP/build.log
  lib=$(dirname "$(find $LCP/build -name 'libllama.so' | head -1)")
  for m in "$@"; do
    gemm=$(fastest_gemm "$m")
    for i in $(seq "$reps"); do
      LLAMA_CPP_LIB_PATH=$lib BENCH_LLAMA_GPU_LAYERS=99 taskset -c "$CORES" timeout 300 python3 bench/decode.py \
        --model "$(file "$m")" --prompt-tokens 512 --decode-tokens 128 --threads 2 --bandwidth-gbs "$BW" ${gemm:+--gemm $gemm} \
        ${OURS_ARGS:-} \
        | python3 -c "import json,sys; d=json.load(sys.stdin); d['model']='$m'; d['process']=$i; print(json.dumps(d))" \
        >> "$OUT/peer.jsonl"
      tail -1 "$OUT/peer.jsonl" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); \
        print(d['model'], [(r['decode_tokens_per_s'], r['prefill_tokens_per_s']) for r in d['ours']['runs']], \
        d.get('ratio_ours_over_llama_cpp'))"
    done
  done
  ;;
ours)  # REPS NAME...: our engine alone, REPS processes per model, each tuning afresh (no cache: its picks are the
       # stability evidence), with the model's fastest prefill GEMM from the timing step
  reps=$1; shift
  models_present "$@" || exit 1
  for m in "$@"; do
    gemm=$(fastest_gemm "$m")
    for i in $(seq "$reps"); do
      HOME=/tmp/home_${i}_$RANDOM taskset -c "$CORES" timeout 300 python3 bench/decode.py --model "$(file "$m")" \
        --no-peer --prompt-tokens 512 --decode-tokens 128 --bandwidth-gbs "$BW" ${gemm:+--gemm $gemm} ${OURS_ARGS:-} \
        | python3 -c "import json,sys; d=json.load(sys.stdin); d['model']='$m'; d['process']=$i; \
          d['args']='${OURS_ARGS:-}'; print(json.dumps(d))" >> "$OUT/ours.jsonl"
      tail -1 "$OUT/ours.jsonl" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); \
        print(d['model'], [(r['decode_tokens_per_s'], r['prefill_tokens_per_s']) for r in d['ours']['runs']], \
        d['ours']['tuning']['gemv_by_role'], d['ours']['tuning']['gemm'])"
    done
  done
  ;;
llama)  # REPS NAME...: llama.cpp CUDA alone (waits for its build), REPS processes per model
  reps=$1; shift
  models_present "$@" || exit 1
  wait_llama || exit 1
  tail -2 $LCP/build.log
  lib=$(dirname "$(find $LCP/build -name 'libllama.so' | head -1)")
  for m in "$@"; do
    for i in $(seq "$reps"); do
      LLAMA_CPP_LIB_PATH=$lib BENCH_LLAMA_GPU_LAYERS=99 taskset -c "$CORES" timeout 120 python3 bench/decode.py \
        --model "$(file "$m")" --only-peer --prompt-tokens 512 --decode-tokens 128 --threads 2 \
        | python3 -c "import json,sys; d=json.load(sys.stdin); d['model']='$m'; d['process']=$i; print(json.dumps(d))" \
        >> "$OUT/llama.jsonl"
      tail -1 "$OUT/llama.jsonl" | cut -c1-300
    done
  done
  ;;
test)  # ARGS...: pytest on this GPU (e.g. the cooperative-matrix GEMM's goldens), output in $OUT/pytest.txt
  taskset -c "$CORES" timeout 500 python3 -m pytest -p no:cacheprovider "$@" > "$OUT/pytest.txt" 2>&1
  echo "pytest rc=$?"; tail -25 "$OUT/pytest.txt"
  ;;
*) echo "unknown step $step"; exit 2 ;;
esac
