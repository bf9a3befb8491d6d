#!/usr/bin/env bash
# temporary: run on the GPU machine after the model parts are in /root/parts
cat /root/parts/p0 /root/parts/p1 /root/parts/p2 > /root/smol.gguf
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
M=/root/smol.gguf
for cfg in "GEMV 64 8" "GEMV 32 8" "GEMV_SEG 64 16" "GEMV_SEG 32 16" "GEMV_SEG 128 16" "GEMV_SEG 64 8" "GEMV_SEG 64 32" "GEMV_SEG 256 16"; do
  set -- $cfg
  echo "== $cfg"
  timeout 60 python3 bench/gpu_timing.py --model $M --context 128 --gemv-variant $1 --gemv-wg $2 --gemv-seg $3 | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['gpu_us_per_step'], d['host_us_encode_submit_per_step'], d['gpu_us_per_dispatch_by_group'])"
done
echo "== ctx 1024 GEMV_SEG 64 16"
timeout 60 python3 bench/gpu_timing.py --model $M --context 1024 --gemv-variant GEMV_SEG --gemv-wg 64 --gemv-seg 16 > $OUT/timing_1024.json; cat $OUT/timing_1024.json
