"""Browser glue for the worker protocol (Pyodide only).

``JSWorkerPort``: a JS ``Worker`` as the ``Port`` that ``worker/client.py`` talks through, on the page.
``JSServiceWorkerPort``: the page's service worker (``web/sw.js``) as that ``Port``, for
``worker/service_worker_client.py``.
``BrowserWorkerHost``: what ``worker/handler.py`` asks the host, in the worker: the GPU adapter and the model cache.

Messages cross ``postMessage`` as plain JS objects built by ``JSON.parse(json.dumps(message))``, and come back
through ``JSON.stringify`` + ``json.loads``. That costs tens of microseconds a message (nothing next to a decode
step) and keeps the wire exactly JSON: ``None`` is ``null`` on the JS side, never ``undefined``, and no PyProxy or
JsProxy is ever left to destroy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import js
from pyodide.ffi import JsProxy, create_proxy

from ..config import AppConfig, ModelRecord
from ..errors import EngineLostError, InvalidJSONError, WebGPUNotAvailableError
from ..protocol import loads_json


def to_js_json(message: Any) -> Any:
    """A plain JS value equal to the JSON-able ``message``."""
    return js.JSON.parse(json.dumps(message, allow_nan=False))


def from_js_json(value: Any, field: str = "message") -> Any:
    """A Python value equal to the JSON-able JS ``value`` (``None`` for ``undefined``). What is not JSON (a cyclic
    object, a BigInt, nesting deeper than ``protocol.MAX_JSON_DEPTH``) raises ``InvalidJSONError``, never a
    RecursionError or a JS exception."""
    if not isinstance(value, JsProxy):
        return value  # numbers, strings, booleans and None arrive converted already
    try:
        text = js.JSON.stringify(value)
    except Exception as e:  # JsException: TypeError (cycle, BigInt), RangeError (the JS stack)
        raise InvalidJSONError(field, f"cannot be written as JSON: {e}") from None
    return loads_json(text, field) if isinstance(text, str) else None


def js_uuid(value: Any) -> str:
    """The ``uuid`` of a JS message that could not be converted, to answer it under (``""`` if it has none)."""
    try:
        uuid = getattr(value, "uuid", None)
    except Exception:
        return ""
    return uuid if isinstance(uuid, str) else ""


class JSWorkerPort:
    """A module ``Worker`` (started from ``worker.js``) as a ``worker.client.Port``."""

    def __init__(self, worker: Any):
        self.worker = worker
        self._on_message: Callable[[dict[str, Any]], None] | None = None
        self._on_error: Callable[[str], None] | None = None
        # Kept by JS as event listeners, so they must outlive this call: destroyed in close().
        self._message_proxy = create_proxy(self._message)
        self._error_proxy = create_proxy(self._error)
        worker.addEventListener("message", self._message_proxy)
        worker.addEventListener("error", self._error_proxy)
        worker.addEventListener("messageerror", self._error_proxy)

    def post(self, message: dict[str, Any]) -> None:
        self.worker.postMessage(to_js_json(message))

    def set_listener(
        self, on_message: Callable[[dict[str, Any]], None], on_error: Callable[[str], None] | None = None
    ) -> None:
        self._on_message, self._on_error = on_message, on_error

    def _message(self, event: Any) -> None:
        data = from_js_json(event.data)
        if isinstance(data, dict) and self._on_message is not None:
            self._on_message(data)

    def _error(self, event: Any) -> None:
        if self._on_error is not None:
            message = getattr(event, "message", None) or f"the worker raised a {event.type} event"
            self._on_error(str(message))

    def close(self) -> None:
        self.worker.removeEventListener("message", self._message_proxy)
        self.worker.removeEventListener("error", self._error_proxy)
        self.worker.removeEventListener("messageerror", self._error_proxy)
        self.worker.terminate()
        self._message_proxy.destroy()
        self._error_proxy.destroy()


class JSServiceWorkerPort:
    """``navigator.serviceWorker`` as a ``worker.client.Port``: requests go to the page's controller, or to the
    registration's active worker on a page it does not control yet (first visit, hard reload); replies arrive as
    ``message`` events on ``navigator.serviceWorker``. ``close`` lets go of the worker without stopping it."""

    def __init__(self, container: Any, registration: Any):
        self.container = container
        self.registration = registration
        self._on_message: Callable[[dict[str, Any]], None] | None = None
        self._message_proxy = create_proxy(self._message)
        container.addEventListener("message", self._message_proxy)
        container.startMessages()  # messages from the worker wait until a page starts them

    def post(self, message: dict[str, Any]) -> None:
        worker = self.container.controller or self.registration.active
        if not worker:
            raise EngineLostError(
                "there is no active service worker: register sw.js (navigator.serviceWorker.register('./sw.js', "
                "{type: 'module'})) before creating the engine"
            )
        worker.postMessage(to_js_json(message))

    def set_listener(
        self, on_message: Callable[[dict[str, Any]], None], on_error: Callable[[str], None] | None = None
    ) -> None:
        self._on_message = on_message  # a service worker has no error event; heartbeats tell it is gone

    def _message(self, event: Any) -> None:
        data = from_js_json(event.data)
        if isinstance(data, dict) and self._on_message is not None:
            self._on_message(data)

    def close(self) -> None:
        self.container.removeEventListener("message", self._message_proxy)
        self._message_proxy.destroy()


async def service_worker_port() -> JSServiceWorkerPort:
    """The page's service worker, once it is active (``navigator.serviceWorker.ready``)."""
    container = getattr(js.navigator, "serviceWorker", None)
    if not container:
        raise EngineLostError(
            "this page has no service workers (navigator.serviceWorker is missing): serve it over https or "
            "localhost, from the main thread"
        )
    return JSServiceWorkerPort(container, await container.ready)


