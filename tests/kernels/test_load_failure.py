"""A load that fails midway loses nothing already loaded and leaves nothing of itself on the GPU.

Through MLCEngine on one shared lavapipe device (its BufferLedger counts live buffer bytes): model A is loaded and
answers; then reloads that fail after most of their weights went up, B with a NaN scale in its last tensor (the
repack scan finds it at the end of the load: CorruptWeightsError) and C whose file stops being readable halfway (an
OSError from the source). Each time the device holds exactly A's bytes again and A answers the same tokens: B fits
beside A, so it loads first and A is never touched; C is loaded the other way (A unloaded first, as when the two do
not fit together) and A comes back from its file. Unloading A then frees every byte its load made.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

import webllm_py.engine as engine_module
from webllm_py.api.mlc_engine import MLCEngine
from webllm_py.config import AppConfig, ModelRecord
from webllm_py.engine import SamplingParams
from webllm_py.errors import CorruptWeightsError
from webllm_py.host.native import open_device
from webllm_py.model.gguf import ByteSource, GGUFFile
from webllm_py.model.quant import GGMLType

from .tiny_llama import build_tiny_model

SHAPE = dict(hidden=256, ffn=512, n_heads=4, n_kv_heads=2, n_layers=2, ctx=64, weight_type=GGMLType.Q4_0)
PROMPT = [3, 14, 15, 92, 65, 35]


def answer(mlc: MLCEngine, model_id: str) -> list[int]:
    engine = mlc._slots[model_id].engine
    gen = engine.generate(
        PROMPT, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True), reuse_kv=False
    )

    async def run():
        return [t async for t in gen]

    return asyncio.run(run())


def test_failed_reload_keeps_the_loaded_model_and_frees_its_buffers(tmp_path, monkeypatch):
    a = build_tiny_model(tmp_path / "a.gguf", seed=1, **SHAPE)
    b = build_tiny_model(tmp_path / "b.gguf", seed=2, **SHAPE)
    with GGUFFile.open(b) as g:  # NaN as the first block's scale (f16 0x7e00) of the last tensor loaded
        last = g.tensor("blk.1.ffn_down.weight").offset
    with open(b, "r+b") as f:
        f.seek(last)
        f.write(struct.pack("<H", 0x7E00))
    c = build_tiny_model(tmp_path / "c.gguf", seed=3, **SHAPE)
    with GGUFFile.open(c) as g:
        cut = g.tensor("blk.1.attn_q.weight").offset  # layer 0 loads, then reads fail

    def failing_source() -> ByteSource:
        src = ByteSource.from_path(c)

        def read_at(offset: int, n: int) -> bytes:
            if offset + n > cut:
                raise OSError("the disk went away")
            return src.read(offset, n)

        return ByteSource(str(c), src.size, read_at, close=src.close)

    async def resolve(record, app_config, progress):
        return failing_source() if record.model_id == "C" else record.model_url

    config = AppConfig(model_list=[ModelRecord(m, str(p)) for m, p in (("A", a), ("B", b), ("C", c))])
    device = asyncio.run(open_device())
    try:
        mlc = MLCEngine(app_config=config, device=device, resolve_model=resolve)
        baseline = device.allocated_bytes
        asyncio.run(mlc.reload("A"))
        tokens = answer(mlc, "A")
        held = device.allocated_bytes
        assert held > baseline

        with pytest.raises(CorruptWeightsError, match="blk.1.ffn_down.weight"):
            asyncio.run(mlc.reload("B"))
        assert mlc.model_ids == ["A"] and device.allocated_bytes == held
        assert answer(mlc, "A") == tokens

        preflight = engine_module.preflight

        async def not_beside(*args, **kwargs):  # as if A and C did not fit together: A is unloaded first
            known, _ = await preflight(*args, **kwargs)
            return known, False

        monkeypatch.setattr(engine_module, "preflight", not_beside)
        with pytest.raises(OSError, match="the disk went away"):
            asyncio.run(mlc.reload("C"))
        assert mlc.model_ids == ["A"] and device.allocated_bytes == held
        assert answer(mlc, "A") == tokens

        asyncio.run(mlc.unload())
        assert device.allocated_bytes == baseline
    finally:
        device.destroy()
