"""Random tiny Llama-family GGUF files, built in code: the whole engine (load, repack, graph, decode) on shapes the
real model does not have (head sizes, GQA ratios, untied LM head, Llama-3.1 RoPE factors, weight formats) in seconds
on lavapipe, checked against the numpy reference forward pass."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from webllm_py.model.quant import GGMLType

from ..unit._tok_vocab import gpt2_metadata
from ..unit.gguf_builder import build_gguf
from .quantize import quantize

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "u32"
    if isinstance(v, float):
        return "f32"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        return "arr:" + ("str" if v and isinstance(v[0], str) else "i32" if isinstance(v[0], int) else "f32")
    raise TypeError(v)


def build_tiny_llama(
    path: Path,
    *,
    hidden: int = 64,
    ffn: int = 96,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int | None = None,
    ctx: int = 512,
    weight_type: GGMLType = GGMLType.Q8_0,
    embed_type: GGMLType = GGMLType.Q8_0,
    tied: bool = True,
    rope_base: float = 10000.0,
    rope_factors: bool = False,
    tensor_types: dict[str, GGMLType] | None = None,
    seed: int = 0,
) -> Path:
    """A tiny random Llama GGUF at ``path``. ``tensor_types`` overrides the type of single tensors by name (a
    Q4_K_M-like mix: Q6_K ``blk.1.attn_v.weight`` beside Q4_K q/k)."""
    rng = np.random.default_rng(seed)
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    meta = gpt2_metadata(merges, pre="gpt2")
    vocab = len(meta["tokenizer.ggml.tokens"])
    head_dim = head_dim or hidden // n_heads
    meta.update(
        {
            "general.architecture": "llama",
            "general.name": "tiny-random-llama",
            "llama.block_count": n_layers,
            "llama.context_length": ctx,
            "llama.embedding_length": hidden,
            "llama.feed_forward_length": ffn,
            "llama.attention.head_count": n_heads,
            "llama.attention.head_count_kv": n_kv_heads,
            "llama.attention.key_length": head_dim,
            "llama.attention.value_length": head_dim,
            "llama.rope.freq_base": rope_base,
            "llama.rope.dimension_count": head_dim,
            "llama.attention.layer_norm_rms_epsilon": 1e-5,
            "llama.vocab_size": vocab,
            "tokenizer.chat_template": CHATML,
        }
    )
    tensors = []

    def add(name: str, array: np.ndarray, ggml_type: GGMLType) -> None:
        ggml_type = (tensor_types or {}).get(name, ggml_type)
        array = np.asarray(array, np.float32)
        shape = tuple(reversed(array.shape))  # GGUF lists the contiguous dimension first
        data = quantize(array.reshape(-1, array.shape[-1]), ggml_type)
        tensors.append((name, shape, int(ggml_type), data))

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return rng.standard_normal((rows, cols)).astype(np.float32) * scale

    add("token_embd.weight", mat(vocab, hidden, 1.0), embed_type)
    for i in range(n_layers):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", 1 + 0.1 * rng.standard_normal(hidden), GGMLType.F32)
        add(p + "attn_q.weight", mat(n_heads * head_dim, hidden, hidden**-0.5), weight_type)
        add(p + "attn_k.weight", mat(n_kv_heads * head_dim, hidden, hidden**-0.5), weight_type)
        add(p + "attn_v.weight", mat(n_kv_heads * head_dim, hidden, hidden**-0.5), weight_type)
        add(
            p + "attn_output.weight",
            mat(hidden, n_heads * head_dim, (n_heads * head_dim) ** -0.5),
            weight_type,
        )
        add(p + "ffn_norm.weight", 1 + 0.1 * rng.standard_normal(hidden), GGMLType.F32)
        add(p + "ffn_gate.weight", mat(ffn, hidden, hidden**-0.5), weight_type)
        add(p + "ffn_up.weight", mat(ffn, hidden, hidden**-0.5), weight_type)
        add(p + "ffn_down.weight", mat(hidden, ffn, ffn**-0.5), weight_type)
    add("output_norm.weight", 1 + 0.1 * rng.standard_normal(hidden), GGMLType.F32)
    if not tied:
        add("output.weight", mat(vocab, hidden, hidden**-0.5), weight_type)
    if rope_factors:
        add("rope_freqs.weight", 1 + rng.uniform(0, 4, head_dim // 2), GGMLType.F32)
    metadata = [(k, _kind(v), v) for k, v in meta.items()]
    path.write_bytes(build_gguf(metadata, tensors))
    return path


def f32_bytes(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)
