"""One engine for every client of a service worker: WebLLM's ``ServiceWorkerMLCEngineHandler`` and
``ExtensionServiceWorkerMLCEngineHandler``, on top of the dedicated worker's ``WorkerHandler``.

The protocol is the dedicated worker's (``messages.py``); what a service worker adds is that many clients share
it: the tabs of an origin (or an extension's popups and pages, each over its own ``chrome.runtime`` Port), plus
the local OpenAI endpoint's fetches (``local_endpoint.py``). The host (``host/service_worker_entry.py``) gives each
client an id, hands every message over with ``on_client_message(client_id, message)`` and delivers what this
handler posts with ``post_to_client(client_id, message)``.

- **Routing.** The uuid of each request is mapped to the client that sent it until its ``return`` / ``throw``;
  progress reports go to the client whose request is loading, and to every client whose ``reload`` waits for that
  load. ``keepAlive`` is answered with a ``heartbeat`` listing the requests this worker holds for that client, so
  a client tells a request lost with a stopped worker from a slow one (``messages.py``).
- **One loaded model for all.** ``reload`` with the model and options already loaded is skipped (it reports
  progress 1 at once); every request carries the model its client expects, so a worker the browser restarted
  loads it again (from the browser cache) before serving.
- **Clients do not cut each other off.** In a dedicated worker a new request ends the page's own open stream (the
  page stopped reading it). Here it ends only streams of the same client, or of a client that went away (a closed
  tab: ``client_alive`` says no; an extension port that disconnected: ``client_gone``), or one nobody has pulled
  for ``stream_idle_s``; a live client's stream is waited for. ``interruptGenerate`` without a stream id ends the
  asking client's generation only. A non-streaming generation whose client went away is interrupted as soon as
  another request arrives, and a stream of a vanished client is ended then: it never blocks the next request.
- **Streams it never opened.** A pull for a stream this worker instance never opened (the browser stopped the
  worker mid-stream and started a fresh one) raises ``EngineLostError`` instead of ending the stream quietly.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from webllm_py.errors import EngineLostError

from ..protocol import ChatOptions, chat_options_per_model
from .handler import WorkerHandler, WorkerHost, _Stream
from .messages import error_from_content, error_to_content, make_message, parse_request, single_model_id

log = logging.getLogger("webllm_py")

PostToClient = Callable[[str, dict[str, Any]], None]
ClientAlive = Callable[[str], Awaitable[bool]]
KEEP_SEEN_STREAMS = 1024  # stream ids this worker opened, remembered to tell "ended" from "never opened here"


class _OthersStreaming(Exception):
    """Raised under the start lock when a live client's stream appeared meanwhile: wait for it, then retry."""


