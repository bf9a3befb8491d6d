#!/usr/bin/env python3
"""Why mid-size decode GEMVs stream slower than the LM head: one GEMV shape over a scan of row counts, epilogues and
chain kinds, GPU timestamps. Prints JSON.

    python3 bench/gemv_scan.py [--bandwidth-gbs 4800] [--gemv GEMV_MRQ/128/32/2 ...] [--rows 4096 28672 128256]

On the H200 (bench/results/h200_kernels_planes_all_formats.json) GEMV_MRQ read an 8B shape's LM head (128,256 x
4,096, Q4_0, 295 MB) at 4.0 TB/s but its ffn1 (28,672 x 4,096, 66 MB) at 1.5 TB/s, the same kernel shape. Each row
of this scan changes one thing, K fixed at 4,096, x as planes from one quantize launch (not timed):
  rows     the product's rows (weight bytes grow with them; workgroups = rows / rows per workgroup)
  epi      STORE (the LM head's, without its argmax partials) or SILU (ffn1's gate/up pairs)
  chain    dependent: every dispatch writes the one output buffer, so the runtime puts a barrier between them, as
           between a decode step's kernels; independent: each dispatch writes its own output buffer, no barrier
  copies   the weight copies cycled through (together at least --cold-mb: from memory, not the L2)
Reported: GPU microseconds per dispatch and weight bytes per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from bench.knobs import pass_timer, probed_kernels  # noqa: E402
from bench.synth_gguf import blocks as synth_blocks  # noqa: E402


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bandwidth-gbs", type=float, default=4800.0)
    ap.add_argument("--gemv", nargs="+", default=["GEMV_MRQ/128/32/2", "GEMV_MRQ/256/32/4"])
    ap.add_argument("--rows", type=int, nargs="+", default=[4096, 14336, 28672, 57344, 128256])
    ap.add_argument("--formats", nargs="+", default=["Q4_0", "Q4_K"])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--cold-mb", type=float, default=240.0)
    ap.add_argument("--dispatches", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--fill",
        choices=["blocks", "words"],
        default="blocks",
        help="weights and x: valid blocks and unit-normal x, or random 32-bit words in both (kernels.py's fill)",
    )
    ap.add_argument("--epis", nargs="+", default=["STORE", "SILU"])
    ap.add_argument("--chains", nargs="+", default=["dependent", "independent"])
    args = ap.parse_args()

    import wgpu

    from webllm_py.host.native import open_device
    from webllm_py.kernels import ops
    from webllm_py.kernels.params import pack_state
    from webllm_py.kernels.tuning import GemvConfig
    from webllm_py.model.quant import GGMLType

    dev = await open_device(extra_features=("timestamp-query",))
    _, kern, _ = await probed_kernels(dev)
    rng = np.random.default_rng(0)
    gpu_seconds = pass_timer(dev, args.repeats)
    k = args.k
    state = dev.create_buffer(16, ops.STORAGE | wgpu.BufferUsage.UNIFORM, "state")
    dev.write_buffer(state, 0, pack_state(100, 1, 0))
    x = dev.create_buffer(4 * k, ops.STORAGE, "x")
    if args.fill == "words":
        dev.write_buffer(x, 0, rng.integers(0, 2**32, k, dtype=np.uint32).tobytes())
    else:
        dev.write_buffer(x, 0, rng.standard_normal(k, dtype=np.float32).tobytes())
    xq = dev.create_buffer(ops.xq_bytes(k, kern.act_planes), ops.STORAGE, "xq")
    outs = [dev.create_buffer(4 * max(args.rows), ops.STORAGE, f"out{i}") for i in range(args.dispatches)]
    out: dict = {"adapter": dev.info.summary(), "bandwidth_gbs": args.bandwidth_gbs, "k": k, "scan": []}
    for fmt in args.formats:
        for n in args.rows:
            w0 = ops.alloc_weight(kern, GGMLType[fmt], n, k, "w")
            copies = max(1, min(16, int(args.cold_mb * 1e6 / w0.nbytes) + 1))
            weights = [w0] + [ops.alloc_weight(kern, GGMLType[fmt], n, k, "w") for _ in range(copies - 1)]
            if args.fill == "words":
                for w in weights:
                    dev.write_buffer(w.q, 0, rng.integers(0, 2**32, w.nbytes // 4, dtype=np.uint32).tobytes())
            else:
                raw = synth_blocks(rng, fmt, n * k, k**-0.5)
                repack = ops.Repacker(kern)
                for w in weights:
                    repack.upload(w, GGMLType[fmt], raw, n)
                await repack.close("w")
            for label in args.gemv:
                variant, wg, seg, rt = label.split("/")
                gemv = GemvConfig(variant, int(wg), int(seg), int(rt))
                for epi in args.epis:
                    # (quantize_x, the GEMV) of a weight w into an output buffer out
                    launches = partial(
                        ops.matmul_parts, kern, x=x, xq=xq, state=state, epi=epi, gemm=False, gemv=gemv
                    )
                    dev.submit([launches(w=w0, out=outs[0])[0].dispatch(1)])  # the planes, once
                    for chain in args.chains:
                        # dependent: one output buffer (a barrier between dispatches); independent: one each
                        targets = [outs[0]] * args.dispatches if chain == "dependent" else outs
                        seq = [
                            launches(w=weights[i % copies], out=o)[-1].dispatch(1)
                            for i, o in enumerate(targets)
                        ]
                        sec = gpu_seconds(seq)
                        row = {
                            "format": fmt,
                            "rows": n,
                            "gemv": label,
                            "epi": epi,
                            "chain": chain,
                            "copies": copies,
                            "fill": args.fill,
                            "weight_bytes": w0.nbytes,
                            "us": round(sec * 1e6, 2),
                            "gb_per_s": round(w0.nbytes / sec / 1e9, 1),
                        }
                        out["scan"].append(row)
                        print(json.dumps(row), file=sys.stderr)
            for w in weights:
                dev.destroy_buffer(w.q)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
