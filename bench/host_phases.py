#!/usr/bin/env python3
"""Where the host's time per decode step goes on the desktop host (wgpu-native), and whether encoding the next step
before waiting for the current token helps.

    python3 bench/host_phases.py [--model PATH] [--steps 256] [--context 128]

Runs the engine's decode loop by hand (the GPU chains the steps; the host reads token ids one step behind) and times
each host phase per step, in microseconds (median and mean):
  record   the per-dispatch calls (set pipeline, set bind group, dispatch) into the compute pass
  end      ending the pass (wgpu-core checks and tracks every recorded command here)
  finish   the token copy and finishing the command buffer
  submit   queue submit
  read     waiting for the token of the step before and reading it (mostly the GPU running)
Two orders, alternating: "after_read" (the engine's: read token i, then encode and submit step i + 2) and
"pre_encoded" (encode step i + 2, read token i, then submit it), each with its decode tokens/s. Prints JSON.
Diagnostics, not a benchmark of record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

PHASES = ("record", "end", "finish", "submit", "read")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two orders")
    args = ap.parse_args()

    from webllm_py.engine import load_engine
    from webllm_py.host import native
    from webllm_py.kernels.params import pack_state

    model = args.model
    if model is None:
        from tests.e2e.model_path import smollm2_path

        model = str(smollm2_path())
    dev = await native.open_device()
    eng = await load_engine("t", model, device=dev, context_window_size=args.context + 2 * args.steps + 64)
    g = eng.graph
    plan = g.decode_dispatches
    ring = eng.ring

    def encode(step: int, times: dict[str, list[float]]):
        t0 = time.perf_counter()
        encoder = dev.device.create_command_encoder()
        cpass = encoder.begin_compute_pass()
        raw_pass = cpass._internal
        last = None
        for pipeline, bind_group, x, y, z in plan.raw:
            if pipeline != last:
                native._set_pipeline(raw_pass, pipeline)
                last = pipeline
            native._set_bind_group(raw_pass, 0, bind_group, 0, native._NULL)
            native._dispatch(raw_pass, x, y, z)
        t1 = time.perf_counter()
        cpass.end()
        t2 = time.perf_counter()
        dst = ring[step % len(ring)]
        encoder.copy_buffer_to_buffer(g.tokens.handle, 0, dst.handle, 0, 4)
        cb = encoder.finish()
        t3 = time.perf_counter()
        times["record"].append(t1 - t0)
        times["end"].append(t2 - t1)
        times["finish"].append(t3 - t2)
        return cb, dst

    def submit(cb, dst, times: dict[str, list[float]]) -> None:
        t = time.perf_counter()
        index = native._submit_for_index(
            dev.queue._internal, 1, native._ffi.new("WGPUCommandBuffer[1]", [cb._internal])
        )
        dev._written_by[id(dst.handle)] = index
        times["submit"].append(time.perf_counter() - t)

    async def read(step: int, times: dict[str, list[float]]) -> int:
        t = time.perf_counter()
        data = await dev.read_buffer(ring[step % len(ring)], 0, 4)
        times["read"].append(time.perf_counter() - t)
        return struct.unpack("<I", data)[0]

    async def run(order: str) -> dict:
        times: dict[str, list[float]] = {p: [] for p in PHASES}
        dev.write_buffer(g.state, 0, pack_state(args.context, 1, 0))
        submit(*encode(0, times), times)
        submit(*encode(1, times), times)
        t0 = time.perf_counter()
        for i in range(args.steps):
            if order == "pre_encoded":
                ahead = encode(i + 2, times)
                await read(i, times)
                submit(*ahead, times)
            else:
                await read(i, times)
                submit(*encode(i + 2, times), times)
        elapsed = time.perf_counter() - t0
        await read(args.steps, times)
        await read(args.steps + 1, times)
        return {
            "decode_tokens_per_s": round(args.steps / elapsed, 1),
            "us_median": {p: round(statistics.median(v) * 1e6, 1) for p, v in times.items()},
            "us_mean": {p: round(statistics.fmean(v) * 1e6, 1) for p, v in times.items()},
        }

    out = {"adapter": dev.info.summary(), "dispatches": len(plan.raw), "steps": args.steps, "runs": []}
    for _ in range(args.rounds):
        for order in ("after_read", "pre_encoded"):
            out["runs"].append({"order": order, **await run(order)})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
