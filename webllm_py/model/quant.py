"""GGML tensor types we read from GGUF files: their block layout and byte sizes.

A "block" is the unit a quantized row is cut into: ``block_size`` weights stored in ``type_size`` bytes.
Reference dequantization (for tests and for small CPU-side tensors such as norms and biases) lives here too; it is
pure Python and slow, so the engine never uses it on weight matrices (the GPU repack kernel does that work).
Layouts: ggml's ggml-common.h block structs; the index mappings are spelled out in shared notes models.md section 2.
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
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30


@dataclass(frozen=True)
class QuantFormat:
    ggml_type: GGMLType
    block_size: int  # weights per block
    type_size: int  # bytes per block in the GGUF file


QUANT_FORMATS: dict[GGMLType, QuantFormat] = {
    GGMLType.F32: QuantFormat(GGMLType.F32, 1, 4),
    GGMLType.F16: QuantFormat(GGMLType.F16, 1, 2),
    # BF16: the upper half of an f32 (same sign and exponent, 7 mantissa bits).
    GGMLType.BF16: QuantFormat(GGMLType.BF16, 1, 2),
    # Q4_0: f16 scale d, then 16 bytes holding 32 nibbles; weight = (q - 8) * d.
    # Byte j holds weight j (low nibble) and weight j + 16 (high nibble).
    GGMLType.Q4_0: QuantFormat(GGMLType.Q4_0, 32, 18),
    # Q4_1: f16 scale d, f16 min m, then 16 bytes of nibbles (same order as Q4_0); weight = q * d + m.
    GGMLType.Q4_1: QuantFormat(GGMLType.Q4_1, 32, 20),
    # Q5_0: f16 d, u32 qh (bit i = 5th bit of weight i), 16 bytes of nibbles as Q4_0; weight = (q - 16) * d.
    GGMLType.Q5_0: QuantFormat(GGMLType.Q5_0, 32, 22),
    # Q5_1: f16 d, f16 m, u32 qh, 16 bytes of nibbles; weight = q * d + m.
    GGMLType.Q5_1: QuantFormat(GGMLType.Q5_1, 32, 24),
    # Q8_0: f16 scale d, then 32 signed bytes; weight = q * d.
    GGMLType.Q8_0: QuantFormat(GGMLType.Q8_0, 32, 34),
    # Q4_K: super-block of 256 = 8 sub-blocks of 32. f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) pairs, 128
    # bytes of nibbles (sub-blocks 2p and 2p + 1 share bytes 32p .. 32p + 31: low nibbles, then high);
    # weight = d * sc_j * q - dmin * m_j.
    GGMLType.Q4_K: QuantFormat(GGMLType.Q4_K, 256, 144),
    # Q5_K: Q4_K plus qh[32] before the nibbles: the 5th bit of weight l of sub-block j is bit j of qh[l].
    GGMLType.Q5_K: QuantFormat(GGMLType.Q5_K, 256, 176),
    # Q6_K: ql[128] low nibbles, qh[64] high 2-bit pairs, 16 int8 scales (one per 16 weights), f16 d;
    # weight = d * scale[i / 16] * (q - 32).
    GGMLType.Q6_K: QuantFormat(GGMLType.Q6_K, 256, 210),
}

SUPPORTED_TYPE_NAMES = ", ".join(t.name for t in QUANT_FORMATS)


def tensor_nbytes(ggml_type: GGMLType, n_elements: int) -> int:
    fmt = QUANT_FORMATS[ggml_type]
    return n_elements // fmt.block_size * fmt.type_size


def _f16(block: bytes, offset: int) -> float:
    return struct.unpack_from("<e", block, offset)[0]


def _nibbles(qs: bytes) -> list[int]:
    """The 32 nibbles of a legacy block in weight order: low nibbles of the 16 bytes, then the high ones."""
    return [q & 0x0F for q in qs] + [q >> 4 for q in qs]


def _k_scale_min(s: bytes, j: int) -> tuple[int, int]:
    """The 6-bit (scale, min) of sub-block j (0..7) from the 12 packed bytes of a Q4_K / Q5_K super-block."""
    if j < 4:
        return s[j] & 63, s[j + 4] & 63
    return (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)


def _dequantize_block(ggml_type: GGMLType, block: bytes) -> list[float]:
    t = GGMLType
    if ggml_type == t.Q8_0:
        d = _f16(block, 0)
        return [q * d for q in struct.unpack_from("<32b", block, 2)]
    if ggml_type in (t.Q4_0, t.Q4_1):
        d = _f16(block, 0)
        m, qs = (-8.0 * d, block[2:18]) if ggml_type == t.Q4_0 else (_f16(block, 2), block[4:20])
        return [q * d + m for q in _nibbles(qs)]
    if ggml_type in (t.Q5_0, t.Q5_1):
        d = _f16(block, 0)
        if ggml_type == t.Q5_0:
            m, qh, qs = -16.0 * d, struct.unpack_from("<I", block, 2)[0], block[6:22]
        else:
            m, qh, qs = _f16(block, 2), struct.unpack_from("<I", block, 4)[0], block[8:24]
        return [(q | (((qh >> i) & 1) << 4)) * d + m for i, q in enumerate(_nibbles(qs))]
    if ggml_type in (t.Q4_K, t.Q5_K):
        d, dmin, scales = _f16(block, 0), _f16(block, 2), block[4:16]
        qh, qs = (None, block[16:144]) if ggml_type == t.Q4_K else (block[16:48], block[48:176])
        out = []
        for j in range(8):
            sc, m = _k_scale_min(scales, j)
            for lane in range(32):
                q = (qs[32 * (j // 2) + lane] >> (4 * (j % 2))) & 15
                if qh is not None:
                    q |= ((qh[lane] >> j) & 1) << 4
                out.append(d * sc * q - dmin * m)
        return out
    if ggml_type == t.Q6_K:
        ql, qh, d = block[0:128], block[128:192], _f16(block, 208)
        scales = struct.unpack_from("<16b", block, 192)
        out = []
        for i in range(256):
            half, quarter, lane = i // 128, (i % 128) // 32, i % 32
            lo = (ql[64 * half + 32 * (quarter & 1) + lane] >> (4 * (quarter >> 1))) & 15
            hi = (qh[32 * half + lane] >> (2 * quarter)) & 3
            out.append(d * scales[i // 16] * ((lo | (hi << 4)) - 32))
        return out
    raise ValueError(f"no block dequantizer for {ggml_type.name}")


def dequantize_row(ggml_type: GGMLType, data: bytes) -> list[float]:
    """Reference dequantization of consecutive blocks (pure Python; for small tensors and tests)."""
    fmt = QUANT_FORMATS[ggml_type]
    if ggml_type == GGMLType.F32:
        return list(struct.unpack(f"<{len(data) // 4}f", data))
    if ggml_type == GGMLType.F16:
        return list(struct.unpack(f"<{len(data) // 2}e", data))
    if ggml_type == GGMLType.BF16:
        n = len(data) // 2
        return list(struct.unpack(f"<{n}f", b"".join(b"\0\0" + data[2 * i : 2 * i + 2] for i in range(n))))
    out: list[float] = []
    for b in range(len(data) // fmt.type_size):
        out.extend(_dequantize_block(ggml_type, data[b * fmt.type_size : (b + 1) * fmt.type_size]))
    return out
