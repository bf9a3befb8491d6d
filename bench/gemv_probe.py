#!/usr/bin/env python3
"""What limits a decode GEMV through wgpu/Vulkan: stand-alone probe kernels on the repacked Q4_0 layout, timed by GPU
timestamps, each with and without naga's run-time checks (host/native.py trusted_shaders). Prints JSON.

    python3 bench/gemv_probe.py [--bandwidth-gbs 4800] [--quick]

The probes (one WGSL template, variants by constants) differ in one thing at a time, so their differences place the
time: a plain streaming read of a big buffer (the memory ceiling of this stack); then GEMVs over the matrix layout of
weights.wgsl (groups of 8 blocks: 8 nibble vec4 words then one word of 8 f16 scales) with TK invocations along K per
row, RT rows per invocation, U blocks loaded before any is used, and MATH:
  none   the loads only (words xor-ed into the sum): the access pattern's own ceiling
  f32    the engine's dequantization (weights.wgsl: fields masked into the mantissa of 2^23) and f32 dot products
  f16    packed-f16 dequantization (a nibble pair masked into two halves at once) and f16 products per block
  dp4a   activations as int8 (llama.cpp's Q8 trick): dot4U8Packed over nibble bytes, one f32 scale per block
The activations are read from global memory (L1/L2) as vec4 words, once per block for the invocation's RT rows.
Weights: several copies together larger than the L2 (60 MB), one per dispatch in turn, so they stream from memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from bench.knobs import pass_timer  # noqa: E402

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

GEMV = """
ENABLE
@group(0) @binding(0) var<storage, read> w_q: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;   // f32: (K / 4) words; f16: K / 8; dp4a: K / 16
@group(0) @binding(2) var<storage, read> xd: array<f32>;        // dp4a: per block (scale, sum of int8)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
const KB: u32 = KBu;       // blocks per row
const N: u32 = Nu;         // rows
const WG: u32 = WGu;
const TK: u32 = TKu;
const RT: u32 = RTu;
const U: u32 = Uu;
const SEGS: u32 = WG / TK;
const ROWS: u32 = SEGS * RT;
const GPR: u32 = KB / 8u * 9u;  // vec4 words per row
RED

fn nib_lo(w: u32) -> vec4<f32> {
  let m = (vec4<u32>(w) & vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u)) | vec4<u32>(0x4B000000u);
  return fma(bitcast<vec4<f32>>(m), vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625),
             vec4<f32>(-8388608.0, -524288.0, -32768.0, -2048.0));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let wg = wid.y * nwg.x + wid.x;
  let row0 = wg * ROWS + (lid / TK) * RT;
  let lane = lid % TK;
  var acc: array<f32, RT>;
  for (var b0 = 0u; b0 < KB; b0 += TK * U) {
    var qs: array<vec4<u32>, U * RT>;
    var ds: array<u32, U * RT>;
    for (var u = 0u; u < U; u++) {
      let b = min(b0 + lane + u * TK, KB - 1u);
      for (var r = 0u; r < RT; r++) {
        let g = min(row0 + r, N - 1u) * GPR + (b / 8u) * 9u;
        qs[u * RT + r] = w_q[g + b % 8u];
        ds[u * RT + r] = w_q[g + 8u][(b % 8u) / 2u] >> (16u * (b & 1u));
      }
    }
    for (var u = 0u; u < U; u++) {
      let bl = b0 + lane + u * TK;
      let live = bl < KB;
      let b = min(bl, KB - 1u);
      MATH
    }
  }
  for (var r = 0u; r < RT; r++) {
    var s = acc[r];
    for (var m = 1u; m < min(TK, 32u); m <<= 1u) {
      s += subgroupShuffleXor(s, m);
    }
    acc[r] = s;
  }
  WIDE
  if (lane == 0u) {
    for (var r = 0u; r < RT; r++) {
      if (row0 + r < N) {
        out[row0 + r] = acc[r];
      }
    }
  }
}
"""
# TK > 32: the warps of a segment add their sums through workgroup memory.
WIDE = """
  for (var r = 0u; r < RT; r++) {
    if (lid % 32u == 0u) {
      red[(lid / 32u) * RT + r] = acc[r];
    }
  }
  workgroupBarrier();
  if (lane == 0u) {
    for (var r = 0u; r < RT; r++) {
      var s = 0.0;
      for (var w = 0u; w < TK / 32u; w++) {
        s += red[(lid / 32u + w) * RT + r];
      }
      acc[r] = s;
    }
  }
