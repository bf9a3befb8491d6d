#!/usr/bin/env python3
"""Decode GEMV and prefill GEMM kernels alone at real model shapes, random weights, GPU timestamps. Prints JSON.

    python3 bench/kernels.py [--shapes llama-3.1-8b ...] [--bandwidth-gbs 4800] [--gemm] [--quick]

For each model shape (bench/synth_gguf.py's) and matrix role (qkv, o, ffn1, ffn2, lm_head) in the formats a hub file
of that shape uses, every decode kernel shape load-time tuning may pick (kernels/tuning.py) is timed: a chain of
dispatches in one compute pass, each reading one of several copies of the weight (together at least --cold-mb, so
the weights come from memory and not from the L2 cache, as in a decode step), each writing the output the next one
overwrites (so the runtime puts a barrier between them, as between the kernels of a step). Reported per shape: GPU
microseconds per dispatch (timestamps at the start and end of the pass, divided by the dispatches) and the weight
bytes per second against --bandwidth-gbs; and the shape tuning's rule would pick from these times. With --gemm the
prefill GEMM variants are timed the same way on a step of --tokens tokens, in TFLOP/s (2 N K tokens per product).
Needs the adapter feature "timestamp-query" (Vulkan and lavapipe have it). Weights are random words: the times do
not depend on the values (no branches on them), and NaN scales cost what finite ones do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from bench.knobs import pass_timer, probed_kernels  # noqa: E402
from bench.synth_gguf import blocks as synth_blocks  # noqa: E402

# shape: hidden, q rows, kv rows, ffn, vocab
SHAPES = {
    "smollm2-135m": (576, 576, 192, 1536, 49152),
    "llama-3.2-1b": (2048, 2048, 512, 8192, 128256),
    "llama-3.1-8b": (4096, 4096, 1024, 14336, 128256),
    "qwen2.5-7b": (3584, 3584, 512, 18944, 152064),
}
# formats per shape: the types a Q4_K_M / Q4_0 / Q4_1 file of that shape stores in each role (bench/synth_gguf.py)
FORMATS = {
    "smollm2-135m": {"Q4_1": ["qkv", "o", "ffn1", "ffn2", "lm_head"], "Q5_0": ["qkv", "o", "ffn1"]},
    "llama-3.2-1b": {
        "Q4_0": ["qkv", "o", "ffn1", "ffn2", "lm_head"],
        "Q4_K": ["qkv", "ffn1"],
        "Q6_K": ["lm_head"],
    },
    "llama-3.1-8b": {
        "Q4_K": ["qkv", "o", "ffn1", "ffn2"],
        "Q6_K": ["ffn2", "lm_head"],
        "Q4_0": ["qkv", "o", "ffn1", "ffn2", "lm_head"],
        "Q8_0": ["qkv"],
    },
    "qwen2.5-7b": {"Q4_K": ["ffn1", "ffn2"]},
}


# The memory ceiling through this stack: every invocation streams vec4<u32> words (16-byte loads) of one big buffer,
# UNROLL independent loads in flight per loop step, and xors them together (so nothing is optimized away).
STREAM = """
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = arrayLength(&src);
  let stride = nwg.x * 256u;
  var acc = vec4<u32>(0u);
  var i = gid.x;
  for (; i + (UNROLL - 1u) * stride < n; i += UNROLL * stride) {
    LOADS
  }
  for (; i < n; i += stride) {
    acc ^= src[i];
  }
  dst[gid.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
"""


def stream_source(unroll: int) -> str:
    loads = " ".join(f"let v{j} = src[i + {j}u * stride];" for j in range(unroll))
    loads += " acc ^= " + " ^ ".join(f"v{j}" for j in range(unroll)) + ";"
    return STREAM.replace("UNROLL", f"{unroll}u").replace("LOADS", loads)


def role_dims(shape: str, role: str) -> tuple[int, int, str, bool]:
    """(rows, K, epilogue, RMSNorm folded in) of a role's product."""
    h, nq, nkv, ff, vocab = SHAPES[shape]
    return {
        "qkv": (nq + 2 * nkv, h, "QKV", True),
        "o": (h, nq, "ADD", False),
        "ffn1": (2 * ff, h, "SILU", True),
        "ffn2": (h, ff, "ADD", False),
        "lm_head": (vocab, h, "STORE", True),
    }[role]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--bandwidth-gbs", type=float, default=4800.0)
    ap.add_argument(
        "--cold-mb", type=float, default=160.0, help="weight copies together at least this many MB"
    )
    ap.add_argument("--dispatches", type=int, default=64)
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed passes per kernel shape; the fastest counts"
    )
    ap.add_argument("--gemm", action="store_true", help="also time the prefill GEMM variants")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument(
        "--gemm-only", action="store_true", help="the prefill GEMM variants alone (implies --gemm)"
    )
    ap.add_argument(
        "--checks",
        choices=["on", "off"],
        default=None,
        help="naga's run-time checks (default: the host's choice)",
    )
    ap.add_argument("--quick", action="store_true", help="few shapes and candidates (a smoke test)")
    ap.add_argument(
        "--stream-mb", type=float, default=1024.0, help="size of the streaming-read ceiling's buffer"
    )
    args = ap.parse_args()

    import wgpu

    from webllm_py.host.native import open_device
    from webllm_py.kernels import ops
    from webllm_py.kernels.ops import default_out_stride
    from webllm_py.kernels.params import pack_state
    from webllm_py.kernels.registry import Q8_FORMATS
    from webllm_py.kernels.tuning import CANDIDATES, Q8_CANDIDATES, pick
    from webllm_py.model.quant import GGMLType

    dev = await open_device(
        extra_features=("timestamp-query",),
        trusted_shaders=None if args.checks is None else args.checks == "off",
    )
    tier, kern, probe = await probed_kernels(dev)
    rng = np.random.default_rng(0)
    gpu_seconds = pass_timer(dev, args.repeats)

    def buffer(nbytes: int, label: str, fill: bool = True):
        buf = dev.create_buffer(nbytes, ops.STORAGE, label)
        if fill:
            dev.write_buffer(buf, 0, rng.integers(0, 2**32, nbytes // 4, dtype=np.uint32).tobytes())
        return buf

    state = dev.create_buffer(16, ops.STORAGE | wgpu.BufferUsage.UNIFORM, "state")
    out: dict = {
        "adapter": dev.info.summary(),
        "tier": tier.name,
        "subgroup_sizes": [probe.min_size, probe.max_size] if probe else None,
        "features": sorted(str(f) for f in dev.adapter.features),
        "limits": {
            k: dev.adapter.limits[k]
            for k in ("max-compute-workgroup-storage-size", "max-storage-buffer-binding-size")
        },
        "bandwidth_gbs": args.bandwidth_gbs,
        "shader_checks": "off" if dev.caps.unchecked_shaders else "on",
        "gemv": [],
        "gemm": [],
    }
    out["cooperative_matrix_feature"] = any("cooperative" in f for f in out["features"])
    # The streaming ceiling: GB/s of a pure 16-byte-load read of --stream-mb.
    src = buffer(int(args.stream_mb * 1e6) // 16 * 16, "stream")
    dst = buffer(4 * 256 * 132 * 64, "stream.dst", fill=False)
    out["stream_read_gb_per_s"] = {}
    for unroll in (1, 4, 8):
        pipe = dev.create_pipeline(stream_source(unroll), f"stream{unroll}")
        bg = dev.create_bind_group(pipe, [(0, src, 0, src.size), (1, dst, 0, dst.size)], "stream")
        for groups in (132 * 4, 132 * 16, 132 * 64):
            sec = gpu_seconds([(pipe, bg, groups, 1, 1)] * 4)
            out["stream_read_gb_per_s"][f"unroll{unroll}_wg{groups}"] = round(src.size / sec / 1e9, 1)
    dev.destroy_buffer(src)
    print(json.dumps(out["stream_read_gb_per_s"]), file=sys.stderr)
    candidates = CANDIDATES[:3] + CANDIDATES[-3:] if args.quick else CANDIDATES
    shapes = args.shapes[:1] if args.quick else args.shapes
    for shape in shapes:
        h, nq, nkv, ff, vocab = SHAPES[shape]
        head_dim = 128 if h >= 4096 else 64
        x = buffer(4 * max(h, ff, nq) * args.tokens, "x")
        norm = buffer(4 * max(h, ff), "norm")
        kv = buffer(2 * 2 * nkv * 256 * 2, "kv", fill=False)
        freq = buffer(4 * head_dim, "freq")
        res = buffer(4 * max(vocab, 2 * ff) * args.tokens, "out", fill=False)
        best = buffer(8 * (vocab // 4 + 1), "best", fill=False)
        for fmt, roles in () if args.gemm_only else FORMATS[shape].items():
            for role in roles[:2] if args.quick else roles:
                n, k, epi, normed = role_dims(shape, role)
                if fmt in ("Q4_K", "Q5_K", "Q6_K") and k % 256:
                    continue
                w0 = ops.alloc_weight(kern, GGMLType[fmt], n, k, f"{role}.w")
                copies = max(1, min(8, int(args.cold_mb * 1e6 / w0.nbytes) + 1))
                weights = [w0] + [
                    ops.alloc_weight(kern, GGMLType[fmt], n, k, f"{role}.w") for _ in range(copies - 1)
                ]
                for w in weights:
                    dev.write_buffer(w.q, 0, rng.integers(0, 2**32, w.nbytes // 4, dtype=np.uint32).tobytes())
                extra: dict = {"norm_w": norm, "eps": 1e-5} if normed else {}
                if epi == "QKV":
                    extra.update(kv=kv, rope_freq=freq, n_q=nq, n_kv=nkv, head_dim=head_dim, max_ctx=256,
                                 rope_dims=head_dim)  # fmt: skip
                dev.write_buffer(state, 0, pack_state(100, 1, 0))
                times, q8_times, alone = {}, {}, {}
                order = (Q8_CANDIDATES if fmt in Q8_FORMATS else ()) + candidates
                for cand in order:
                    if cand.variant == "GEMV_SEG" and not (tier.subgroups and cand.seg <= kern.subgroup_min):
                        continue
                    if cand.variant.startswith("GEMV_MR") and (
                        cand.seg > 4 * (k // 32) or cand.rows_per_workgroup > n
                    ):
                        continue
                    # GEMV_MRQ: three planes (the default), then one (q8_decode); each product is its quantize_x
                    # launch and the GEMV, timed together (what a step pays) and the GEMV alone
                    for planes in (3, 1) if cand.variant == "GEMV_MRQ" else (3,):
                        kern.q8_decode = planes == 1
                        xq = buffer(ops.xq_bytes(max(h, ff, nq), planes), "xq", fill=False)
                        products = [
                            [launch.dispatch(1) for launch in ops.matmul_parts(
                                kern, w=w, x=x, out=res, xq=xq, state=state, epi=epi, gemm=False, gemv=cand,
                                argmax_out=best if role == "lm_head" else None, **extra)]
                            for w in weights
                        ]  # fmt: skip
                        chain = (products * (args.dispatches // len(products) + 1))[: args.dispatches]
                        sec = gpu_seconds([d for prod in chain for d in prod]) * len(products[0])
                        (q8_times if planes == 1 else times)[cand] = sec
                        if len(products[0]) > 1:  # the GEMV without its quantize launch
                            alone[f"{cand.label()}x{planes}"] = round(
                                gpu_seconds([prod[-1] for prod in chain]) * 1e6, 2
                            )
                        dev.destroy_buffer(xq)
                kern.q8_decode = False
                chosen = pick(times, order)
                gbs = {c.label(): round(w0.nbytes / s / 1e9, 1) for c, s in times.items()}
                row = {
                    "shape": shape,
                    "role": role,
                    "format": fmt,
                    "rows": n,
                    "k": k,
                    "weight_bytes": w0.nbytes,
                    "copies": copies,
                    "us": {c.label(): round(s * 1e6, 2) for c, s in times.items()},
                    "gb_per_s": gbs,
                    "picked": chosen.label(),
                    "picked_us": round(times[chosen] * 1e6, 2),
                    "picked_fraction_of_bandwidth": round(gbs[chosen.label()] / args.bandwidth_gbs, 3),
                    # GEMV_MRQ on int8 activations (q8_decode), with its quantize launch
                    "q8_us": {c.label(): round(s * 1e6, 2) for c, s in q8_times.items()},
                    "q8_gb_per_s": {c.label(): round(w0.nbytes / s / 1e9, 1) for c, s in q8_times.items()},
                    "gemv_alone_us": alone,  # GEMV_MRQ without its quantize launch, by planes
                }
                out["gemv"].append(row)
                print(
                    f"{shape:13} {role:8} {fmt:5} {n:6}x{k:<6} best {chosen.label():20} {row['picked_us']:8.1f} us "
                    f"{gbs[chosen.label()]:7.1f} GB/s",
                    file=sys.stderr,
                )
                for w in weights:
                    dev.destroy_buffer(w.q)
        if args.gemm or args.gemm_only:
            dev.write_buffer(state, 0, pack_state(0, args.tokens, 0))
            for fmt in ("Q4_K", "Q4_0"):
                for role in ("qkv", "ffn1", "ffn2"):
                    n, k, epi, normed = role_dims(shape, role)
                    if fmt == "Q4_K" and k % 256:
                        continue
                    # valid blocks (finite scales, unit-variance products) and activations: the variants' results
                    # are compared with GEMM/256's
                    w = ops.alloc_weight(kern, GGMLType[fmt], n, k, f"{role}.w")
                    repack = ops.Repacker(kern)
                    repack.upload(w, GGMLType[fmt], synth_blocks(rng, fmt, n * k, k**-0.5), n)
                    await repack.close(f"{role}.w")
                    dev.write_buffer(x, 0, rng.standard_normal(k * args.tokens, dtype=np.float32).tobytes())
                    dev.write_buffer(norm, 0, (1 + 0.1 * rng.standard_normal(k, dtype=np.float32)).tobytes())
                    inv_freq = 500000.0 ** (-np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
                    dev.write_buffer(freq, 0, inv_freq.astype(np.float32).tobytes())
                    extra = {"norm_w": norm, "eps": 1e-5} if normed else {}
                    if epi == "QKV":
                        extra.update(kv=kv, rope_freq=freq, n_q=nq, n_kv=nkv, head_dim=head_dim, max_ctx=256,
                                     rope_dims=head_dim)  # fmt: skip
                    row = {
                        "shape": shape,
                        "role": role,
                        "format": fmt,
                        "rows": n,
                        "k": k,
                        "tokens": args.tokens,
                    }
                    n_out = default_out_stride(epi, n, nq, nkv)
                    reference = None
                    variants = [("GEMM", 256, False), ("GEMM_RT", 64, False), ("GEMM_RT", 128, False),
                                ("GEMM_RT", 64, True), ("GEMM_RT", 128, True)]  # fmt: skip
                    for variant, wg, half in variants:
                        if half and not tier.f16:
                            continue
                        name = f"{variant}/{wg}{'h' if half else ''}"
                        kern.gemm_variant, kern.gemm_wg, kern.gemm_f16 = variant, wg, half
                        try:
                            launch = ops.matmul(
                                kern, w=w, x=x, out=res, state=state, epi=epi, gemm=True, **extra
                            )
                        except Exception as e:  # a variant this driver or compiler refuses: say why, go on
                            row[f"{name}_error"] = str(e)[:2000]
                            continue
                        # one product from a zeroed output (ADD accumulates), against GEMM/256's: max |diff| / max |ref|
                        dev.write_buffer(res, 0, bytes(4 * n_out * args.tokens))
                        dev.submit([launch.dispatch(args.tokens)])
                        got = np.frombuffer(
                            await dev.read_storage(res, 0, 4 * n_out * args.tokens), np.float32
                        )
                        if reference is None:
                            reference = got.copy()
                        else:
                            scale = float(np.abs(reference).max()) or 1.0
                            row[f"{name}_max_rel_diff"] = float(np.abs(got - reference).max()) / scale
                        s = gpu_seconds([launch.dispatch(args.tokens)] * 4)
                        row[f"{name}_tflops"] = round(2 * n * k * args.tokens / s / 1e12, 2)
                    kern.gemm_variant, kern.gemm_wg, kern.gemm_f16 = "GEMM", 256, False
                    out["gemm"].append(row)
                    print(json.dumps(row), file=sys.stderr)
                    dev.destroy_buffer(w.q)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
