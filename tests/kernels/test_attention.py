"""Causal GQA attention against numpy: prefill chunks at a position offset (tiled flash attention, down to one token)
and decode (split over the keys, merged by the output projection); head sizes 16..256 including 96, sliding windows,
soft-capped scores and a query scale other than 1 / sqrt(head_dim)."""

from __future__ import annotations

import numpy as np
import pytest

from webllm_py.kernels import ops
from webllm_py.kernels.registry import Kernels

from .conftest import assert_close, download, state_buffer, upload, zeros


def attention_ref(q, k_cache, v_cache, pos0, n_kv_heads, *, scale=None, window=0, softcap=0.0):
    """q (m, heads, hd); caches (kv_heads, ctx, hd); token t attends to positions 0 .. pos0 + t (the last ``window``
    of them when window > 0); scores (q . k) * scale (1 / sqrt(hd) by default), soft-capped when softcap > 0."""
    m, heads, hd = q.shape
    scale = 1 / np.sqrt(hd) if scale is None else scale
    group = heads // n_kv_heads
    out = np.zeros_like(q, dtype=np.float64)
    for t in range(m):
        n = pos0 + t + 1
        lo = max(0, n - window) if window else 0
        for h in range(heads):
            k = k_cache[h // group, lo:n].astype(np.float64)
            v = v_cache[h // group, lo:n].astype(np.float64)
            s = k @ q[t, h] * scale
            if softcap:
                s = softcap * np.tanh(s / softcap)
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
        (4, 2, 16, 40, 3),  # several query tiles, a partial last one
        (3, 1, 64, 100, 600),  # key tiles cut by the causal edge mid-tile
        (8, 1, 32, 33, 17),
    ],
)
@pytest.mark.parametrize("flash", [False, True], ids=["rows", "flash"])
def test_attention(kern, heads, kv_heads, hd, m, pos0, flash):
    check_attention(kern, heads, kv_heads, hd, m, pos0, flash=flash)


@pytest.mark.parametrize(
    "hd,m,pos0,window,softcap",
    [
        (96, 1, 130, 0, 0.0),  # Phi-3.5's head size
        (96, 37, 45, 0, 0.0),
        (64, 40, 100, 16, 0.0),  # a window shorter than the context: key tiles cut by it
        (32, 5, 3, 16, 0.0),  # a window longer than the context
        (256, 3, 1030, 0, 1.5),  # soft-capped scores (Gemma 2)
        (64, 33, 17, 8, 2.0),
    ],
)
@pytest.mark.parametrize("flash", [False, True], ids=["rows", "flash"])
def test_attention_features(kern, hd, m, pos0, window, softcap, flash):
    check_attention(kern, 4, 2, hd, m, pos0, flash=flash, scale=0.3, window=window, softcap=softcap)


@pytest.mark.parametrize("flash_queries", [1, 16])
@pytest.mark.parametrize("hd", [16, 64, 256])
def test_flash_attention_tile_sizes(kern, flash_queries, hd):
    tiles = Kernels(kern.device, kern.tier, attention_wg=kern.attention_wg, flash_queries=flash_queries)
    check_attention(tiles, 4, 2, hd, 37, 45, flash=True)


def check_attention(kern, heads, kv_heads, hd, m, pos0, *, flash: bool, **features):
    max_ctx = max(256, pos0 + m + 8)
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
        flash=flash,
        **features,
    )
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, out, np.float32, m * heads * hd).reshape(m, heads, hd)
    want = attention_ref(q, k_cache, v_cache, pos0, kv_heads, **features)
    assert_close(got, want, 1e-5, f"attention m={m} pos0={pos0}")


def test_unsupported_head_dim(kern):
    from webllm_py.errors import UnsupportedModelError

    buf = zeros(kern, 64)
    with pytest.raises(UnsupportedModelError, match="head_dim 50"):
        ops.attention(
            kern,
            q=buf,
            kv=buf,
            out=buf,
            state=state_buffer(kern, 0, 1),
            n_heads=2,
            n_kv_heads=1,
            head_dim=50,
            max_ctx=4,
        )


SPLIT_CASES = [
    (n_splits, pos0, gemv, split_min_keys)
    for n_splits in (1, 3, 16)
    for pos0 in (0, 5, 200, 1100)
    for gemv in ("GEMV", "GEMV_SEG")
    for split_min_keys in (64, 16)
]
SPLIT_CASES += [(n, p, "GEMV_MR", 16) for n in (3, 16) for p in (5, 1100)]
SPLIT_CASES += [
    (16, 1100, "GEMV_MRQ", 16)
]  # int8 activations (Q4_0 weights): the merge happens before rounding