"""

MATH = {
    "none": """
      let xv = x[b * 8u];
      for (var r = 0u; r < RT; r++) {
        let q = qs[u * RT + r];
        acc[r] += select(0.0, xv.x, live) * f32((q.x ^ q.y ^ q.z ^ q.w ^ ds[u * RT + r]) & 1u);
      }""",
    "f32": """
      var xb: array<vec4<f32>, 8>;
      var xs = 0.0;
      for (var i = 0u; i < 8u; i++) {
        xb[i] = select(vec4<f32>(0.0), x[b * 8u + i], live);
        xs += dot(xb[i], vec4<f32>(1.0));
      }
      for (var r = 0u; r < RT; r++) {
        let q = qs[u * RT + r];
        var a = dot(nib_lo(q.x), xb[0]) + dot(nib_lo(q.x >> 16u), xb[1]);
        a += dot(nib_lo(q.y), xb[2]) + dot(nib_lo(q.y >> 16u), xb[3]);
        a += dot(nib_lo(q.z), xb[4]) + dot(nib_lo(q.z >> 16u), xb[5]);
        a += dot(nib_lo(q.w), xb[6]) + dot(nib_lo(q.w >> 16u), xb[7]);
        acc[r] += unpack2x16float(ds[u * RT + r]).x * (a - 8.0 * xs);
      }""",
    # x: per block 4 vec4<u32> of f16 pairs, pair k of word j = (x[8j + k], x[8j + k + 4]) for nibble k of word j
    "f16": """
      var xh: array<vec2<f16>, 16>;
      for (var i = 0u; i < 4u; i++) {
        let v = select(vec4<u32>(0u), bitcast<vec4<u32>>(x[b * 4u + i]), live);
        xh[4u * i] = bitcast<vec2<f16>>(v.x); xh[4u * i + 1u] = bitcast<vec2<f16>>(v.y);
        xh[4u * i + 2u] = bitcast<vec2<f16>>(v.z); xh[4u * i + 3u] = bitcast<vec2<f16>>(v.w);
      }
      for (var r = 0u; r < RT; r++) {
        let q = qs[u * RT + r];
        var a = vec2<f16>(0.0);
        for (var j = 0u; j < 4u; j++) {
          let w = q[j];
          for (var k = 0u; k < 4u; k++) {
            let v = bitcast<vec2<f16>>(((w >> (4u * k)) & 0x000F000Fu) | 0x64006400u) - vec2<f16>(1032.0);
            a = fma(v, xh[4u * j + k], a);
          }
        }
        acc[r] += unpack2x16float(ds[u * RT + r]).x * f32(a.x + a.y);
      }""",
    # x: per block 2 vec4<u32> of int8 quads (byte order matching the nibble bytes), xd: (scale, sum) per block
    "dp4a": """
      let xa = select(vec4<u32>(0u), bitcast<vec4<u32>>(x[b * 2u]), live);
      let xc = select(vec4<u32>(0u), bitcast<vec4<u32>>(x[b * 2u + 1u]), live);
      let dx = xd[2u * b];
      let sx = xd[2u * b + 1u];
      for (var r = 0u; r < RT; r++) {
        let q = qs[u * RT + r];
        let m = 0x0F0F0F0Fu;
        var s = dot4U8Packed(q.x & m, xa.x) + dot4U8Packed((q.x >> 4u) & m, xa.y);
        s += dot4U8Packed(q.y & m, xa.z) + dot4U8Packed((q.y >> 4u) & m, xa.w);
        s += dot4U8Packed(q.z & m, xc.x) + dot4U8Packed((q.z >> 4u) & m, xc.y);
        s += dot4U8Packed(q.w & m, xc.z) + dot4U8Packed((q.w >> 4u) & m, xc.w);
        acc[r] += unpack2x16float(ds[u * RT + r]).x * dx * (f32(s) - 8.0 * sx);
      }""",
    # x: per block 3 planes of 2 vec4<u32> signed int8 quads (x ~ scale (65536 h + 256 m + l)), xd: (scale, sum);
    # the exact-tier candidate: 24-bit activations, integer products, one f32 combination per block
    "dp4a3": """
      let dx = xd[2u * b];
      let sx = xd[2u * b + 1u];
      var xp: array<vec4<u32>, 6>;
      for (var i = 0u; i < 6u; i++) {
        xp[i] = select(vec4<u32>(0u), bitcast<vec4<u32>>(x[b * 6u + i]), live);
      }
      for (var r = 0u; r < RT; r++) {
        let q = qs[u * RT + r];
        let m = 0x0F0F0F0Fu;
        let qe = vec4<u32>(q.x & m, q.y & m, q.z & m, q.w & m);
        let qo = vec4<u32>((q.x >> 4u) & m, (q.y >> 4u) & m, (q.z >> 4u) & m, (q.w >> 4u) & m);
        var sp = vec3<f32>(0.0);
        for (var p = 0u; p < 3u; p++) {
          let xa = xp[2u * p];
          let xc = xp[2u * p + 1u];
          var s = dot4I8Packed(qe.x, xa.x) + dot4I8Packed(qo.x, xa.y);
          s += dot4I8Packed(qe.y, xa.z) + dot4I8Packed(qo.y, xa.w);
          s += dot4I8Packed(qe.z, xc.x) + dot4I8Packed(qo.z, xc.y);
          s += dot4I8Packed(qe.w, xc.z) + dot4I8Packed(qo.w, xc.w);
          sp[p] = f32(s);
        }
        acc[r] += unpack2x16float(ds[u * RT + r]).x * dx * (fma(sp.x, 65536.0, fma(sp.y, 256.0, sp.z)) - 8.0 * sx);
      }""",
}


# (WG, TK, RT, U) per probe: TK invocations along K per row (more than 32: warps add through workgroup memory)
F32_SHAPES = [
    (256, 32, 4, 1),
    (256, 32, 4, 2),
    (256, 32, 2, 1),
    (256, 16, 4, 1),
    (128, 32, 4, 1),
    (512, 32, 4, 1),
]
F32_SHAPES += [
    (256, 64, 4, 1),
    (256, 128, 4, 1),
    (256, 256, 4, 1),
    (256, 64, 2, 2),
    (256, 128, 2, 2),
    (256, 256, 2, 1),
]
DP4A_SHAPES = [
    (256, 32, 2, 1),
    (256, 16, 2, 1),
    (256, 32, 4, 1),
    (256, 64, 2, 1),
    (256, 128, 2, 1),
    (256, 256, 2, 1),
]
DP4A_SHAPES += [(256, 64, 4, 1), (256, 256, 4, 1), (256, 128, 1, 2)]
NONE_SHAPES = [(256, 32, 2, 2), (256, 128, 2, 2), (256, 256, 2, 1)]


def gemv_source(math: str, kb: int, n: int, wg: int, tk: int, rt: int, u: int) -> str:
    src = GEMV.replace("MATH", MATH[math]).replace("ENABLE", "")
    wide = tk > 32
    src = src.replace("WIDE", WIDE if wide else "")
    src = src.replace("RED", f"var<workgroup> red: array<f32, {wg // 32 * rt}>;" if wide else "")
    for name, v in (("KB", kb), ("N", n), ("WG", wg), ("TK", tk), ("RT", rt), ("U", u)):
        src = src.replace(f"{name}u;", f"{v}u;")
    return src


async def run_mode(args: argparse.Namespace, trusted: bool, out: dict, rng: np.random.Generator) -> None:
    """Every probe on a device whose shader modules have (trusted=False) or lack naga's run-time checks."""

    from webllm_py.host.native import open_device
    from webllm_py.kernels import ops

    dev = await open_device(extra_features=("timestamp-query",), trusted_shaders=trusted)
    out["adapter"] = dev.info.summary()
    tag = "trusted" if trusted else "checked"
    gpu_seconds = pass_timer(dev, args.repeats)

    def buffer(nbytes: int, label: str, fill: bool = True):
        buf = dev.create_buffer(nbytes, ops.STORAGE, label)
        if fill:
            words = rng.integers(0, 2**32, nbytes // 4, dtype=np.uint32)
            # scales: keep the f16 words finite (exponent < 31) so no NaN path is timed
            dev.write_buffer(buf, 0, (words & np.uint32(0x3BFF3BFF)).tobytes())
        return buf

    src = buffer((4 << 20) if args.quick else (1 << 30), "stream")
    dst = buffer(4 * 256 * 132 * 64, "dst", fill=False)
    if args.warmup_s > 0:  # the GPU idles at a low clock: stream until it is up
        code = STREAM.replace("UNROLL", "1u").replace("LOADS", "acc ^= src[i];")
        pipe = dev.create_pipeline(code, "warmup")
        bg = dev.create_bind_group(pipe, [(0, src, 0, src.size), (1, dst, 0, dst.size)], "warmup")
        t_end = time.perf_counter() + args.warmup_s
        while time.perf_counter() < t_end:
            gpu_seconds([(pipe, bg, 132 * 16, 1, 1)] * 8)
    for unroll in (1, 4) if args.quick else (1, 4, 8):
        loads = " ".join(f"let v{j} = src[i + {j}u * stride];" for j in range(unroll))
        loads += " acc ^= " + " ^ ".join(f"v{j}" for j in range(unroll)) + ";"
        code = STREAM.replace("UNROLL", f"{unroll}u").replace("LOADS", loads)
        pipe = dev.create_pipeline(code, f"stream{unroll}")
        bg = dev.create_bind_group(pipe, [(0, src, 0, src.size), (1, dst, 0, dst.size)], "stream")
        for groups in (132,) if args.quick else (132 * 4, 132 * 16, 132 * 64):
            sec = gpu_seconds([(pipe, bg, groups, 1, 1)] * 4)
            out["stream"][f"{tag}_unroll{unroll}_wg{groups}"] = round(src.size / sec / 1e9, 1)
    dev.destroy_buffer(src)
    print(json.dumps(out["stream"]), file=sys.stderr)

    x = buffer(4 * 14336 * 2, "x")  # f32 x (or 3 int8 planes: 3 bytes a weight, < 8)
    xd = buffer(4 * 2 * 14336 // 32, "xd")
    res = buffer(4 * 128256, "out", fill=False)
    shapes = [("ffn1", 28672, 4096), ("qkv", 6144, 4096), ("o", 4096, 4096), ("ffn2", 4096, 14336)]
    shapes += [("lm_head", 128256, 4096)]
    if args.quick:
        shapes = [("ffn1", 512, 4096)]
    shapes_c = []
    for role, n, k in shapes:
        nbytes = n * k // 32 * 18
        copies = 1 if args.quick else max(1, min(8, int(200e6 / nbytes) + 1))
        if args.one_buffer:  # the copies side by side in one buffer, bound at offsets
            big = buffer(nbytes * copies, f"{role}.w")
            shapes_c.append((role, n, k, nbytes, [(big, i * nbytes) for i in range(copies)]))
        else:
            shapes_c.append(
                (role, n, k, nbytes, [(buffer(nbytes, f"{role}.w{i}"), 0) for i in range(copies)])
            )
    configs = [("f32", *c) for c in F32_SHAPES] + [("dp4a", *c) for c in DP4A_SHAPES]
    configs += [("dp4a3", *c) for c in DP4A_SHAPES]
    configs += [("none", *c) for c in NONE_SHAPES]
    if args.maths:
        configs = [c for c in configs if c[0] in args.maths.split(",")]
    if args.quick:
        configs = [c for c in configs if c[2] in (32, 64)][:6]
    for role, n, k, nbytes, ws in shapes_c:
        for math, wg, tk, rt, u in configs:
            rows = wg // tk * rt
            try:
                pipe = dev.create_pipeline(gemv_source(math, k // 32, n, wg, tk, rt, u), f"gemv_{math}")
            except Exception as exc:  # noqa: BLE001 - a probe that does not compile is reported
                out["gemv"].append({"role": role, "math": math, "mode": tag, "error": str(exc)[:300]})
                continue
            bgs = [
                dev.create_bind_group(
                    pipe,
                    [(0, w, off, nbytes), (1, x, 0, x.size), (3, res, 0, res.size)]
                    + ([(2, xd, 0, xd.size)] if math.startswith("dp4a") else []),
                    "g",
                )
                for w, off in ws
            ]
            groups = -(-n // rows)
            gx, gy = min(groups, 65535), -(-groups // 65535)
            disp = [(pipe, bg, gx, gy, 1) for bg in bgs]
            sec = gpu_seconds((disp * (args.dispatches // len(disp) + 1))[: args.dispatches])
            row = {
                "role": role,
                "rows": n,
                "k": k,
                "math": math,
                "mode": tag,
                "wg": wg,
                "tk": tk,
                "rt": rt,
                "u": u,
                "us": round(sec * 1e6, 2),
                "gb_per_s": round(nbytes / sec / 1e9, 1),
            }
            out["gemv"].append(row)
        best = {}
        for r in out["gemv"]:
            if r.get("role") == role and r.get("mode") == tag and "gb_per_s" in r:
                key = r["math"]
                if key not in best or r["gb_per_s"] > best[key]["gb_per_s"]:
                    best[key] = r
        print(tag, role, json.dumps(best), file=sys.stderr)
        for w in {id(w): w for w, _ in ws}.values():
            dev.destroy_buffer(w)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bandwidth-gbs", type=float, default=4800.0)
    ap.add_argument("--dispatches", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="a few probes on small sizes (a smoke test)")
    ap.add_argument("--one-buffer", action="store_true", help="weight copies in one buffer at offsets")
    ap.add_argument("--modes", default="checked,trusted", help="checked, trusted or both (comma-separated)")
    ap.add_argument("--maths", default="", help="only these MATH kinds (comma-separated; default all)")
    ap.add_argument("--warmup-s", type=float, default=2.0, help="seconds of streaming first (GPU clocks up)")
    args = ap.parse_args()

    out: dict = {"bandwidth_gbs": args.bandwidth_gbs, "stream": {}, "gemv": []}
    rng = np.random.default_rng(0)
    for mode in args.modes.split(","):
        await run_mode(args, mode == "trusted", out, rng)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
