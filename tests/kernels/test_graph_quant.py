"""The whole engine on tiny random Llama GGUFs in every newer quant type and in hub-like mixes of types, against the
numpy reference forward pass (which dequantizes the file itself, tests/kernels/quantize.py).

Mixes: a Q4_K_M-like file (Q4_K q/k/o/gate/up; Q6_K v and down in the layer llama.cpp's use_more_bits picks of two;
a tied Q6_K embedding and LM head), and the fallback llama.cpp writes where rows are not a multiple of 256 (Q5_0,
Q8_0 v/down and tied embedding; here also a Q8_0 up beside a Q5_0 gate, beyond the standard mixes). Mixed q/k/v
layers decode unfused (the fused attention kernel reads one format), the others fused."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from webllm_py.engine import load_engine
from webllm_py.errors import CorruptWeightsError
from webllm_py.kernels.registry import Tier
from webllm_py.model.gguf import GGUFFile
from webllm_py.model.quant import GGMLType

from ..e2e.reference import ReferenceModel
from ..e2e.stepper import check_against_reference
from .conftest import TIERS
from .tiny_llama import build_tiny_llama

T = GGMLType
K_SHAPE = dict(hidden=256, ffn=256, n_heads=4, n_kv_heads=2)  # K-quants: rows a multiple of 256
MODELS = {
    "q5_0": dict(weight_type=T.Q5_0, embed_type=T.Q5_0),
    "q5_1-untied": dict(weight_type=T.Q5_1, embed_type=T.Q5_1, tied=False),
    "bf16": dict(weight_type=T.BF16, embed_type=T.BF16),
    "q4_k": dict(**K_SHAPE, weight_type=T.Q4_K, embed_type=T.Q4_K),
    "q5_k-untied": dict(**K_SHAPE, weight_type=T.Q5_K, embed_type=T.Q5_K, tied=False),
    "q6_k": dict(**K_SHAPE, weight_type=T.Q6_K, embed_type=T.Q6_K),
    "q4_k_m": dict(
        hidden=256, ffn=512, n_heads=4, n_kv_heads=1, weight_type=T.Q4_K, embed_type=T.Q6_K,
        tensor_types={"blk.1.attn_v.weight": T.Q6_K, "blk.1.ffn_down.weight": T.Q6_K},
    ),
    "fallback-q5_0-q8_0": dict(
        hidden=160, ffn=192, n_heads=5, n_kv_heads=1, weight_type=T.Q5_0, embed_type=T.Q8_0,
        tensor_types={
            "blk.1.attn_v.weight": T.Q8_0, "blk.1.ffn_down.weight": T.Q8_0, "blk.0.ffn_up.weight": T.Q8_0,
        },
    ),
}  # fmt: skip
MIXED = {"q4_k_m": [1], "fallback-q5_0-q8_0": [1]}  # layers whose q/k/v mix types
# Single types in one tier each (the kernel tests run every type in every tier), the mixes in all four.
f32, f32_sg, f16, f16_sg = TIERS
CASES = [("q5_0", f32), ("q5_1-untied", f32_sg), ("bf16", f16), ("q4_k", f16_sg), ("q5_k-untied", f32)]
CASES += [("q6_k", f16_sg)]
CASES += [(name, tier) for name in MIXED for tier in TIERS]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (path, reference), built on first use."""
    cache: dict[str, tuple] = {}
    opened = []

    def get(name: str):
        if name not in cache:
            path = build_tiny_llama(
                tmp_path_factory.mktemp("q") / f"{name}.gguf", seed=len(name), **MODELS[name]
            )
            g = GGUFFile.open(path)
            opened.append(g)
            cache[name] = (path, ReferenceModel(g))
        return cache[name]

    yield get
    for g in opened:
        g.close()


@pytest.mark.parametrize("name,tier", CASES, ids=lambda v: v.name if isinstance(v, Tier) else v)
def test_quant_model_prefill_and_decode(models, gpu_device, name, tier):
    path, ref = models(name)
    engine = asyncio.run(
        load_engine(
            name,
            str(path),
            device=gpu_device,
            tier=tier,
            context_window_size=64,
            tuning={"gemv_wg": 32, "attention_splits": 3, "fuse_attention": True},
        )
    )
    try:
        graph = engine.graph
        mixed = MIXED.get(name, [])
        assert [i for i, L in enumerate(graph.layers) if len(L.w.qkv.segments) > 1] == mixed
        n_layers = engine.config.n_layers
        assert engine.dispatches_per_decode_step == 4 * n_layers + len(mixed) + 3
        rng = np.random.default_rng(2)
        prompt = [int(t) for t in rng.integers(3, engine.config.vocab_size, 40)]
        rel = 2e-2 if tier.f16 else 2e-4  # f16 tier: K/V rounded to f16; f32: only summation order differs
        check_against_reference(engine, ref, prompt, 3, rel, name)
    finally:
        asyncio.run(engine.unload())


def test_nan_scale_fails_the_load_naming_the_tensor(gpu_device, tmp_path):
    """A NaN Q6_K super-block scale in one layer's v: the load raises CorruptWeightsError for that tensor, found by
    the repack kernel's scan (one readback at the end of the load)."""
    path = build_tiny_llama(tmp_path / "nan.gguf", **MODELS["q4_k_m"])
    with GGUFFile.open(path) as g:
        info = g.tensor("blk.1.attn_v.weight")
        assert info.ggml_type == T.Q6_K
        offset = info.offset + 3 * 210 + 208  # d of the fourth super-block
    data = bytearray(path.read_bytes())
    data[offset : offset + 2] = b"\x00\x7e"  # f16 NaN
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptWeightsError) as e:
        asyncio.run(load_engine("nan", str(path), device=gpu_device, tier=f32, context_window_size=32))
    assert e.value.tensor == "blk.1.attn_v.weight" and "Q6_K" in e.value.problem
