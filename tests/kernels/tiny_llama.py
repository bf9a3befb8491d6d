"""Random tiny GGUF files of every supported architecture, built in code: the whole engine (load, repack, graph,
decode) on shapes and features the real model does not have (head sizes, GQA ratios, untied LM head, RoPE factors
and scalings, biases, q/k norms, post norms, fused tensors, soft-caps, sliding windows, weight formats) in seconds on
lavapipe, checked against the numpy reference forward pass."""

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


def build_tiny_llama(path: Path, **shape) -> Path:
    """A tiny random ``llama`` GGUF (see build_tiny_model)."""
    return build_tiny_model(path, arch="llama", **shape)


def build_tiny_model(
    path: Path,
    *,
    arch: str = "llama",
    hidden: int = 64,
    ffn: int = 96,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int | None = None,
    rope_dims: int | None = None,
    ctx: int = 512,
    weight_type: GGMLType = GGMLType.Q8_0,
    embed_type: GGMLType = GGMLType.Q8_0,
    tied: bool = True,
    rope_base: float = 10000.0,
    rope_factors: bool = False,
    qkv_bias: bool = False,
    qk_norm: bool = False,
    post_norms: bool = False,
    fused_qkv: bool = False,
    fused_ffn: bool = False,
    longrope_original_ctx: int | None = None,
    attn_factor: float | None = None,
    sliding_window: int | None = None,
    rope_base_swa: float | None = None,
    rope_linear: float | None = None,
    attn_softcap: float | None = None,
    final_softcap: float | None = None,
    norm_scale: float = 0.1,
    tensor_types: dict[str, GGMLType] | None = None,
    extra_metadata: dict | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> Path:
    """A tiny random GGUF of architecture ``arch`` with llama.cpp's tensor names and metadata keys for the features
    asked for (gguf-py constants.py; the converters in conversion/*.py write them this way). Weights are stored as
    the converter stores them: NEOX architectures' q/k rows in Hugging Face order (the engine permutes them at load),
    Gemma's norms already holding 1 + w. ``None`` leaves a key out (the architecture's default applies).
    ``extra_metadata`` / ``extra_tensors`` (F32) are added as given (keys of value None are removed).
    ``tensor_types`` overrides the type of single tensors by name (a Q4_K_M-like mix: Q6_K ``blk.1.attn_v.weight``
    beside Q4_K q/k)."""
    rng = np.random.default_rng(seed)
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    meta = gpt2_metadata(merges, pre="gpt2")
    vocab = len(meta["tokenizer.ggml.tokens"])
    head_dim = head_dim or hidden // n_heads
    rope_dims = rope_dims or head_dim
    a = arch
    meta.update(
        {
            "general.architecture": arch,
            "general.name": f"tiny-random-{arch}",
            f"{a}.block_count": n_layers,
            f"{a}.context_length": ctx,
            f"{a}.embedding_length": hidden,
            f"{a}.feed_forward_length": ffn,
            f"{a}.attention.head_count": n_heads,
            f"{a}.attention.head_count_kv": n_kv_heads,
            f"{a}.attention.key_length": head_dim,
            f"{a}.attention.value_length": head_dim,
            f"{a}.rope.freq_base": rope_base,
            f"{a}.rope.dimension_count": rope_dims,
            f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
            f"{a}.vocab_size": vocab,
            "tokenizer.chat_template": CHATML,
        }
    )
    optional = {
        f"{a}.rope.scaling.original_context_length": longrope_original_ctx,
        f"{a}.rope.scaling.attn_factor": attn_factor,
        f"{a}.attention.sliding_window": sliding_window,
        f"{a}.rope.freq_base_swa": rope_base_swa,
        f"{a}.attn_logit_softcapping": attn_softcap,
        f"{a}.final_logit_softcapping": final_softcap,
    }
    if rope_linear is not None:
        optional.update({f"{a}.rope.scaling.type": "linear", f"{a}.rope.scaling.factor": rope_linear})
    meta.update(optional)
    meta.update(extra_metadata or {})
    meta = {k: v for k, v in meta.items() if v is not None}
    tensors = []

    def add(name: str, array: np.ndarray, ggml_type: GGMLType) -> None:
        ggml_type = (tensor_types or {}).get(name, ggml_type)
        array = np.asarray(array, np.float32)
        shape = tuple(reversed(array.shape))  # GGUF lists the contiguous dimension first
        data = quantize(array.reshape(-1, array.shape[-1]), ggml_type)
        tensors.append((name, shape, int(ggml_type), data))

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return rng.standard_normal((rows, cols)).astype(np.float32) * scale

    def norm(n: int) -> np.ndarray:
        return 1 + norm_scale * rng.standard_normal(n)

    nq, nkv = n_heads * head_dim, n_kv_heads * head_dim
    add("token_embd.weight", mat(vocab, hidden, 1.0), embed_type)
    for i in range(n_layers):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", norm(hidden), GGMLType.F32)
        q, k, v = (mat(rows, hidden, hidden**-0.5) for rows in (nq, nkv, nkv))
        if fused_qkv:
            add(p + "attn_qkv.weight", np.concatenate([q, k, v]), weight_type)
        else:
            add(p + "attn_q.weight", q, weight_type)
            add(p + "attn_k.weight", k, weight_type)
            add(p + "attn_v.weight", v, weight_type)
        if qkv_bias:
            biases = [rng.standard_normal(n) * 0.5 for n in (nq, nkv, nkv)]
            if fused_qkv:
                add(p + "attn_qkv.bias", np.concatenate(biases), GGMLType.F32)
            else:
                for t, b in zip("qkv", biases, strict=True):
                    add(p + f"attn_{t}.bias", b, GGMLType.F32)
        if qk_norm:
            add(p + "attn_q_norm.weight", 1 + 0.3 * rng.standard_normal(head_dim), GGMLType.F32)
            add(p + "attn_k_norm.weight", 1 + 0.3 * rng.standard_normal(head_dim), GGMLType.F32)
        add(p + "attn_output.weight", mat(hidden, nq, nq**-0.5), weight_type)
        if post_norms:
            add(p + "post_attention_norm.weight", norm(hidden), GGMLType.F32)
        add(p + "ffn_norm.weight", norm(hidden), GGMLType.F32)
        gate, up = mat(ffn, hidden, hidden**-0.5), mat(ffn, hidden, hidden**-0.5)
        if fused_ffn:
            add(p + "ffn_up.weight", np.concatenate([gate, up]), weight_type)
        else:
            add(p + "ffn_gate.weight", gate, weight_type)
            add(p + "ffn_up.weight", up, weight_type)
        add(p + "ffn_down.weight", mat(hidden, ffn, ffn**-0.5), weight_type)
        if post_norms:
            add(p + "post_ffw_norm.weight", norm(hidden), GGMLType.F32)
    add("output_norm.weight", norm(hidden), GGMLType.F32)
    if not tied:
        add("output.weight", mat(vocab, hidden, hidden**-0.5), weight_type)
    if rope_factors:
        add("rope_freqs.weight", 1 + rng.uniform(0, 4, rope_dims // 2), GGMLType.F32)
    if longrope_original_ctx is not None:
        add("rope_factors_short.weight", 1 + rng.uniform(0, 0.5, rope_dims // 2), GGMLType.F32)
        add("rope_factors_long.weight", 1 + rng.uniform(0, 8, rope_dims // 2), GGMLType.F32)
    for name, array in (extra_tensors or {}).items():
        add(name, array, GGMLType.F32)
    metadata = [(k, _kind(v), v) for k, v in meta.items()]
    path.write_bytes(build_gguf(metadata, tensors))
    return path


def f32_bytes(values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)
