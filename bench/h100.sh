#!/usr/bin/env bash
# The H100 benchmark on the GPU machine (see README "Benchmarks"). The model (98 MB) and wheels exceed one call's
# carry, so the work is split in steps run back to back on the same machine:
#   bench/h100.sh setup        # carry .gl .whl .model1: Vulkan loader, wheels into /tmp/site, model part 0
#   bench/h100.sh part 1|2     # carry .model2 / .model3 (+ .lcp): the other model parts
#   bench/h100.sh build-llama  # carry .lcp: llama.cpp (from llama-cpp-python's sdist) with CUDA for sm_90, background
#   bench/h100.sh ours         # our engine alone: decode bench, per-kernel GPU timings, host time per step
#   bench/h100.sh peer         # waits for the llama.cpp build, then ours and llama.cpp CUDA in one run
# Results land in $OUT as JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
M=/root/smol.gguf
BW=3350  # H100 SXM (80GB HBM3) peak memory bandwidth, GB/s
model() { [ -f $M ] || cat /root/parts/p0 /root/parts/p1 /root/parts/p2 > $M; }
case "$1" in
setup)
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  mkdir -p /root/parts && cp .model1/p0 /root/parts/ && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  ;;
part) cp ".model$(( $2 + 1 ))/p$2" /root/parts/ ;;
build-llama)
  mkdir -p /root/lcp && tar -xzf .lcp/llama_src.tgz -C /root/lcp
  src=/root/lcp/llama.cpp
  setsid nohup bash -c "cmake -S $src -B /root/lcp/build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release && \
    taskset -c 2-15 cmake --build /root/lcp/build -j 14 --target llama && touch /root/lcp/done" \
    > /root/lcp/build.log 2>&1 < /dev/null &
  echo "llama.cpp build started from $src"
  ;;
ours)
  model
  taskset -c 0,1 python3 bench/decode.py --model $M --no-peer --bandwidth-gbs $BW > $OUT/ours.json; cat $OUT/ours.json
  for c in 128 1024; do
    taskset -c 0,1 timeout 120 python3 bench/gpu_timing.py --model $M --context $c > $OUT/gpu_timing_$c.json
    cat $OUT/gpu_timing_$c.json
  done
  taskset -c 0,1 timeout 120 python3 bench/profile_step.py --model $M > $OUT/host_step.json; cat $OUT/host_step.json
  tail -3 /root/lcp/build.log 2>/dev/null
  ;;
peer)
  model
  for _ in $(seq 100); do [ -f /root/lcp/done ] && break; sleep 5; done
  tail -5 /root/lcp/build.log
  lib=$(dirname "$(find /root/lcp/build -name 'libllama.so' | head -1)")
  LLAMA_CPP_LIB_PATH=$lib BENCH_LLAMA_GPU_LAYERS=99 python3 bench/decode.py --model $M --bandwidth-gbs $BW \
    > $OUT/h100_vs_llama_cuda.json
  cat $OUT/h100_vs_llama_cuda.json
  # Greedy from the LM head's argmax partials (on) against the sampler reading every logit (off), alternating.
  for i in 1 2 3; do for f in on off; do
    python3 bench/decode.py --model $M --no-peer --greedy-partials $f > $OUT/partials_${f}_$i.json
    python3 -c "import json; print('partials $f', [r['decode_tokens_per_s'] for r in json.load(open('$OUT/partials_${f}_$i.json'))['ours']['runs']])"
  done; done
  ;;
esac
