"""Repack + quantized matrix products (GEMV for decode, GEMM for prefill) against numpy, every format and epilogue."""

from __future__ import annotations

import numpy as np
import pytest

from webllm_py.kernels import ops
from webllm_py.model.quant import GGMLType

from .conftest import assert_close, download, state_buffer, upload, zeros
from .quantize import dequantize, quantize

TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.F16, GGMLType.F32]


@pytest.fixture(params=[256, 64], ids=lambda wg: f"gemm{wg}")
def gemm_wg(request, kern):
    """The prefill GEMM's two workgroup shapes: four groups splitting K (GPUs) and one (CPU adapters)."""
    kern.gemm_wg = request.param
    return request.param


REL = 2e-5  # f32 accumulation of exactly dequantized weights: only summation order differs from float64


def make_weight(kern, rng, ggml_type, n, k, *, interleave=None):
    """Random (n, k) weight uploaded through the repack kernel; returns (Weight, dequantized reference)."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    raw = quantize(w, ggml_type)
    ref = dequantize(raw, ggml_type, (n, k))
    weight = ops.alloc_weight(kern, ggml_type, n, k, "w")
    rep = ops.Repacker(kern, staging_bytes=max(256, len(raw) // 3 // 4 * 4))  # force several chunks
    rep.upload(weight, ggml_type, raw, n)
    return weight, ref


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n,k", [(37, 96), (75, 160), (6, 32)])
@pytest.mark.parametrize("gemm,m", [(False, 1), (False, 3), (True, 1), (True, 5), (True, 33), (True, 70)])
def test_matmul_store(kern, gemm_wg, ggml_type, n, k, gemm, m):
    check_store(kern, ggml_type, n, k, gemm, m)


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("variant,wg,seg", [("GEMV_SEG", 64, 8), ("GEMV_SEG", 32, 4), ("GEMV_SEG", 16, 8)])
def test_gemv_variants(kern, ggml_type, variant, wg, seg):
    kern.gemv_variant, kern.gemv_wg, kern.gemv_seg = variant, wg, seg
    check_store(kern, ggml_type, 37, 96, False, 2)
    check_store(kern, ggml_type, 6, 32, False, 1)


def check_store(kern, ggml_type, n, k, gemm, m):
    rng = np.random.default_rng(n * 1000 + k + m)
    weight, ref = make_weight(kern, rng, ggml_type, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    out = zeros(kern, m * n * 4)
    launch = ops.matmul(
        kern, w=weight, x=upload(kern, x), out=out, state=state_buffer(kern, 0, m), epi="STORE", gemm=gemm
    )
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, out, np.float32, m * n).reshape(m, n)
    want = x.astype(np.float64) @ ref.T.astype(np.float64)
    if gemm:
        assert_close(got, want, REL, f"GEMM {ggml_type.name} {n}x{k} m={m}")
    else:  # decode reads the last token of the step and writes its result to row 0
        assert_close(got[0], want[m - 1], REL, f"GEMV {ggml_type.name} {n}x{k}")
        assert not got[1:].any()


@pytest.mark.parametrize("ggml_type", [GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.F32], ids=lambda t: t.name)
@pytest.mark.parametrize(
    "gemm,m,gemv", [(False, 1, "GEMV"), (False, 2, "GEMV_SEG"), (True, 7, ""), (True, 40, "")]
)
def test_matmul_norm_add(kern, gemm_wg, ggml_type, gemm, m, gemv):
    """RMSNorm folded into the product, residual add in the epilogue: out += W (x * nw / rms(x))."""
    kern.gemv_variant = gemv or kern.gemv_variant
    n, k, eps = 45, 128, 1e-5
    rng = np.random.default_rng(7 + m)
    weight, ref = make_weight(kern, rng, ggml_type, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32) * 3
    nw = rng.standard_normal(k).astype(np.float32)
    resid = rng.standard_normal((m, n)).astype(np.float32)
    out = upload(kern, resid)
    launch = ops.matmul(
        kern,
        w=weight,
        x=upload(kern, x),
        out=out,
        state=state_buffer(kern, 0, m),
        epi="ADD",
        gemm=gemm,
        norm_w=upload(kern, nw),
        eps=eps,
    )
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, out, np.float32, m * n).reshape(m, n)
    xn = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + eps) * nw
    want = resid + xn @ ref.T.astype(np.float64)
    if gemm:
        assert_close(got, want, REL, "norm+add")
    else:  # the last token's result is added to row 0
        assert_close(got[:1], (want[m - 1] - resid[m - 1] + resid[0])[None], REL, "norm+add")


@pytest.mark.parametrize("act", ["SILU", "GELU"])
@pytest.mark.parametrize("gemm,m,gemv", [(False, 1, "GEMV"), (False, 1, "GEMV_SEG"), (True, 9, "")])
def test_matmul_silu(kern, gemm_wg, gemm, m, gemv, act):
    """Gate and up rows interleaved by the repack (dst rows 2i and 2i+1); out = act(gate) * up, act = SiLU (SwiGLU) or
    GELU's tanh approximation (GeGLU)."""
    kern.gemv_variant = gemv or kern.gemv_variant
    n_ff, k = 37, 64
    rng = np.random.default_rng(11)
    gate = rng.standard_normal((n_ff, k)).astype(np.float32)
    up = rng.standard_normal((n_ff, k)).astype(np.float32)
    t = GGMLType.Q4_0
    weight = ops.alloc_weight(kern, t, 2 * n_ff, k, "gateup")
    rep = ops.Repacker(kern)
    rep.upload(weight, t, quantize(gate, t), n_ff, dst_row0=0, dst_row_step=2)
    rep.upload(weight, t, quantize(up, t), n_ff, dst_row0=1, dst_row_step=2)
    g_ref = dequantize(quantize(gate, t), t, gate.shape).astype(np.float64)
    u_ref = dequantize(quantize(up, t), t, up.shape).astype(np.float64)
    x = rng.standard_normal((m, k)).astype(np.float32)
    out = zeros(kern, m * n_ff * 4)
    x *= 3  # GELU's tanh argument reaches past the clamp (|x| > 10)
    launch = ops.matmul(
        kern, w=weight, x=upload(kern, x), out=out, state=state_buffer(kern, 0, m), epi=act, gemm=gemm
    )
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, out, np.float32, m * n_ff).reshape(m, n_ff)
    g = x @ g_ref.T
    if act == "SILU":
        want = g / (1 + np.exp(-g)) * (x @ u_ref.T)
    else:
        want = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3))) * (x @ u_ref.T)
    if gemm:
        assert_close(got, want, REL, "silu")
    else:
        assert_close(got[:1], want[m - 1 :], REL, "silu")


