"""Embedding gather and the GPU sampler (greedy, temperature, top-p) against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from webllm_py.gpu.device import BufferUsage
from webllm_py.kernels import ops
from webllm_py.model.quant import GGMLType

from .conftest import STORAGE, assert_close, download, state_buffer, upload, zeros
from .quantize import dequantize, quantize


@pytest.mark.parametrize(
    "ggml_type",
    [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.F16, GGMLType.F32],
    ids=lambda t: t.name,
)
def test_embed(kern, ggml_type):
    vocab, h, m = 301, 96, 7
    rng = np.random.default_rng(3)
    table = rng.standard_normal((vocab, h)).astype(np.float32)
    raw = quantize(table, ggml_type)
    w = ops.alloc_weight(kern, ggml_type, vocab, h, "embd")
    ops.Repacker(kern).upload(w, ggml_type, raw, vocab)
    ids = np.array([0, 300, 5, 5, 17, 299, 128], dtype=np.uint32)
    out = zeros(kern, m * h * 4)
    launch = ops.embed(kern, w=w, tokens=upload(kern, ids), out=out, state=state_buffer(kern, 0, m))
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, out, np.float32, m * h).reshape(m, h)
    assert_close(got, dequantize(raw, ggml_type, (vocab, h))[ids], 0.0, "embedding rows")


def run_sampler(kern, logits, *, temperature, top_p, seed, step=0, pos=10, n_tokens=3):
    vocab = len(logits)
    state = state_buffer(kern, pos, n_tokens, step)
    tokens = zeros(kern, 16)
    s = ops.Sampler(
        kern, logits=upload(kern, logits.astype(np.float32)), tokens=tokens, state=state, vocab=vocab
    )
    s.configure(temperature=temperature, top_p=top_p, seed=seed)
    kern.device.submit([s.launch.dispatch(1)])
    tok = int(download(kern, tokens, np.uint32, 1)[0])
    st = download(kern, state, np.uint32, 4)
    return tok, st


def test_greedy_argmax_and_state(kern):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(49152).astype(np.float32)
    logits[40000] = 9.0
    logits[41000] = 9.0  # a tie: the lower index wins, as in llama.cpp
    tok, st = run_sampler(kern, logits, temperature=0.0, top_p=1.0, seed=1)
    assert tok == 40000
    assert list(st[:3]) == [13, 1, 1]  # pos advanced by the tokens processed; next step has one token


def test_temperature_sampling_matches_distribution(kern):
    """Over many seeds the GPU sampler's frequencies follow softmax(logits / T) (loose 5-sigma bound)."""
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0] + [-30.0] * 250, dtype=np.float32)
    t = 0.8
    p = np.exp(logits / t - (logits / t).max())
    p /= p.sum()
    n = 600
    counts = np.zeros(len(logits))
    for seed in range(n):
        tok, _ = run_sampler(kern, logits, temperature=t, top_p=1.0, seed=seed * 7919 + 1)
        counts[tok] += 1
    sigma = np.sqrt(n * p * (1 - p)) + 1
    assert np.all(np.abs(counts - n * p) <= 5 * sigma), (counts[:6], (n * p)[:6])


def test_top_p_keeps_only_the_nucleus(kern):
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05] + [1e-6] * 60)).astype(np.float32)
    seen = set()
    for seed in range(200):
        tok, _ = run_sampler(kern, logits, temperature=1.0, top_p=0.79, seed=seed)
        seen.add(tok)
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.79 of the mass: nothing else may be drawn


def test_same_seed_same_token_and_step_changes_stream(kern):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(5000).astype(np.float32)
    a = [run_sampler(kern, logits, temperature=1.0, top_p=0.95, seed=42, step=s)[0] for s in range(6)]
    b = [run_sampler(kern, logits, temperature=1.0, top_p=0.95, seed=42, step=s)[0] for s in range(6)]
    assert a == b
    assert len(set(a)) > 1


def test_state_buffer_is_uniform_and_storage(kern):
    # The state is read as a uniform by every kernel and written as storage by the sampler.
    buf = state_buffer(kern, 0, 1)
    assert buf.usage & BufferUsage.UNIFORM and buf.usage & STORAGE == STORAGE