class ServiceWorkerMLCEngineHandler(WorkerHandler):
    """Serve one engine to many clients (tabs of an origin; the local endpoint's fetches). See the module doc.

    ``post_to_client(client_id, message)`` delivers a message (the host drops it if that client is gone);
    ``client_alive(client_id)`` answers whether a client still exists (a service worker asks ``clients.get``);
    ``recheck_s`` is how often a request waiting for another client's stream asks again whether that client still
    exists; ``stream_idle_s`` how long a stream may go unpulled before a waiting client may end it.
    """

    def __init__(
        self,
        engine: Any,
        post_to_client: PostToClient,
        *,
        client_alive: ClientAlive | None = None,
        host: WorkerHost | None = None,
        recheck_s: float = 2.0,
        stream_idle_s: float = 60.0,
    ):
        super().__init__(engine, self._route, host=host)
        self._post_to_client = post_to_client
        self._client_alive = client_alive
        self.recheck_s = recheck_s
        self.stream_idle_s = stream_idle_s
        self._client_of: dict[str, str] = {}  # uuid of a request not answered yet -> the client that sent it
        self._local: dict[str, asyncio.Future[dict[str, Any]]] = {}  # uuid -> reply, for request()
        self._gone: set[str] = set()  # clients known to have gone away (client_gone)
        self._local_clients: set[str] = set()  # clients inside this worker (request()): alive until they end
        self._seen_streams: OrderedDict[str, str | None] = OrderedDict()  # stream id -> its client
        self._last_pull: dict[str, float] = {}  # stream id -> time.monotonic() of its last pull or its start
        self._loaded: tuple[str, ChatOptions] | None = None  # (model id, its checked chatOpts) loaded now
        self._load_lock = asyncio.Lock()
        self._load_watchers: set[str] = set()  # reload uuids waiting for the running load (get its progress)
        self._running: tuple[str, str | None] | None = None  # (uuid, client) of the generation being run
        self._changed = asyncio.Event()  # set (and replaced) when a stream ends: waiting requests look again
        self.loads = 0  # models loaded by this instance (a skipped reload does not count)

    # ---- clients ------------------------------------------------------------------------------------------------

    async def on_client_message(self, client_id: str, message: Any) -> asyncio.Task[None] | None:
        """Take a request from ``client_id``; returns the task that answers it (None if answered at once)."""
        try:
            kind, uuid, content = parse_request(message)
        except Exception as e:
            self.reject(client_id, e, getattr(e, "uuid", None) or "")
            return None
        self._client_of[uuid] = client_id
        if kind != "keepAlive":
            self._spawn(self._interrupt_if_orphaned())
        task = await self._take(kind, uuid, content)
        if task is None:
            self._client_of.pop(uuid, None)
        return task

    def reject(self, client_id: str, error: BaseException, uuid: str = "") -> None:
        """Answer a message from ``client_id`` that is not a request (``error`` says why) straight to that client:
        without a usable uuid (``""``) the reply could not be routed by it."""
        self._deliver(client_id, make_message("throw", uuid, error_to_content(error)))

    def client_gone(self, client_id: str) -> None:
        """``client_id`` went away (an extension port disconnected, a page said goodbye): end its streams and its
        running generation now; its pending replies are dropped."""
        self._gone.add(client_id)
        for stream in self._open_streams():
            if self._seen_streams.get(stream.id) == client_id:
                self._spawn(self._end_stream(stream))
        running = self._running
        if running is not None and running[1] == client_id:
            self.engine.interruptGenerate()

    def forget_client(self, client_id: str) -> None:
        """Drop what is known about a client that ended (the local endpoint's fetches)."""
        self._gone.discard(client_id)
        self._local_clients.discard(client_id)

    async def is_alive(self, client_id: str | None) -> bool:
        if client_id is None:
            return True  # a message that came without a client (on_message called directly)
        if client_id in self._gone:
            return False
        if client_id in self._local_clients or self._client_alive is None:
            return True
        try:
            return bool(await self._client_alive(client_id))
        except Exception:  # the host could not tell: never end a stream on a guess
            log.exception("client_alive(%r) failed", client_id)
            return True

    async def request(self, client_id: str, kind: str, content: Any = None, uuid: str | None = None) -> Any:
        """A request made inside the worker (the local endpoint) as ``client_id``: the reply's value, or its error
        raised again as the class of that name."""
        uuid = uuid or uuidlib.uuid4().hex
        self._local_clients.add(client_id)  # alive until client_gone / forget_client
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._local[uuid] = reply
        try:
            await self.on_client_message(client_id, make_message(kind, uuid, content))
            message = await reply
        finally:
            self._local.pop(uuid, None)
        if message["kind"] == "throw":
            raise error_from_content(message["content"])
        return message["content"]

    def _route(self, message: dict[str, Any]) -> None:
        kind, uuid = message.get("kind"), message.get("uuid", "")
        if kind == "initProgressCallback":
            for watcher in self._load_watchers - {uuid}:
                self._deliver(self._client_of.get(watcher), {**message, "uuid": watcher})
            self._deliver(self._client_of.get(uuid), message)
            return
        client = self._client_of.pop(uuid, None) if kind in ("return", "throw", "heartbeat") else None
        reply = self._local.get(uuid)
        if reply is not None:
            if not reply.done() and kind in ("return", "throw"):
                reply.set_result(message)
            return
        self._deliver(client, message)

    def _deliver(self, client_id: str | None, message: dict[str, Any]) -> None:
        if client_id is None or client_id in self._gone or message.get("uuid") in self._local:
            return
        try:
            self._post_to_client(client_id, message)
        except Exception:  # a client that vanished between its request and our reply
            log.exception("could not post to client %r", client_id)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keepAlive(self, uuid: str, content: Any) -> dict[str, Any]:
        client = self._client_of.get(uuid)
        return {"pending": sorted(u for u in self._in_flight if self._client_of.get(u) == client)}

    # ---- loading: one model for every client ----------------------------------------------------------------------

    def _is_loaded(self, model_id: str, chat_opts: Any) -> bool:
        wanted = (model_id, chat_options_per_model(chat_opts, 1)[0])
        return self._loaded == wanted and self.engine.model_id == model_id

    async def _reload(self, uuid: str, content: Mapping[str, Any]) -> None:
        model_id = single_model_id(content.get("modelId"))
        if model_id is None:
            return await super()._reload(uuid, content)  # raises the typed error
        chat_opts = content.get("chatOpts")
        self._load_watchers.add(uuid)  # progress of a load running now reaches this client too
        try:
            async with self._load_lock:
                self._load_watchers.discard(uuid)
                if self._is_loaded(model_id, chat_opts):
                    report = {
                        "progress": 1.0,
                        "timeElapsed": 0.0,
                        "text": f"Finish loading {model_id} on WebGPU (already loaded in the service worker)",
                    }
                    self._post(make_message("initProgressCallback", uuid, report))
                    return None
                return await super()._reload(uuid, content)
        finally:
            self._load_watchers.discard(uuid)

    async def _load(self, uuid: str, model_ids: list[str], chat_opts: Any) -> None:
        self._loaded = None
        await super()._load(uuid, model_ids, chat_opts)
        if len(model_ids) == 1:  # one model serves every client; _is_loaded compares against it
            self._loaded = (model_ids[0], chat_options_per_model(chat_opts, 1)[0])
        self.loads += 1

    async def _reload_if_unmatched(self, uuid: str, content: Mapping[str, Any]) -> None:
        wanted = single_model_id(content.get("modelId"))
        if wanted is None:
            return
        chat_opts = content.get("chatOpts")
        async with self._load_lock:
            if not self._is_loaded(wanted, chat_opts):
                await self._load(uuid, [wanted], chat_opts)

    async def _unload(self, uuid: str, content: Any) -> None:
        async with self._load_lock:
            await super()._unload(uuid, content)
            self._loaded = None

    # ---- streams and generations: per client --------------------------------------------------------------------

    def _open_streams(self) -> list[_Stream]:
        return [s for s in self._streams.values() if not (s.finished or s.exhausted)]

    async def _start(
        self,
        uuid: str,
        content: Mapping[str, Any],
        run: Callable[[], Awaitable[Any]],
        *,
        stream_id: str | None = None,
        text_completion: bool = False,
    ) -> Any:
        client = self._client_of.get(uuid)
        if stream_id is not None:
            self._seen_streams[stream_id] = client
            self._last_pull[stream_id] = time.monotonic()
            while len(self._seen_streams) > KEEP_SEEN_STREAMS:
                old, _ = self._seen_streams.popitem(last=False)
                self._last_pull.pop(old, None)

        async def run_as_client() -> Any:
            self._running = running = (uuid, client)
            try:
                return await run()
            finally:
                if self._running is running:
                    self._running = None

        while True:
            await self._wait_for_other_clients(client)
            try:
                return await super()._start(
                    uuid, content, run_as_client, stream_id=stream_id, text_completion=text_completion
                )
            except _OthersStreaming:
                continue

    async def _end_streams_before_start(self, uuid: str, model: str | None) -> None:
        client = self._client_of.get(uuid)
        for stream in self._open_streams():
            if model is not None and stream.model not in (None, model):
                continue  # another model's queue: it does not hold this request up
            if await self._may_end(stream, client):
                await self._end_stream(stream)
            else:
                raise _OthersStreaming

    async def _may_end(self, stream: _Stream, client: str | None) -> bool:
        """Whether a request from ``client`` may end ``stream``: its own, or one whose client left or stopped
        pulling it."""
        owner = self._seen_streams.get(stream.id)
        if owner == client:
            return True
        if not stream.lock.locked():  # a pull that is running (a long prefill) is not idleness
            if time.monotonic() - self._last_pull.get(stream.id, 0.0) > self.stream_idle_s:
                return True
        return not await self.is_alive(owner)

    async def _wait_for_other_clients(self, client: str | None) -> None:
        """Wait until no other live client has a stream open (ending those of clients that went away)."""
        while True:
            others = False
            for stream in self._open_streams():
                if self._seen_streams.get(stream.id) == client:
                    continue
                if await self._may_end(stream, client):
                    await self._end_stream(stream)
                    self._notify()
                else:
                    others = True
            if not others:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), self.recheck_s)
            except TimeoutError:
                pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _pull(self, stream: _Stream) -> dict[str, Any] | None:
        self._last_pull[stream.id] = time.monotonic()
        try:
            return await super()._pull(stream)
        finally:
            if stream.finished or stream.exhausted:
                self._notify()

    async def _completionStreamNextChunk(
        self, uuid: str, content: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        stream_id = content.get("streamId")
        if stream_id not in self._seen_streams:
            raise EngineLostError(
                "this service worker never opened that stream: the browser stopped the worker that did, and the "
                "stream was lost with it; send the request again"
            )
        return await super()._completionStreamNextChunk(uuid, content)

    async def _interruptGenerate(self, uuid: str, content: Mapping[str, Any]) -> None:
        """With a stream id: end that stream (as in the dedicated worker). Without: end the asking client's open
        streams and running generation, not another tab's."""
        if content.get("streamId") is not None:
            return await super()._interruptGenerate(uuid, content)
        client = self._client_of.get(uuid)
        running = self._running
        if running is not None and running[1] == client:
            self.engine.interruptGenerate()
        for stream in self._open_streams():
            if self._seen_streams.get(stream.id) == client:
                await self._end_stream(stream)
        self._notify()
        return None

    async def _interrupt_if_orphaned(self) -> None:
        """A generation (not a stream) whose client went away is interrupted: checked whenever a request
        arrives, since that request would otherwise wait for a reply nobody reads."""
        running = self._running
        if running is None or running[1] is None:
            return
        if not await self.is_alive(running[1]) and self._running is running:
            log.info("the client of request %s went away: interrupting its generation", running[0])
            self.engine.interruptGenerate()


class ExtensionServiceWorkerMLCEngineHandler(ServiceWorkerMLCEngineHandler):
    """The handler of a Chrome extension's service worker: each client is a ``chrome.runtime`` Port (a popup, an
    options page, a tab), named by the host; a port that disconnects is a client gone (``disconnect``)."""

    def __init__(self, engine: Any, post_to_client: PostToClient, **kwargs: Any):
        self._ports: set[str] = set()
        super().__init__(engine, post_to_client, client_alive=self._port_alive, **kwargs)

    def connect(self, port_id: str) -> None:
        self._ports.add(port_id)

    def disconnect(self, port_id: str) -> None:
        self._ports.discard(port_id)
        self.client_gone(port_id)

    async def _port_alive(self, port_id: str) -> bool:
        return port_id in self._ports


def create_service_worker_handler(
    post_to_client: PostToClient,
    *,
    client_alive: ClientAlive | None = None,
    engine: Any = None,
    host: WorkerHost | None = None,
    app_config: Any = None,
    extension: bool = False,
) -> ServiceWorkerMLCEngineHandler:
    """The handler ``host/service_worker_entry.py`` starts in a service worker: ``create_handler``'s engine (models
    fetched into the browser cache; ``app_config`` the site's model list) shared by every client. ``extension``:
    clients are ``chrome.runtime`` Ports (``ExtensionServiceWorkerMLCEngineHandler``; ``client_alive`` unused)."""
    from .handler import create_handler

    engine = create_handler(lambda message: None, engine=engine, app_config=app_config).engine
    if extension:
        return ExtensionServiceWorkerMLCEngineHandler(engine, post_to_client, host=host)
    return ServiceWorkerMLCEngineHandler(engine, post_to_client, client_alive=client_alive, host=host)
