"""Reference GGUF quantizers and dequantizers in numpy (test side only): bytes exactly as GGUF stores them.

The encoders are simple (per-block min/max, no search like llama.cpp's make_qkx2_quants): any valid encoding tests
the kernels. The decoders are written from the block layouts (shared notes models.md section 2), independently of
the package's code; tests/unit/test_quant.py checks both against pip ``gguf``'s dequantizers.
"""

from __future__ import annotations

import numpy as np

from webllm_py.model.quant import QUANT_FORMATS, GGMLType

K_TYPES = (GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K)  # rows must be a multiple of 256


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """(n,) values -> (n, 2) uint8: their f16 bytes."""
    return np.asarray(v, np.float32).astype("<f2").view(np.uint8).reshape(-1, 2)


def _inv(d: np.ndarray) -> np.ndarray:
    d = np.asarray(d, np.float32)
    safe = np.where(d != 0, d, 1.0)
    return np.where(d != 0, 1.0 / safe, 0.0).astype(np.float32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) values 0..15 -> (n, 16) bytes: weight j in the low nibble of byte j, weight j + 16 in its high one."""
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """(n, 32) bits -> (n, 4) bytes of the little-endian u32 whose bit i is bits[:, i]."""
    return np.packbits(bits.astype(np.uint8), axis=1, bitorder="little")


def _k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(n, 8) 6-bit scales and mins -> (n, 12) bytes in Q4_K / Q5_K order (the inverse of get_scale_min_k4)."""
    s = np.zeros((len(sc), 12), np.uint8)
    s[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    s[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    return s


def _quantize_k(sb: np.ndarray, levels: int) -> tuple[np.ndarray, ...]:
    """Super-blocks (n, 256) -> (d, dmin, 6-bit scales (n, 8), 6-bit mins (n, 8), quants (n, 256) in 0..levels)."""
    sub = sb.reshape(len(sb), 8, 32)
    lo = np.minimum(sub.min(axis=2), 0.0)  # the min is stored as a positive amount subtracted
    scale = (sub.max(axis=2) - lo) / levels
    d = (scale.max(axis=1) / 63).astype(np.float16).astype(np.float32)
    dmin = ((-lo).max(axis=1) / 63).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale * _inv(d)[:, None]), 0, 63).astype(np.uint8)
    m = np.clip(np.round(-lo * _inv(dmin)[:, None]), 0, 63).astype(np.uint8)
    step = d[:, None] * sc  # (n, 8)
    q = np.round((sub + (dmin[:, None] * m)[..., None]) * _inv(step)[..., None])
    return d, dmin, sc, m, np.clip(q, 0, levels).astype(np.uint8).reshape(len(sb), 256)


