"""Requantize a GGUF file exactly as llama.cpp's ``llama_model_quantize`` does, in numpy, byte for byte.

    python3 scripts/requantize.py SRC.gguf --ftype Q4_K_M --out DST.gguf

Why: the end-to-end K-quant tests need SmolLM2-135M in Q4_K_M / Q5_K_M / Q6_K / Q8_0 (~100 MB each, too big to
commit) and every tiny architecture fixture in the same four types (only its Q4_K_M file is committed), and CI
cannot build llama.cpp. So CI makes them with this script, from the Q4_1 file it already has and from the
committed Q4_K_M fixtures, and checks each result's sha256 against the one recorded from llama.cpp's own output
(tests/data/arch/smollm2_kquants.json, goldens.json; tests/e2e/kquant_models.py). The goldens are made on
llama.cpp's files; equal bytes make them valid for ours.

What is reproduced (llama.cpp as vendored by llama-cpp-python 0.3.36, commit 0c1e570; no importance matrix):

* the type of each tensor (llama-quant.cpp): only matrices whose name ends in ``weight`` and is not a norm are
  quantized; the tied embedding / ``output.weight`` get Q6_K (Q8_0 in a Q8_0 file, and whenever the row length is not
  a multiple of 256); ``attn_v``/``attn_qkv`` and ``ffn_down`` get Q6_K in the "use more bits" layers of the *_M
  mixes; K-types fall back to Q5_0 / Q5_1 / Q8_0 for rows that are not multiples of 256. A tensor already of its
  target type is copied unchanged.
* the arithmetic: source blocks are dequantized to f32 as ggml's ``dequantize_row_*`` do, then quantized by ggml's
  reference quantizers (the path llama.cpp takes without an imatrix): Q8_0 / Q5_0 / Q5_1 per 32-block, Q4_K / Q5_K
  (per-32 scale and min searched by a weighted least-squares scan, then 6-bit scales per 256) and Q6_K (per-16 signed
  scale searched over 18 candidates). Every f32 operation is done in the same order as the C code, because float
  addition does not associate: sums run element by element, vectorized across blocks only. llama.cpp's ggml-base
  (where these functions live) is built without FMA, so each product and sum rounds on its own, as in numpy.
* the file layout (gguf.cpp): metadata copied in order with ``general.quantization_version`` and
  ``general.file_type`` moved to the end, tensors ordered by layer number and then by name, data aligned to 32.

Sources may be F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K (so a committed Q4_K_M
file can stand for its Q5_K_M, Q6_K and Q8_0 siblings); architectures those the project supports (others may add
rules of their own in llama-quant.cpp that are not reproduced here: an error says so).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

F32 = np.float32

# ggml type ids (ggml.h) and their (weights per block, bytes per block).
F32_T, F16_T, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30
BLOCK = {
    F32_T: (1, 4),
    F16_T: (1, 2),
    BF16: (1, 2),
    Q4_0: (32, 18),
    Q4_1: (32, 20),
    Q5_0: (32, 22),
    Q5_1: (32, 24),
    Q8_0: (32, 34),
    Q4_K: (256, 144),
    Q5_K: (256, 176),
    Q6_K: (256, 210),
}
TYPE_NAMES = {
    F32_T: "F32",
    F16_T: "F16",
    BF16: "BF16",
    Q4_0: "Q4_0",
    Q4_1: "Q4_1",
    Q5_0: "Q5_0",
    Q5_1: "Q5_1",
    Q8_0: "Q8_0",
    Q4_K: "Q4_K",
    Q5_K: "Q5_K",
    Q6_K: "Q6_K",
}
# llama_ftype values (llama.h) -> the file's default tensor type.
FTYPES = {"Q8_0": (7, Q8_0), "Q4_K_M": (15, Q4_K), "Q5_K_M": (17, Q5_K), "Q6_K": (18, Q6_K)}
FALLBACK = {Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}  # tensor_type_fallback, for rows not a multiple of 256
GGML_QNT_VERSION = 2
ALIGNMENT = 32
SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3")


# ---- f32 helpers that behave like ggml's -------------------------------------------------------------------------


def f16_bits(x: np.ndarray) -> np.ndarray:
    """f32 -> IEEE half bits, round to nearest even (ggml's GGML_FP32_TO_FP16 rounds the same way)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, F32).astype(np.float16).view(np.uint16)


def f16_value(bits: np.ndarray) -> np.ndarray:
    return bits.view(np.float16).astype(F32)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5 * 2^23 in f32 and read the low mantissa bits (round half to even)."""
    bits = (np.asarray(v, F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def first_extreme(x: np.ndarray, beats) -> np.ndarray:
    """C's ``for j: if (beats(x[j], best)) best = x[j];`` along axis 1, starting from x[:, 0] (so the first of
    equal values wins, sign of zero included)."""
    best = x[:, 0].copy()
    for j in range(1, x.shape[1]):
        best = np.where(beats(x[:, j], best), x[:, j], best)
    return best


def seq_sum(terms: np.ndarray) -> np.ndarray:
    """``float s = 0; for i: s += terms[i]`` over axis 0, in f32, in that order (numpy's own sum is pairwise)."""
    acc = np.zeros(terms.shape[1:], F32)
    for t in terms:
        acc = acc + t
    return acc


def safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a / b).astype(F32)


