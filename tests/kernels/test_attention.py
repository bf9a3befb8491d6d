"""Causal GQA attention against numpy: decode (one token) and prefill chunks at a position offset."""

from __future__ import annotations

import numpy as np
import pytest

from webllm_py.kernels import ops

from .conftest import assert_close, download, state_buffer, upload, zeros


def attention_ref(q, k_cache, v_cache, pos0, n_kv_heads):
    """q (m, heads, hd); caches (kv_heads, ctx, hd); token t attends to positions 0 .. pos0 + t."""
    m, heads, hd = q.shape
    group = heads // n_kv_heads
    out = np.zeros_like(q, dtype=np.float64)
    for t in range(m):
        n = pos0 + t + 1
        for h in range(heads):
            k = k_cache[h // group, :n].astype(np.float64)
            v = v_cache[h // group, :n].astype(np.float64)
            s = k @ q[t, h] / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v
    return out


@pytest.mark.parametrize(
    "heads,kv_heads,hd,m,pos0",
    [
        (9, 3, 64, 1, 0),
        (9, 3, 64, 1, 130),
        (4, 4, 32, 1, 63),
        (6, 2, 48, 5, 0),
        (2, 1, 128, 37, 70),
        (3, 1, 64, 70, 0),
    ],
)
def test_attention(kern, heads, kv_heads, hd, m, pos0):
    max_ctx = 256
    rng = np.random.default_rng(heads * 100 + m + pos0)
    kv_dtype = np.float16 if kern.tier.f16 else np.float32
    k_cache = rng.standard_normal((kv_heads, max_ctx, hd)).astype(kv_dtype)
    v_cache = rng.standard_normal((kv_heads, max_ctx, hd)).astype(kv_dtype)
    q = (rng.standard_normal((m, heads, hd)) * 2).astype(np.float32)
    out = zeros(kern, m * heads * hd * 4)
    launch = ops.attention(
        kern,
        q=upload(kern, q),
        kv=upload(kern, np.stack([k_cache, v_cache])),
        out=out,
        state=state_buffer(kern, pos0, m),
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=hd,
        max_ctx=max_ctx,
    )
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, out, np.float32, m * heads * hd).reshape(m, heads, hd)
    want = attention_ref(q, k_cache, v_cache, pos0, kv_heads)
    assert_close(got, want, 1e-5, f"attention m={m} pos0={pos0}")
