"""The repack kernel's scan: a NaN or infinite scale (d, m / dmin) or float weight marks its tensor on the GPU, and
one readback at the end of the load raises CorruptWeightsError naming the first bad tensor."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest

from webllm_py.errors import CorruptWeightsError
from webllm_py.kernels import ops
from webllm_py.kernels.registry import Kernels, Tier
from webllm_py.model.quant import QUANT_FORMATS, GGMLType

from .quantize import K_TYPES, quantize

INF, NAN = 0x7C00, 0x7E00  # f16 bits
# (byte offset in a block, the problem's wording) of each type's f16 scales
SCALES = {
    GGMLType.Q4_0: [(0, "scale (d)")],
    GGMLType.Q4_1: [(0, "scale (d)"), (2, "min")],
    GGMLType.Q5_0: [(0, "scale (d)")],
    GGMLType.Q5_1: [(0, "scale (d)"), (2, "min")],
    GGMLType.Q8_0: [(0, "scale (d)")],
    GGMLType.Q4_K: [(0, "scale (d)"), (2, "min")],
    GGMLType.Q5_K: [(0, "scale (d)"), (2, "min")],
    GGMLType.Q6_K: [(208, "scale (d)")],
}
FLOATS = {GGMLType.F16: ("<e", 2), GGMLType.BF16: ("<H", 2), GGMLType.F32: ("<f", 4)}


@pytest.fixture(scope="module")
def kern1(gpu_device):
    """One tier is enough: the repack kernel has no tier-dependent code."""
    return Kernels(gpu_device, Tier(f16=False, subgroups=False))


def load(kern, tensors, ggml_type, k):
    """Upload (name, raw bytes) tensors of ``ggml_type`` through one Repacker and run its end-of-load check."""
    rep = ops.Repacker(kern, staging_bytes=4096)  # several chunks per tensor
    n_rows = 5
    for name, raw in tensors:
        w = ops.alloc_weight(kern, ggml_type, n_rows, k, name)
        rep.upload(w, ggml_type, raw, n_rows, tensor=name)
    asyncio.run(rep.close("model.gguf"))


def corrupt(raw: bytes, offset: int, bits: int) -> bytes:
    data = bytearray(raw)
    data[offset : offset + 2] = struct.pack("<H", bits)
    return bytes(data)


@pytest.mark.parametrize("ggml_type", list(SCALES), ids=lambda t: t.name)
def test_non_finite_scales_name_the_first_bad_tensor(kern1, ggml_type):
    k = 512 if ggml_type in K_TYPES else 96
    rng = np.random.default_rng(int(ggml_type))
    good = [quantize(rng.standard_normal((5, k)), ggml_type) for _ in range(4)]
    load(kern1, [(f"t{i}", raw) for i, raw in enumerate(good)], ggml_type, k)  # clean: no error
    size = QUANT_FORMATS[ggml_type].type_size
    for offset, what in SCALES[ggml_type]:
        for bits in (INF, NAN, INF | 0x8000):
            last = len(good[2]) - size  # the last block of the last row: past the first staging chunks
            tensors = [("t0", good[0]), ("t1", good[1]), ("t2", corrupt(good[2], last + offset, bits))]
            tensors.append(("t3", corrupt(good[3], offset, NAN)))  # a later bad tensor does not win
            with pytest.raises(CorruptWeightsError) as info:
                load(kern1, tensors, ggml_type, k)
            assert (
                info.value.tensor == "t2" and what in info.value.problem and ggml_type.name in str(info.value)
            )


@pytest.mark.parametrize("ggml_type", list(FLOATS), ids=lambda t: t.name)
def test_non_finite_float_weights(kern1, ggml_type):
    rng = np.random.default_rng(3)
    good = quantize(rng.standard_normal((5, 64)), ggml_type)
    load(kern1, [("w", good)], ggml_type, 64)
    fmt, size = FLOATS[ggml_type]
    for value in (float("inf"), float("nan"), float("-inf")):
        bits = struct.pack("<f", value)[4 - size :] if ggml_type == GGMLType.BF16 else struct.pack(fmt, value)
        for index in (0, 7, 5 * 64 - 1):  # a low half, a high half, the last weight
            data = bytearray(good)
            data[index * size : (index + 1) * size] = bits
            with pytest.raises(CorruptWeightsError, match="a weight is NaN or infinite") as info:
                load(kern1, [("ok", good), ("w", bytes(data))], ggml_type, 64)
            assert info.value.tensor == "w"
