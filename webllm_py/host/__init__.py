"""The host seam: the only package that may import ``js``, ``pyodide`` or ``wgpu``.

``open_device()`` picks the host by platform: the browser's ``navigator.gpu`` under Pyodide (emscripten),
wgpu-py (wgpu-native) everywhere else.
"""

from __future__ import annotations

import sys

from ..gpu.device import Device


async def open_device(**kwargs: object) -> Device:
    if sys.platform == "emscripten":
        from .browser import open_device as open_browser_device

        return await open_browser_device(**kwargs)
    from .native import open_device as open_native_device

    return await open_native_device(**kwargs)
