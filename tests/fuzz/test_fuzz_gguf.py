"""Corrupt GGUF files (gguf_mutations.py) through everything the engine does with a file before the GPU: the parser,
``engine.read_model`` (architecture, tokenizer, vocabulary against the embedding, chat template), the host-side
finiteness check of the norm vectors, and a round trip through the tokenizer. Each case must give a model whose
token ids are in range, or a typed error (GGUFError and its kinds, TokenizerError, UnsupportedModelError, ...),
within its time-out; memory is bounded by the parser's own limits (an array count of 2^40 costs nothing)."""

from __future__ import annotations

import random

import pytest

from webllm_py.engine import read_model
from webllm_py.model.gguf import GGUFFile
from webllm_py.model.quant import GGMLType

from ..kernels.tiny_llama import build_tiny_llama
from .gguf_mutations import layout, mutate, parse
from .harness import run_sync, tally

CASES = 600


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> bytes:
    return build_tiny_llama(tmp_path_factory.mktemp("fuzz") / "tiny.gguf", hidden=32, ffn=64, n_layers=2,
                            n_heads=2, n_kv_heads=1, ctx=64).read_bytes()  # fmt: skip


def open_model(data: bytes):
    """What load_engine does with a file before it touches the GPU, plus the tokenizer in use."""
    gguf = GGUFFile.from_bytes("fuzz.gguf", data)
    cfg, tokenizer, template = read_model(gguf)
    for name, info in gguf.tensors.items():
        if name.endswith("norm.weight") and info.ggml_type == GGMLType.F32:
            gguf.check_finite(name, gguf.tensor_bytes(name))
    ids = tokenizer.encode(template.render([{"role": "user", "content": "Hello world"}]))
    return cfg, tokenizer, ids


def in_range(result) -> None:
    cfg, tokenizer, ids = result
    assert ids and all(0 <= i < cfg.vocab_size for i in ids), ids
    tokenizer.decode(ids)


def test_corrupt_gguf_headers_and_vectors(base):
    t = tally("GGUF files (header)")
    rng = random.Random(90)
    parsed = parse(base)
    fields, header_end = layout(base)
    assert header_end < len(base) and len(fields) > 100
    in_range(open_model(base))  # the uncorrupted file opens
    kinds: dict[str, int] = {}
    for i in range(CASES):
        what, data = mutate(rng, base, parsed, fields, header_end)
        kinds[what.split(" ")[0]] = kinds.get(what.split(" ")[0], 0) + 1
        run_sync(t, f"case {i}: {what}", lambda data=data: open_model(data), in_range, 2.0)
    assert t.cases == CASES and t.typed > CASES // 2 and t.answers > 10, (t, kinds)
    t.assert_clean()
