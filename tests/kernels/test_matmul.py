"""Repack + quantized matrix products (GEMV for decode, GEMM for prefill) against numpy, every format and epilogue."""

from __future__ import annotations

import numpy as np
import pytest

from webllm_py.kernels import ops
from webllm_py.kernels.registry import Kernels, Tier
from webllm_py.model.quant import GGMLType

from .conftest import assert_close, download, state_buffer, upload, zeros
from .quantize import K_TYPES, dequantize, quantize

LEGACY = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.F16, GGMLType.F32]
NEW = [GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.BF16]
TYPES = LEGACY + NEW


def sizes(ggml_type, n_sizes=3):
    """(rows, K) to test a type on: odd row counts (not a multiple of any tile), several blocks per row; K a multiple
    of 256 for K-quants (two super-blocks: the last Q6_K group of 64 blocks is partly filled)."""
    if ggml_type in K_TYPES:
        return [(37, 512), (6, 256), (75, 256)][:n_sizes]
    return [(37, 96), (75, 160), (6, 32)][:n_sizes]


# Kernel shapes: decode GEMV (tokens m; the step's last one is computed) and the prefill GEMM's two workgroups: four
# groups splitting K (GPUs) and one (CPU adapters).
SHAPES = [
    ("GEMV", 0, 1),
    ("GEMV", 0, 3),
    ("GEMM", 256, 1),
    ("GEMM", 256, 5),
    ("GEMM", 64, 5),
    ("GEMM", 256, 33),
]
SHAPES += [("GEMM", 64, 33), ("GEMM", 256, 70), ("GEMM", 64, 70)]
NEW_SHAPES = SHAPES[:2] + [s for s in SHAPES if s[0] == "GEMM" and s[2] in (5, 70)]
STORE_CASES = [(t, n, k, s) for t in LEGACY for n, k in sizes(t) for s in SHAPES]
STORE_CASES += [(t, n, k, s) for t in NEW for n, k in sizes(t, 2) for s in NEW_SHAPES]


@pytest.fixture(params=[("GEMM", 256), ("GEMM", 64), ("GEMM_RT", 64)], ids=lambda v: f"{v[0]}{v[1]}")
def gemm_wg(request, kern):
    """The prefill GEMM's workgroup shapes: four groups splitting K (GPUs), one (CPU adapters), register-tiled."""
    kern.gemm_variant, kern.gemm_wg = request.param
    kern.gemm_rt_min_dim = 0  # GEMM_RT for the tests' small products too
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


@pytest.mark.parametrize(
    "ggml_type,n,k,shape",
    STORE_CASES,
    ids=lambda v: (
        v.name
        if isinstance(v, GGMLType)
        else (f"{v[0]}{v[1] or ''}-m{v[2]}" if isinstance(v, tuple) else str(v))
    ),
)
def test_matmul_store(kern, ggml_type, n, k, shape):
    kind, wg, m = shape
    if wg:
        kern.gemm_variant, kern.gemm_wg = kind, wg
    check_store(kern, ggml_type, n, k, kind.startswith("GEMM"), m)


# GEMV_MR: (wg, lanes along K, rows per invocation): segments shorter than lavapipe's subgroup (8) sum by shuffles,
# longer ones through workgroup memory; with K = 96 or 256 some lanes run past the row's last octet.
# Also its run-time-trip-count (MRR) and whole-block-lane (MRB) forms.
MR_SHAPES = [("GEMV_MR", 32, 8, 2), ("GEMV_MRB", 64, 16, 4), ("GEMV_MRR", 16, 4, 8), ("GEMV_MR", 128, 32, 2)]
MR_SHAPES += [("GEMV_MRB", 16, 4, 2), ("GEMV_MRR", 64, 16, 4)]


def use_gemv(kern, variant, wg, seg=0, rt=0):
    """Make (variant, wg, seg, rt) the default decode shape of ``kern``."""
    kern.gemv_variant, kern.gemv_wg = variant, wg
    kern.gemv_seg = seg or kern.gemv_seg
    kern.gemv_rt = rt or kern.gemv_rt


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("variant,wg,seg", [("GEMV_SEG", 64, 8), ("GEMV_SEG", 32, 4), ("GEMV_SEG", 16, 8)])
def test_gemv_variants(kern, ggml_type, variant, wg, seg):
    use_gemv(kern, variant, wg, seg)
    for n, k in sizes(ggml_type, 2):
        check_store(kern, ggml_type, n, k, False, 2)