# ---- source formats -> f32 (ggml's dequantize_row_*) ------------------------------------------------------------


def dequantize(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """Flat uint8 tensor bytes -> flat f32 values."""
    if ggml_type == F32_T:
        return raw.view(F32).copy()
    if ggml_type == F16_T:
        return raw.view(np.float16).astype(F32)
    if ggml_type == BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(F32)
    if ggml_type in (Q4_K, Q5_K):
        return _dequantize_q45_k(raw, ggml_type)
    if ggml_type == Q6_K:
        return _dequantize_q6_k(raw)
    qk, nbytes = BLOCK.get(ggml_type, (0, 0))
    if ggml_type not in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0):
        raise ValueError(f"requantizing from {TYPE_NAMES.get(ggml_type, ggml_type)} is not implemented")
    b = raw.reshape(-1, nbytes)
    d = f16_value(b[:, 0:2].copy().view(np.uint16))  # (nb, 1)
    if ggml_type == Q8_0:
        return (b[:, 2:].view(np.int8).astype(F32) * d).reshape(-1)
    with_min = ggml_type in (Q4_1, Q5_1)
    header = {Q4_0: 2, Q4_1: 4, Q5_0: 6, Q5_1: 8}[ggml_type]  # d (+ m) (+ the 32 fifth bits), then nibbles
    qs = b[:, header:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int32)  # weights j and j + 16 share byte j
    if ggml_type in (Q5_0, Q5_1):  # bit j of the 32-bit qh is the 5th bit of weight j
        at = 4 if with_min else 2
        qh = b[:, at : at + 4].copy().view("<u4").astype(np.int64)  # (nb, 1)
        q |= (((qh >> np.arange(32)) & 1) << 4).astype(np.int32)
    if not with_min:  # x * d, the level centred first (Q4_0: -8, Q5_0: -16)
        return ((q - (8 if ggml_type == Q4_0 else 16)).astype(F32) * d).reshape(-1)
    m = f16_value(b[:, 2:4].copy().view(np.uint16))
    return (q.astype(F32) * d + m).reshape(-1)


