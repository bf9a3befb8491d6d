"""The worker side of the protocol: messages in, engine calls, ``return`` / ``throw`` out.

Host-agnostic: ``WorkerHandler`` gets an engine (an ``MLCEngine``, or a fake in tests) and a ``post(message)``
callable, and is fed with ``await handler.on_message(message)``; the browser's worker bootstrap
(``host/worker_entry.py``) connects those to ``postMessage`` / ``onmessage``, the unit tests to asyncio queues.

``on_message`` only starts a task per request and returns, so an ``interruptGenerate`` is served while a
generation is running, however the host awaits it. Each task runs ``handle_task``, which answers exactly once.

One generation at a time, as in WebLLM. Unlike WebLLM, a request that needs the engine (a new completion,
``reload``, ``unload``) first ends a stream that is still open instead of queueing behind it: the page that opened
it either stopped reading it (mlc-ai/mlc-llm#3113: then WebLLM hangs forever) or is about to learn from its next
pull that it ended with finish_reason "abort". A non-streaming request that is running is waited for, as in WebLLM.

Ending a stream (``_end_stream``) interrupts its generation and then pulls what is left on the consumer's behalf:
the engine stops at its next token without another decode step, so this yields the held-back text, the final
chunk with finish_reason "abort" and the usage chunk, and frees the engine. Those chunks wait in the stream's
queue for the consumer's next pulls. A stream that was never pulled is closed without starting it (that would run
the prefill) and answers its first pull with a final "abort" chunk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from webllm_py.config import AppConfig, ModelRecord, prebuilt_app_config
from webllm_py.errors import (
    InvalidFieldTypeError,
    ReloadAbortedError,
    UnsupportedEndpointError,
    UnsupportedFieldError,
    WebGPUNotAvailableError,
)
from webllm_py.protocol import chat_options_per_model, check_chat_completion_request
from webllm_py.streaming import new_completion_id

from .messages import (
    LOG_LEVELS,
    REQUEST_KINDS,
    app_config_from_dict,
    app_config_to_dict,
    error_to_content,
    make_message,
    model_id_list,
    parse_request,
    single_model_id,
)

log = logging.getLogger("webllm_py")
Post = Callable[[dict[str, Any]], None]
KEEP_ENDED_STREAMS = 16  # ended streams whose consumer may still pull their last chunks


class WorkerHost(Protocol):
    """What only the host can answer: the GPU adapter and the model cache. ``host/worker_port.py`` has the
    browser's; tests pass a fake."""

    async def gpu_vendor(self) -> str: ...

    async def max_storage_buffer_binding_size(self) -> int: ...

    async def has_model_in_cache(self, record: ModelRecord, app_config: AppConfig) -> bool: ...

    async def delete_model_in_cache(self, record: ModelRecord, app_config: AppConfig) -> None: ...


@dataclass
class _Stream:
    """One open stream, named by the uuid of its init request."""

    id: str
    chunks: Any  # the engine's stream: async iterator of chunk objects (to_dict()), with aclose()
    text_completion: bool
    model: str | None = None  # the loaded model it runs on (several may be loaded)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one pull (or the end) at a time
    queued: deque[dict[str, Any]] = field(default_factory=deque)  # pulled on the consumer's behalf
    pulled: int = 0  # chunks taken from the engine
    finished: bool = False  # a chunk with finish_reason came out: the engine is free again
    exhausted: bool = False  # the engine's stream has nothing more