class JSExtensionPort:
    """A ``chrome.runtime`` Port named ``web_llm_service_worker`` to an extension's service worker, as a
    ``worker.client.Port``. When it disconnects (the browser stopped the worker) ``on_error`` is told, and the next
    ``post`` connects again, which starts the worker again."""

    NAME = "web_llm_service_worker"

    def __init__(self, extension_id: str | None = None):
        self.extension_id = extension_id
        self.port: Any = None
        self._on_message: Callable[[dict[str, Any]], None] | None = None
        self._on_error: Callable[[str], None] | None = None
        self._proxies: list[Any] = []

    def _connect(self) -> None:
        options = to_js_json({"name": self.NAME})
        runtime = js.chrome.runtime
        port = runtime.connect(self.extension_id, options) if self.extension_id else runtime.connect(options)

        def message(data: Any) -> None:
            value = from_js_json(data)
            if isinstance(value, dict) and self._on_message is not None:
                self._on_message(value)

        def disconnect(_port: Any) -> None:
            if self.port is port:
                self.port = None
            if self._on_error is not None:
                self._on_error("the extension's service worker disconnected")

        for fn, event in ((message, port.onMessage), (disconnect, port.onDisconnect)):
            proxy = create_proxy(fn)
            self._proxies.append(proxy)
            event.addListener(proxy)
        self.port = port

    def post(self, message: dict[str, Any]) -> None:
        if self.port is None:
            self._connect()
        self.port.postMessage(to_js_json(message))

    def set_listener(
        self, on_message: Callable[[dict[str, Any]], None], on_error: Callable[[str], None] | None = None
    ) -> None:
        self._on_message, self._on_error = on_message, on_error

    def close(self) -> None:
        if self.port is not None:
            self.port.disconnect()
        self.port = None
        for proxy in self._proxies:
            proxy.destroy()
        self._proxies.clear()


class BrowserWorkerHost:
    """``worker.handler.WorkerHost`` in a browser worker: ``navigator.gpu`` and the browser model cache."""

    async def _adapter(self) -> Any:
        gpu = getattr(js.navigator, "gpu", None)
        adapter = await gpu.requestAdapter() if gpu is not None else None
        if not adapter:  # undefined navigator.gpu, or requestAdapter() resolving to null (JsNull is falsy)
            raise WebGPUNotAvailableError(
                "WebGPU is not available in this browser: navigator.gpu is missing or has no adapter. Use a "
                "recent Chrome or Edge (or Firefox/Safari with WebGPU on), served over https or localhost; on "
                "Linux, Chrome may need chrome://flags/#enable-unsafe-webgpu."
            )
        return adapter

    async def gpu_vendor(self) -> str:
        adapter = await self._adapter()
        info = getattr(adapter, "info", None)  # GPUAdapterInfo; older Chrome only had requestAdapterInfo()
        if info is None and hasattr(adapter, "requestAdapterInfo"):
            info = await adapter.requestAdapterInfo()
        return str(getattr(info, "vendor", "") or "")

    async def max_storage_buffer_binding_size(self) -> int:
        adapter = await self._adapter()
        return int(adapter.limits.maxStorageBufferBindingSize)

    async def has_model_in_cache(self, record: ModelRecord, app_config: AppConfig) -> bool:
        from . import browser_cache

        return bool(await browser_cache.has_model_in_cache(record, app_config))

    async def delete_model_in_cache(self, record: ModelRecord, app_config: AppConfig) -> None:
        from . import browser_cache

        await browser_cache.delete_model_in_cache(record, app_config)
