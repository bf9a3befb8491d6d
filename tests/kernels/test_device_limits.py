"""The device is requested with the limits the model needs, and limits an adapter cannot give are typed errors.

- load_engine without a device opens one whose binding and buffer limits are what the model's memory plan asks for
  (its largest whole product or buffer, at least WebGPU's defaults), not the adapter's maxima;
- a limit beyond the adapter's is refused with DeviceLimitError naming the limit and both values;
- a buffer that cannot be split (a layer's KV cache at a long context) and exceeds the binding fails with
  ModelTooLargeError naming the binding limit and both sizes, and how far to lower the context, before anything is
  allocated on the device.
"""

from __future__ import annotations

import asyncio

import pytest

from webllm_py.engine import load_engine, plan_model
from webllm_py.errors import DeviceLimitError, ModelTooLargeError
from webllm_py.host.native import adapter_caps, open_device
from webllm_py.model.gguf import GGUFFile
from webllm_py.model.quant import GGMLType

from .tiny_llama import build_tiny_model

SHAPE = dict(hidden=256, ffn=512, n_heads=4, n_kv_heads=2, n_layers=2, ctx=4096, weight_type=GGMLType.Q4_0)


def test_device_gets_the_limits_the_model_needs(tmp_path):
    path = build_tiny_model(tmp_path / "m.gguf", seed=5, **SHAPE)
    caps = asyncio.run(adapter_caps())
    with GGUFFile.open(path) as g:
        want = plan_model(g, caps, model_id="m", context_window_size=64).device_limits(caps)
    # WebGPU's defaults suffice for this model; the adapter offers more (lavapipe: a 2 GiB maxBufferSize)
    assert want == {"max_storage_buffer_binding_size": 128 << 20, "max_buffer_size": 256 << 20}
    assert caps.max_buffer_size > want["max_buffer_size"]
    engine = asyncio.run(load_engine("m", str(path), context_window_size=64, tuning={"attention_splits": 2}))
    try:
        got = engine.device.caps
        assert got.max_storage_buffer_binding_size == want["max_storage_buffer_binding_size"]
        assert got.max_buffer_size == want["max_buffer_size"]
    finally:
        asyncio.run(engine.unload())


def test_limits_beyond_the_adapter_are_named():
    caps = asyncio.run(adapter_caps())
    too_much = caps.max_storage_buffer_binding_size + 4
    with pytest.raises(DeviceLimitError) as info:
        asyncio.run(open_device(limits={"max_storage_buffer_binding_size": too_much}))
    msg = str(info.value)
    assert "max_storage_buffer_binding_size" in msg and str(too_much) in msg
    assert str(caps.max_storage_buffer_binding_size) in msg


def test_unsplittable_buffer_past_the_binding_fails_before_allocating(tmp_path):
    path = build_tiny_model(tmp_path / "m.gguf", seed=5, **SHAPE)
    cap = 96 << 10
    device = asyncio.run(open_device(limits={"max_storage_buffer_binding_size": cap}))
    try:
        before = device.allocated_bytes
        # a layer's KV cache: (2, 2 kv heads, 4096 positions, 64) f16 (this tier) or f32, far past 96 KiB
        per_position = 2 * 2 * 64 * (2 if device.caps.has_f16 else 4)
        with pytest.raises(ModelTooLargeError) as info:
            asyncio.run(load_engine("m", str(path), device=device, context_window_size=4096))
        msg = str(info.value)
        need = 4096 * per_position
        assert (
            f"a layer's KV cache needs one {need}-byte buffer" in msg and f"allows {cap} per binding" in msg
        )
        assert "maxStorageBufferBindingSize" in msg
        assert f"lower context_window_size to at most {cap // per_position}" in msg
        assert info.value.needed_bytes == need and info.value.available_bytes == cap
        assert device.allocated_bytes == before
    finally:
        device.destroy()
