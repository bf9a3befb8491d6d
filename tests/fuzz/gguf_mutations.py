"""Corrupt GGUF files from a valid tiny Llama (tests/kernels/tiny_llama.py), for the fuzz suite: truncations, bit
flips, absurd counts, metadata of the wrong type or value, arrays nested thousands deep, non-finite norms,
duplicate keys and tensors, a vocabulary that disagrees with the embedding.

The file's layout (where every count and length sits) is found by ``layout``, a walk written here from the GGUF
spec, independent of the reader under test; whole files are rebuilt with tests/unit/gguf_builder.py.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass

from webllm_py.model.gguf import GGUFFile
from webllm_py.model.quant import GGMLType

from ..unit.gguf_builder import build_gguf, gguf_string

SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # type id -> bytes
KIND = {"uint8": "u8", "int8": "i8", "uint16": "u16", "int16": "i16", "uint32": "u32", "int32": "i32",
        "float32": "f32", "bool": "bool", "string": "str", "uint64": "u64", "int64": "i64", "float64": "f64"}  # fmt: skip
# The keys the engine reads (ModelConfig, the tokenizer, the chat template, the parser's alignment).
READ_KEYS = [
    "general.architecture", "general.alignment", "llama.block_count", "llama.context_length",
    "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
    "llama.attention.head_count_kv", "llama.attention.key_length", "llama.rope.freq_base",
    "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size",
    "llama.rope.scaling.type", "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.scores",
    "tokenizer.chat_template",
]  # fmt: skip
# Values of the wrong type or outside what a model can have, as (builder kind, value).
BAD_VALUES = [
    ("u32", 0), ("u32", 1), ("u32", 2**32 - 1), ("i32", -1), ("u64", 2**64 - 1), ("i64", -(2**63)),
    ("f32", math.nan), ("f32", math.inf), ("f32", -math.inf), ("f32", 0.0), ("f64", 1e308), ("f32", -1.0),
    ("bool", True), ("str", ""), ("str", "llama"), ("str", "\u00ff" * 300), ("arr:i32", []), ("arr:i32", [1, 2]),
    ("arr:str", ["a"]), ("arr:f32", [math.nan]), ("u8", 7), ("u16", 65535), ("str", "gpt2"),
]  # fmt: skip


@dataclass
class Parsed:
    metadata: list[tuple[str, str, object]]  # (key, builder kind, value)
    tensors: list[tuple[str, tuple[int, ...], int, bytes]]


def parse(data: bytes) -> Parsed:
    g = GGUFFile.from_bytes("base.gguf", data)
    metadata = []
    for key, value in g.metadata.items():
        kind = g.metadata_types[key]
        if kind == "array":
            first = value[0] if value else 0
            kind = "arr:" + (
                "str" if isinstance(first, str) else "f32" if isinstance(first, float) else "i32"
            )
        else:
            kind = KIND[kind]
        metadata.append((key, kind, value))
    tensors = [(n, t.shape, int(t.ggml_type), g.tensor_bytes(n)) for n, t in g.tensors.items()]
    return Parsed(metadata, tensors)


def layout(data: bytes) -> tuple[list[int], int]:
    """The offsets of every u64 count or length in the header (string lengths, array counts, the two header counts,
    tensor dimensions and data offsets), and the header's end."""
    fields = [8, 16]
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def string() -> None:
        nonlocal pos
        fields.append(pos)
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n

    def value(vtype: int) -> None:
        nonlocal pos
        if vtype in SCALAR:
            pos += SCALAR[vtype]
        elif vtype == 8:
            string()
        else:
            (item,) = struct.unpack_from("<I", data, pos)
            fields.append(pos + 4)
            (count,) = struct.unpack_from("<Q", data, pos + 4)
            pos += 12
            if item in SCALAR:
                pos += SCALAR[item] * count
            else:
                for _ in range(count):
                    value(item)

    for _ in range(n_kv):
        string()
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        value(vtype)
    for _ in range(n_tensors):
        string()
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        fields.extend(pos + 8 * d for d in range(n_dims))
        pos += 8 * n_dims + 4
        fields.append(pos)
        pos += 8
    return fields, pos