class WorkerHandler:
    """Serve one engine over the worker protocol (``worker/messages.py``)."""

    def __init__(self, engine: Any, post: Post, *, host: WorkerHost | None = None):
        self.engine = engine
        self._post = post
        self._host = host
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: set[str] = (
            set()
        )  # uuids of requests taken and not answered yet (listed by heartbeats)
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._start_lock = asyncio.Lock()  # see _start
        self._progress_uuid = ""  # the request whose model load is reporting progress
        self._aborted: set[str] = set()  # reload requests whose load a later reload or unload aborted
        self._user_progress = engine.getInitProgressCallback()
        engine.setInitProgressCallback(self._on_progress)
        # kind -> coroutine method; building it here checks that every kind of the protocol has one.
        self._methods: dict[str, Callable[[str, Any], Awaitable[Any]]] = {
            kind: getattr(self, "_" + kind) for kind in REQUEST_KINDS
        }

    # ---- entry points -----------------------------------------------------------------------------------------

    async def on_message(self, message: dict[str, Any]) -> asyncio.Task[None] | None:
        """Take one request from the page; its reply is posted when its task ends. Returns that task (a service
        worker keeps itself alive until it is done), or None when the message was answered at once.

        Every message is answered: one outside the protocol (``messages.parse_request``) with a ``throw`` naming
        what is wrong, under its uuid, or under uuid ``""`` when it has no usable one (the proxies log those)."""
        try:
            kind, uuid, content = parse_request(message)
        except Exception as e:
            self._reject(e)
            return None
        return await self._take(kind, uuid, content)

    def _reject(self, error: BaseException) -> None:
        """Answer a message ``parse_request`` refused."""
        uuid = getattr(error, "uuid", None) or ""
        if not uuid:
            log.warning("worker: a message without a usable uuid, answered with uuid '': %s", error)
        self._answer("throw", uuid, error_to_content(error))

    async def _take(self, kind: str, uuid: str, content: Any) -> asyncio.Task[None] | None:
        if kind == "keepAlive":  # answered at once, and as a heartbeat: the worker's event loop is running
            self._answer("heartbeat", uuid, await self._keepAlive(uuid, content))
            return None
        self._in_flight.add(uuid)
        task = asyncio.get_running_loop().create_task(self.handle_task(uuid, kind, content))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def handle_task(self, uuid: str, kind: str, content: Any) -> None:
        """Run one request and post its one reply: ``return`` with the value, or ``throw`` with the error."""
        try:
            value = await self._methods[kind](uuid, content if content is not None else {})
        except asyncio.CancelledError:
            self._in_flight.discard(uuid)
            self._answer("throw", uuid, {"name": "CancelledError", "message": "the worker stopped"})
            raise
        except Exception as e:
            self._in_flight.discard(uuid)
            self._answer("throw", uuid, error_to_content(e))
        else:
            self._in_flight.discard(uuid)
            self._answer("return", uuid, value)

    def _answer(self, kind: str, uuid: str, content: Any) -> None:
        """Post one reply. A reply the host cannot send (a value that is not JSON: it never is, by design, so this
        is a bug) becomes a ``throw`` saying so, and a failing host is logged: the page never waits on a reply
        that was lost here."""
        try:
            self._post(make_message(kind, uuid, content))
        except Exception as e:
            log.exception("worker: could not post the %s reply to %s", kind, uuid)
            failure = {"name": "WorkerError", "message": f"the worker could not send its {kind} reply: {e}"}
            try:
                self._post(make_message("throw", uuid, failure))
            except Exception:
                log.exception("worker: could not post the error reply either")

    async def join(self) -> None:
        """Wait until every request taken so far has been answered (tests; an orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- loading ----------------------------------------------------------------------------------------------

    async def _reload(self, uuid: str, content: Mapping[str, Any]) -> None:
        model_ids = model_id_list(content.get("modelId"))
        if model_ids is None:
            raise InvalidFieldTypeError("modelId", None, "a model id (or a list of them)")
        chat_opts = content.get("chatOpts")
        chat_options_per_model(chat_opts, len(model_ids))  # a bad option fails before it ends anyone's stream
        await self._end_open_streams()
        await self._load(uuid, model_ids, chat_opts)
        return None

    async def _load(self, uuid: str, model_ids: list[str], chat_opts: Any) -> None:
        """Load ``model_ids`` for request ``uuid``; a load still running for an earlier request is aborted by the
        engine (WebLLM's abort-reload), and that request is answered with ``ReloadAbortedError``, which the proxies
        turn into a resolved ``reload()`` with a warning."""
        self._abort_load()
        self._progress_uuid = uuid
        try:
            await self.engine.reload(model_ids[0] if len(model_ids) == 1 else model_ids, chat_opts)
        finally:
            if self._progress_uuid == uuid:
                self._progress_uuid = ""
        if uuid in self._aborted:
            self._aborted.discard(uuid)
            raise ReloadAbortedError(
                f"reload({', '.join(model_ids)}) was aborted by a later unload() or reload() before it finished"
            )

    def _abort_load(self) -> None:
        """The load in progress, if any, is about to be aborted by the engine: remember to say so."""
        if self._progress_uuid:
            self._aborted.add(self._progress_uuid)

    async def _unload(self, uuid: str, content: Any) -> None:
        self._abort_load()
        await self._end_open_streams()
        await self.engine.unload()

    def _on_progress(self, report: Any) -> None:
        self._post(make_message("initProgressCallback", self._progress_uuid, report.to_dict()))
        if self._user_progress is not None:
            self._user_progress(report)

    async def _reload_if_unmatched(self, uuid: str, content: Mapping[str, Any]) -> None:
        """WebLLM's ``reloadIfUnmatched``: a request carries the model the page believes is loaded; a worker that
        restarted (or failed a reload) loads it again before serving, instead of failing."""
        wanted = model_id_list(content.get("modelId"))
        loaded = getattr(self.engine, "model_ids", None)
        if loaded is None:  # an engine with one model
            loaded = [self.engine.model_id] if self.engine.model_id is not None else []
        if wanted is not None and wanted != list(loaded):
            await self._end_open_streams()
            await self._load(uuid, wanted, content.get("chatOpts"))

    # ---- completions ------------------------------------------------------------------------------------------

    async def _chatCompletionNonStreaming(self, uuid: str, content: Mapping[str, Any]) -> dict[str, Any]:
        request = _request(content, stream=False)
        check_chat_completion_request(request)  # a bad request fails before it ends anyone's stream
        reply = await self._start(uuid, content, lambda: self.engine.chatCompletion(request))
        return reply.to_dict()

    async def _chatCompletionStreamInit(self, uuid: str, content: Mapping[str, Any]) -> None:
        request = _request(content, stream=True)
        check_chat_completion_request(request)
        await self._start(uuid, content, lambda: self.engine.chatCompletion(request), stream_id=uuid)

    async def _completionNonStreaming(self, uuid: str, content: Mapping[str, Any]) -> dict[str, Any]:
        completion = self._text_completion()
        request = _request(content, stream=False)
        return (await self._start(uuid, content, lambda: completion(request))).to_dict()

    async def _completionStreamInit(self, uuid: str, content: Mapping[str, Any]) -> None:
        completion = self._text_completion()
        request = _request(content, stream=True)
        await self._start(uuid, content, lambda: completion(request), stream_id=uuid, text_completion=True)

    async def _start(
        self,
        uuid: str,
        content: Mapping[str, Any],
        run: Callable[[], Awaitable[Any]],
        *,
        stream_id: str | None = None,
        text_completion: bool = False,
    ) -> Any:
        """End any open stream, load the page's model if the worker lost it, then run the request; a stream is
        registered under ``stream_id``. One start at a time: a request that arrives meanwhile must see the stream
        this one opens, or it would queue behind it in the engine with nobody left to end it."""
        async with self._start_lock:
            # Only a stream on the same model can hold this request up (each model serves its own queue); it is
            # ended before a reload, so the engine is free for it.
            await self._end_streams_before_start(uuid, self._model_of(content))
            await self._reload_if_unmatched(uuid, content)
            model = self._model_of(content)
            result = await run()
            if stream_id is not None:
                self._add_stream(_Stream(stream_id, result, text_completion=text_completion, model=model))
            return result

    def _model_of(self, content: Mapping[str, Any]) -> str | None:
        """The loaded model a request will run on: its ``model``, else the only one loaded (None: unknown, the
        engine will say why)."""
        request = content.get("request")
        model = request.get("model") if isinstance(request, Mapping) else None
        if isinstance(model, str):
            return model
        loaded = list(getattr(self.engine, "model_ids", None) or [self.engine.model_id])
        return loaded[0] if len(loaded) == 1 else None

    async def _end_streams_before_start(self, uuid: str, model: str | None) -> None:
        """Make ``model`` (None: every model) free for request ``uuid`` (called under the start lock). One page per
        worker here: a stream still open was left by that page. The service-worker handler ends only its client's
        streams."""
        await self._end_open_streams(model)

    def _text_completion(self) -> Callable[[dict[str, Any]], Any]:
        completion = getattr(self.engine, "completion", None)
        if completion is None:
            raise UnsupportedEndpointError(
                "text completions (`completions.create`) are not implemented by this engine yet; "
                "use `chat.completions.create`"
            )
        return completion

    def _add_stream(self, stream: _Stream) -> None:
        # Streams stay here until their consumer has pulled the end. One whose consumer never comes back (ended
        # for it by a later request) is forgotten once enough newer ones exist; only the newest can be open.
        self._streams[stream.id] = stream
        while len(self._streams) > KEEP_ENDED_STREAMS:
            self._streams.popitem(last=False)

    async def _completionStreamNextChunk(
        self, uuid: str, content: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """One chunk of the stream, or null when it has ended (WebLLM's pull model)."""
        stream = self._streams.get(content.get("streamId"))
        if stream is None:
            return None  # ended long ago (or never existed): there is nothing more to read
        async with stream.lock:
            if stream.queued:
                chunk = stream.queued.popleft()
            elif stream.exhausted:
                chunk = None
            else:
                chunk = await self._pull(stream)
            if chunk is None:
                self._streams.pop(stream.id, None)
            return chunk

    async def _pull(self, stream: _Stream) -> dict[str, Any] | None:
        """Take the next chunk from the engine (the caller holds ``stream.lock``)."""
        try:
            chunk = await stream.chunks.__anext__()
        except StopAsyncIteration:
            stream.exhausted = True
            return None
        except BaseException:
            stream.exhausted = True  # the engine's stream has closed itself and freed the engine
            raise
        stream.pulled += 1
        d = chunk.to_dict()
        if any(c.get("finish_reason") for c in d.get("choices", ())):
            stream.finished = True
        return d

    # ---- ending streams and generations -----------------------------------------------------------------------

    async def _interruptGenerate(self, uuid: str, content: Mapping[str, Any]) -> None:
        """Without a stream id: WebLLM's engine-wide interrupt (a running non-streaming request ends with "abort"
        too). With one: end that stream only, if it is still open; its consumer has stopped reading it."""
        stream_id = content.get("streamId")
        if stream_id is None:
            self.engine.interruptGenerate()
            await self._end_open_streams()
        elif (stream := self._streams.get(stream_id)) is not None:
            await self._end_stream(stream)

    async def _end_open_streams(self, model: str | None = None) -> None:
        """End the open streams (of ``model`` only, when given)."""
        for stream in list(self._streams.values()):
            if model is None or stream.model in (None, model):
                await self._end_stream(stream)

    async def _end_stream(self, stream: _Stream) -> None:
        if stream.finished or stream.exhausted:
            return  # the engine is free already; what is left (the usage chunk) is plain data
        # An open stream holds its model, so that model's running generation is its own.
        if stream.model is not None and getattr(self.engine, "model_ids", None) is not None:
            self.engine.interruptGenerate(stream.model)
        else:
            self.engine.interruptGenerate()
        async with stream.lock:  # after a pull that is running, if any
            if stream.finished or stream.exhausted:
                return
            if stream.pulled == 0:
                # Never started: starting it now would run the whole prefill just to stop after it.
                await stream.chunks.aclose()
                stream.exhausted = True
                stream.queued.append(self._abort_chunk(stream))
                return
            # Interrupted, the engine stops at its next token with no decode step in between. Pulling a few
            # chunks (held-back text, the final chunk, usage) is enough; if an engine went on anyway, close it.
            for _ in range(3):
                chunk = await self._pull(stream)
                if chunk is None:
                    return
                stream.queued.append(chunk)
                if stream.finished:
                    break
            if not stream.finished:
                await stream.chunks.aclose()
                stream.exhausted = True
                stream.queued.append(self._abort_chunk(stream))
                return
            while (chunk := await self._pull(stream)) is not None:  # the usage chunk, if asked for
                stream.queued.append(chunk)

    def _abort_chunk(self, stream: _Stream) -> dict[str, Any]:
        """The final chunk of a stream that was ended before producing one."""
        if stream.text_completion:
            choice: dict[str, Any] = {"index": 0, "text": "", "finish_reason": "abort", "logprobs": None}
            kind = "text_completion"
        else:
            choice = {"index": 0, "delta": {"role": "assistant"}, "finish_reason": "abort", "logprobs": None}
            kind = "chat.completion.chunk"
        return {
            "id": new_completion_id(),
            "object": kind,
            "created": int(time.time()),
            "model": stream.model or self.engine.model_id or "",
            "system_fingerprint": None,
            "choices": [choice],
            "usage": None,
        }

    # ---- the engine's other methods ---------------------------------------------------------------------------

    async def _keepAlive(self, uuid: str, content: Any) -> dict[str, Any]:
        """The ``heartbeat``'s content: the requests this worker holds (``on_message`` posts it at once)."""
        return {"pending": sorted(self._in_flight)}

    async def _resetChat(self, uuid: str, content: Mapping[str, Any]) -> None:
        await self.engine.resetChat(bool(content.get("keepStats", False)), _one_model(content))

    async def _getMessage(self, uuid: str, content: Any) -> str:
        return await self.engine.getMessage(_one_model(content))

    async def _runtimeStatsText(self, uuid: str, content: Any) -> str:
        return await self.engine.runtimeStatsText(_one_model(content))

    async def _forwardTokensAndSample(self, uuid: str, content: Mapping[str, Any]) -> int:
        """WebLLM's low-level ``forwardTokensAndSample(inputIds, isPrefill, modelId?)``: one sampled token id."""
        return await self.engine.forwardTokensAndSample(
            content.get("inputIds"), bool(content.get("isPrefill", False)), _one_model(content)
        )

    async def _getGPUVendor(self, uuid: str, content: Any) -> str:
        return await self._require_host().gpu_vendor()

    async def _getMaxStorageBufferBindingSize(self, uuid: str, content: Any) -> int:
        return await self._require_host().max_storage_buffer_binding_size()

    async def _setLogLevel(self, uuid: str, content: Any) -> None:
        level = content if isinstance(content, str) else None
        if level not in LOG_LEVELS:
            raise UnsupportedFieldError("logLevel", content, f"one of {', '.join(LOG_LEVELS)}")
        log.setLevel(LOG_LEVELS[level])

    async def _setAppConfig(self, uuid: str, content: Any) -> None:
        self.engine.setAppConfig(app_config_from_dict(content))

    async def _getAppConfig(self, uuid: str, content: Any) -> dict[str, Any]:
        return app_config_to_dict(self.engine.app_config)

    async def _hasModelInCache(self, uuid: str, content: Mapping[str, Any]) -> bool:
        app_config = self.engine.app_config
        record = app_config.get_record(_model_id(content))  # ModelNotFoundError for an unknown id
        return bool(await self._require_host().has_model_in_cache(record, app_config))

    async def _deleteModelInCache(self, uuid: str, content: Mapping[str, Any]) -> None:
        app_config = self.engine.app_config
        record = app_config.get_record(_model_id(content))
        await self._require_host().delete_model_in_cache(record, app_config)

    def _require_host(self) -> WorkerHost:
        if self._host is None and sys.platform == "emscripten":
            from webllm_py.host.worker_port import BrowserWorkerHost  # the browser's GPU and cache

            self._host = BrowserWorkerHost()
        if self._host is None:
            raise WebGPUNotAvailableError(
                "this worker handler has no host to ask about the GPU or the model cache: "
                "pass WorkerHandler(..., host=...) outside the browser"
            )
        return self._host


def _request(content: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
    request = content["request"]  # an object: parse_request checked it
    # The kind decides streaming; an explicit stream flag that disagrees is the client's bug, not the user's. One
    # that is not a bool ("false") is the user's: refused, as protocol.py would.
    given = request.get("stream")
    if given is not None and not isinstance(given, bool):
        raise InvalidFieldTypeError("stream", given, "true or false")
    return {**request, "stream": stream}


def _one_model(content: Mapping[str, Any]) -> str | None:
    """The model a per-model call names (``getMessage(modelId)``...), or None: the only one loaded."""
    return single_model_id(content.get("modelId")) if isinstance(content, Mapping) else None


def _model_id(content: Mapping[str, Any]) -> str:
    model_id = single_model_id(content.get("modelId"))
    if model_id is None:
        raise InvalidFieldTypeError("modelId", None, "a model id")
    return model_id


def create_handler(
    post: Post, *, engine: Any = None, host: WorkerHost | None = None, app_config: Any = None
) -> WorkerHandler:
    """The handler ``host/worker_entry.py`` starts in the browser worker: an ``MLCEngine`` that fetches models
    into the browser cache (``host/browser_cache.py``), served over ``post``. ``app_config`` (an ``AppConfig`` or
    its JSON form, e.g. the ``appConfig`` of the site's ``webllm_py.json``) is the engine's model list until the
    page sends its own; relative model URLs resolve against the worker script."""
    if engine is None:
        from webllm_py.api.mlc_engine import MLCEngine
        from webllm_py.host import browser_cache  # imports js: only reached in the browser

        engine = MLCEngine(resolve_model=browser_cache.resolve_model)
    if app_config is not None:
        # The site's records replace the prebuilt ones of the same id (a site serving its own copies), and add
        # its own models; the site's cache backend applies.
        site = app_config_from_dict(app_config)
        merged = dataclasses.replace(
            prebuilt_app_config.with_records(site.model_list), cache_backend=site.cache_backend
        )
        engine.setAppConfig(dataclasses.replace(merged, cache_dir=site.cache_dir))
    return WorkerHandler(engine, post, host=host)