def _dequantize_q45_k(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """dequantize_row_q4_K / q5_K: weight = (d * sc) * q - (dmin * m) per 32-weight sub-block, each product and the
    difference rounded to f32 on its own (the products of d and the 6-bit sc / m are exact)."""
    size = BLOCK[ggml_type][1]
    b = raw.reshape(-1, size)
    d = f16_value(b[:, 0:2].copy().view(np.uint16))  # (nb, 1)
    dmin = f16_value(b[:, 2:4].copy().view(np.uint16))
    s = b[:, 4:16].astype(np.int32)  # get_scale_min_k4: sub-blocks 0-3 in 6 bits, 4-7 split over two bytes
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    qs = b[:, size - 128 :].astype(np.int32).reshape(-1, 4, 32)  # 64-weight chunk c: low nibbles, then high
    q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32)  # (nb, sub-block, 32)
    if ggml_type == Q5_K:  # bit s of qh[l] is the 5th bit of weight l of sub-block s
        qh = b[:, 16:48].astype(np.int32)
        q |= ((qh[:, None, :] >> np.arange(8)[None, :, None]) & 1) << 4
    scale = (d * sc.astype(F32))[..., None]
    offset = (dmin * mn.astype(F32))[..., None]
    return (scale * q.astype(F32) - offset).reshape(-1)


def _dequantize_q6_k(raw: np.ndarray) -> np.ndarray:
    """dequantize_row_q6_K: weight = (d * sc) * (q - 32) per 16-weight sub-block, left to right as in C."""
    b = raw.reshape(-1, 210)
    ql = b[:, :128].astype(np.int32).reshape(-1, 2, 64)  # per 128-weight half
    qh = b[:, 128:192].astype(np.int32).reshape(-1, 2, 1, 32)
    sc = b[:, 192:208].view(np.int8).astype(F32)  # (nb, 16)
    d = f16_value(b[:, 208:210].copy().view(np.uint16))  # (nb, 1)
    low = np.stack(  # quarter t of a half: nibble t >> 1 of ql[l + 32 * (t & 1)]
        [ql[:, :, :32] & 0xF, ql[:, :, 32:] & 0xF, ql[:, :, :32] >> 4, ql[:, :, 32:] >> 4], axis=2
    )
    q = low | (((qh >> (2 * np.arange(4))[None, None, :, None]) & 3) << 4)  # (nb, half, quarter, 32)
    scale = np.repeat(d * sc, 16, axis=1).reshape(q.shape)
    return (scale * (q - 32).astype(F32)).reshape(-1)


# ---- 32-weight types (quantize_row_q8_0_ref / q5_0_ref / q5_1_ref) -----------------------------------------------


