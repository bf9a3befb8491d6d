#!/usr/bin/env python3
"""GPU time of each kernel in a decode step, from timestamps written between dispatches (wgpu-native only).

    python3 bench/gpu_timing.py [--model PATH] [--context 128] [--bandwidth-gbs 4800] [--gemv GEMV_MR/128/32/4]

Prints JSON: GPU microseconds per kernel group for one decode step (median over --repeats steps), the GPU time of the
whole step, and the host time to encode and submit a step. Needs the adapter features "timestamp-query" and
"timestamp-query-inside-passes" (Vulkan and lavapipe have them). Timestamps between dependent dispatches include
the barrier and launch gap, so a group's time is what it costs in the step, not its kernel alone.
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
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from bench.knobs import add_kernel_args, device_options, kernel_tuning  # noqa: E402


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument(
        "--bandwidth-gbs", type=float, default=None, help="peak memory bandwidth: adds the roofline"
    )
    add_kernel_args(ap)
    ap.add_argument(
        "--prefill-pos", type=int, default=0, help="position of the timed prefill step's first token"
    )
    ap.add_argument(
        "--prefill",
        type=int,
        default=0,
        help="time a prefill step of this many tokens (<= 256) instead of decode",
    )
    ap.add_argument(
        "--greedy-partials",
        choices=["on", "off"],
        default="on",
        help="off: the sampler's greedy argmax reads every logit instead of the LM head's per-workgroup partials",
    )
    args = ap.parse_args()

    import wgpu
    from wgpu.backends.wgpu_native.extras import write_timestamp

    from webllm_py.engine import load_engine
    from webllm_py.host.native import open_device
    from webllm_py.kernels.params import pack_state

    model = args.model
    if model is None:
        from tests.e2e.model_path import smollm2_path

        model = str(smollm2_path())
    dev = await open_device(
        extra_features=("timestamp-query", "timestamp-query-inside-passes"), **device_options(args)
    )
    tuning, tune = kernel_tuning(args, dev)
    eng = await load_engine(
        "t",
        model,
        device=dev,
        tuning=tuning,
        tune=tune,
        context_window_size=max(args.context, args.prefill_pos + args.prefill) + 64,
        prefill_chunk_size=args.prefill_chunk or (args.prefill or None),
    )
    g = eng.graph
    if args.greedy_partials == "off":
        g.sampler.use_partials(0)
    n_tokens = args.prefill or 1
    assert n_tokens <= g.chunk, f"--prefill at most {g.chunk}"
    pos = args.prefill_pos if args.prefill else args.context
    labels = g.roles(n_tokens, pos)
    steps = g.forward(n_tokens, sample=True, pos=pos)
    plan = dev.prepare(steps) if args.prefill else g.decode_dispatches  # what the engine submits
    n = len(steps)
    qs = dev.device.create_query_set(type="timestamp", count=n + 1)
    out_buf = dev.device.create_buffer(
        size=8 * (n + 1), usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC
    )

    def timed_step(inner: bool) -> tuple[int, ...]:
        """Run the step once with a timestamp before the first dispatch and after the last, and with ``inner``
        after every dispatch too; return the timestamps (ns)."""
        dev.write_buffer(g.state, 0, pack_state(pos, n_tokens, 0))
        enc = dev.device.create_command_encoder()
        cpass = enc.begin_compute_pass()
        write_timestamp(cpass, qs, 0)
        for i, (pipe, bg, x, y, z) in enumerate(steps):
            cpass.set_pipeline(pipe)
            cpass.set_bind_group(0, bg)
            cpass.dispatch_workgroups(x, y, z)
            if inner or i == n - 1:
                write_timestamp(cpass, qs, i + 1 if inner else 1)
        cpass.end()
        count = n + 1 if inner else 2
        enc.resolve_query_set(qs, 0, count, out_buf, 0)
        dev.queue.submit([enc.finish()])
        return struct.unpack(f"<{count}Q", bytes(dev.queue.read_buffer(out_buf, 0, 8 * count)))

    per_group: dict[str, list[float]] = defaultdict(list)
    totals = []
    for _ in range(args.repeats):
        ts = timed_step(inner=True)
        sums: dict[str, float] = defaultdict(float)
        for i, lab in enumerate(labels):
            sums[lab] += (ts[i + 1] - ts[i]) / 1e3  # ns -> us
        for k, v in sums.items():
            per_group[k].append(v)
        totals.append((ts[-1] - ts[0]) / 1e3)

    # The step's GPU time with timestamps only at the start and end of the pass (per-dispatch timestamps add their
    # own cost): from the start of the first dispatch to the end of the last.
    pass_only = []
    for _ in range(args.repeats):
        ts = timed_step(inner=False)
        pass_only.append((ts[1] - ts[0]) / 1e3)

    # Host side: encode + submit of one step with the engine's own submit, the GPU idle before each (a full queue
    # would make submit wait).
    host = []
    for _ in range(args.repeats):
        await dev.read_storage(g.state, 0, 4)
        t = time.perf_counter()
        dev.submit(plan)
        host.append(time.perf_counter() - t)
    await dev.read_storage(g.state, 0, 4)
    host_us = statistics.median(host) * 1e6
    # Timestamps between dispatches cost GPU time themselves: their share per dispatch, taken out of each group
    # below (an estimate: the step with them minus the step without, spread evenly).
    stamp_us = max(0.0, (statistics.median(totals) - statistics.median(pass_only)) / n)
    gpu_us = {k: max(0.01, statistics.median(v) - stamp_us * labels.count(k)) for k, v in per_group.items()}
    moved = bytes_by_group(eng, labels, pos + n_tokens)
    result = {
        "adapter": dev.info.summary(),
        "tier": eng.tier.name,
        "context": pos,
        "tokens": n_tokens,
        "dispatches": n,
        "gpu_us_per_step": round(statistics.median(totals), 1),
        "gpu_us_per_step_without_inner_timestamps": round(statistics.median(pass_only), 1),
        "gpu_us_by_group": {k: round(statistics.median(v), 1) for k, v in per_group.items()},
        "gpu_us_per_dispatch_by_group": {
            k: round(statistics.median(v) / labels.count(k), 2) for k, v in per_group.items()
        },
        "timestamp_us_per_dispatch": round(stamp_us, 2),
        # the groups' times less the timestamps' share: what the bytes/s figures below are computed from
        "gpu_us_by_group_less_timestamps": {k: round(v, 1) for k, v in gpu_us.items()},
        "host_us_encode_submit_per_step": round(host_us, 1),
        "kernel_shapes": eng.load_stats.get("gemv"),
        "gemm": f"{eng.kern.gemm_variant}/{eng.kern.gemm_wg}",
        # Bytes each group must read from memory at least (weights; attention: the keys and values it sees), per
        # step, and what that is per second of its GPU time.
        "bytes_by_group": moved,
        "gb_per_s_by_group": {
            k: round(moved[k] / (gpu_us[k] * 1e-6) / 1e9, 1) for k in moved if gpu_us.get(k)
        },
    }
    if args.prefill:  # products of the step: 2 rows K tokens each
        flops = {r: 2 * n_tokens * sum(g.role_weight(r, i).n_rows * g.role_weight(r, i).k for i in range(len(g.layers)))
                 for r in ("qkv", "o", "ffn1", "ffn2") if r in labels}  # fmt: skip
        result["tflops_by_group"] = {k: round(f / (gpu_us[k] * 1e-6) / 1e12, 2) for k, f in flops.items()}
    if args.bandwidth_gbs:
        result["bandwidth_gbs"] = args.bandwidth_gbs
        result["roofline_us_by_group"] = {
            k: round(b / (args.bandwidth_gbs * 1e3), 1) for k, b in moved.items()
        }
        result["fraction_of_bandwidth_by_group"] = {
            k: round(v / args.bandwidth_gbs, 3) for k, v in result["gb_per_s_by_group"].items()
        }
    print(json.dumps(result, indent=1))


def bytes_by_group(eng, labels: list[str], n_keys: int) -> dict[str, int]:
    """Least bytes each kernel group reads per step: its weights (each layer's), attention's keys and values."""
    g, cfg = eng.graph, eng.config
    kv_item = 2 if eng.tier.f16 else 4
    out: dict[str, int] = {}
    for role in ("qkv", "o", "ffn1", "ffn2"):
        if role in labels:
            out[role] = sum(g.role_weight(role, i).nbytes for i in range(len(g.layers)))
    out["lm_head"] = g.lm_head.nbytes
    for role in ("attn", "qkv_attn", "flash_attn"):
        if role in labels:
            out[role] = labels.count(role) * 2 * cfg.n_kv_heads * n_keys * cfg.head_dim * kv_item
    if "qkv_attn" in labels:
        out["qkv_attn"] += sum(L.w.qkv.nbytes for L in g.layers)
    return out


if __name__ == "__main__":
    asyncio.run(main())
