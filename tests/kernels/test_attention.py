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
        (6, 2, 32, 5, 0),
        (2, 1, 128, 37, 70),
        (3, 1, 64, 70, 0),
        (4, 2, 64, 1, 1500),
        (2, 2, 256, 3, 1030),
    ],
)
def test_attention(kern, heads, kv_heads, hd, m, pos0):
    max_ctx = max(256, pos0 + m + 8)  # pos0 > 1024 crosses the kernel's 1024-position tiles
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


def test_unsupported_head_dim(kern):
    from webllm_py.errors import UnsupportedModelError

    buf = zeros(kern, 64)
    with pytest.raises(UnsupportedModelError, match="head_dim 48"):
        ops.attention(
            kern,
            q=buf,
            kv=buf,
            out=buf,
            state=state_buffer(kern, 0, 1),
            n_heads=2,
            n_kv_heads=1,
            head_dim=48,
            max_ctx=4,
        )
