"""The two RMSNorm kernels outside the matrix products, against numpy: per-head q/k norm + RoPE (qk_norm.wgsl,
Qwen3 and Gemma 3) and norm-then-residual-add (norm_add.wgsl, Gemma's post norms)."""

from __future__ import annotations

import numpy as np
import pytest

from webllm_py.kernels import ops

from .conftest import assert_close, download, state_buffer, upload, zeros
from .test_matmul import rope_ref


@pytest.mark.parametrize(
    "n_heads,n_kv_heads,hd,rope_dims,m,pos0",
    [
        (2, 1, 128, 128, 1, 0),
        (4, 2, 32, 32, 5, 300),
        (3, 1, 96, 96, 2, 7),
        (2, 2, 256, 128, 3, 1000),
        (2, 1, 16, 8, 4, 2),
    ],
)
def test_qk_norm_rope(kern, n_heads, n_kv_heads, hd, rope_dims, m, pos0):
    """Each head of the raw q | k rows: RMS-normed, times its weight, rotated (adjacent pairs, the first rope_dims
    features) at position pos0 + t; q to its buffer, k to the K cache; the V cache untouched."""
    rng = np.random.default_rng(hd + m)
    max_ctx, eps = pos0 + m + 3, 1e-6
    src = (rng.standard_normal((m, n_heads + n_kv_heads, hd)) * 3).astype(np.float32)
    qw = (1 + rng.standard_normal(hd) * 0.3).astype(np.float32)
    kw = (1 + rng.standard_normal(hd) * 0.3).astype(np.float32)
    freqs = 1e6 ** (-np.arange(0, rope_dims, 2) / rope_dims)
    kv_dtype = np.float16 if kern.tier.f16 else np.float32
    kv = zeros(kern, 2 * n_kv_heads * max_ctx * hd * np.dtype(kv_dtype).itemsize)
    q_out = zeros(kern, m * n_heads * hd * 4)
    launch = ops.qk_norm(
        kern, src=upload(kern, src), q=q_out, kv=kv, state=state_buffer(kern, pos0, m), q_norm_w=upload(kern, qw),
        k_norm_w=upload(kern, kw), rope_freq=upload(kern, freqs.astype(np.float32)), n_heads=n_heads,
        n_kv_heads=n_kv_heads, head_dim=hd, max_ctx=max_ctx, rope_dims=rope_dims, eps=eps,
    )  # fmt: skip
    kern.device.submit([launch.dispatch(m)])
    x = src.astype(np.float64)
    normed = x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + eps)
    pos = pos0 + np.arange(m)

    def rotate(v):  # (m, heads, hd): the first rope_dims features of each head rotated, the rest as they are
        rot = rope_ref(v[..., :rope_dims].reshape(m, -1), pos, freqs, rope_dims).reshape(m, -1, rope_dims)
        return np.concatenate([rot, v[..., rope_dims:]], axis=-1)

    q_want = rotate(normed[:, :n_heads] * qw)
    k_want = rotate(normed[:, n_heads:] * kw)
    q_got = download(kern, q_out, np.float32, m * n_heads * hd).reshape(m, n_heads, hd)
    cache = download(kern, kv, kv_dtype, 2 * n_kv_heads * max_ctx * hd).astype(np.float64)
    cache = cache.reshape(2, n_kv_heads, max_ctx, hd)
    assert_close(q_got, q_want, 2e-5 if pos0 < 500 else 1e-4, "q")
    assert_close(cache[0][:, pos].transpose(1, 0, 2), k_want, 2e-3 if kern.tier.f16 else 1e-4, "k cache")
    assert not cache[1].any() and not np.delete(cache[0], pos, axis=1).any()


@pytest.mark.parametrize("h,m", [(64, 1), (576, 7), (2304, 3)])
def test_norm_add(kern, h, m):
    """x += RMSNorm(y) * w, per token."""
    rng = np.random.default_rng(h + m)
    eps = 1e-6
    y = (rng.standard_normal((m, h)) * 5).astype(np.float32)
    x = rng.standard_normal((m, h)).astype(np.float32)
    w = (1 + rng.standard_normal(h) * 0.3).astype(np.float32)
    xb = upload(kern, x)
    launch = ops.norm_add(kern, y=upload(kern, y), x=xb, norm_w=upload(kern, w), n=h, eps=eps)
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, xb, np.float32, m * h).reshape(m, h)
    yd = y.astype(np.float64)
    want = x + yd / np.sqrt((yd**2).mean(axis=1, keepdims=True) + eps) * w
    assert_close(got, want, 2e-6, "x + RMSNorm(y)")
