#!/usr/bin/env python3
"""Host memory while a GGUF loads onto the GPU: the weights stream through a staging buffer, never whole in RAM.
Prints JSON.

    python3 bench/load_memory.py /tmp/llama-3.2-1b-q4_k_m.gguf [--context 2048]

Measures the file size, the process's peak resident set (VmHWM) before and after the load, the Python heap's peak
during the load (tracemalloc: every Python and numpy allocation), and the GPU buffer bytes the device allocated (its
BufferLedger). On a CPU adapter (lavapipe) GPU buffers live in host RAM, so the resident peak grows by about the GPU
bytes; what the weights' streaming itself holds is the Python heap's growth during load_weights, which stays near a
staging chunk (16 MiB) or two whatever the file's size (the header and tokenizer, before it, scale with the
vocabulary).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def vm_hwm() -> int:
    """Peak resident set of this process so far, in bytes (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def vm_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("--context", type=int, default=2048)
    a = ap.parse_args()

    import webllm_py.engine as engine_module
    from webllm_py.engine import load_engine
    from webllm_py.host.native import open_device

    # The Python heap while the weights stream (load_weights alone), apart from what the header, the tokenizer and
    # the kernels hold (which scale with the vocabulary and the pipelines, not with the weights).
    streaming: dict[str, int] = {}
    load_weights = engine_module.load_weights

    async def measured_load_weights(*args, **kwargs):
        streaming["heap_before"] = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        try:
            return await load_weights(*args, **kwargs)
        finally:
            current, peak = tracemalloc.get_traced_memory()
            streaming.update(heap_peak=peak, heap_after=current)

    engine_module.load_weights = measured_load_weights

    device = await open_device()
    rss0, hwm0 = vm_rss(), vm_hwm()
    tracemalloc.start()
    t0 = time.perf_counter()
    engine = await load_engine("bench", a.gguf, device=device, context_window_size=a.context, tune=False)
    seconds = time.perf_counter() - t0
    heap_peak = max(tracemalloc.get_traced_memory()[1], streaming["heap_peak"])
    tracemalloc.stop()
    stats = engine.load_stats
    out = {
        "file": a.gguf,
        "file_bytes": os.path.getsize(a.gguf),
        "adapter": stats["adapter"],
        "load_s": round(seconds, 1),
        "rss_before_bytes": rss0,
        "rss_peak_before_bytes": hwm0,
        "rss_peak_bytes": vm_hwm(),
        "rss_after_bytes": vm_rss(),
        "python_heap_peak_bytes": heap_peak,  # the whole load_engine
        # load_weights: the heap when it began, its peak above that while the weights streamed, and after
        "weights_heap_before_bytes": streaming["heap_before"],
        "weights_heap_peak_growth_bytes": streaming["heap_peak"] - streaming["heap_before"],
        "weights_heap_after_bytes": streaming["heap_after"],
        "gpu_peak_bytes": device.peak_allocated_bytes,
        "gpu_bytes": device.allocated_bytes,
        "weight_bytes": stats["weight_bytes"],
        "kv_cache_bytes": stats["kv_cache_bytes"],
        "planned_peak_bytes": stats["planned_peak_bytes"],
    }
    # What the load added beyond the GPU's own buffers (host RAM on a CPU adapter).
    out["rss_peak_growth_bytes"] = out["rss_peak_bytes"] - rss0
    out["rss_growth_beyond_gpu_bytes"] = out["rss_peak_growth_bytes"] - out["gpu_peak_bytes"]
    await engine.unload()
    device.destroy()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