@pytest.fixture(
    params=[Tier(f16=False, subgroups=False), Tier(f16=False, subgroups=True)], ids=lambda t: t.name
)
def kern_f32(request, gpu_device, subgroup_min):
    """The f32 tiers only, for kernels whose code does not depend on f16 (it changes only the KV cache type)."""
    k = Kernels(gpu_device, request.param)
    k.subgroup_min = subgroup_min if request.param.subgroups else 0
    return k


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("pair", [0, 1])
def test_gemv_mr_formats(kern_f32, ggml_type, pair):
    """GEMV_MR over every format, two of its shapes per format (rotating), shuffle and workgroup-memory sums."""
    for j in (2 * pair, 2 * pair + 1):
        use_gemv(kern_f32, *MR_SHAPES[(TYPES.index(ggml_type) + j) % len(MR_SHAPES)])
        for n, k in sizes(ggml_type, 2):
            check_store(kern_f32, ggml_type, n, k, False, 2)


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_gemm_rt_formats(gpu_device, ggml_type):
    """The register-tiled prefill GEMM over every format (f32 tier: it uses no subgroup operations and f16 only
    changes the KV cache): 64 rows with a partial token tile, or 128 rows with two token tiles."""
    wg, m = [(64, 5), (128, 70)][TYPES.index(ggml_type) % 2]
    kern = Kernels(
        gpu_device, Tier(f16=False, subgroups=False), gemm_variant="GEMM_RT", gemm_wg=wg, gemm_rt_min_dim=0
    )
    n, k = sizes(ggml_type, 1)[0]
    check_store(kern, ggml_type, n, k, True, m)


@pytest.mark.parametrize("normed", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize(
    "ggml_type", [GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0], ids=lambda t: t.name
)
def test_gemm_rt_half(gpu_device, ggml_type, normed):
    """GEMM_RT in the f16 tier with f16 tiles and per-block f16 sums (RT_HALF, Kernels.gemm_f16): within f16
    rounding of the float64 product (weights and activations rounded to f16, 32-term sums in f16), and measurably
    not the f32 kernel's result (so f16 math ran). 128 rows, two token tiles."""
    kern = Kernels(gpu_device, Tier(f16=True, subgroups=False), gemm_variant="GEMM_RT", gemm_wg=128,
                   gemm_rt_min_dim=0, gemm_f16=True)  # fmt: skip
    n, k, m, eps = 128, 512, 70, 1e-5
    rng = np.random.default_rng(int(ggml_type) + 10 * normed)
    weight, ref = make_weight(kern, rng, ggml_type, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    nw = rng.standard_normal(k).astype(np.float32)
    out = zeros(kern, m * n * 4)
    extra = {"norm_w": upload(kern, nw), "eps": eps} if normed else {}
    launch = ops.matmul(kern, w=weight, x=upload(kern, x), out=out, state=state_buffer(kern, 0, m), epi="STORE",
                        gemm=True, **extra)  # fmt: skip
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, out, np.float32, m * n).reshape(m, n)
    xs = x.astype(np.float64)
    if normed:
        xs = xs / np.sqrt((xs**2).mean(axis=1, keepdims=True) + eps) * nw
    want = xs @ ref.T.astype(np.float64)
    assert_close(got, want, 2e-3, f"GEMM_RT f16 {ggml_type.name} {'normed' if normed else 'plain'}")
    assert not np.allclose(got, want, rtol=1e-5, atol=0)  # f16 rounding is visible: the f16 path ran


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
    "gemm,m,gemv",
    [(False, 1, "GEMV"), (False, 2, "GEMV_SEG"), (False, 2, "GEMV_MR"), (True, 7, ""), (True, 40, "")],
)
def test_matmul_norm_add(kern, gemm_wg, ggml_type, gemm, m, gemv):
    """RMSNorm folded into the product, residual add in the epilogue: out += W (x * nw / rms(x))."""
    if gemv == "GEMV_MR":
        use_gemv(kern, *MR_SHAPES[1])
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


