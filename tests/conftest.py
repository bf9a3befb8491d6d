"""Shared fixtures: an asyncio runner and, for tests that need one, a WebGPU device (lavapipe in CI)."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

# wgpu-native's Vulkan loader complains on stderr without it; harmless, but it buries test output.
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


@pytest.fixture(scope="session")
def gpu_device():
    from webllm_py.host.native import open_device

    # First asked for by a browser test, this thread may run Playwright's event loop (its sync API keeps one
    # running): asyncio.run then refuses, so the device is opened on a thread of its own.
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop here: the usual case
        dev = asyncio.run(open_device())
    else:
        with ThreadPoolExecutor(1) as pool:
            dev = pool.submit(asyncio.run, open_device()).result()
    assert dev.caps.has_f16 and dev.caps.has_subgroups, (
        f"kernel tests need an adapter with shader-f16 and subgroups (lavapipe has both); got {dev.info.summary()}"
    )
    return dev