def nested_array_key(key: str, depth: int) -> bytes:
    """One metadata entry whose value is an array of arrays ``depth`` deep (raw bytes: the builder does not nest)."""
    raw = key.encode()
    out = struct.pack("<Q", len(raw)) + raw + struct.pack("<I", 9)
    out += struct.pack("<IQ", 9, 1) * (depth - 1) + struct.pack("<IQ", 4, 0)
    return out


def with_entry(parsed: Parsed, entry: bytes) -> bytes:
    """The file with one more metadata entry given as raw bytes: built with a one-byte placeholder entry, which is
    then swapped for ``entry`` (tensor offsets are relative to the data section: only its padding moves)."""
    data = build_gguf([*parsed.metadata, ("fuzz.nested", "u8", 0)], parsed.tensors)
    _, header_end = layout(data)
    placeholder = gguf_string("fuzz.nested") + struct.pack("<IB", 0, 0)
    i = data.index(placeholder)
    header = data[:i] + entry + data[i + len(placeholder) : header_end]
    return header + bytes(-len(header) % 32) + data[-(-header_end // 32) * 32 :]


def mutate(
    rng: random.Random, base: bytes, parsed: Parsed, fields: list[int], header_end: int
) -> tuple[str, bytes]:
    """One corrupt (or, by chance, still valid) file and a short name of what was done to it."""
    r = rng.random()
    if r < 0.15:
        cut = rng.randrange(header_end + 64) if rng.random() < 0.8 else rng.randrange(len(base))
        return f"truncated at {cut}", base[:cut]
    if r < 0.3:
        data = bytearray(base)
        spots = [
            rng.randrange(header_end if rng.random() < 0.85 else len(base)) for _ in range(rng.randint(1, 4))
        ]
        for spot in spots:
            data[spot] ^= 1 << rng.randrange(8)
        return f"bits flipped at {spots}", bytes(data)
    if r < 0.45:
        data = bytearray(base)
        spot = rng.choice(fields)
        value = rng.choice([0, 1, 2**26, 2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1, len(base), len(base) * 2])
        struct.pack_into("<Q", data, spot, value)
        return f"count at {spot} = {value}", bytes(data)
    if r < 0.7:
        key = rng.choice(READ_KEYS)
        kind, value = rng.choice(BAD_VALUES)
        metadata = [(k, kind, value) if k == key else (k, kd, v) for k, kd, v in parsed.metadata]
        if key not in {k for k, _, _ in parsed.metadata}:
            metadata.append((key, kind, value))
        return f"{key} = {kind} {value!r:.40}", build_gguf(metadata, parsed.tensors)
    if r < 0.78:
        depth = rng.choice([3, 5, 100, 3000])
        return f"arrays nested {depth} deep", with_entry(parsed, nested_array_key("fuzz.nested", depth))
    if r < 0.88:
        norms = [t for t in parsed.tensors if t[0].endswith("norm.weight") and t[2] == int(GGMLType.F32)]
        name, shape, ggml_type, data = rng.choice(norms)
        values = bytearray(data)
        bad = rng.choice([math.nan, math.inf, -math.inf])
        struct.pack_into("<f", values, 4 * rng.randrange(len(data) // 4), bad)
        tensors = [(n, s, g, bytes(values) if n == name else d) for n, s, g, d in parsed.tensors]
        return f"{name} holds {bad}", build_gguf(parsed.metadata, tensors)
    if r < 0.94:
        if rng.random() < 0.5:
            key, kind, value = rng.choice(parsed.metadata)
            return f"{key} twice", build_gguf([*parsed.metadata, (key, kind, value)], parsed.tensors)
        tensor = rng.choice(parsed.tensors)
        return f"tensor {tensor[0]} twice", build_gguf(parsed.metadata, [*parsed.tensors, tensor])
    tokens = next(v for k, _, v in parsed.metadata if k == "tokenizer.ggml.tokens")
    change = rng.choice([-1, 1])
    new = tokens[:-1] if change < 0 else [*tokens, "<extra>"]
    metadata = [(k, kd, new if k == "tokenizer.ggml.tokens" else v) for k, kd, v in parsed.metadata]
    return f"vocabulary of {len(new)} tokens", build_gguf(metadata, parsed.tensors)
