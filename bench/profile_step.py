#!/usr/bin/env python3
"""Where a decode step's time goes: times 64 decode steps with kernel groups left out of the dispatch list.

    python3 bench/profile_step.py [--model PATH] [--context 128] [--gemv GEMV_MR/128/32/4]

Prints JSON: ms per step for the full step and for the step without each kernel group (qkv, attn, o, ffn1, ffn2,
lm_head, sample), plus an empty submit + 4-byte readback round trip. Left-out kernels make the numbers wrong but
show each group's share. Diagnostics for kernel work, not a benchmark of record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from bench.knobs import add_kernel_args, kernel_tuning  # noqa: E402


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    add_kernel_args(ap)
    args = ap.parse_args()
    from webllm_py.engine import load_engine
    from webllm_py.host.native import open_device
    from webllm_py.kernels.params import pack_state

    model = args.model
    if model is None:
        from tests.e2e.model_path import smollm2_path

        model = str(smollm2_path())
    dev = await open_device()
    tuning, tune = kernel_tuning(args, dev)
    eng = await load_engine(
        "p", model, device=dev, tuning=tuning, tune=tune, context_window_size=args.context + args.steps * 10
    )
    g = eng.graph
    labels = g.decode_roles
    full = g.decode_dispatches
    assert len(labels) == len(full)

    async def time_steps(dispatches) -> float:
        dev.write_buffer(g.state, 0, pack_state(args.context, 1, 0))
        dev.write_buffer(g.tokens, 0, struct.pack("<I", 100))
        dev.submit(dispatches, [(g.tokens, 0, eng.ring[0], 0, 4)])
        await dev.read_buffer(eng.ring[0], 0, 4)
        t = time.perf_counter()
        for _ in range(args.steps):
            dev.submit(dispatches, [(g.tokens, 0, eng.ring[0], 0, 4)])
            await dev.read_buffer(eng.ring[0], 0, 4)
        return (time.perf_counter() - t) / args.steps * 1e3

    out = {
        "adapter": dev.info.summary(),
        "tier": eng.tier.name,
        "context": args.context,
        "dispatches": len(full),
        "ms_per_step": {},
    }
    out["ms_per_step"]["full"] = round(await time_steps(full), 3)
    out["ms_per_step"]["empty_round_trip"] = round(await time_steps([]), 3)
    for group in dict.fromkeys(labels[1:]):
        kept = [d for d, lab in zip(full, labels, strict=True) if lab != group]
        out["ms_per_step"][f"without_{group}"] = round(await time_steps(kept), 3)
    t = time.perf_counter()
    for _ in range(200):
        dev.submit(full)
    await dev.read_storage(g.state, 0, 4)
    out["ms_per_step"]["full_back_to_back_no_readback"] = round((time.perf_counter() - t) / 200 * 1e3, 3)
    t = time.perf_counter()
    for _ in range(200):
        dev.submit([])
    await dev.read_storage(g.state, 0, 4)
    out["ms_per_step"]["empty_submit_only"] = round((time.perf_counter() - t) / 200 * 1e3, 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
