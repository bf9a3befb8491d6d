"""Embedding gather against numpy (the sampler is tested in test_sample.py)."""

from __future__ import annotations

import numpy as np
import pytest

from webllm_py.kernels import ops
from webllm_py.model.quant import GGMLType

from .conftest import assert_close, download, state_buffer, upload, zeros
from .quantize import K_TYPES, dequantize, quantize


@pytest.mark.parametrize("ggml_type", list(GGMLType), ids=lambda t: t.name)
@pytest.mark.parametrize("scale", [1.0, 9.797958971132712], ids=["unscaled", "sqrt96"])
def test_embed(kern, ggml_type, scale):
    """Rows of the table, times the embedding scale (Gemma: sqrt(hidden))."""
    vocab, m = 301, 7
    h = 512 if ggml_type in K_TYPES else 96  # K-quants: two 256-weight super-blocks per row
    rng = np.random.default_rng(3)
    table = rng.standard_normal((vocab, h)).astype(np.float32)
    raw = quantize(table, ggml_type)
    w = ops.alloc_weight(kern, ggml_type, vocab, h, "embd")
    ops.Repacker(kern).upload(w, ggml_type, raw, vocab)
    ids = np.array([0, 300, 5, 5, 17, 299, 128], dtype=np.uint32)
    out = zeros(kern, m * h * 4)
    launch = ops.embed(
        kern, w=w, tokens=upload(kern, ids), out=out, state=state_buffer(kern, 0, m), scale=scale
    )
    kern.device.submit([launch.dispatch(m)])
    got = download(kern, out, np.float32, m * h).reshape(m, h)
    want = dequantize(raw, ggml_type, (vocab, h))[ids] * np.float32(scale)  # one f32 rounding, as the kernel
    assert_close(got, want, 0.0, "embedding rows")
