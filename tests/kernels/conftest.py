from __future__ import annotations

import asyncio

import numpy as np
import pytest

from webllm_py.gpu.device import BufferUsage
from webllm_py.kernels.registry import Kernels, Tier

TIERS = [
    Tier(f16=False, subgroups=False),
    Tier(f16=False, subgroups=True),
    Tier(f16=True, subgroups=False),
    Tier(f16=True, subgroups=True),
]


@pytest.fixture(scope="session")
def subgroup_min(gpu_device) -> int:
    """The device's smallest subgroup size, as the engine's start-up probe measures it (lavapipe: 8)."""
    from webllm_py.kernels.probe import probe_subgroups

    probe = asyncio.run(probe_subgroups(Kernels(gpu_device, TIERS[1])))
    assert probe.ok, probe.detail
    return probe.min_size


@pytest.fixture(params=TIERS, ids=lambda t: t.name)
def kern(request, gpu_device, subgroup_min):
    k = Kernels(gpu_device, request.param)
    if request.param.subgroups:
        k.subgroup_min = (
            subgroup_min  # GEMV_MR segments this short sum by subgroup shuffles, as in the engine
        )
    return k


STORAGE = BufferUsage.STORAGE | BufferUsage.COPY_DST | BufferUsage.COPY_SRC


def upload(kern: Kernels, array: np.ndarray, label: str = "test", usage: int = STORAGE):
    data = np.ascontiguousarray(array).tobytes()
    buf = kern.device.create_buffer(max(len(data), 16), usage, label)
    kern.device.write_buffer(buf, 0, data + bytes(-len(data) % 4))
    return buf


def zeros(kern: Kernels, nbytes: int, label: str = "test", usage: int = STORAGE):
    buf = kern.device.create_buffer(max(nbytes, 16), usage, label)
    kern.device.write_buffer(buf, 0, bytes(buf.size))
    return buf


def download(kern: Kernels, buf, dtype, count: int) -> np.ndarray:
    nbytes = np.dtype(dtype).itemsize * count
    data = asyncio.run(kern.device.read_storage(buf, 0, nbytes))
    return np.frombuffer(data, dtype=dtype).copy()


def state_buffer(kern: Kernels, pos: int, n_tokens: int, step: int = 0):
    from webllm_py.kernels.params import pack_state

    buf = kern.device.create_buffer(16, BufferUsage.UNIFORM | STORAGE, "state")
    kern.device.write_buffer(buf, 0, pack_state(pos, n_tokens, step))
    return buf


def assert_close(got: np.ndarray, want: np.ndarray, rel: float, what: str) -> None:
    """Normalized error bound (as llama.cpp's test-backend-ops): ||got - want|| / ||want|| <= rel; never all zeros."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    assert np.any(got != 0), f"{what}: all zeros (did the kernel run?)"
    err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
    assert err <= rel, (
        f"{what}: normalized error {err:.3g} > {rel:.3g}; max abs diff {np.abs(got - want).max():.3g}"
    )