def _pack_q5(xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nb, 32) 5-bit values -> qh (nb, 4) bytes of the 5th bits, qs (nb, 16) nibbles (j | j + 16 << 4)."""
    xi = xi.astype(np.uint32)
    qs = ((xi[:, :16] & 0x0F) | ((xi[:, 16:] & 0x0F) << 4)).astype(np.uint8)
    qh = (((xi >> 4) & 1) << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return qh.astype("<u4").view(np.uint8).reshape(-1, 4), qs


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    x = x.reshape(-1, 32)
    d = np.abs(x).max(axis=1) / F32(127)
    inv = np.where(d != 0, safe_div(F32(1), d), F32(0))
    v = (x * inv[:, None]).astype(np.float64)  # roundf: half away from zero (exact in f64)
    q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)
    return np.concatenate([f16_bits(d).view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1)


def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    x = x.reshape(-1, 32)
    # The first element of largest magnitude, with its sign; +0 when all are zero (C starts from 0.0f).
    first_max = np.argmax(np.abs(x), axis=1)
    amax = np.abs(x).max(axis=1)
    vmax = np.where(amax > 0, x[np.arange(len(x)), first_max], F32(0))
    d = vmax / F32(-16)
    inv = np.where(d != 0, safe_div(F32(1), d), F32(0))
    xi = np.minimum(31, np.trunc(x * inv[:, None] + F32(16.5)).astype(np.int32))  # (int8_t)(x0 + 16.5f)
    qh, qs = _pack_q5(xi)
    return np.concatenate([f16_bits(d).view(np.uint8).reshape(-1, 2), qh, qs], axis=1)


def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    x = x.reshape(-1, 32)
    lo = first_extreme(x, np.less)
    hi = first_extreme(x, np.greater)
    d = (hi - lo) / F32(31)
    inv = np.where(d != 0, safe_div(F32(1), d), F32(0))
    xi = np.trunc((x - lo[:, None]) * inv[:, None] + F32(0.5)).astype(np.int32)  # (uint8_t)(x0 + 0.5f)
    qh, qs = _pack_q5(xi)
    dm = np.stack([f16_bits(d), f16_bits(lo)], axis=1)
    return np.concatenate([dm.view(np.uint8), qh, qs], axis=1)


# ---- Q4_K / Q5_K (quantize_row_q4_K_ref / q5_K_ref with make_qkx2_quants) ----------------------------------------


def make_qkx2_quants(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale and min of each column of ``x`` (n, B) for levels 0..nmax, weights ``w``: the min/max grid first,
    then ``nstep + 1`` candidate grids each fitted by weighted least squares, a candidate replacing the best so far
    if its weighted squared error is strictly smaller. The candidates are tried in order and each one is laid out
    from the min found so far (as in C), so the steps depend on each other. Returns (scale, -min, levels)."""
    n = x.shape[0]
    lo, hi = x[0].copy(), x[0].copy()
    sum_w = w[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, n):
        lo = np.where(x[i] < lo, x[i], lo)
        hi = np.where(x[i] > hi, x[i], hi)
        sum_w = sum_w + w[i]
        sum_x = sum_x + w[i] * x[i]
    lo = np.where(lo > 0, F32(0), lo)
    flat = hi == lo  # all levels 0, scale 0 (set at the end; the arithmetic below is ignored for them)
    flat_min = lo
    lo = np.where(flat, hi - F32(1), lo)

    iscale = safe_div(F32(nmax), hi - lo)
    scale = safe_div(F32(1), iscale)
    levels = np.clip(nearest_int(iscale * (x - lo)), 0, nmax)
    diff = scale * levels.astype(F32) + lo - x
    best_error = seq_sum(w * (diff * diff))

    for s in range(nstep + 1):
        iscale = safe_div((F32(rmin) + F32(rdelta) * F32(s)) + F32(nmax), hi - lo)
        aux = np.clip(nearest_int(iscale * (x - lo)), 0, nmax)
        auxf = aux.astype(F32)
        wl = w * auxf
        sum_l = seq_sum(wl)
        sum_l2 = seq_sum(wl * auxf)
        sum_xl = seq_sum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = safe_div(sum_w * sum_xl - sum_x * sum_l, det)
        this_min = safe_div(sum_l2 * sum_x - sum_l * sum_xl, det)
        clamp = this_min > 0
        this_min = np.where(clamp, F32(0), this_min)
        this_scale = np.where(clamp, safe_div(sum_xl, sum_l2), this_scale)
        diff = this_scale * auxf + this_min - x
        cur_error = seq_sum(w * (diff * diff))
        better = (det > 0) & (cur_error < best_error)
        levels = np.where(better, aux, levels)
        best_error = np.where(better, cur_error, best_error)
        scale = np.where(better, this_scale, scale)
        lo = np.where(better, this_min, lo)

    scale = np.where(flat, F32(0), scale)
    levels = np.where(flat, 0, levels)
    lo = np.where(flat, flat_min, lo)
    return scale, -lo, levels


