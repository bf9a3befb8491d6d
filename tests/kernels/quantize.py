"""Reference GGUF quantizers and dequantizers in numpy (test side only): bytes exactly as GGUF stores them."""

from __future__ import annotations

import numpy as np

from webllm_py.model.quant import GGMLType


def quantize(w: np.ndarray, ggml_type: GGMLType) -> bytes:
    """Rows of w (n_rows, k) -> GGUF tensor bytes of type ggml_type."""
    w = np.asarray(w, dtype=np.float32)
    if ggml_type == GGMLType.F32:
        return w.astype("<f4").tobytes()
    if ggml_type == GGMLType.F16:
        return w.astype("<f2").tobytes()
    n, k = w.shape
    blocks = w.reshape(n * k // 32, 32)
    if ggml_type == GGMLType.Q8_0:
        amax = np.abs(blocks).max(axis=1)
        d = (amax / 127.0).astype(np.float16)
        inv = np.where(d != 0, 1.0 / d.astype(np.float32), 0.0)
        q = np.clip(np.round(blocks * inv[:, None]), -128, 127).astype(np.int8)
        out = np.zeros((len(blocks), 34), dtype=np.uint8)
        out[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
        out[:, 2:] = q.view(np.uint8)
        return out.tobytes()
    if ggml_type == GGMLType.Q4_0:
        idx = np.abs(blocks).argmax(axis=1)
        mx = blocks[np.arange(len(blocks)), idx]
        d = (mx / -8.0).astype(np.float16)
        inv = np.where(d != 0, 1.0 / d.astype(np.float32), 0.0)
        q = np.clip(np.floor(blocks * inv[:, None] + 8.5), 0, 15).astype(np.uint8)
        out = np.zeros((len(blocks), 18), dtype=np.uint8)
        out[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
        out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
        return out.tobytes()
    if ggml_type == GGMLType.Q4_1:
        lo = blocks.min(axis=1)
        hi = blocks.max(axis=1)
        d = ((hi - lo) / 15.0).astype(np.float16)
        m = lo.astype(np.float16)
        inv = np.where(d != 0, 1.0 / d.astype(np.float32), 0.0)
        q = np.clip(np.round((blocks - m.astype(np.float32)[:, None]) * inv[:, None]), 0, 15).astype(np.uint8)
        out = np.zeros((len(blocks), 20), dtype=np.uint8)
        out[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
        out[:, 2:4] = m.view(np.uint8).reshape(-1, 2)
        out[:, 4:] = q[:, :16] | (q[:, 16:] << 4)
        return out.tobytes()
    raise ValueError(ggml_type)


def dequantize(data: bytes, ggml_type: GGMLType, shape: tuple[int, int]) -> np.ndarray:
    """GGUF tensor bytes -> float32 array (n_rows, k), computed independently of the package's code."""
    n, k = shape
    raw = np.frombuffer(data, dtype=np.uint8)
    if ggml_type == GGMLType.F32:
        return raw.view("<f4").reshape(n, k).astype(np.float32)
    if ggml_type == GGMLType.F16:
        return raw.view("<f2").reshape(n, k).astype(np.float32)
    if ggml_type == GGMLType.Q8_0:
        b = raw.reshape(-1, 34)
        d = b[:, 0:2].copy().view("<f2").astype(np.float32)
        q = b[:, 2:].view(np.int8).astype(np.float32)
        return (q * d).reshape(n, k)
    if ggml_type in (GGMLType.Q4_0, GGMLType.Q4_1):
        size = 18 if ggml_type == GGMLType.Q4_0 else 20
        b = raw.reshape(-1, size)
        d = b[:, 0:2].copy().view("<f2").astype(np.float32)
        if ggml_type == GGMLType.Q4_0:
            m = -8.0 * d
            qs = b[:, 2:]
        else:
            m = b[:, 2:4].copy().view("<f2").astype(np.float32)
            qs = b[:, 4:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32)
        return (q * d + m).reshape(n, k)
    raise ValueError(ggml_type)