def fused_weight(kern, rng, parts, k, *, interleave=False):
    """Matrices of the given (GGUF type, rows), fused into one weight through ops.alloc_fused (segments where types
    differ) and the repack kernel; returns the weight and their dequantized references."""
    weight, places = ops.alloc_fused(kern, [(t, n) for t, n in parts], k, "fused", interleave=interleave)
    rep = ops.Repacker(kern)
    refs = []
    for (t, n), place in zip(parts, places, strict=True):
        raw = quantize(rng.standard_normal((n, k)).astype(np.float32), t)
        rep.upload(
            weight, t, raw, n, segment=place.segment, dst_row0=place.dst_row0, dst_row_step=place.dst_row_step
        )
        refs.append(dequantize(raw, t, (n, k)).astype(np.float64))
    return weight, refs


# Gate/up of one type are interleaved by the repack (dst rows 2i and 2i + 1); of two types (not in llama.cpp's
# standard mixes, but valid files) each keeps its format, even rows reading one segment and odd rows the other.
SILU_TYPES = [(GGMLType.Q4_0, GGMLType.Q4_0), (GGMLType.Q4_K, GGMLType.Q6_K), (GGMLType.Q5_0, GGMLType.Q8_0)]


@pytest.mark.parametrize("act", ["SILU", "GELU"])
@pytest.mark.parametrize("types", SILU_TYPES, ids=lambda ts: "+".join(t.name for t in ts))
@pytest.mark.parametrize(
    "gemm,m,gemv",
    [(False, 1, "GEMV"), (False, 1, "GEMV_SEG"), (False, 1, "GEMV_MR"), (True, 9, 256), (True, 9, 64)]
    + [(True, 9, "GEMM_RT")],
)
def test_matmul_silu(kern, types, gemm, m, gemv, act):
    """out = act(gate) * up, gate and up rows interleaved in one weight; act = SiLU (SwiGLU) or GELU's tanh
    approximation (GeGLU)."""
    if gemv == "GEMM_RT":
        kern.gemm_variant, kern.gemm_wg, kern.gemm_rt_min_dim = "GEMM_RT", 64, 0
    elif gemm:
        kern.gemm_wg = gemv
    elif gemv == "GEMV_MR":
        use_gemv(kern, *MR_SHAPES[0])
    else:
        kern.gemv_variant = gemv
    n_ff = 37
    k = 256 if set(types) & set(K_TYPES) else 64
    rng = np.random.default_rng(11)
    weight, (g_ref, u_ref) = fused_weight(kern, rng, [(t, n_ff) for t in types], k, interleave=True)
    assert len(weight.segments) == len(set(types))
    x = rng.standard_normal((m, k)).astype(np.float32) * 3  # GELU's tanh argument reaches past the clamp
    out = zeros(kern, m * n_ff * 4)
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


QKV_SHAPES = [  # (gemm, tokens, position of the first, GEMV variant or GEMM workgroup)
    (False, 1, 0, "GEMV"),
    (False, 1, 517, "GEMV"),
    (False, 1, 517, "GEMV_SEG"),
    (False, 1, 517, "GEMV_MR"),
    (True, 6, 0, 256),
    (True, 6, 0, 64),
    (True, 37, 300, 256),
    (True, 37, 300, 64),
    (True, 37, 300, "GEMM_RT"),
]
# q/k/v of one type, and mixes: a Q4_K_M layer (Q6_K v), the fallback of rows not a multiple of 256 (Q5_0 q/k,
# Q8_0 v), three types (three segments).
QKV_TYPES = [(GGMLType.Q8_0,) * 3] + [
    (GGMLType.Q4_K, GGMLType.Q4_K, GGMLType.Q6_K),
    (GGMLType.Q5_0, GGMLType.Q5_0, GGMLType.Q8_0),
    (GGMLType.Q4_1, GGMLType.BF16, GGMLType.Q5_1),
]
# (bias, qk_out): Qwen2's biases before RoPE; q/k-norm models' raw q | k rows to scratch (only v to the cache).
QKV_CASES = [(QKV_TYPES[0], *c, False, False) for c in QKV_SHAPES]
QKV_CASES += [(QKV_TYPES[0], *c, True, qk_out) for c in QKV_SHAPES for qk_out in (False, True)]
QKV_CASES += [(ts, *c, False, False) for ts in QKV_TYPES[1:] for c in QKV_SHAPES[1:4] + QKV_SHAPES[6:]]
QKV_CASES += [(QKV_TYPES[1], *QKV_SHAPES[6], True, True)]