def _kquant_levels(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared by Q4_K (nmax 15) and Q5_K (nmax 31): x (NS, 256) -> (d, dmin f16 bits, 12 scale bytes, levels)."""
    ns = x.shape[0]
    sub = x.reshape(ns * 8, 32).T  # (32, B): one column per 32-weight sub-block
    av_x = np.sqrt(seq_sum(sub * sub) / F32(32))
    w = av_x[None, :] + np.abs(sub)
    scales, mins, levels = make_qkx2_quants(sub, w, nmax, rmin, rdelta, nstep)
    scales, mins = scales.reshape(ns, 8), mins.reshape(ns, 8)
    levels = levels.T.reshape(ns, 8, 32)

    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    inv_scale = np.where(max_scale > 0, safe_div(F32(63), max_scale), F32(0))
    inv_min = np.where(max_min > 0, safe_div(F32(63), max_min), F32(0))
    ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 0xFF)  # uint8_t, then MIN(63, .)
    lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 0xFF)
    d16 = f16_bits(max_scale / F32(63))
    dmin16 = f16_bits(max_min / F32(63))

    packed = np.zeros((ns, 12), np.int32)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)

    # Requantize every weight against the rounded 6-bit scale and min (sub-blocks whose scale rounds to 0 keep
    # the levels of the search).
    d = f16_value(d16)[:, None] * ls.astype(F32)
    dm = f16_value(dmin16)[:, None] * lm.astype(F32)
    fresh = np.clip(nearest_int(safe_div(x.reshape(ns, 8, 32) + dm[..., None], d[..., None])), 0, nmax)
    levels = np.where((d != 0)[..., None], fresh, levels).reshape(ns, 256)
    header = np.stack([d16, dmin16], axis=1).view(np.uint8)
    return header, packed.astype(np.uint8), levels


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    header, scales, lv = _kquant_levels(x.reshape(-1, 256), 15, -1.0, 0.1, 20)
    lv = lv.reshape(-1, 4, 2, 32)  # (NS, 64-chunk, low/high half, 32)
    qs = (lv[:, :, 0] | (lv[:, :, 1] << 4)).astype(np.uint8).reshape(-1, 128)
    return np.concatenate([header, scales, qs], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    header, scales, lv = _kquant_levels(x.reshape(-1, 256), 31, -0.5, 0.1, 15)
    lv = lv.reshape(-1, 4, 2, 32)
    qs = ((lv[:, :, 0] & 15) | ((lv[:, :, 1] & 15) << 4)).astype(np.uint8).reshape(-1, 128)
    bit = np.arange(8).reshape(4, 2)[None, :, :, None]  # chunk k, half h -> bit 2k + h of qh[j]
    qh = (((lv >> 4) & 1) << bit).sum(axis=(1, 2)).astype(np.uint8)  # (NS, 32)
    return np.concatenate([header, scales, qh, qs], axis=1)


# ---- Q6_K (quantize_row_q6_K_ref with make_qx_quants) -------------------------------------------------------------


def make_qx_quants_q6(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed scale of each column of ``x`` (16, B) for levels -32..31 weighted by x^2 (rmse_type 1): the
    max-magnitude grid, then 18 grids around it, each kept if it beats the best so far. Returns (scale, L + 32)."""
    nmax = 32
    first_max = np.argmax(np.abs(x), axis=0)
    cols = np.arange(x.shape[1])
    amax = np.abs(x)[first_max, cols]
    vmax = np.where(amax > 0, x[first_max, cols], F32(0))
    zero = amax < F32(1e-15)
    vmax_safe = np.where(zero, F32(1), vmax)
    w = x * x

    def fit(iscale):
        lv = np.clip(nearest_int(iscale[None] * x), -nmax, nmax - 1)
        lf = lv.astype(F32)
        return lv, seq_sum((w * x) * lf), seq_sum((w * lf) * lf)

    levels, sumlx, suml2 = fit(F32(-nmax) / vmax_safe)
    scale = np.where(suml2 != 0, safe_div(sumlx, suml2), F32(0))
    best = scale * sumlx
    for step in [*range(-9, 0), *range(1, 10)]:
        lv, sumlx, suml2 = fit(-(F32(nmax) + F32(0.1) * F32(step)) / vmax_safe)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        levels = np.where(better[None], lv, levels)
        scale = np.where(better, safe_div(sumlx, suml2), scale)
        best = np.where(better, scale * sumlx, best)
    return np.where(zero, F32(0), scale), np.where(zero[None], 0, levels + nmax)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    x = x.reshape(-1, 256)
    ns = x.shape[0]
    scales, levels = make_qx_quants_q6(x.reshape(ns * 16, 16).T)
    scales = scales.reshape(ns, 16)
    levels = levels.T.reshape(ns, 16, 16)

    first = np.argmax(np.abs(scales), axis=1)
    max_abs = np.abs(scales)[np.arange(ns), first]
    max_scale = np.where(max_abs > 0, scales[np.arange(ns), first], F32(0))
    empty = max_abs < F32(1e-15)
    iscale = safe_div(F32(-128), np.where(empty, F32(1), max_scale))
    d16 = f16_bits(safe_div(F32(1), iscale))
    sc = (np.minimum(127, nearest_int(iscale[:, None] * scales)) & 0xFF).astype(np.uint8).view(np.int8)
    d = f16_value(d16)[:, None] * sc.astype(F32)
    fresh = np.clip(nearest_int(safe_div(x.reshape(ns, 16, 16), d[..., None])), -32, 31) + 32
    lv = np.where((d != 0)[..., None], fresh, levels).reshape(ns, 2, 4, 32)  # (NS, half, quarter, lane)

    ql = np.concatenate(
        [lv[:, :, 0] & 0xF | ((lv[:, :, 2] & 0xF) << 4), lv[:, :, 1] & 0xF | ((lv[:, :, 3] & 0xF) << 4)],
        axis=2,
    ).astype(np.uint8)  # (NS, 2, 64)
    qh = ((lv >> 4) << (2 * np.arange(4))[None, None, :, None]).sum(axis=2).astype(np.uint8)  # (NS, 2, 32)
    out = np.concatenate(
        [ql.reshape(ns, 128), qh.reshape(ns, 64), sc.view(np.uint8), d16.view(np.uint8).reshape(ns, 2)],
        axis=1,
    )
    out[empty] = 0  # an all-zero super-block is all zero bytes (d = +0)
    return out


QUANTIZERS = {
    F16_T: f16_bits,  # the fallback for rows that are not a multiple of 32
    Q8_0: quantize_q8_0,
    Q5_0: quantize_q5_0,
    Q5_1: quantize_q5_1,
    Q4_K: quantize_q4_k,
    Q5_K: quantize_q5_k,
    Q6_K: quantize_q6_k,
}
# Rows per call: bounds the (32, 21, B) temporaries of the Q4_K search to a few tens of MB.
CHUNK_WEIGHTS = 1 << 18


def quantize(values: np.ndarray, ggml_type: int) -> bytes:
    out = []
    for start in range(0, values.size, CHUNK_WEIGHTS):
        out.append(QUANTIZERS[ggml_type](values[start : start + CHUNK_WEIGHTS]).tobytes())
    return b"".join(out)


# ---- GGUF in and out ---------------------------------------------------------------------------------------------


@dataclass
class Tensor:
    name: str
    dims: tuple[int, ...]  # ne[0] first (row length)
    ggml_type: int
    offset: int  # absolute, in the source file

    @property
    def nbytes(self) -> int:
        qk, size = BLOCK[self.ggml_type]
        n = 1
        for d in self.dims:
            n *= d
        return n // qk * size


@dataclass
class Source:
    kv: list[tuple[str, bytes]]  # (key, the key/value record's bytes exactly as stored)
    values: dict[str, object]  # scalar values (arrays and strings are not decoded beyond what is needed)
    tensors: list[Tensor]
    data: memoryview


_SCALAR = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def read_gguf(path: Path) -> Source:
    buf = memoryview(path.read_bytes())
    if bytes(buf[:4]) != b"GGUF" or struct.unpack_from("<I", buf, 4)[0] != 3:
        raise ValueError(f"{path}: not a GGUF v3 file")
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24

    def string(p: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, p)
        return bytes(buf[p + 8 : p + 8 + n]).decode("utf-8"), p + 8 + n

    def skip(vtype: int, p: int) -> int:
        if vtype == 8:
            return string(p)[1]
        if vtype == 9:
            item, count = struct.unpack_from("<IQ", buf, p)
            p += 12
            if item in _SCALAR:
                return p + count * struct.calcsize(_SCALAR[item])
            for _ in range(count):
                p = skip(item, p)
            return p
        return p + struct.calcsize(_SCALAR[vtype])

    kv, values = [], {}
    for _ in range(n_kv):
        start = pos
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if vtype in _SCALAR:
            values[key] = struct.unpack_from(_SCALAR[vtype], buf, pos)[0]
        elif vtype == 8:
            values[key] = string(pos)[0]
        pos = skip(vtype, pos)
        kv.append((key, bytes(buf[start:pos])))
    if values.get("general.alignment", ALIGNMENT) != ALIGNMENT:
        raise ValueError(f"{path}: general.alignment {values['general.alignment']} is not reproduced")

    infos = []
    for _ in range(n_tensors):
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        ggml_type, rel = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        if ggml_type not in BLOCK:
            raise ValueError(f"{path}: tensor {name!r} has ggml type {ggml_type}, not handled here")
        infos.append((name, dims, ggml_type, rel))
    data_start = -(-pos // ALIGNMENT) * ALIGNMENT
    tensors = [Tensor(name, dims, t, data_start + rel) for name, dims, t, rel in infos]
    return Source(kv, values, tensors, buf)


def n_dims(dims: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    n = len(dims)
    while n > 1 and dims[n - 1] == 1:
        n -= 1
    return n


def layer_of(name: str) -> int:
    m = re.match(r"blk\.([+-]?\d+)", name)  # sscanf(name, "blk.%d.", ...)
    return int(m.group(1)) if m else -1


# ---- llama-quant.cpp's choice of types --------------------------------------------------------------------------


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def allows_quantization(t: Tensor) -> bool:
    name = t.name
    return (
        n_dims(t.dims) >= 2
        and name.endswith("weight")
        and "_norm.weight" not in name
        and "ffn_gate_inp.weight" not in name
    )


def choose_types(tensors: list[Tensor], ftype: str, n_layer: int) -> list[int]:
    """The target type of each tensor (in file order) for one of the standard mixes, as llama-quant.cpp picks it
    for a dense, non-Falcon model without an imatrix or overrides."""
    default = FTYPES[ftype][1]
    names = [t.name for t in tensors]
    tied = "output.weight" not in names
    n_attn_v = sum(1 for n in names if "attn_v.weight" in n or "attn_qkv.weight" in n)
    i_attn_v = i_ffn_down = 0
    out = []
    for t in tensors:
        if not allows_quantization(t):
            out.append(t.ggml_type)
            continue
        new = default
        name = t.name
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            if t.dims[0] % BLOCK[new][0] != 0:
                new = Q8_0
            elif new != Q8_0:
                new = Q6_K
        elif name == "token_embd.weight":
            pass
        elif "attn_qkv.weight" in name or "attn_v.weight" in name:
            if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_attn_v, n_attn_v):
                new = Q6_K
            i_attn_v += 1
        elif "ffn_down" in name:
            if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_ffn_down, n_layer):
                new = Q6_K
            i_ffn_down += 1
        if t.dims[0] % BLOCK[new][0] != 0:
            new = FALLBACK.get(new, new)
            if t.dims[0] % BLOCK[new][0] != 0:
                new = F16_T
        out.append(new)
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def requantize(src_path: Path, dst_path: Path, ftype: str) -> str:
    """Write ``src_path`` requantized to ``ftype`` at ``dst_path``; returns the sha256 of what was written."""
    src = read_gguf(src_path)
    arch = src.values.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(
            f"{src_path}: architecture {arch!r}: llama-quant.cpp rules for it are not reproduced"
        )
    n_layer = int(src.values[f"{arch}.block_count"])
    tensors = sorted(src.tensors, key=lambda t: (layer_of(t.name), t.name.encode()))
    types = choose_types(tensors, ftype, n_layer)

    kv = [rec for key, rec in src.kv if key not in ("general.quantization_version", "general.file_type")]
    for key, value in (
        ("general.quantization_version", GGML_QNT_VERSION),
        ("general.file_type", FTYPES[ftype][0]),
    ):
        k = key.encode()
        kv.append(struct.pack("<Q", len(k)) + k + struct.pack("<II", 4, value))

    infos, blobs, offset = [], [], 0
    for t, new in zip(tensors, types, strict=True):
        raw = src.data[t.offset : t.offset + t.nbytes]
        if new == t.ggml_type:
            blob = bytes(raw)
        else:
            values = dequantize(np.frombuffer(raw, np.uint8), t.ggml_type)
            blob = quantize(values, new)
        k = t.name.encode()
        nd = n_dims(t.dims)
        infos.append(struct.pack("<Q", len(k)) + k + struct.pack(f"<I{nd}QIQ", nd, *t.dims[:nd], new, offset))
        pad = -len(blob) % ALIGNMENT
        blobs.append(blob + b"\0" * pad)
        offset += len(blob) + pad

    meta = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv) + b"".join(infos)
    meta += b"\0" * (-len(meta) % ALIGNMENT)
    h = hashlib.sha256()
    tmp = dst_path.with_name(dst_path.name + ".part")
    with open(tmp, "wb") as f:
        for part in (meta, *blobs):
            f.write(part)
            h.update(part)
    tmp.replace(dst_path)
    return h.hexdigest()


