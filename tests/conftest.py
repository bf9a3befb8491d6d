"""Shared fixtures: an asyncio runner and, for tests that need one, a WebGPU device (lavapipe in CI)."""

from __future__ import annotations

import asyncio
import os

import pytest

# wgpu-native's Vulkan loader complains on stderr without it; harmless, but it buries test output.
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


@pytest.fixture(scope="session")
def gpu_device():
    from webllm_py.host.native import open_device

    dev = asyncio.run(open_device())
    assert dev.caps.has_f16 and dev.caps.has_subgroups, (
        f"kernel tests need an adapter with shader-f16 and subgroups (lavapipe has both); got {dev.info.summary()}"
    )
    return dev