def rope_ref(v: np.ndarray, pos: np.ndarray, freqs: np.ndarray, head_dim: int) -> np.ndarray:
    """GGML 'normal' RoPE on (m, heads * head_dim): adjacent pairs (2i, 2i+1) rotated by pos * freqs[i]."""
    m = v.shape[0]
    v = v.reshape(m, -1, head_dim // 2, 2).astype(np.float64)
    ang = pos[:, None, None] * freqs[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    out = np.stack([v[..., 0] * c - v[..., 1] * s, v[..., 0] * s + v[..., 1] * c], axis=-1)
    return out.reshape(m, -1)


@pytest.mark.parametrize(
    "gemm,m,pos0,gemv",
    [
        (False, 1, 0, "GEMV"),
        (False, 1, 517, "GEMV"),
        (False, 1, 517, "GEMV_SEG"),
        (True, 6, 0, ""),
        (True, 37, 300, ""),
    ],
)
@pytest.mark.parametrize(
    "bias,qk_out", [(False, False), (True, False), (True, True)], ids=["plain", "bias", "qk_out"]
)
def test_matmul_qkv_rope_kv_append(kern, gemm_wg, gemm, m, pos0, gemv, bias, qk_out):
    """Fused q/k/v product: RoPE on q and k, q to scratch, k and v appended to the cache at pos0 + t. With a bias
    (Qwen2) it is added before RoPE; with qk_out (q/k-norm models) q and k rows go to scratch unrotated, (m, n_q +
    n_kv), and only v to the cache."""
    kern.gemv_variant = gemv or kern.gemv_variant
    n_heads, n_kv_heads, hd, k, max_ctx = 3, 1, 32, 64, 640
    nq, nkv = n_heads * hd, n_kv_heads * hd
    rng = np.random.default_rng(pos0 + m)
    t = GGMLType.Q8_0
    mats = [rng.standard_normal((r, k)).astype(np.float32) for r in (nq, nkv, nkv)]
    weight = ops.alloc_weight(kern, t, nq + 2 * nkv, k, "qkv")
    rep = ops.Repacker(kern)
    row0 = 0
    refs = []
    for mat in mats:
        rep.upload(weight, t, quantize(mat, t), mat.shape[0], dst_row0=row0)
        refs.append(dequantize(quantize(mat, t), t, mat.shape).astype(np.float64))
        row0 += mat.shape[0]
    freqs = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    x = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(nq + 2 * nkv).astype(np.float32) if bias else np.zeros(nq + 2 * nkv, np.float32)
    q_out = zeros(kern, m * (nq + nkv) * 4)
    kv_dtype = np.float16 if kern.tier.f16 else np.float32
    kv = zeros(kern, 2 * nkv * max_ctx * np.dtype(kv_dtype).itemsize)
    launch = ops.matmul(
        kern,
        w=weight,
        x=upload(kern, x),
        out=q_out,
        state=state_buffer(kern, pos0, m),
        epi="QKV",
        gemm=gemm,
        kv=kv,
        rope_freq=upload(kern, freqs.astype(np.float32)),
        n_q=nq,
        n_kv=nkv,
        head_dim=hd,
        max_ctx=max_ctx,
        rope_dims=hd,
        bias=upload(kern, b) if bias else None,
        qk_out=qk_out,
    )
    kern.device.submit([launch.dispatch(m)])
    tokens = np.arange(m) if gemm else np.array([m - 1])
    pos = pos0 + tokens
    q_raw = x[tokens] @ refs[0].T + b[:nq]
    k_raw = x[tokens] @ refs[1].T + b[nq : nq + nkv]
    v_want = x[tokens] @ refs[2].T + b[nq + nkv :]
    cache = (
        download(kern, kv, kv_dtype, 2 * nkv * max_ctx).astype(np.float64).reshape(2, n_kv_heads, max_ctx, hd)
    )
    v_got = cache[1][:, pos, :].transpose(1, 0, 2).reshape(len(pos), nkv)
    kv_rel = 2e-3 if kern.tier.f16 else 1e-4  # f16 cache rounding; f32 angle reduction at positions ~500
    stride = nq + nkv if qk_out else nq
    out = download(kern, q_out, np.float32, m * stride).reshape(m, stride)[tokens if gemm else [0]]
    if qk_out:  # raw q | k rows to scratch, the K cache untouched
        assert_close(out, np.concatenate([q_raw, k_raw], axis=1), REL, "q | k")
        assert not cache[0].any()
    else:
        k_got = cache[0][:, pos, :].transpose(1, 0, 2).reshape(len(pos), nkv)
        assert_close(out, rope_ref(q_raw, pos, freqs, hd), 1e-4, "q")
        assert_close(k_got, rope_ref(k_raw, pos, freqs, hd), kv_rel, "k cache")
    assert_close(v_got, v_want, kv_rel, "v cache")
    # nothing written outside the step's positions
    others = np.setdiff1d(np.arange(max_ctx), pos)
    assert not cache[:, :, others, :].any()


@pytest.mark.parametrize(
    "variant,wg,seg",
    [("GEMV", 64, 0), ("GEMV", 16, 0), ("GEMV_SEG", 64, 8), ("GEMV_SEG", 32, 4), ("GEMV_SEG", 16, 8)],
)
@pytest.mark.parametrize("softcap", [0.0, 100.0], ids=["raw", "softcap"])  # logits up to ~150 here
def test_lm_head_argmax_partials(kern, variant, wg, seg, softcap):
    """The LM head's greedy partials: per workgroup of rows, its largest logit and row (the lowest row on ties), and
    the sampler's greedy pick from them is the argmax of all logits. With final soft-capping (Gemma 2) the logits
    and the partials are the capped values."""
    kern.gemv_variant, kern.gemv_wg, kern.gemv_seg = variant, wg, seg or kern.gemv_seg
    n, k, m = 75, 96, 2  # odd rows: the last pair is half empty
    rng = np.random.default_rng(11)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[37] = np.sign(x[m - 1]) * 2  # the largest logit ...
    w[61] = w[37]  # ... tied in another workgroup (and in the same pair / workgroup for 36)
    w[36] = w[37]
    w[3] = w[37] * 0.5
    w[4] = w[3]  # a tie inside an early workgroup
    raw = quantize(w, GGMLType.Q8_0)
    weight = ops.alloc_weight(kern, GGMLType.Q8_0, n, k, "w")
    ops.Repacker(kern, staging_bytes=4096).upload(weight, GGMLType.Q8_0, raw, n)
    logits = zeros(kern, ops.Sampler.logits_bytes(n))
    partials = zeros(kern, ops.Sampler.partials_bytes(n))
    state = state_buffer(kern, 4, m)
    launch = ops.matmul(
        kern,
        w=weight,
        x=upload(kern, x),
        out=logits,
        state=state,
        epi="STORE",
        norm_w=upload(kern, np.ones(k, np.float32)),
        eps=1e-5,
        argmax_out=partials,
        softcap=softcap,
        gemm=False,
    )
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, logits, np.float32, n)
    xl = x[m - 1].astype(np.float64)
    want = (xl / np.sqrt((xl**2).mean() + 1e-5)) @ dequantize(raw, GGMLType.Q8_0, w.shape).T.astype(
        np.float64
    )
    if softcap:
        want = softcap * np.tanh(want / softcap)
    assert_close(got, want, REL, "logits")
    rows = kern.gemv.rows_per_workgroup
    n_wg = -(-n // rows)
    pairs = download(kern, partials, np.uint32, 2 * n_wg).reshape(n_wg, 2)
    for j in range(n_wg):
        block = got[j * rows : (j + 1) * rows]
        r = j * rows + int(np.argmax(block))  # first of equal values: the lowest row
        assert pairs[j, 1] == r, f"workgroup {j}: row {pairs[j, 1]}, want {r}"
        assert pairs[j, 0] == got[r : r + 1].view(np.uint32)[0]
    assert got[36] == got[37] == got[61] and got[3] == got[4]
    tokens = zeros(kern, 16)
    s = ops.Sampler(kern, logits=logits, tokens=tokens, state=state, vocab=n, partials=partials)
    s.use_partials(n_wg)
    kern.device.submit([s.launch.dispatch(1)])
    assert download(kern, tokens, np.uint32, 1)[0] == np.argmax(got) == 36
