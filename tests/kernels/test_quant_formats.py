"""Block layouts of every GGUF type against an independent oracle, pip ``gguf``'s numpy dequantizers (no GPU).

Checked: the package's pure-Python ``dequantize_row`` (norms, biases, small CPU-side tensors), the test-side numpy
decoder (the reference of every kernel test and of tests/e2e/reference.py), and the test-side encoders (valid blocks
whose decoding approximates the input), on random blocks whose every byte is random apart from finite scales.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from webllm_py.kernels.registry import WEIGHT_FORMAT, WEIGHT_GROUPS
from webllm_py.model.quant import QUANT_FORMATS, GGMLType, dequantize_row

from .quantize import dequantize, quantize

QUANTIZED = [t for t in GGMLType if QUANT_FORMATS[t].block_size > 1]
# Byte offsets of each block's f16 scales (kept finite in random blocks).
SCALE_OFFSETS = {
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
}


def random_blocks(ggml_type: GGMLType, n_blocks: int, rng) -> bytes:
    fmt = QUANT_FORMATS[ggml_type]
    b = rng.integers(0, 256, (n_blocks, fmt.type_size), dtype=np.uint8)
    for off in SCALE_OFFSETS[ggml_type]:
        b[:, off : off + 2] = rng.uniform(-0.1, 0.1, n_blocks).astype("<f2").view(np.uint8).reshape(-1, 2)
    return b.tobytes()


def oracle(raw: bytes, ggml_type: GGMLType) -> np.ndarray:
    blocks = np.frombuffer(raw, np.uint8).reshape(-1, QUANT_FORMATS[ggml_type].type_size)
    return gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[ggml_type.name]).reshape(-1)


@pytest.mark.parametrize("ggml_type", QUANTIZED, ids=lambda t: t.name)
def test_decoders_match_gguf_on_random_blocks(ggml_type):
    rng = np.random.default_rng(int(ggml_type))
    n_blocks = 3
    raw = random_blocks(ggml_type, n_blocks, rng)
    want = oracle(raw, ggml_type)
    k = QUANT_FORMATS[ggml_type].block_size
    assert np.any(want != 0)
    np.testing.assert_array_equal(dequantize(raw, ggml_type, (n_blocks, k)).reshape(-1), want)
    np.testing.assert_allclose(np.array(dequantize_row(ggml_type, raw), np.float32), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("ggml_type", [GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_float_rows(ggml_type):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((1, 64)).astype(np.float32) * 1000
    raw = quantize(w, ggml_type)
    want = (
        oracle(raw, ggml_type) if ggml_type == GGMLType.BF16 else w.astype(np.float16).astype(np.float32)[0]
    )
    np.testing.assert_array_equal(np.array(dequantize_row(ggml_type, raw), np.float32), want)
    np.testing.assert_array_equal(dequantize(raw, ggml_type, w.shape)[0], want)
    if ggml_type == GGMLType.BF16:  # our encoder rounds as gguf's (nearest even)
        ref = gguf.quants.quantize(w, gguf.GGMLQuantizationType.BF16)
        assert raw == ref.tobytes()


# Relative RMS error of each encoder on Gaussian weights: loose upper bounds (Q4_K at 7.8 %, notes models.md §2).
ENCODER_ERROR = {"Q4_0": 0.12, "Q4_1": 0.1, "Q5_0": 0.06, "Q5_1": 0.05, "Q8_0": 0.01}
ENCODER_ERROR.update({"Q4_K": 0.1, "Q5_K": 0.05, "Q6_K": 0.03})


@pytest.mark.parametrize("ggml_type", QUANTIZED, ids=lambda t: t.name)
def test_encoders_round_trip_through_gguf(ggml_type):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 512)).astype(np.float32)
    w[1] *= 0.01  # a row of small weights, and one of positive ones (Q4_K / Q5_K mins of 0)
    w[2] = np.abs(w[2])
    raw = quantize(w, ggml_type)
    assert len(raw) == 4 * 512 // QUANT_FORMATS[ggml_type].block_size * QUANT_FORMATS[ggml_type].type_size
    got = oracle(raw, ggml_type).reshape(w.shape)
    for r in range(4):
        err = np.linalg.norm(got[r] - w[r]) / np.linalg.norm(w[r])
        assert err < ENCODER_ERROR[ggml_type.name], f"row {r}: {err:.3f}"


def test_repacked_sizes_against_the_file():
    """Bits per weight of every repacked format (weights.wgsl) against the GGUF type's: equal, or 1/8 bit more for
    Q4_K / Q5_K (their 6-bit scales and mins become bytes)."""
    for t in GGMLType:
        fmt = QUANT_FORMATS[t]
        g, u = WEIGHT_GROUPS[WEIGHT_FORMAT[t.name]]
        repacked = u * 128 / (g * 32)
        raw = 8 * fmt.type_size / fmt.block_size
        extra = 0.125 if t in (GGMLType.Q4_K, GGMLType.Q5_K) else 0.0
        assert repacked == raw + extra, t.name
