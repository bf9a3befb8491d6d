"""Every supported architecture end to end on tiny random GGUFs, against the numpy reference forward pass.

Each model carries its architecture's real tensor names and metadata keys (tiny_llama.build_tiny_model) and turns on
the features the graph must get right: q/k/v biases and partial NEOX rotation (qwen2), per-head q/k norms with a
head_dim unlike hidden / heads (qwen3), fused qkv and gate/up tensors with LongRoPE's long and short factors and its
attention factor at head_dim 96 (phi3), GeGLU, embedding scale, post norms, attention and final soft-caps and
alternating sliding windows at head_dim 256 (gemma2), five local to one global layer with two RoPE bases and linear
scaling on the global layer only (gemma3), and a Llama with a sliding window on every layer and linear RoPE scaling.
The 300-token prompt is longer than every window and is prefilled in two chunks (the second with flash attention),
then four greedy steps decode (fused QKV where the features allow it), in an f32 and an f16 tier."""

from __future__ import annotations

import asyncio

import pytest

from webllm_py.kernels.registry import Kernels, Tier
from webllm_py.model.gguf import GGUFFile
from webllm_py.model.quant import GGMLType

from ..e2e.reference import ReferenceModel
from .test_graph_tiny import CONTEXT_WINDOW, check_against_reference
from .tiny_llama import build_tiny_model

MODELS = {
    "qwen2-bias-partial-rope": dict(
        arch="qwen2", hidden=128, n_heads=2, n_kv_heads=1, rope_dims=32, qkv_bias=True, rope_base=1e6
    ),
    "qwen3-qk-norm-hd128": dict(
        arch="qwen3", hidden=64, n_heads=2, n_kv_heads=1, head_dim=128, qk_norm=True, weight_type=GGMLType.Q4_0
    ),
    "phi3-longrope-long-hd96": dict(
        arch="phi3", hidden=192, ffn=128, n_heads=2, n_kv_heads=2, fused_qkv=True, fused_ffn=True, tied=False,
        longrope_original_ctx=64, attn_factor=1.2247, sliding_window=0, weight_type=GGMLType.F16,
    ),
    "phi3-longrope-short-qkv-bias": dict(
        arch="phi3", hidden=192, ffn=128, n_heads=2, n_kv_heads=1, fused_qkv=True, fused_ffn=True, tied=False,
        qkv_bias=True, longrope_original_ctx=512, attn_factor=1.1, sliding_window=8, weight_type=GGMLType.Q8_0,
    ),
    "gemma2-softcap-swa-hd256": dict(
        arch="gemma2", hidden=128, ffn=160, n_heads=2, n_kv_heads=1, head_dim=256, post_norms=True,
        sliding_window=16, attn_softcap=1.5, final_softcap=8.0, n_layers=3,
    ),
    "gemma3-local-global": dict(
        arch="gemma3", n_layers=6, n_heads=2, n_kv_heads=1, qk_norm=True, post_norms=True, sliding_window=24,
        rope_base=1e6, rope_base_swa=1e4, rope_linear=8.0, weight_type=GGMLType.Q4_1, embed_type=GGMLType.F16,
    ),
    "llama-swa-linear-rope": dict(sliding_window=20, rope_linear=4.0, weight_type=GGMLType.Q4_0, tied=False),
}  # fmt: skip
TIERS = [Tier(f16=False, subgroups=False), Tier(f16=True, subgroups=True)]


@pytest.fixture(scope="module", params=list(MODELS))
def tiny_arch(request, tmp_path_factory):
    name = request.param
    path = build_tiny_model(tmp_path_factory.mktemp("arch") / f"{name}.gguf", seed=len(name), **MODELS[name])
    with GGUFFile.open(path) as g:  # the reference reads the file lazily
        yield name, path, ReferenceModel(g, n_ctx=CONTEXT_WINDOW)


@pytest.fixture(params=TIERS, ids=lambda t: t.name)
def tier_kern(request, gpu_device):
    return Kernels(gpu_device, request.param)


def test_architecture_prefill_and_decode(tiny_arch, tier_kern):
    engine = check_against_reference(tiny_arch, tier_kern, fuse_attention=True)
    cfg = engine.config
    per_layer = (4 if engine.graph.fuses_attention else 5) + cfg.qk_norm + 2 * cfg.post_norms
    assert engine.dispatches_per_decode_step == per_layer * cfg.n_layers + 3
    # Fused QKV in decode exactly where no bias or q/k norm needs its own epilogue or kernel.
    assert engine.graph.fuses_attention == (not cfg.qkv_bias and not cfg.qk_norm)
    asyncio.run(engine.unload())