def _k_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 256) quants -> (n, 128) bytes: sub-blocks 2p, 2p + 1 in the low / high nibbles of bytes 32p .. 32p + 31."""
    q = q.reshape(len(q), 4, 2, 32) & 15
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(q), 128).astype(np.uint8)


def quantize(w: np.ndarray, ggml_type: GGMLType) -> bytes:
    """Rows of w (n_rows, k) -> GGUF tensor bytes of type ggml_type."""
    w = np.asarray(w, dtype=np.float32)
    t = GGMLType
    if ggml_type == t.F32:
        return w.astype("<f4").tobytes()
    if ggml_type == t.F16:
        return w.astype("<f2").tobytes()
    if ggml_type == t.BF16:
        bits = w.view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()  # round to nearest even
    n, k = w.shape
    if ggml_type in K_TYPES:
        sb = w.reshape(n * k // 256, 256)
        if ggml_type == t.Q6_K:
            sub = sb.reshape(len(sb), 16, 16)
            idx = np.abs(sub).argmax(axis=2)
            scale = np.take_along_axis(sub, idx[..., None], axis=2)[..., 0] / -32.0
            d = (np.abs(scale).max(axis=1) / 127).astype(np.float16).astype(np.float32)
            sc = np.clip(np.round(scale * _inv(d)[:, None]), -128, 127).astype(np.int8)
            step = d[:, None] * sc
            q = (
                np.clip(np.round(sub * _inv(step)[..., None]) + 32, 0, 63)
                .astype(np.uint8)
                .reshape(len(sb), 256)
            )
            qq = q.reshape(len(sb), 2, 4, 32)  # (half, quarter, lane)
            ql = (qq[:, :, 0:2] & 15) | ((qq[:, :, 2:4] & 15) << 4)  # (half, quarter & 1, lane)
            qh = (
                qq[:, :, 0] >> 4 | (qq[:, :, 1] >> 4) << 2 | (qq[:, :, 2] >> 4) << 4 | (qq[:, :, 3] >> 4) << 6
            )
            out = np.concatenate(
                [ql.reshape(len(sb), 128), qh.reshape(len(sb), 64), sc.view(np.uint8), _f16_bytes(d)], axis=1
            )
            return out.astype(np.uint8).tobytes()
        levels = 15 if ggml_type == t.Q4_K else 31
        d, dmin, sc, m, q = _quantize_k(sb, levels)
        parts = [_f16_bytes(d), _f16_bytes(dmin), _k_scales(sc, m)]
        if ggml_type == t.Q5_K:  # bit j of qh[l]: the 5th bit of lane l of sub-block j
            hi = (q.reshape(len(sb), 8, 32) >> 4).astype(np.uint8)
            parts.append((hi << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1).astype(np.uint8))
        parts.append(_k_nibbles(q))
        return np.concatenate(parts, axis=1).astype(np.uint8).tobytes()
    blocks = w.reshape(n * k // 32, 32)
    if ggml_type == t.Q8_0:
        amax = np.abs(blocks).max(axis=1)
        d = (amax / 127.0).astype(np.float16)
        q = np.clip(np.round(blocks * _inv(d)[:, None]), -128, 127).astype(np.int8)
        return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1).tobytes()
    if ggml_type in (t.Q4_0, t.Q5_0):
        half = 8 if ggml_type == t.Q4_0 else 16
        idx = np.abs(blocks).argmax(axis=1)
        d = (blocks[np.arange(len(blocks)), idx] / -half).astype(np.float16)
        q = np.clip(np.floor(blocks * _inv(d)[:, None] + half + 0.5), 0, 2 * half - 1).astype(np.uint8)
        parts = (
            [_f16_bytes(d)] + ([_pack_bits(q >> 4)] if ggml_type == t.Q5_0 else []) + [_pack_nibbles(q & 15)]
        )
        return np.concatenate(parts, axis=1).tobytes()
    if ggml_type in (t.Q4_1, t.Q5_1):
        levels = 15 if ggml_type == t.Q4_1 else 31
        lo = blocks.min(axis=1)
        d = ((blocks.max(axis=1) - lo) / levels).astype(np.float16)
        m = lo.astype(np.float16)
        q = np.round((blocks - m.astype(np.float32)[:, None]) * _inv(d)[:, None])
        q = np.clip(q, 0, levels).astype(np.uint8)
        parts = [_f16_bytes(d), _f16_bytes(m)] + ([_pack_bits(q >> 4)] if ggml_type == t.Q5_1 else [])
        return np.concatenate([*parts, _pack_nibbles(q & 15)], axis=1).tobytes()
    raise ValueError(ggml_type)


def _f16_at(b: np.ndarray, i: int) -> np.ndarray:
    return b[:, i : i + 2].copy().view("<f2").astype(np.float32)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32)


def dequantize(data: bytes, ggml_type: GGMLType, shape: tuple[int, int]) -> np.ndarray:
    """GGUF tensor bytes -> float32 array (n_rows, k), computed independently of the package's code."""
    n, k = shape
    raw = np.frombuffer(data, dtype=np.uint8)
    t = GGMLType
    if ggml_type == t.F32:
        return raw.view("<f4").reshape(n, k).astype(np.float32)
    if ggml_type == t.F16:
        return raw.view("<f2").reshape(n, k).astype(np.float32)
    if ggml_type == t.BF16:
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(n, k)
    b = raw.reshape(-1, QUANT_FORMATS[ggml_type].type_size)
    if ggml_type == t.Q8_0:
        return (b[:, 2:].view(np.int8).astype(np.float32) * _f16_at(b, 0)).reshape(n, k)
    if ggml_type in (t.Q4_0, t.Q4_1, t.Q5_0, t.Q5_1):
        d = _f16_at(b, 0)
        m = {t.Q4_0: -8.0 * d, t.Q5_0: -16.0 * d}.get(ggml_type)
        off = 2 if m is not None else 4
        if m is None:
            m = _f16_at(b, 2)
        q = _unpack_nibbles(b[:, off + (4 if ggml_type in (t.Q5_0, t.Q5_1) else 0) :])
        if ggml_type in (t.Q5_0, t.Q5_1):
            qh = b[:, off : off + 4].copy().view("<u4")  # (blocks, 1)
            q += ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.float32) * 16
        return (q * d + m).reshape(n, k)
    if ggml_type in (t.Q4_K, t.Q5_K):
        d, dmin, s = _f16_at(b, 0), _f16_at(b, 2), b[:, 4:16].astype(np.uint32)
        sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
        mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
        qs = b[:, 16:144] if ggml_type == t.Q4_K else b[:, 48:176]
        q = np.stack([qs & 15, qs >> 4], axis=2).reshape(len(b), 4, 32, 2).transpose(0, 1, 3, 2)
        q = q.reshape(len(b), 8, 32).astype(np.float32)  # (super-block, sub-block j, lane)
        if ggml_type == t.Q5_K:
            qh = b[:, 16:48]  # (super-block, lane)
            q += ((qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1) * 16.0
        w = d[:, :, None] * sc[:, :, None] * q - dmin[:, :, None] * mn[:, :, None]
        return w.reshape(n, k).astype(np.float32)
    if ggml_type == t.Q6_K:
        ql, qh = b[:, 0:128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
        sc = b[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16_at(b, 208)
        i = np.arange(256)
        half, quarter, lane = i // 128, (i % 128) // 32, i % 32
        lo = (ql[:, half, 32 * (quarter & 1) + lane] >> (4 * (quarter >> 1))) & 15
        hi = (qh[:, half, lane] >> (2 * quarter)) & 3
        q = (lo | (hi << 4)).astype(np.float32) - 32
        return (d * sc[:, i // 16] * q).reshape(n, k)
    raise ValueError(ggml_type)
