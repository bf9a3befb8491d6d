"""The Python side of the engine's service worker (``web/sw.js``): one handler for every client, plus the local
OpenAI endpoint (Pyodide only).

``web/sw.js`` boots Pyodide, installs our wheel and calls ``start(post, alive, app_config_json)`` with two JS
functions: ``post(clientId, message)`` (``Client.postMessage`` to that tab) and ``alive(clientId)`` (a promise:
``clients.get`` found it). From then on:

- every ``message`` event becomes ``await on_message(clientId, data)``; the promise it returns settles when the
  request is answered, and sw.js hands it to ``event.waitUntil`` so the browser keeps the worker while it works;
- every ``fetch`` under ``<scope>v1/`` becomes ``await on_fetch(method, route, body)``, whose answer is
  ``{status, headers, body}`` or ``{status, headers, stream}``: ``stream`` is an ``EventStream`` that sw.js reads
  into a ``ReadableStream`` (``next()`` -> text or None; ``close()`` when the page stops reading).
"""

from __future__ import annotations

import json
from typing import Any

from pyodide.ffi import create_proxy

from ..worker.local_endpoint import EventStream, LocalEndpoint
from ..worker.service_worker import ServiceWorkerMLCEngineHandler, create_service_worker_handler
from .worker_port import from_js_json, js_uuid, to_js_json

handler: ServiceWorkerMLCEngineHandler | None = None
endpoint: LocalEndpoint | None = None


def start(post: Any, alive: Any, app_config_json: str | None = None, extension: bool = False) -> None:
    """Create the shared handler (once per service-worker instance). ``extension``: clients are
    ``chrome.runtime`` Ports that sw.js reports with ``connect`` / ``disconnect``."""
    global handler, endpoint

    def post_to_client(client_id: str, message: dict[str, Any]) -> None:
        post(client_id, to_js_json(message))

    async def client_alive(client_id: str) -> bool:
        return bool(await alive(client_id))

    handler = create_service_worker_handler(
        post_to_client,
        client_alive=client_alive,
        app_config=json.loads(app_config_json) if app_config_json else None,
        extension=extension,
    )
    endpoint = LocalEndpoint(handler)


def _handler() -> ServiceWorkerMLCEngineHandler:
    if handler is None:
        raise RuntimeError("service_worker_entry.start() was not called")
    return handler


async def on_message(client_id: str, data: Any) -> None:
    """Handle one message from ``client_id``; returns when it has been answered. Never raises: a message that is
    not JSON (nested too deep, cyclic) is answered with a ``throw`` under its uuid."""
    handler = _handler()
    try:
        message = from_js_json(data)
    except Exception as e:
        handler.reject(str(client_id), e, js_uuid(data))
        return
    task = await handler.on_client_message(str(client_id), message)
    if task is not None:
        await task


def connect(port_id: str) -> None:
    """An extension page connected a ``chrome.runtime`` Port (extension hosts only)."""
    _handler().connect(str(port_id))  # type: ignore[attr-defined]


def disconnect(port_id: str) -> None:
    _handler().disconnect(str(port_id))  # type: ignore[attr-defined]


async def on_fetch(method: str, route: str, body: str | None) -> Any:
    """Answer one request to the local endpoint (``route`` is the path under the scope, e.g. ``v1/models``)."""
    if endpoint is None:
        raise RuntimeError("service_worker_entry.start() was not called")
    response = await endpoint.handle(str(method), str(route), body if isinstance(body, str) else None)
    answer = to_js_json({"status": response.status, "headers": response.headers, "body": response.body})
    if response.events is not None:
        answer.stream = create_proxy(EventStream(response.events))  # sw.js destroys it when the stream ends
    return answer