def compare(ours: Path, ref: Path) -> dict[str, object]:
    """Where two GGUF files differ: metadata bytes, and per tensor the type and the number of differing blocks."""
    a, b = read_gguf(ours), read_gguf(ref)
    report: dict[str, object] = {"metadata_equal": a.kv == b.kv, "tensors": {}}
    tb = {t.name: t for t in b.tensors}
    for t in a.tensors:
        u = tb[t.name]
        qk, size = BLOCK[t.ggml_type]
        entry = {"type": TYPE_NAMES[t.ggml_type], "ref_type": TYPE_NAMES[u.ggml_type]}
        if t.ggml_type == u.ggml_type:
            x = np.frombuffer(a.data[t.offset : t.offset + t.nbytes], np.uint8).reshape(-1, size)
            y = np.frombuffer(b.data[u.offset : u.offset + u.nbytes], np.uint8).reshape(-1, size)
            entry["blocks"] = len(x)
            entry["blocks_differing"] = int((x != y).any(axis=1).sum())
            entry["bytes_differing"] = int((x != y).sum())
        report["tensors"][t.name] = entry
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("--ftype", choices=sorted(FTYPES), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--check", type=Path, help="llama.cpp's file for the same ftype: report what differs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    digest = requantize(args.src, args.out, args.ftype)
    print(f"{args.out}: sha256 {digest} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    if args.check:
        report = compare(args.out, args.check)
        bad = {
            k: v for k, v in report["tensors"].items() if v["type"] != v["ref_type"] or v["blocks_differing"]
        }
        print(f"metadata equal: {report['metadata_equal']}; tensors differing: {len(bad)}", file=sys.stderr)
        for name, v in bad.items():
            print(f"  {name}: {v}", file=sys.stderr)
        ref_digest = file_sha256(args.check)
        print(f"byte-identical to {args.check.name}: {digest == ref_digest}", file=sys.stderr)
        sys.exit(0 if digest == ref_digest else 1)


if __name__ == "__main__":
    main()
