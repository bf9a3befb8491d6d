"""The Python side of the engine's module Web Worker: route each message from the page to the protocol handler.

``WebWorkerMLCEngineHandler`` (web/webllm_py.js, which web/worker.js and a page's own worker script run) boots
Pyodide, installs our wheel and calls ``connect(handler_module)``, whose result it calls with each message's data
(``start`` instead makes that the worker's ``onmessage`` itself). From then on each message
the page posts is converted to Python (``event.data.to_py()``: JS objects become dicts, arrays lists) and handed
to ``await handler.on_message(msg)``, each in its own task, so a message that arrives while a generation runs (an
interrupt, a stream pull) is handled at once. The handler answers through the ``post(obj)`` callable it was created
with, which converts a dict to a plain JS object and calls ``postMessage``.

The handler module's contract (``webllm_py.worker.handler`` in production; tests pass their own)::

    def create_handler(post: Callable[[dict], None]) -> Handler      # called once, by start()
    class Handler:
        async def on_message(self, msg: dict) -> None: ...           # called for every message, in arrival order

A message that cannot be converted (not JSON: nested too deep, cyclic) is answered with a ``throw`` under its uuid,
as is an exception that escapes ``on_message`` (a bug in the handler), so the page never waits forever.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import traceback
from collections.abc import Callable
from typing import Any

import js
from pyodide.ffi import create_proxy

from ..worker.messages import error_to_content, make_message
from .worker_port import from_js_json, js_uuid

log = logging.getLogger("webllm_py")

DEFAULT_HANDLER = "webllm_py.worker.handler"

# on_message calls still running, held so they are not garbage-collected mid-flight
_tasks: set[asyncio.Task] = set()
_listener = None  # the create_proxy'd onmessage function (kept alive for the worker's lifetime)


def post(obj: dict[str, Any]) -> None:
    """Send ``obj`` to the page as plain JSON values: dicts become objects, lists arrays, None null (OpenAI's shapes
    say ``"finish_reason": null``, which ``to_js`` would turn into undefined). NaN is refused (not JSON)."""
    js.postMessage(js.JSON.parse(json.dumps(obj, allow_nan=False)))


def connect(
    handler_module: str = DEFAULT_HANDLER,
    post_message: Callable[[dict[str, Any]], None] = post,
    app_config_json: str | None = None,
) -> Callable[[Any], None]:
    """Create the handler; returns ``deliver(data)``, to be called with each message's ``event.data`` in arrival
    order (``deliver.handler`` is the handler: tests inspect it).

    ``app_config_json``: the site's model list (``appConfig`` of the worker config, as JSON), laid over the prebuilt
    list as the engine's app config until a page sends its own."""
    create = importlib.import_module(handler_module).create_handler
    if app_config_json:
        handler = create(post_message, app_config=json.loads(app_config_json))
    else:
        handler = create(post_message)

    async def dispatch(data: Any) -> None:
        uuid = ""
        try:
            msg = from_js_json(data)  # a dict whose null is None (not jsnull); InvalidJSONError if not JSON
            uuid = msg.get("uuid", "") if isinstance(msg, dict) else ""
            await handler.on_message(msg)
        except BaseException as exc:  # reported to the page, which would otherwise wait forever
            traceback.print_exc()
            uuid = uuid if isinstance(uuid, str) and uuid else js_uuid(data)
            try:
                post_message(make_message("throw", uuid, error_to_content(exc)))
            except Exception:
                log.exception("worker: could not post the error reply to %r", uuid)

    def deliver(data: Any) -> None:
        task = asyncio.ensure_future(dispatch(data))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    deliver.handler = handler  # type: ignore[attr-defined]
    return deliver


def start(
    handler_module: str = DEFAULT_HANDLER,
    post_message: Callable[[dict[str, Any]], None] = post,
    app_config_json: str | None = None,
) -> Any:
    """``connect`` and make it this worker's ``onmessage``. Returns the handler (tests inspect it)."""
    global _listener
    deliver = connect(handler_module, post_message, app_config_json)
    if _listener is not None:
        _listener.destroy()
    _listener = create_proxy(lambda event: deliver(event.data))
    js.self.onmessage = _listener
    return deliver.handler  # type: ignore[attr-defined]
