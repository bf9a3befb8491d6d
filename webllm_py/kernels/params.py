"""Params structs of the shaders, packed in the same field order as the WGSL ``struct Params`` of each file.

One spec per shader file; ``tests/unit/test_params.py`` parses the WGSL and checks names, types and size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class ParamsSpec:
    shader: str
    fields: tuple[tuple[str, str], ...]  # (name, "u32" | "f32") in WGSL order

    @property
    def size(self) -> int:
        return 4 * len(self.fields)

    def pack(self, **values: float) -> bytes:
        unknown = set(values) - {n for n, _ in self.fields}
        if unknown:
            raise KeyError(f"{self.shader} Params has no field(s) {sorted(unknown)}")
        out = bytearray()
        for name, kind in self.fields:
            v = values.get(name, 0)
            out += struct.pack("<I", int(v)) if kind == "u32" else struct.pack("<f", float(v))
        # Uniform buffers are read in 16-byte rows.
        out += bytes(-len(out) % 16)
        return bytes(out)


def _spec(shader: str, *fields: str) -> ParamsSpec:
    parsed = []
    for f in fields:
        name, kind = f.split(":")
        parsed.append((name, kind))
    return ParamsSpec(shader, tuple(parsed))


MATMUL = _spec(
    "matmul.wgsl",
    "n_rows:u32",
    "k_blocks:u32",
    "x_stride:u32",
    "out_stride:u32",
    "eps:f32",
    "n_q:u32",
    "n_kv:u32",
    "head_dim:u32",
    "max_ctx:u32",
    "rope_dims:u32",
    "n_splits:u32",
    "softcap:f32",
    "seg1_row:u32",
    "seg2_row:u32",
    "seg1_base:u32",
    "seg2_base:u32",
)
ATTENTION = _spec(
    "attention.wgsl",
    "n_heads:u32",
    "n_kv_heads:u32",
    "max_ctx:u32",
    "q_stride:u32",
    "scale:f32",
    "window:u32",
    "rope_dims:u32",
    "eps:f32",
    "softcap:f32",
    "_pad0:u32",
    "_pad1:u32",
    "_pad2:u32",
)
FLASH_ATTENTION = _spec(
    "flash_attention.wgsl",
    "n_heads:u32",
    "n_kv_heads:u32",
    "max_ctx:u32",
    "q_stride:u32",
    "scale:f32",
    "window:u32",
    "softcap:f32",
    "_pad0:u32",
)
EMBED = _spec("embed.wgsl", "k_blocks:u32", "out_stride:u32", "scale:f32", "_pad0:u32")
QK_NORM = _spec(
    "qk_norm.wgsl",
    "n_heads:u32",
    "n_kv_heads:u32",
    "max_ctx:u32",
    "rope_dims:u32",
    "eps:f32",
    "_pad0:u32",
    "_pad1:u32",
    "_pad2:u32",
)
NORM_ADD = _spec("norm_add.wgsl", "n:u32", "eps:f32", "_pad0:u32", "_pad1:u32")
SAMPLE = _spec(
    "sample.wgsl",
    "vocab:u32",
    "temperature:f32",
    "top_p:f32",
    "seed:u32",
    "top_k:u32",
    "presence:f32",
    "frequency:f32",
    "repetition:f32",
    "n_bias:u32",
    "penalize:u32",
    "n_top:u32",
    "logprobs:u32",
    "n_best:u32",
    "_pad0:u32",
    "_pad1:u32",
    "_pad2:u32",
)
REPACK = _spec(
    "repack.wgsl",
    "n_rows:u32",
    "k_blocks:u32",
    "dst_row0:u32",
    "dst_row_step:u32",
    "dst_base:u32",
    "tensor_id:u32",
    "_pad0:u32",
    "_pad1:u32",
)

ALL = (MATMUL, ATTENTION, FLASH_ATTENTION, EMBED, QK_NORM, NORM_ADD, SAMPLE, REPACK)


def pack_state(pos: int, n_tokens: int, step: int = 0) -> bytes:
    """The ``State`` struct of common.wgsl."""
    return struct.pack("<4I", pos, n_tokens, step, 0)


STATE_FIELDS = (("pos", "u32"), ("n_tokens", "u32"), ("step", "u32"), ("_pad", "u32"))
