"""The host seam: the only package that may import ``js``, ``pyodide`` or ``wgpu``.

``open_device()`` picks the host by platform: the browser's ``navigator.gpu`` under Pyodide (emscripten),
wgpu-py (wgpu-native) everywhere else.
"""

from __future__ import annotations

import sys

from ..gpu.device import Device, DeviceCaps


async def open_device(**kwargs: object) -> Device:
    if sys.platform == "emscripten":
        from .browser import open_device as open_browser_device

        return await open_browser_device(**kwargs)
    from .native import open_device as open_native_device

    return await open_native_device(**kwargs)


async def adapter_caps(**kwargs: object) -> DeviceCaps:
    """The limits, features and memory a device on the host's adapter could get, without opening one."""
    if sys.platform == "emscripten":
        from .browser import adapter_caps as browser_caps

        return await browser_caps(**kwargs)
    from .native import adapter_caps as native_caps

    return await native_caps(**kwargs)
