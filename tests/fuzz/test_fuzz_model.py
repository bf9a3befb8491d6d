"""Corrupt tiny models loaded on the GPU (lavapipe) next to a good one that stays loaded on the same device: each
load must fail with a typed error (CorruptWeightsError for NaN / Inf norms and RoPE factors, GGUFMetadataError for
shapes, GGUFError for truncation) or load a model whose every sampled id is in the vocabulary (NaN in a weight
matrix or a quantization scale, when no scan refuses it; finite weights whose activations overflow: the sampler's
rule keeps the ids real); after each, the good model still gives the
same greedy reply (nothing lost on the shared device)."""

from __future__ import annotations

import math
import random
import struct

import pytest

from webllm_py.engine import SamplingParams, load_engine
from webllm_py.model.quant import GGMLType

from ..kernels.test_api_tiny import with_engine
from ..kernels.tiny_llama import build_tiny_llama
from ..unit.gguf_builder import build_gguf
from .gguf_mutations import layout, mutate, parse
from .harness import run_async, tally

SHAPE = dict(hidden=32, ffn=64, n_layers=2, n_heads=2, n_kv_heads=1, ctx=256)
USER = [{"role": "user", "content": "Tell me"}]


def metadata_with(parsed, **changes):
    return [(k, *changes[k]) if k in changes else (k, kind, v) for k, kind, v in parsed.metadata]


def tensor_with(parsed, name, edit):
    return [(n, s, g, edit(bytearray(d)) if n == name else d) for n, s, g, d in parsed.tensors]


def put_f32(offset, value):
    def edit(data):
        struct.pack_into("<f", data, offset, value)
        return bytes(data)

    return edit


def huge(data):
    """Every value 1e38: finite (no scan refuses it), but the activations overflow to inf and then NaN."""
    return struct.pack(f"<{len(data) // 4}f", *[1e38] * (len(data) // 4))


def nan_scale(data):
    data[0:2] = struct.pack("<H", 0x7E00)  # the first Q8_0 block's f16 scale: NaN
    return bytes(data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-model")
    good = build_tiny_llama(root / "good.gguf", seed=5, **SHAPE)
    f32 = parse(build_tiny_llama(root / "f32.gguf", seed=6, weight_type=GGMLType.F32, **SHAPE).read_bytes())
    q8 = parse(build_tiny_llama(root / "q8.gguf", seed=7, **SHAPE).read_bytes())
    rope = parse(build_tiny_llama(root / "rope.gguf", seed=8, rope_factors=True, **SHAPE).read_bytes())
    base = good.read_bytes()
    fields, header_end = layout(base)
    cases = {
        "NaN in an attention norm": build_gguf(q8.metadata, tensor_with(q8, "blk.0.attn_norm.weight", put_f32(8, math.nan))),
        "+inf in the output norm": build_gguf(q8.metadata, tensor_with(q8, "output_norm.weight", put_f32(0, math.inf))),
        "a zero RoPE factor": build_gguf(rope.metadata, tensor_with(rope, "rope_freqs.weight", put_f32(4, 0.0))),
        "block_count 0": build_gguf(metadata_with(q8, **{"llama.block_count": ("u32", 0)}), q8.tensors),
        "head_count_kv 0": build_gguf(metadata_with(q8, **{"llama.attention.head_count_kv": ("u32", 0)}), q8.tensors),
        "rope.freq_base NaN": build_gguf(metadata_with(q8, **{"llama.rope.freq_base": ("f32", math.nan)}), q8.tensors),
        "vocab_size + 1": build_gguf(metadata_with(q8, **{"llama.vocab_size": ("u32", 265)}), q8.tensors),
        "truncated tensor data": base[: len(base) - 100],
        "attn_q of half its rows": build_gguf(q8.metadata, [
            (n, (s[0], s[1] // 2), g, d[: len(d) // 2]) if n == "blk.0.attn_q.weight" else (n, s, g, d)
            for n, s, g, d in q8.tensors]),
        "a norm of half its length": build_gguf(q8.metadata, [
            (n, (s[0] // 2,), g, d[: len(d) // 2]) if n == "output_norm.weight" else (n, s, g, d)
            for n, s, g, d in q8.tensors]),
        "NaN in an F32 weight matrix": build_gguf(f32.metadata, tensor_with(f32, "blk.0.ffn_down.weight", put_f32(0, math.nan))),
        "NaN quantization scale": build_gguf(q8.metadata, tensor_with(q8, "blk.1.attn_q.weight", nan_scale)),
        "finite weights that overflow": build_gguf(f32.metadata, tensor_with(f32, "blk.0.ffn_down.weight", huge)),
    }  # fmt: skip
    rng = random.Random(21)
    for _ in range(6):
        what, data = mutate(rng, base, q8, fields, header_end)
        cases[f"random: {what}"] = data
    paths = {}
    for i, (name, data) in enumerate(cases.items()):
        path = root / f"case{i}.gguf"
        path.write_bytes(data)
        paths[name] = str(path)
    return str(good), paths


def test_corrupt_models_on_the_gpu_next_to_a_loaded_one(files, gpu_device):
    good, cases = files
    t = tally("GGUF files (GPU load)")

    async def body(engine):
        ask = dict(messages=USER, temperature=0, max_tokens=6, ignore_eos=True)
        first = (await engine.chat.completions.create(**ask)).choices[0].message.content
        again = []
        for name, path in cases.items():

            async def load(path=path):
                return await load_engine("corrupt", path, device=gpu_device, context_window_size=64)

            async def sample_in_range(corrupt):
                try:  # greedy, sampled, penalized and with logprobs: every id below the vocabulary
                    vocab = corrupt.config.vocab_size
                    for params in (
                        SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                        SamplingParams(temperature=1.0, top_p=0.9, seed=3, max_tokens=4, ignore_eos=True),
                        SamplingParams(temperature=0.7, top_k=5, presence_penalty=1.0, logprobs=True,
                                       top_logprobs=3, max_tokens=4, ignore_eos=True),
                    ):  # fmt: skip
                        gen = corrupt.generate([1, 2, 3], params)
                        ids = [i async for i in gen]
                        assert ids and all(0 <= i < vocab for i in ids), ids
                        assert all(math.isfinite(lp) for _, lp, _ in gen.logprobs), gen.logprobs
                finally:
                    await corrupt.unload()

            await run_async(t, name, load, sample_in_range, 60.0)
            again.append((await engine.chat.completions.create(**ask)).choices[0].message.content)
        return first, again

    first, again = with_engine(good, gpu_device, body)
    assert again == [first] * len(cases)  # nothing lost: the loaded model answers the same after every case
    assert t.typed >= 9 and t.answers >= 1, t  # the overflow case loads: its logits are NaN
    t.assert_clean()
