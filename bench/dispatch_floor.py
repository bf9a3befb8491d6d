#!/usr/bin/env python3
"""What one dependent dispatch costs on this adapter, with no model: the floor under a decode step.

    python3 bench/dispatch_floor.py [--dispatches 300]

Prints JSON: microseconds per dispatch for chains of dependent dispatches in one compute pass (each reads and
writes the buffer the previous one wrote, so the runtime puts a barrier between them), for kernels of 1 workgroup
and of 240 workgroups x 32 invocations (a decode matrix-vector product's grid) doing almost nothing, and for the same
number of independent dispatches (each writes its own buffer). A decode step of D dispatches cannot take less than
D times the dependent figure, whatever the kernels do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

KERNEL = """
@group(0) @binding(0) var<storage, read_write> buf: array<f32>;
@compute @workgroup_size(32)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  buf[gid.x] = buf[gid.x] * 0.5 + 1.0;
}
"""


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dispatches", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    from webllm_py.gpu.device import BufferUsage
    from webllm_py.host.native import open_device

    dev = await open_device()
    usage = BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST
    pipeline = dev.create_pipeline(KERNEL, "floor")
    n = args.dispatches
    shared = dev.create_buffer(240 * 32 * 4, usage, "shared")
    own = [dev.create_buffer(240 * 32 * 4, usage, f"own{i}") for i in range(n)]
    bg_shared = dev.create_bind_group(pipeline, [(0, shared, 0, shared.size)], "shared")
    bg_own = [dev.create_bind_group(pipeline, [(0, b, 0, b.size)], f"own{i}") for i, b in enumerate(own)]

    async def us_per_dispatch(dispatches) -> float:
        plan = dev.prepare(dispatches)
        dev.submit(plan)
        await dev.read_storage(shared, 0, 4)
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            dev.submit(plan)
            await dev.read_storage(shared, 0, 4)
            best = min(best, time.perf_counter() - t)
        return best

    empty = await us_per_dispatch([])
    result = {
        "adapter": dev.info.summary(),
        "dispatches": n,
        "empty_submit_and_read_us": round(empty * 1e6, 1),
    }
    cases = {
        "dependent_1_workgroup": [(pipeline, bg_shared, 1, 1, 1)] * n,
        "dependent_240_workgroups": [(pipeline, bg_shared, 240, 1, 1)] * n,
        "independent_240_workgroups": [(pipeline, bg, 240, 1, 1) for bg in bg_own],
    }
    for name, dispatches in cases.items():
        seconds = await us_per_dispatch(dispatches)
        result[f"{name}_us_per_dispatch"] = round((seconds - empty) / n * 1e6, 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
