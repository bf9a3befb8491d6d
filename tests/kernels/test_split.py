"""The embedding and the LM head split by rows (ops.RowSplit) when one storage binding cannot hold them.

A device is opened with a 96 KiB storage binding (host.native.open_device ``limits``; wgpu-native enforces it, so a
binding over it would fail validation), on which a tiny model's 1,300-row embedding and LM head take six parts
each; the same model on the adapter's own limits takes one. Prefill logits, every decode step's logits and the
greedy ids must be identical on both: a part's rows are computed exactly as the whole matrix's, only their launches
differ. Tied (one split serves the gather and the LM head) and untied with a mixed-format head (Q4_K embedding,
Q6_K LM head, Q4_0 layers), with both decode kernel shapes (GEMV, and GEMV_SEG whose argmax partials come 16 rows a
workgroup)."""

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