@pytest.mark.parametrize(
    "types,gemm,m,pos0,gemv,bias,qk_out",
    QKV_CASES,
    ids=lambda v: "+".join(t.name for t in v) if isinstance(v, tuple) else str(v),
)
def test_matmul_qkv_rope_kv_append(kern, types, gemm, m, pos0, gemv, bias, qk_out):
    """Fused q/k/v product: RoPE on q and k, q to scratch, k and v appended to the cache at pos0 + t. With a bias
    (Qwen2) it is added before RoPE; with qk_out (q/k-norm models) q and k rows go to scratch unrotated, (m, n_q +
    n_kv), and only v to the cache."""
    if gemv == "GEMM_RT":
        kern.gemm_variant, kern.gemm_wg, kern.gemm_rt_min_dim = "GEMM_RT", 128, 0
    elif gemm:
        kern.gemm_wg = gemv
    elif gemv == "GEMV_MR":
        use_gemv(kern, *MR_SHAPES[2])
    else:
        kern.gemv_variant = gemv
    n_heads, n_kv_heads, hd, max_ctx = 3, 1, 32, 640
    k = 256 if set(types) & set(K_TYPES) else 64
    nq, nkv = n_heads * hd, n_kv_heads * hd
    rng = np.random.default_rng(pos0 + m)
    weight, refs = fused_weight(kern, rng, list(zip(types, (nq, nkv, nkv), strict=True)), k)
    assert len(weight.segments) == len({t: 0 for t in types})
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
    "variant,wg,seg,rt",
    [
        ("GEMV", 64, 0, 0),
        ("GEMV", 16, 0, 0),
        ("GEMV_SEG", 64, 8, 0),
        ("GEMV_SEG", 32, 4, 0),
        ("GEMV_SEG", 16, 8, 0),
        ("GEMV_MR", 64, 16, 2),
        ("GEMV_MRB", 32, 4, 4),
        ("GEMV_MRR", 32, 8, 2),
    ],
)
@pytest.mark.parametrize("softcap", [0.0, 100.0], ids=["raw", "softcap"])  # logits up to ~150 here
def test_lm_head_argmax_partials(kern, variant, wg, seg, rt, softcap):
    """The LM head's greedy partials: per workgroup of rows, its largest logit and row (the lowest row on ties), and
    the sampler's greedy pick from them is the argmax of all logits. With final soft-capping (Gemma 2) the logits
    and the partials are the capped values."""
    use_gemv(kern, variant, wg, seg, rt)
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


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_lm_head_every_format(kern, ggml_type):
    """The LM head of every weight format: RMSNorm folded in, logits and the per-workgroup argmax partials (the two
    decode kernels take turns over the formats; test_lm_head_argmax_partials covers ties in both)."""
    shape = [("GEMV", 16), ("GEMV_SEG", 32, 4), MR_SHAPES[1], MR_SHAPES[0], MR_SHAPES[2]][
        TYPES.index(ggml_type) % 5
    ]
    use_gemv(kern, *shape)
    n, k = sizes(ggml_type, 1)[0]
    n, m, eps = n + 38, 2, 1e-5  # 75 rows: the last workgroup is partly empty
    rng = np.random.default_rng(int(ggml_type))
    weight, ref = make_weight(kern, rng, ggml_type, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    nw = rng.standard_normal(k).astype(np.float32)
    logits = zeros(kern, ops.Sampler.logits_bytes(n))
    partials = zeros(kern, ops.Sampler.partials_bytes(n))
    launch = ops.matmul(
        kern,
        w=weight,
        x=upload(kern, x),
        out=logits,
        state=state_buffer(kern, 0, m),
        epi="STORE",
        norm_w=upload(kern, nw),
        eps=eps,
        argmax_out=partials,
        gemm=False,
    )
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, logits, np.float32, n)
    xl = x[m - 1].astype(np.float64)
    want = (xl / np.sqrt((xl**2).mean() + eps) * nw) @ ref.T.astype(np.float64)
    assert_close(got, want, REL, f"LM head {ggml_type.name}")
    rows = kern.gemv.rows_per_workgroup
    n_wg = -(-n // rows)
    pairs = download(kern, partials, np.uint32, 2 * n_wg).reshape(n_wg, 2)
    for j in range(n_wg):
        r = j * rows + int(np.argmax(got[j * rows : (j + 1) * rows]))
        assert pairs[j, 1] == r and pairs[j, 0] == got[r : r + 1].view(np.uint32)[0], f"workgroup {j}"


def planes_reference(x: np.ndarray, planes: int) -> np.ndarray:
    """x as GEMV_MRQ reads it (ops.quantize_x): each 32-block rounded to integers X of at most xmax (127 with one
    plane, 2^22 - 1 with three), X = round(x * xmax / max|x|) (half to even), times max|x| / xmax."""
    xmax = np.float32(127 if planes == 1 else 4194303)
    blocks = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    inv = np.where(amax > 0, xmax / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return (np.round(blocks * inv) * (amax / xmax)).reshape(x.shape)


Q8_TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0]
Q8_TYPES += [GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]


@pytest.mark.parametrize("ggml_type", Q8_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("normed", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("planes", [1, 3], ids=["int8", "planes3"])
@pytest.mark.parametrize(
    "shape", [("GEMV_MRQ", 64, 16, 2), ("GEMV_MRQ", 32, 8, 4)], ids=lambda s: "/".join(map(str, s))
)
def test_gemv_integer_activations(kern_f32, ggml_type, shape, normed, planes, monkeypatch):
    """GEMV_MRQ after quantize_x: rows of every format it reads against x as integer planes (each 32-block of x,
    normed first with NORM, rounded with its own scale): equal to the float64 product of the dequantized weights
    with x rounded that way. One plane (q8_decode) is within int8 rounding of the exact product and measurably off
    it; three planes are within f32 rounding of it (the exact tier's numerics). A format it does not read (F16)
    runs GEMV_MR of the same shape, exactly, with no planes."""
    monkeypatch.setattr(kern_f32, "q8_decode", planes == 1)
    use_gemv(kern_f32, *shape)
    n, k, m, eps = 75, 512 if ggml_type in K_TYPES else 320, 2, 1e-5
    rng = np.random.default_rng(5 + normed)
    weight, ref = make_weight(kern_f32, rng, ggml_type, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    nw = (rng.standard_normal(k) if normed else np.ones(k)).astype(np.float32)
    out = zeros(kern_f32, m * n * 4)
    xq = zeros(kern_f32, ops.xq_bytes(k, planes))
    extra = {"norm_w": upload(kern_f32, nw), "eps": eps} if normed else {}
    launches = ops.matmul_parts(kern_f32, w=weight, x=upload(kern_f32, x), out=out, xq=xq,
                                state=state_buffer(kern_f32, 0, m), epi="STORE", gemm=False, **extra)  # fmt: skip
    assert len(launches) == 2 and launches[0].label.endswith(".xq")  # quantize_x, then the product
    kern_f32.device.submit([launch.dispatch(m) for launch in launches])
    got = download(kern_f32, out, np.float32, n)
    xl = x[m - 1].astype(np.float64)
    scale = 1 / np.sqrt((xl**2).mean() + eps) if normed else 1.0
    xr = planes_reference((x[m - 1] * nw).astype(np.float32), planes).astype(np.float64)
    exact = scale * ((xl * nw) @ ref.T.astype(np.float64))
    assert_close(
        got, scale * (xr @ ref.T.astype(np.float64)), 1e-5, f"{ggml_type.name} x integer activations"
    )
    if planes == 1:
        assert_close(got, exact, 2e-2, f"{ggml_type.name} x f32 activations")
        assert not np.allclose(got, exact, rtol=1e-6)  # int8 x was used
    else:
        assert_close(got, exact, 1e-6, f"{ggml_type.name} x f32 activations, three planes")
    assert ops.matmul_parts(kern_f32, w=make_weight(kern_f32, rng, GGMLType.F16, 45, 96)[0], x=xq, out=out,
                            xq=xq, state=state_buffer(kern_f32, 0, m), epi="STORE", gemm=False)[0].label == "matmul"  # fmt: skip
    check_store(kern_f32, GGMLType.F16, 45, 96, False, 2)


# Fused weights on GEMV_MRQ: a Q4_K_M q/k/v (Q6_K v: two segments by row range), the fallback for rows not a
# multiple of 256 (Q5_0 q/k, Q8_0 v: Q8_0 bytes sorted to the nibble formats' even / odd planes), three formats
# (three segments), gate/up of two formats (even / odd rows); a mix with a float format runs GEMV_MR instead.
Q8_FUSED = [
    ((GGMLType.Q4_K, GGMLType.Q4_K, GGMLType.Q6_K), False, True),
    ((GGMLType.Q5_0, GGMLType.Q5_0, GGMLType.Q8_0), False, True),
    ((GGMLType.Q4_0, GGMLType.Q5_1, GGMLType.Q4_1), False, True),
    ((GGMLType.Q4_K, GGMLType.Q6_K), True, True),
    ((GGMLType.Q8_0, GGMLType.Q5_K), True, True),
    ((GGMLType.Q4_1, GGMLType.BF16), False, False),
]


@pytest.mark.parametrize("types,interleave,planes", Q8_FUSED, ids=lambda v: "+".join(t.name for t in v) if isinstance(v, tuple) else str(v))  # fmt: skip
def test_gemv_integer_segments(kern_f32, types, interleave, planes):
    """GEMV_MRQ of a weight fused from matrices of different formats: each row reads its own segment's format
    against the one set of planes, within f32 rounding of the exact product (three planes)."""
    use_gemv(kern_f32, "GEMV_MRQ", 32, 8, 4)
    k, m = 256 if set(types) & set(K_TYPES) else 96, 2
    rng = np.random.default_rng(17)
    rows = [64, 32, 32][: len(types)] if not interleave else [37, 37]
    weight, refs = fused_weight(kern_f32, rng, list(zip(types, rows, strict=True)), k, interleave=interleave)
    ref = np.stack(refs, axis=1).reshape(-1, k) if interleave else np.concatenate(refs)
    n = ref.shape[0]
    x = rng.standard_normal((m, k)).astype(np.float32)
    out = zeros(kern_f32, n * 4)
    xq = zeros(kern_f32, ops.xq_bytes(k, 3))
    launches = ops.matmul_parts(kern_f32, w=weight, x=upload(kern_f32, x), out=out, xq=xq,
                                state=state_buffer(kern_f32, 0, m), epi="STORE", gemm=False)  # fmt: skip
    assert [launch.label.endswith(".xq") for launch in launches] == ([True, False] if planes else [False])
    kern_f32.device.submit([launch.dispatch(m) for launch in launches])
    got = download(kern_f32, out, np.float32, n)
    assert_close(got, x[m - 1].astype(np.float64) @ ref.T, 1e-6, "+".join(t.name for t in types))


def test_gemv_integer_planes_are_decided_per_product(kern_f32):
    """A product split by rows whose parts differ in what GEMV_MRQ reads (a Q4_0 part and an F16 part) runs every
    part on GEMV_MR of the same shape, with no quantize_x launch: the planes are the product's choice, so no part
    reads planes that were never packed; the result is the exact product."""
    use_gemv(kern_f32, "GEMV_MRQ", 32, 8, 4)
    k, m, rows = 96, 2, (64, 32)
    rng = np.random.default_rng(23)
    parts = [
        make_weight(kern_f32, rng, t, n, k) for t, n in zip((GGMLType.Q4_0, GGMLType.F16), rows, strict=True)
    ]
    split = ops.RowSplit(tuple(w for w, _ in parts), (0, rows[0]))
    ref = np.concatenate([r for _, r in parts]).astype(np.float64)
    x = rng.standard_normal((m, k)).astype(np.float32)
    out = zeros(kern_f32, sum(rows) * 4)
    launches = ops.matmul_parts(kern_f32, w=split, x=upload(kern_f32, x), out=out, xq=zeros(kern_f32, 4096),
                                state=state_buffer(kern_f32, 0, m), epi="STORE", gemm=False)  # fmt: skip
    assert len(launches) == 2 and not any(launch.label.endswith(".xq") for launch in launches)
    kern_f32.device.submit([launch.dispatch(m) for launch in launches])
    got = download(kern_f32, out, np.float32, sum(rows))
    assert_close(got, x[m - 1].astype(np.float64) @ ref.T, REL, "Q4_0 part + F16 part")
