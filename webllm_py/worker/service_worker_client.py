"""The page side of the service-worker hosts for Python pages (PyScript): ``ServiceWorkerMLCEngine``.

``WebWorkerMLCEngine`` (``client.py``) over the origin's service worker (``web/sw.js``), plus the liveness check
that a service worker needs and a dedicated worker does not: the browser may stop a service worker at any time::

    engine = await webllm_py.CreateServiceWorkerMLCEngine("SmolLM2-135M-Instruct-Q4_1",
                                                          on_engine_lost=lambda e: print("lost:", e))

Every ``keep_alive_ms`` the engine sends ``keepAlive`` (an event that also keeps an idle worker from being
stopped); the worker answers ``heartbeat`` listing the requests it holds for this page (``messages.py``). A request
sent before a ``keepAlive`` that the heartbeat does not list was lost with a worker the browser stopped: it raises
``EngineLostError`` (send it again; the worker restarts and reloads the model from the cache). After
``max_missed_heartbeats`` unanswered ``keepAlive`` in a row (four times as many while a ``reload`` is pending: a model
load holds the worker's thread in stretches) every waiting call raises ``EngineLostError``. Either
way ``on_engine_lost(error)`` is called, once until a heartbeat comes back. WebLLM only counts missed heartbeats.
``web/webllm_py.js`` is the twin for JS pages.
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from webllm_py.errors import EngineLostError

from .client import WebWorkerMLCEngine
from .messages import make_message

log = logging.getLogger("webllm_py")

RELOAD_HEARTBEAT_FACTOR = (
    4  # more missed heartbeats tolerated while a model loads (web/webllm_py.js: the same)
)

EngineLostCallback = Callable[[EngineLostError], None]


class ServiceWorkerMLCEngine(WebWorkerMLCEngine):
    """WebLLM's ``ServiceWorkerMLCEngine`` for Python pages. ``port``: the service worker as a ``client.Port``
    (``CreateServiceWorkerMLCEngine`` makes one for the page's service worker). Construct it in a running loop."""

    def __init__(
        self,
        port: Any,
        *,
        keep_alive_ms: float = 10_000,
        max_missed_heartbeats: int = 3,
        on_engine_lost: EngineLostCallback | None = None,
        **kwargs: Any,
    ):
        if keep_alive_ms <= 0 or max_missed_heartbeats < 1:
            raise ValueError(
                f"keep_alive_ms must be > 0 and max_missed_heartbeats >= 1, got {keep_alive_ms} and "
                f"{max_missed_heartbeats}"
            )
        self._sent = 0  # requests sent so far
        self._sent_number: dict[str, int] = {}  # uuid of a pending request -> its number
        self._reloads: set[str] = set()  # uuids of pending reloads
        self._beats: dict[str, int] = {}  # uuid of an unanswered keepAlive -> requests sent before it
        self._lost = False  # reported lost, until a heartbeat comes back
        self.missed_heartbeats = 0
        self.max_missed_heartbeats = max_missed_heartbeats
        self.on_engine_lost = on_engine_lost
        super().__init__(port, **kwargs)
        self._timer = asyncio.get_running_loop().create_task(self._keep_alive_loop(keep_alive_ms / 1000))

    def _send(self, kind: str, content: Any = None, uuid: str | None = None) -> asyncio.Future[Any]:
        uuid = uuid or uuidlib.uuid4().hex
        self._sent += 1
        self._sent_number[uuid] = self._sent
        if kind == "reload":
            self._reloads.add(uuid)
        future = super()._send(kind, content, uuid)

        def forget(_: Any) -> None:
            self._sent_number.pop(uuid, None)
            self._reloads.discard(uuid)

        future.add_done_callback(forget)
        return future

    @property
    def heartbeat_limit(self) -> int:
        """Missed heartbeats in a row that make the engine lost: ``max_missed_heartbeats``, times
        RELOAD_HEARTBEAT_FACTOR while a reload is pending (loading a model keeps the worker's only thread busy in
        stretches that do not yield, which on a loaded machine can outlast a few heartbeats)."""
        factor = RELOAD_HEARTBEAT_FACTOR if self._reloads else 1
        return self.max_missed_heartbeats * factor

    async def _keep_alive_loop(self, interval_s: float) -> None:
        while self._terminated is None:
            await asyncio.sleep(interval_s)
            self.keep_alive()

    def keep_alive(self) -> None:
        """Send one ``keepAlive`` (the timer calls this), counting the previous one as missed if unanswered."""
        if self._terminated is not None:
            return
        if self._beats:
            self.missed_heartbeats += 1
            if self.missed_heartbeats >= self.heartbeat_limit:
                self._beats.clear()
                self._lose(
                    EngineLostError(
                        f"the service worker did not answer {self.missed_heartbeats} heartbeats in a row; the next "
                        "request starts it again"
                    )
                )
        uuid = uuidlib.uuid4().hex
        self._beats[uuid] = self._sent
        try:
            self.port.post(make_message("keepAlive", uuid, None))
        except Exception as exc:  # no active service worker to post to
            self._beats.pop(uuid, None)
            self._lose(EngineLostError(f"cannot reach the service worker: {exc}"))

    def _lose(self, error: EngineLostError, uuids: list[str] | None = None) -> None:
        if uuids is None:
            self._fail_pending(error)
        else:
            for uuid in uuids:
                future = self._pending.pop(uuid, None)
                if future is not None and not future.done():
                    future.set_exception(error)
        if self._lost or self.on_engine_lost is None:
            self._lost = True
            return
        self._lost = True
        try:
            self.on_engine_lost(error)
        except Exception:
            log.exception("on_engine_lost raised")

    def _on_message(self, message: dict[str, Any]) -> None:
        if not isinstance(message, dict) or message.get("kind") != "heartbeat":
            return super()._on_message(message)
        before = self._beats.pop(str(message.get("uuid")), None)
        if before is None:
            return  # another page's, or one that came after we gave up on it
        self.missed_heartbeats = 0
        self._lost = False
        content = message.get("content")
        held = set(content.get("pending") or []) if isinstance(content, dict) else set()
        lost = [
            u for u, n in self._sent_number.items() if n <= before and u not in held and u in self._pending
        ]
        if lost:
            self._lose(
                EngineLostError(
                    "the browser stopped the service worker while it held this request; send it again (the "
                    "worker restarts and reloads the model from the cache)"
                ),
                lost,
            )

    def _on_error(self, message: str) -> None:
        """The port reports the worker gone (an extension Port that disconnected): nothing pending will be
        answered. The next request reconnects, which starts the worker again."""
        self._lose(EngineLostError(f"the service worker serving this engine is gone ({message})"))

    def terminate(self) -> None:
        """Stop the keep-alive and let go of the service worker (which goes on serving other pages)."""
        self._timer.cancel()
        super().terminate()


class ExtensionServiceWorkerMLCEngine(ServiceWorkerMLCEngine):
    """WebLLM's ``ExtensionServiceWorkerMLCEngine`` for Python extension pages: the engine in a Chrome extension's
    service worker (``web/extension/background.js``) over a ``chrome.runtime`` Port
    (``host.worker_port.JSExtensionPort``), which reconnects on the next request after a disconnect."""


async def CreateServiceWorkerMLCEngine(
    model_id: str,
    engine_config: dict[str, Any] | None = None,
    chat_opts: dict[str, Any] | None = None,
    keep_alive_ms: float = 10_000,
    *,
    port: Any = None,
) -> ServiceWorkerMLCEngine:
    """WebLLM's ``CreateServiceWorkerMLCEngine`` (same positional arguments): the engine of the page's service
    worker (registered from webllm_py's ``sw.js``), with ``model_id`` loaded; a model already loaded there with the
    same options is not loaded again. ``engine_config``: ``init_progress_callback``, ``app_config``,
    ``log_level``, ``on_engine_lost``, ``max_missed_heartbeats``; ``chat_opts``: ``chat_template``,
    ``context_window_size``. ``port`` replaces the page's service worker (tests)."""
    if port is None:
        from webllm_py.host.worker_port import service_worker_port  # imports js: only reached in the browser

        port = await service_worker_port()
    engine = ServiceWorkerMLCEngine(port, keep_alive_ms=keep_alive_ms, **(engine_config or {}))
    await engine.reload(model_id, **(chat_opts or {}))
    return engine


async def CreateExtensionServiceWorkerMLCEngine(
    model_id: str,
    engine_config: dict[str, Any] | None = None,
    chat_opts: dict[str, Any] | None = None,
    keep_alive_ms: float = 10_000,
    *,
    extension_id: str | None = None,
    port: Any = None,
) -> ExtensionServiceWorkerMLCEngine:
    """WebLLM's ``CreateExtensionServiceWorkerMLCEngine``: the engine of the extension's service worker with
    ``model_id`` loaded (``extension_id``: another extension's). Arguments as ``CreateServiceWorkerMLCEngine``."""
    if port is None:
        from webllm_py.host.worker_port import JSExtensionPort  # imports js: only reached in the browser

        port = JSExtensionPort(extension_id)
    engine = ExtensionServiceWorkerMLCEngine(port, keep_alive_ms=keep_alive_ms, **(engine_config or {}))
    await engine.reload(model_id, **(chat_opts or {}))
    return engine
