"""The whole engine on tiny random Llama GGUFs of many shapes, against the numpy reference forward pass.

Covers what the real SmolLM2 model does not: head sizes 16..128, GQA ratios 1..8, an untied LM head, Llama-3.1 RoPE
frequency factors, every weight format, chunked prefill, and the decode loop, in all four kernel tiers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from webllm_py.engine import SamplingParams, load_engine
from webllm_py.model.gguf import GGUFFile
from webllm_py.model.quant import GGMLType

from ..e2e import stepper
from ..e2e.reference import ReferenceModel
from .tiny_llama import build_tiny_llama

SHAPES = {
    "q8-gqa2-hd16": dict(),
    "q4_0-untied-gqa8-hd32": dict(
        hidden=96,
        n_heads=8,
        n_kv_heads=1,
        head_dim=32,
        weight_type=GGMLType.Q4_0,
        embed_type=GGMLType.F16,
        tied=False,
    ),
    "q4_1-mha-hd128": dict(
        hidden=128, ffn=160, n_heads=2, n_kv_heads=2, head_dim=128, weight_type=GGMLType.Q4_1
    ),
    "f16-rope-factors": dict(weight_type=GGMLType.F16, rope_factors=True, rope_base=500000.0, n_layers=3),
    "f32-hd64": dict(hidden=128, n_heads=2, n_kv_heads=1, weight_type=GGMLType.F32, embed_type=GGMLType.F32),
}


CONTEXT_WINDOW = 320  # the engine's context window in check_against_reference (LongRoPE references need it)


def _tiny_model(name: str, tmp_path_factory):
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny") / f"{name}.gguf", seed=len(name), **SHAPES[name])
    with GGUFFile.open(path) as g:  # the reference reads the file lazily
        yield name, path, ReferenceModel(g, n_ctx=CONTEXT_WINDOW)


@pytest.fixture(scope="module", params=list(SHAPES))
def tiny(request, tmp_path_factory):
    yield from _tiny_model(request.param, tmp_path_factory)


# Decode with the QKV projection in its own kernel (models whose fused attention kernel would not fit workgroup
# memory run this way): two shapes keep it covered.
@pytest.fixture(scope="module", params=["q4_0-untied-gqa8-hd32", "q4_1-mha-hd128"])
def tiny_unfused(request, tmp_path_factory):
    yield from _tiny_model(request.param, tmp_path_factory)


def test_tiny_model_prefill_and_decode(tiny, kern):
    engine = check_against_reference(tiny, kern, fuse_attention=True)
    assert engine.graph.fuses_attention
    assert engine.dispatches_per_decode_step == 4 * engine.config.n_layers + 3
    asyncio.run(engine.unload())


def test_tiny_model_decode_unfused(tiny_unfused, kern):
    engine = check_against_reference(tiny_unfused, kern, fuse_attention=False)
    assert engine.dispatches_per_decode_step == 5 * engine.config.n_layers + 3
    asyncio.run(engine.unload())


def check_against_reference(tiny, kern, *, fuse_attention: bool):
    """Prefill a 300-token prompt in two chunks, decode 4 tokens step by step and through the real decode loop, and
    compare every step's logits with the numpy reference. Returns the engine (still loaded)."""
    name, path, ref = tiny
    engine = asyncio.run(
        load_engine(
            name,
            str(path),
            device=kern.device,
            tier=kern.tier,
            context_window_size=CONTEXT_WINDOW,
            prefill_chunk_size=256,
            # The second prefill chunk (positions 256..299) sees >= 260 keys: flash attention; the first one not.
            tuning={
                "gemv_wg": 32,
                "attention_splits": 3,
                "fuse_attention": fuse_attention,
                "flash_min_keys": 260,
            },
        )
    )
    assert (
        engine.graph.chunk == 256
    )  # the prompt below takes two prefill chunks, only the second with flash attention
    assert "flash_attn" in engine.graph.roles(44, 256) and "flash_attn" not in engine.graph.roles(256, 0)
    rng = np.random.default_rng(1)
    prompt = [int(t) for t in rng.integers(3, engine.config.vocab_size, 300)]
    rel = 2e-2 if kern.tier.f16 else 2e-4  # f16 tier: K/V rounded to f16
    tokens = stepper.check_against_reference(engine, ref, prompt, 4, rel, name)
    # The real decode loop (read one step behind) produces the same tokens.
    gen = engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))

    async def run():
        return [t async for t in gen]

    assert asyncio.run(run()) == tokens
    return engine


def test_prefill_chunk_size_changes_the_steps_not_the_results(tmp_path, gpu_device):
    """prefill_chunk_size (WebLLM's ChatOptions key) sets the tokens of one prefill step: a 40-token prompt in
    chunks of 7 (six steps) gives the logits of the default single step; the memory plan's activations shrink with
    the chunk; a size below 1 is a typed error naming the field, raised before anything is uploaded."""
    from webllm_py.errors import InvalidRangeError
    from webllm_py.kernels.registry import Tier
    from webllm_py.model.graph import activation_bytes

    path = build_tiny_llama(tmp_path / "tiny.gguf", seed=11)
    prompt = [int(t) for t in np.random.default_rng(2).integers(3, 200, 40)]
    results = {}
    for chunk in (None, 7):
        engine = asyncio.run(
            load_engine(
                "tiny",
                str(path),
                device=gpu_device,
                tier=Tier(False, True),
                context_window_size=64,
                prefill_chunk_size=chunk,
                tuning={"gemv_wg": 32},
            )  # fmt: skip
        )
        assert engine.graph.chunk == (64 if chunk is None else 7)
        results[chunk] = stepper.greedy_steps(engine, prompt, 3)
        asyncio.run(engine.unload())
    (tokens, logits), (tokens7, logits7) = results[None], results[7]
    assert tokens7 == tokens
    np.testing.assert_allclose(np.array(logits7), np.array(logits), rtol=0, atol=1e-4)
    cfg = engine.config
    assert activation_bytes(cfg, 7, 2)["h"] == 7 * cfg.ffn_size * 4 < activation_bytes(cfg, 64, 2)["h"]
    with pytest.raises(InvalidRangeError, match="prefill_chunk_size"):
        asyncio.run(load_engine("tiny", str(path), device=gpu_device, prefill_chunk_size=0))
