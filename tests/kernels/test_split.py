"""The embedding and the LM head split by rows (ops.RowSplit) when one storage binding cannot hold them.

A device is opened with a 96 KiB storage binding (host.native.open_device ``limits``; wgpu-native enforces it, so a
binding over it would fail validation), on which a tiny model's 1,300-row embedding and LM head take six parts
each; the same model on the adapter's own limits takes one. Prefill logits, every decode step's logits and the
greedy ids must be identical on both: a part's rows are computed exactly as the whole matrix's, only their launches
differ. Tied (one split serves the gather and the LM head) and untied with a mixed-format head (Q4_K embedding,
Q6_K LM head, Q4_0 layers), with three decode kernel shapes (GEMV; GEMV_SEG, whose argmax partials come 16 rows a
workgroup; GEMV_MR, 8 rows a workgroup)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from webllm_py.engine import SamplingParams, load_engine, plan_model
from webllm_py.host.native import open_device
from webllm_py.kernels.registry import Tier
from webllm_py.model.gguf import GGUFFile
from webllm_py.model.quant import GGMLType

from ..e2e import stepper
from .tiny_llama import build_tiny_model

CAP = (
    96 << 10
)  # bytes per storage binding: a part of 256 rows of 256 features fits, the 1,300-row matrices do not
VOCAB = 1300
SHAPE = dict(hidden=256, ffn=256, n_heads=4, n_kv_heads=2, n_layers=2, ctx=64, vocab_size=VOCAB)
CPU = {"gemv_wg": 16, "attention_wg": 64, "attention_splits": 2, "sample_wg": 256, "gemm_wg": 64}
# name: (model, kernel shape, tier, first rows of the embedding's parts, of the LM head's)
SIX = (0, 256, 512, 768, 1024, 1280)  # 256 rows of 256 Q8_0 / Q6_K weights: 68 / 54 KiB; two would not fit
CASES = {
    "tied-q8_0-gemv": (
        dict(weight_type=GGMLType.Q4_0, embed_type=GGMLType.Q8_0, tied=True),
        {"gemv_variant": "GEMV"},
        Tier(f16=False, subgroups=False),
        SIX,
        SIX,
    ),
    "untied-q4_k-embed-q6_k-head-gemv_seg": (
        dict(
            weight_type=GGMLType.Q4_0,
            embed_type=GGMLType.Q4_K,
            tied=False,
            tensor_types={"output.weight": GGMLType.Q6_K},
        ),
        {"gemv_variant": "GEMV_SEG", "gemv_wg": 64, "gemv_seg": 8},
        Tier(f16=True, subgroups=True),
        (0, 512, 1024),  # 512 rows of Q4_K: 74 KiB
        SIX,
    ),
    # the GPU default decode kernel (speed's GEMV_MR: 8 rows a workgroup, argmax partials through write_best)
    "tied-q8_0-gemv_mr": (
        dict(weight_type=GGMLType.Q4_K, embed_type=GGMLType.Q8_0, tied=True),
        {"gemv_variant": "GEMV_MR", "gemv_wg": 128, "gemv_seg": 32, "gemv_rt": 2},
        Tier(f16=True, subgroups=True),
        SIX,
        SIX,
    ),
}
# Ids from every part of the embedding (parts of 256 rows; the last holds rows 1280..1299).
PROMPT = [3, 300, 700, 1000, 1299, 5, 1290, 260, 512, 768, 1024, 1280, 255, 256, 511] + list(
    range(17, 1300, 53)
)


@pytest.fixture(scope="module")
def small_device():
    dev = asyncio.run(open_device(limits={"max_storage_buffer_binding_size": CAP}))
    assert dev.caps.max_storage_buffer_binding_size == CAP
    yield dev
    dev.destroy()


@pytest.mark.parametrize("case", list(CASES))
def test_split_matches_unsplit(case, tmp_path, gpu_device, small_device):
    shape, tuning, tier, embd_rows, head_rows = CASES[case]
    path = build_tiny_model(tmp_path / f"{case}.gguf", seed=7, **SHAPE, **shape)
    results = {}
    for name, device in (("whole", gpu_device), ("split", small_device)):
        engine = asyncio.run(
            load_engine(
                case, str(path), device=device, tier=tier, context_window_size=64, tuning={**CPU, **tuning}
            )
        )
        w = engine.graph.weights
        tokens, logits = stepper.greedy_steps(engine, PROMPT, 5)
        gen = engine.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))

        async def run(gen=gen):
            return [t async for t in gen]

        assert asyncio.run(run()) == tokens, f"{case} {name}: the decode loop differs from the stepped graph"
        results[name] = (engine, tokens, logits, w)

    whole, split = results["whole"], results["split"]
    for matrix, rows in ((split[3].embd, embd_rows), (split[3].lm_head, head_rows)):
        assert matrix.first_rows == rows
        assert all(p.nbytes <= CAP for p in matrix.parts) and matrix.n_rows == VOCAB
    assert (split[3].lm_head is split[3].embd) == shape["tied"]
    assert len(whole[3].embd.parts) == len(whole[3].lm_head.parts) == 1
    # Each extra part adds a gather or an LM head GEMV (tied: the same parts serve both).
    extra = len(embd_rows) - 1 + len(head_rows) - 1
    assert split[0].dispatches_per_decode_step == whole[0].dispatches_per_decode_step + extra
    roles = split[0].graph.decode_roles
    assert roles.count("embed") == len(embd_rows) and roles.count("lm_head") == len(head_rows)

    # Identical numbers: the prefill's logits, every decode step's, and the greedy ids.
    assert split[1] == whole[1]
    for step, (a, b) in enumerate(zip(split[2], whole[2], strict=True)):
        assert np.any(a != 0)
        assert np.array_equal(a, b), f"{case} step {step}: max diff {np.abs(a - b).max():.3g}"
    parts = {"token_embd.weight": len(embd_rows)} | (
        {} if shape["tied"] else {"output.weight": len(head_rows)}
    )
    assert split[0].load_stats["split_parts"] == parts

    # The memory plan, from the header alone, foresaw the split and the bytes.
    with GGUFFile.open(path) as g:
        plan = plan_model(g, small_device.caps, model_id=case, context_window_size=64, f16=tier.f16)
    assert {k: len(v) for k, v in plan.parts.items()} == parts
    actual = split[3].nbytes
    assert actual <= plan.weight_bytes <= actual * 1.001 + 4096, (plan.weight_bytes, actual)
    assert plan.kv_bytes == split[0].graph.kv_bytes
    # the plan assumes a GPU's 16 attention splits; this CPU tuning has 2: (n_heads, splits, 2) f32 fewer
    assert plan.activation_bytes - split[0].graph.activation_bytes == 4 * (16 - 2) * 2 * 4
    for engine, *_ in results.values():
        asyncio.run(engine.unload())


# Every product split: a qwen2 model (NEOX q/k permutation, q/k/v biases) of hidden 512 on a 224 KiB binding, with
# K-quant mixes inside fused products (a Q6_K v beside Q4_K q/k; a Q6_K up beside a Q4_K gate), a Q8_0 o and a Q6_K
# down. Expected parts, from the repacked sizes (Q4_K 4.625 bits a weight, Q6_K 6.5625, Q8_0 8.5):
#   qkv (1024 x 512): 2 of 512 rows (layer 1's second part: 256 Q4_K k rows + 256 Q6_K v rows, two segments);
#   o (512 x 512 Q8_0, 272 KiB): 2 of 256; down (512 x 1024): 2 of 256 (layer 1 Q6_K: 210 KiB each);
#   gate_up (2048 x 512): layer 0 (gate Q4_K | up Q6_K) 4 of 512, layer 1 (Q4_K) 768, 768, 512;
#   tied Q8_0 embedding / LM head (1300 x 512): 6 of 256 (the last 20).
CAP_ALL = 224 << 10
SHAPE_ALL = dict(hidden=512, ffn=1024, n_heads=4, n_kv_heads=2, n_layers=2, ctx=32, vocab_size=VOCAB)
TYPES_ALL = {
    "blk.1.attn_v.weight": GGMLType.Q6_K,
    "blk.0.ffn_up.weight": GGMLType.Q6_K,
    "blk.0.attn_output.weight": GGMLType.Q8_0,
    "blk.1.attn_output.weight": GGMLType.Q8_0,
    "blk.1.ffn_down.weight": GGMLType.Q6_K,
}
PARTS_ALL = {
    "qkv": [(0, 512), (0, 512)],
    "o": [(0, 256), (0, 256)],
    "gate_up": [(0, 512, 1024, 1536), (0, 768, 1536)],
    "down": [(0, 256), (0, 256)],
}


def test_every_product_splits(tmp_path, gpu_device):
    path = build_tiny_model(
        tmp_path / "qwen2-all.gguf", arch="qwen2", qkv_bias=True, seed=11, weight_type=GGMLType.Q4_K,
        embed_type=GGMLType.Q8_0, tied=True, tensor_types=TYPES_ALL, **SHAPE_ALL,
    )  # fmt: skip
    small = asyncio.run(open_device(limits={"max_storage_buffer_binding_size": CAP_ALL}))
    prompt = PROMPT[:20]
    tier, tuning = Tier(f16=True, subgroups=True), {**CPU, "gemv_variant": "GEMV"}
    try:
        results = {}
        for name, device in (("whole", gpu_device), ("split", small)):
            engine = asyncio.run(
                load_engine(
                    "qwen2-all", str(path), device=device, tier=tier, context_window_size=32, tuning=tuning
                )
            )
            results[name] = (engine, *stepper.greedy_steps(engine, prompt, 4))
        (whole, w_tokens, w_logits), (split, s_tokens, s_logits) = results["whole"], results["split"]
        w = split.graph.weights
        for role, rows in PARTS_ALL.items():
            assert [getattr(L, role).first_rows for L in w.layers] == rows, role
        assert w.embd.first_rows == SIX and w.lm_head is w.embd
        assert all(
            p.nbytes <= CAP_ALL for L in w.layers for m in (L.qkv, L.o, L.gate_up, L.down) for p in m.parts
        )
        # mixed formats inside a part: v's segment in layer 1's second qkv part, gate | up in every layer-0 part
        assert [s.fmt for s in w.layers[1].qkv.parts[1].segments] == ["Q4_K", "Q6_K"]
        assert all([s.fmt for s in p.segments] == ["Q4_K", "Q6_K"] for p in w.layers[0].gate_up.parts)
        assert all(len(L.w.gate_up.parts) == 1 for L in whole.graph.layers)
        extra = sum(len(m.parts) - 1 for L in w.layers for m in (L.qkv, L.o, L.gate_up, L.down)) + 2 * 5
        assert split.dispatches_per_decode_step == whole.dispatches_per_decode_step + extra

        assert s_tokens == w_tokens
        for step, (a, b) in enumerate(zip(s_logits, w_logits, strict=True)):
            assert np.any(a != 0)
            assert np.array_equal(a, b), f"step {step}: max diff {np.abs(a - b).max():.3g}"

        with GGUFFile.open(path) as g:
            plan = plan_model(g, small.caps, model_id="qwen2-all", context_window_size=32, f16=True)
        assert plan.parts["blk.0.gate_up"] == (512, 512, 512, 512)
        assert plan.parts["blk.1.gate_up"] == (768, 768, 512)
        assert plan.parts["token_embd.weight"] == (256,) * 5 + (20,)
        assert split.graph.weight_bytes <= plan.weight_bytes <= split.graph.weight_bytes + 4096
        for engine, *_ in results.values():
            asyncio.run(engine.unload())
    finally:
        small.destroy()
