"""Weights stream to the GPU: the Python heap holds at most a few staging chunks while a model loads, never the file.

An 11 MB Q8_0 model loads on a device whose bindings (so the repacker's staging buffer) are 512 KiB; tracemalloc
(every Python and numpy allocation) watches load_weights. Its peak stays within two staging chunks (a chunk read from
the file and a copy of it), an eighth of the file; what it keeps after the load is not the weights. bench/load_memory.py measures the same at real sizes (an 800 MB Llama-3.2-1B file).
"""

from __future__ import annotations

import asyncio
import os
import tracemalloc

import webllm_py.engine as engine_module
from webllm_py.host.native import open_device
from webllm_py.model.quant import GGMLType

from .tiny_llama import build_tiny_model

CAP = 512 << 10
SHAPE = dict(hidden=512, ffn=1536, n_heads=4, n_kv_heads=2, n_layers=3, ctx=32, weight_type=GGMLType.Q8_0)


def test_weights_stream_through_the_staging_buffer(tmp_path, monkeypatch):
    path = build_tiny_model(tmp_path / "m.gguf", seed=3, embed_type=GGMLType.Q8_0, **SHAPE)
    size = os.path.getsize(path)
    assert size > 8 << 20
    seen: dict[str, int] = {}
    load_weights = engine_module.load_weights

    async def measured(*args, **kwargs):
        tracemalloc.start()
        try:
            weights = await load_weights(*args, **kwargs)
            seen["kept"], seen["peak"] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return weights

    monkeypatch.setattr(engine_module, "load_weights", measured)
    device = asyncio.run(open_device(limits={"max_storage_buffer_binding_size": CAP}))
    try:
        engine = asyncio.run(
            engine_module.load_engine("m", str(path), device=device, context_window_size=32, tune=False)
        )
        assert engine.graph.weight_bytes > size * 0.9  # it all went up
        assert len(engine.graph.weights.layers[0].gate_up.parts) > 1  # 1.7 MB: split on a 512 KiB binding
        assert seen["peak"] <= 2 * CAP <= size / 8, seen
        assert seen["kept"] <= CAP, seen  # buffer handles, launches' parameters: not the weights
        asyncio.run(engine.unload())
    finally:
        device.destroy()
