"""GGML tensor types we read from GGUF files: their block layout and byte sizes.

A "block" is the unit a quantized row is cut into: ``block_size`` weights stored in ``type_size`` bytes.
Reference dequantization (for tests and for small CPU-side tensors) lives here too; it is pure Python and slow,
so the engine never uses it on whole weight matrices (the GPU repack kernel does that work).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q8_0 = 8


@dataclass(frozen=True)
class QuantFormat:
    ggml_type: GGMLType
    block_size: int  # weights per block
    type_size: int  # bytes per block in the GGUF file


QUANT_FORMATS: dict[GGMLType, QuantFormat] = {
    GGMLType.F32: QuantFormat(GGMLType.F32, 1, 4),
    GGMLType.F16: QuantFormat(GGMLType.F16, 1, 2),
    # Q4_0: f16 scale d, then 16 bytes holding 32 nibbles; weight = (q - 8) * d.
    # Byte j holds weight j (low nibble) and weight j + 16 (high nibble).
    GGMLType.Q4_0: QuantFormat(GGMLType.Q4_0, 32, 18),
    # Q4_1: f16 scale d, f16 min m, then 16 bytes of nibbles (same order as Q4_0); weight = q * d + m.
    GGMLType.Q4_1: QuantFormat(GGMLType.Q4_1, 32, 20),
    # Q8_0: f16 scale d, then 32 signed bytes; weight = q * d.
    GGMLType.Q8_0: QuantFormat(GGMLType.Q8_0, 32, 34),
}

SUPPORTED_TYPE_NAMES = ", ".join(t.name for t in QUANT_FORMATS)


def tensor_nbytes(ggml_type: GGMLType, n_elements: int) -> int:
    fmt = QUANT_FORMATS[ggml_type]
    return n_elements // fmt.block_size * fmt.type_size


def dequantize_row(ggml_type: GGMLType, data: bytes) -> list[float]:
    """Reference dequantization of consecutive blocks (pure Python; for small tensors and tests)."""
    fmt = QUANT_FORMATS[ggml_type]
    if ggml_type == GGMLType.F32:
        return list(struct.unpack(f"<{len(data) // 4}f", data))
    if ggml_type == GGMLType.F16:
        return list(struct.unpack(f"<{len(data) // 2}e", data))
    out: list[float] = []
    for b in range(len(data) // fmt.type_size):
        block = data[b * fmt.type_size : (b + 1) * fmt.type_size]
        d = struct.unpack_from("<e", block, 0)[0]
        if ggml_type == GGMLType.Q8_0:
            qs = struct.unpack_from("<32b", block, 2)
            out.extend(q * d for q in qs)
            continue
        if ggml_type == GGMLType.Q4_0:
            m, qs = -8.0 * d, block[2:18]
        else:
            m, qs = struct.unpack_from("<e", block, 2)[0], block[4:20]
        out.extend((q & 0x0F) * d + m for q in qs)
        out.extend((q >> 4) * d + m for q in qs)
    return out