@pytest.mark.parametrize("n_splits,pos0,gemv,split_min_keys", SPLIT_CASES)
def test_split_attention_merged_by_output_projection(kern, n_splits, pos0, gemv, split_min_keys, monkeypatch):
    """Decode: flash-decoding splits write partials; the output projection merges them while loading its input."""
    monkeypatch.setattr(kern, "split_min_keys", split_min_keys)
    check_split_attention(kern, n_splits, pos0, gemv, 64)


@pytest.mark.parametrize(
    "n_splits,pos0,hd,window,softcap",
    [
        (16, 1100, 96, 50, 0.0),  # fewer visible keys than splits x SPLIT_MIN: short splits
        (16, 200, 64, 8, 0.0),  # fewer visible keys than splits: some splits empty
        (3, 300, 96, 0, 1.5),
        (16, 20, 32, 64, 2.0),  # a window longer than the context
    ],
)
def test_split_attention_features(kern, n_splits, pos0, hd, window, softcap, monkeypatch):
    """Decode splits over a sliding window, with soft-capped scores, at head sizes 96 and 32."""
    monkeypatch.setattr(kern, "split_min_keys", 16)
    check_split_attention(kern, n_splits, pos0, "GEMV", hd, scale=0.2, window=window, softcap=softcap)


def check_split_attention(kern, n_splits, pos0, gemv, hd, **features):
    from webllm_py.model.quant import GGMLType

    from .quantize import dequantize, quantize

    heads, kv_heads, n_out = 6, 2, 40
    max_ctx = pos0 + 8
    kern.gemv_variant = gemv
    if gemv in (
        "GEMV_MR",
        "GEMV_MRQ",
    ):  # segments of 16 lanes, 4 rows each (workgroup-memory sums on lavapipe)
        kern.gemv_wg, kern.gemv_seg, kern.gemv_rt = 64, 16, 4
    # GEMV_MRQ: Q4_0 weights, x in three planes (the exact tier's rounding)
    wtype = GGMLType.Q4_0 if gemv == "GEMV_MRQ" else GGMLType.Q8_0
    rng = np.random.default_rng(pos0 * 7 + n_splits)
    kv_dtype = np.float16 if kern.tier.f16 else np.float32
    k_cache = rng.standard_normal((kv_heads, max_ctx, hd)).astype(kv_dtype)
    v_cache = rng.standard_normal((kv_heads, max_ctx, hd)).astype(kv_dtype)
    q = (rng.standard_normal((1, heads, hd)) * 2).astype(np.float32)
    state = state_buffer(kern, pos0, 1)
    part = zeros(kern, heads * n_splits * hd * 4)
    ml = zeros(kern, heads * n_splits * 2 * 4)
    att = ops.attention(
        kern,
        q=upload(kern, q),
        kv=upload(kern, np.stack([k_cache, v_cache])),
        out=part,
        state=state,
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=hd,
        max_ctx=max_ctx,
        ml=ml,
        n_splits=n_splits,
        **features,
    )
    w = rng.standard_normal((n_out, heads * hd)).astype(np.float32)
    raw = quantize(w, wtype)
    weight = ops.alloc_weight(kern, wtype, n_out, heads * hd, "wo")
    ops.Repacker(kern).upload(weight, wtype, raw, n_out)
    out = zeros(kern, n_out * 4)
    proj = ops.matmul_parts(  # GEMV_MRQ: quantize_x merges the splits into integer planes, then the product
        kern,
        w=weight,
        x=part,
        out=out,
        xq=zeros(kern, ops.xq_bytes(heads * hd, kern.act_planes)),
        state=state,
        epi="STORE",
        gemm=False,
        head_dim=hd,
        attn_ml=ml,
        n_splits=n_splits,
    )
    assert len(proj) == (2 if gemv == "GEMV_MRQ" else 1)
    kern.device.submit([att.dispatch(1), *(launch.dispatch(1) for launch in proj)])
    got = download(kern, out, np.float32, n_out)
    want = dequantize(raw, wtype, w.shape).astype(np.float64) @ attention_ref(
        q, k_cache, v_cache, pos0, kv_heads, **features
    ).reshape(-1)
    assert_close(got, want, 1e-5, f"split attention x{n_splits} at {pos0}")
