#!/usr/bin/env python3
"""Write a GGUF of a real model's shape with random weights, for speed and memory work at real sizes. Prints JSON.

    python3 bench/synth_gguf.py --shape llama-3.1-8b --mix Q4_K_M --tokenizer SmolLM2.gguf --out /tmp/8b.gguf

Shapes: the hyper-parameters of SmolLM2-135M, Llama-3.2-1B, Llama-3.1-8B (the real 128,256-token vocabulary) and
Qwen2.5-7B (152,064, QKV biases), plus a tiny one for checking the writer. Mixes: Q4_0, Q4_1, Q8_0 (every matrix that
type) and Q4_K_M, whose per-tensor types follow llama.cpp's choice for that mix (llama-quant.cpp, read for
models.md §1.1): Q6_K for the LM head and, in the "more bits" layers, attn_v and ffn_down; Q4_K elsewhere;
Q5_0 / Q8_0 where a row is not a multiple of 256 weights. So a bench file has the same bytes per token as a hub file.

The tokenizer is copied from any GGUF (``--tokenizer``; SmolLM2's by default in the bench scripts) and padded with
reserved control tokens up to the shape's vocabulary, so llama.cpp and our engine both accept the file and encode
the same prompt ids. Weights: random quants; block scales chosen so each projection keeps unit-variance activations
(finite everywhere); norms 1 + 0.01 N(0, 1). The file streams to disk one tensor at a time (an 8B file is ~4.9 GB).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (arch, hidden, layers, heads, kv heads, head dim, ffn, vocab, tied, rope base, context)
SHAPES = {
    "tiny": ("llama", 256, 2, 4, 2, 64, 512, 49152, True, 10000.0, 2048),
    "smollm2-135m": ("llama", 576, 30, 9, 3, 64, 1536, 49152, True, 100000.0, 8192),
    "llama-3.2-1b": ("llama", 2048, 16, 32, 8, 64, 8192, 128256, True, 500000.0, 131072),
    "llama-3.1-8b": ("llama", 4096, 32, 32, 8, 128, 14336, 128256, False, 500000.0, 131072),
    "qwen2.5-7b": ("qwen2", 3584, 28, 28, 4, 128, 18944, 152064, False, 1000000.0, 32768),
}
GGML_ID = {"F32": 0, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}
# weights per block, bytes per block
BLOCK = {
    "F32": (1, 4),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q8_0": (32, 34),
    "Q4_K": (256, 144),
    "Q6_K": (256, 210),
}
FILE_TYPE = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K_M": 15}
ALIGN = 32


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(mix: str, role: str, layer: int, n_layers: int, row: int) -> str:
    if mix != "Q4_K_M":
        return mix
    if role == "output":
        t = "Q6_K"
    elif role in ("attn_v", "ffn_down") and more_bits(layer, n_layers):
        t = "Q6_K"
    else:
        t = "Q4_K"
    if row % 256:  # llama.cpp's fallback for rows that do not split into 256-weight super-blocks
        t = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}[t]
    return t


def blocks(rng: np.random.Generator, t: str, n: int, spread: float) -> bytes:
    """n weights of type t as random blocks whose dequantized values have standard deviation about ``spread``."""
    per, size = BLOCK[t]
    nb = n // per
    raw = np.frombuffer(rng.bytes(nb * size), np.uint8).reshape(nb, size).copy()

    def f16(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float16).view(np.uint8).reshape(nb, 2)

    jitter = 0.5 + rng.random(nb, dtype=np.float32)
    if t in ("Q4_0", "Q5_0", "Q8_0"):  # d at bytes 0-1; values d * (q - offset), q uniform
        q_std = {"Q4_0": 4.61, "Q5_0": 9.23, "Q8_0": 73.9}[t]
        raw[:, 0:2] = f16(spread / q_std * jitter)
    elif t == "Q4_1":  # d, m at bytes 0-3; value d * q + m: m = -7.5 d centres it
        d = spread / 4.61 * jitter
        raw[:, 0:2] = f16(d)
        raw[:, 2:4] = f16(-7.5 * d)
    elif t == "Q4_K":  # d, dmin at 0-3; value d * sc * q - dmin * m with 6-bit sc, m: dmin = 7.5 d centres it
        d = spread / (4.61 * 31.5 * 1.85) * jitter  # 1.85: measured std of sc * q - 7.5 m over sc * q
        raw[:, 0:2] = f16(d)
        raw[:, 2:4] = f16(7.5 * d)
    elif t == "Q6_K":  # d at bytes 208-209; value d * sc * (q - 32), sc int8
        raw[:, 208:210] = f16(spread / (18.5 * 73.9) * jitter)
    return raw.tobytes()


def metadata_entry(key: str, value: object) -> bytes:
    def string(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    def scalar(v: object) -> tuple[int, bytes]:
        if isinstance(v, bool):
            return 7, struct.pack("<?", v)
        if isinstance(v, int):
            return (4, struct.pack("<I", v)) if v >= 0 else (5, struct.pack("<i", v))
        if isinstance(v, float):
            return 6, struct.pack("<f", v)
        if isinstance(v, str):
            return 8, string(v)
        raise TypeError(f"{key}: cannot write {type(v).__name__}")

    if isinstance(value, list):
        kinds = {scalar(v)[0] for v in value[:1]} or {5}
        item = kinds.pop()
        if item == 4:  # token types and the like: int32 arrays
            item = 5
        body = b"".join(struct.pack("<i", v) if item == 5 else scalar(v)[1] for v in value)
        return string(key) + struct.pack("<IIQ", 9, item, len(value)) + body
    kind, body = scalar(value)
    return string(key) + struct.pack("<I", kind) + body


def tokenizer_metadata(path: str, vocab: int) -> dict[str, object]:
    """tokenizer.* of ``path``, with reserved control tokens appended up to ``vocab`` entries."""
    from webllm_py.model.gguf import GGUFFile

    with GGUFFile.open(path) as g:
        meta = {k: v for k, v in g.metadata.items() if k.startswith("tokenizer.")}
    tokens = list(meta["tokenizer.ggml.tokens"])
    if len(tokens) > vocab:
        raise SystemExit(f"{path} has {len(tokens)} tokens, more than the shape's vocabulary {vocab}")
    extra = vocab - len(tokens)
    meta["tokenizer.ggml.tokens"] = tokens + [f"<|reserved_{i}|>" for i in range(extra)]
    if "tokenizer.ggml.token_type" in meta:
        meta["tokenizer.ggml.token_type"] = list(meta["tokenizer.ggml.token_type"]) + [3] * extra  # CONTROL
    if "tokenizer.ggml.scores" in meta:
        meta["tokenizer.ggml.scores"] = list(meta["tokenizer.ggml.scores"]) + [0.0] * extra
    return meta


def proj(k: int) -> float:
    """Weight spread that gives unit-variance outputs for unit-RMS inputs of k features."""
    return float(1.0 / np.sqrt(k))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--mix", required=True, choices=sorted(FILE_TYPE))
    ap.add_argument("--tokenizer", required=True, help="a GGUF whose tokenizer.* metadata is copied")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()
    t0 = time.time()
    arch, H, L, NH, NKV, HD, FF, V, tied, base, ctx = SHAPES[a.shape]
    rng = np.random.default_rng(a.seed)

    meta: dict[str, object] = {
        "general.architecture": arch,
        "general.name": f"synthetic {a.shape} {a.mix}",
        "general.file_type": FILE_TYPE[a.mix],
        "general.quantization_version": 2,
        f"{arch}.block_count": L,
        f"{arch}.context_length": ctx,
        f"{arch}.embedding_length": H,
        f"{arch}.feed_forward_length": FF,
        f"{arch}.attention.head_count": NH,
        f"{arch}.attention.head_count_kv": NKV,
        f"{arch}.attention.key_length": HD,
        f"{arch}.attention.value_length": HD,
        f"{arch}.rope.freq_base": base,
        f"{arch}.rope.dimension_count": HD,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.vocab_size": V,
        **tokenizer_metadata(a.tokenizer, V),
    }
    # (name, ggml shape [ne0 = input features, ne1 = rows], type, spread of the values)
    tensors: list[tuple[str, tuple[int, ...], str, float]] = [
        ("token_embd.weight", (H, V), tensor_type(a.mix, "output" if tied else "embd", 0, L, H), 0.05),
        ("output_norm.weight", (H,), "F32", 0.0),
    ]
    if not tied:
        tensors.append(("output.weight", (H, V), tensor_type(a.mix, "output", 0, L, H), proj(H)))
    for i in range(L):
        p = f"blk.{i}."
        tensors.append((p + "attn_norm.weight", (H,), "F32", 0.0))
        for role, k, n in (("attn_q", H, NH * HD), ("attn_k", H, NKV * HD), ("attn_v", H, NKV * HD)):
            tensors.append((p + role + ".weight", (k, n), tensor_type(a.mix, role, i, L, k), proj(k)))
            if arch == "qwen2":
                tensors.append((p + role + ".bias", (n,), "F32", 0.0))
        tensors += [
            (
                p + "attn_output.weight",
                (NH * HD, H),
                tensor_type(a.mix, "attn_output", i, L, NH * HD),
                proj(NH * HD),
            ),
            (p + "ffn_norm.weight", (H,), "F32", 0.0),
            (p + "ffn_gate.weight", (H, FF), tensor_type(a.mix, "ffn_gate", i, L, H), proj(H)),
            (p + "ffn_up.weight", (H, FF), tensor_type(a.mix, "ffn_up", i, L, H), proj(H)),
            (p + "ffn_down.weight", (FF, H), tensor_type(a.mix, "ffn_down", i, L, FF), proj(FF)),
        ]

    def nbytes(shape: tuple[int, ...], t: str) -> int:
        per, size = BLOCK[t]
        return int(np.prod(shape)) // per * size

    header = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)))
    for key, value in meta.items():
        header += metadata_entry(key, value)
    offset = 0
    for name, shape, t, _ in tensors:
        b = name.encode()
        header += struct.pack("<Q", len(b)) + b + struct.pack("<I", len(shape))
        header += struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", GGML_ID[t], offset)
        offset += -(-nbytes(shape, t) // ALIGN) * ALIGN
    header += bytes(-len(header) % ALIGN)
    by_type: dict[str, int] = {}
    with open(a.out, "wb") as f:
        f.write(header)
        for name, shape, t, spread in tensors:
            n = int(np.prod(shape))
            if t == "F32":  # norms near 1, biases near 0
                center = 0.0 if name.endswith(".bias") else 1.0
                data = (center + 0.01 * rng.standard_normal(n, dtype=np.float32)).astype("<f4").tobytes()
            else:
                data = blocks(rng, t, n, spread)
            f.write(data + bytes(-len(data) % ALIGN))
            by_type[t] = by_type.get(t, 0) + len(data)
    print(
        json.dumps(
            {
                "file": a.out,
                "shape": a.shape,
                "mix": a.mix,
                "dims": dict(
                    arch=arch,
                    hidden=H,
                    layers=L,
                    heads=NH,
                    kv_heads=NKV,
                    head_dim=HD,
                    ffn=FF,
                    vocab=V,
                    tied=tied,
                ),
                "tensor_bytes": sum(by_type.values()),
                "bytes_by_type": by_type,
                "seconds": round(time.time() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
