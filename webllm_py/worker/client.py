"""The page side of the protocol for Python pages (PyScript, main-thread Pyodide): ``WebWorkerMLCEngine``.

The same API as ``MLCEngine`` (``chat.completions.create``, ``reload``, ``interruptGenerate``...), served by an
engine in a Web Worker; ``web/webllm_py.js`` is its twin for JS pages. Streams are pulled one chunk per
``completionStreamNextChunk`` request, as in WebLLM, and come back as the desktop API's ``ChatCompletionChunk``::

    engine = await webllm_py.CreateWebWorkerMLCEngine(worker, "SmolLM2-135M-Instruct-Q4_1")
    async for chunk in await engine.chat.completions.create(messages=[...], stream=True):
        print(chunk.choices[0].delta.content or "" if chunk.choices else "", end="")

The transport is injected: anything with ``post(message)`` and ``set_listener(on_message, on_error)`` (a
``Port``). A JS ``Worker`` is wrapped in ``host.worker_port.JSWorkerPort``; the unit tests use in-memory queues.
Errors thrown in the worker are raised here as the class of the same name (``messages.error_from_content``).

A stream left early (``break``, an exception, ``aclose()``, or dropped unread) tells the worker to end it
(``interruptGenerate`` naming the stream), which frees the engine at once for the next request.
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Literal, Protocol, Unpack, overload

from webllm_py.api.chat import _request  # the same request dict as the desktop API builds
from webllm_py.api.mlc_engine import InitProgressCallback, InitProgressReport
from webllm_py.api.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionCreateParams,
    ChatCompletionMessageParam,
    ChatOptionsParam,
    Completion,
)
from webllm_py.config import AppConfig
from webllm_py.errors import ReloadAbortedError, WorkerError

from .messages import (
    LOG_LEVELS,
    app_config_from_dict,
    app_config_to_dict,
    error_from_content,
    make_message,
    plain,
)

log = logging.getLogger("webllm_py")


class Port(Protocol):
    """A message channel to the worker. Messages are JSON-able dicts, both ways."""

    def post(self, message: dict[str, Any]) -> None: ...

    def set_listener(
        self, on_message: Callable[[dict[str, Any]], None], on_error: Callable[[str], None] | None = None
    ) -> None: ...

    def close(self) -> None: ...  # terminate the worker, let go of listeners


def as_port(worker: Any) -> Port:
    """``worker`` itself if it is a ``Port``, else a JS ``Worker`` wrapped (browser only)."""
    if hasattr(worker, "post") and hasattr(worker, "set_listener"):
        return worker
    from webllm_py.host.worker_port import JSWorkerPort  # imports js: only reached in the browser

    return JSWorkerPort(worker)


class WorkerChatCompletionStream:
    """An async iterator of ``ChatCompletionChunk`` pulled from the worker; the twin of ``ChatCompletionStream``.

    Leaving an ``async for`` early closes it (each loop gets its own small generator, which Python closes when
    the loop drops it), and so do ``aclose()``, ``async with`` and garbage collection; closing an unfinished
    stream ends its generation in the worker with finish_reason "abort" and frees the engine.
    """

    def __init__(self, engine: WebWorkerMLCEngine, stream_id: str, decode: Callable[[dict[str, Any]], Any]):
        self._engine = engine
        self.stream_id = stream_id  # the uuid of the init request, which names the stream in the worker
        self._decode = decode
        self._closed = False  # nothing more will be read
        self._finished = False  # the chunk with finish_reason came: the worker's engine is free again
        self.iterating = False

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        return self._iterate()

    async def _iterate(self) -> AsyncGenerator[Any, None]:
        try:
            while True:
                try:
                    chunk = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            # No await here: a loop that is left drops this generator, and where no asyncio async-generator
            # finalizer runs it is closed synchronously. Posting the end needs no await, and requests after it
            # reach the worker after it.
            self._end_in_worker()

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        if self.iterating:
            raise RuntimeError("another task is already reading this stream")
        self.iterating = True
        try:
            data = await self._engine._call("completionStreamNextChunk", {"streamId": self.stream_id})
        except asyncio.CancelledError:
            self.iterating = False
            self._end_in_worker()  # the reader was cancelled: nobody will read the rest
            raise
        except BaseException:
            self._closed = True  # an error ends the stream in the worker too
            raise
        finally:
            self.iterating = False
        if data is None:
            self._closed = True
            raise StopAsyncIteration
        if any(c.get("finish_reason") for c in data.get("choices", ())):
            self._finished = True
        return self._decode(data)

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """End the stream (finish_reason "abort" if it was still generating); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if not self._finished:
            await self._engine._call("interruptGenerate", {"streamId": self.stream_id})

    def _end_in_worker(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._finished:
                self._engine._post_nowait("interruptGenerate", {"streamId": self.stream_id})

    async def __aenter__(self) -> WorkerChatCompletionStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped unfinished (a reader that stopped by hand and forgot it): a message needs no event loop.
        if getattr(self, "_engine", None) is not None:
            try:
                self._end_in_worker()
            except Exception:  # the port is gone; the worker went with it
                pass


class _ChatCompletions:
    def __init__(self, engine: WebWorkerMLCEngine):
        self._engine = engine

    @overload
    async def create(
        self,
        *,
        messages: Sequence[ChatCompletionMessageParam],
        stream: Literal[False] = False,
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self,
        *,
        messages: Sequence[ChatCompletionMessageParam],
        stream: Literal[True],
        **params: Unpack[ChatCompletionCreateParams],
    ) -> WorkerChatCompletionStream: ...

    async def create(
        self, *, messages: Sequence[ChatCompletionMessageParam], stream: bool = False, **params: Any
    ) -> ChatCompletion | WorkerChatCompletionStream:
        """OpenAI's ``chat.completions.create``, run in the worker; see ``MLCEngine``."""
        return await self._engine.chatCompletion(_request(messages, stream, params))


class _Chat:
    def __init__(self, engine: WebWorkerMLCEngine):
        self.completions = _ChatCompletions(engine)


class _TextCompletions:
    """``completions.create`` (text completion): a ``Completion``, or with ``stream=True`` a stream of them."""

    def __init__(self, engine: WebWorkerMLCEngine):
        self._engine = engine

    async def create(self, *, prompt: str | list[int], stream: bool = False, **params: Any) -> Any:
        request = {"prompt": prompt, "stream": stream, **{k: v for k, v in params.items() if v is not None}}
        return await self._engine.completion(request)


class WebWorkerMLCEngine:
    """WebLLM's ``WebWorkerMLCEngine`` for Python pages: an ``MLCEngine`` whose work runs in a Web Worker.

    Construct it inside a running event loop (Pyodide's always is); ``CreateWebWorkerMLCEngine`` also loads a
    model. ``worker`` is a JS ``Worker`` started from ``worker.js`` (or any ``Port``).
    """

    def __init__(
        self,
        worker: Any,
        *,
        init_progress_callback: InitProgressCallback | None = None,
        app_config: AppConfig | dict[str, Any] | None = None,
        log_level: str | None = None,
    ):
        self.port = as_port(worker)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._progress_callback = init_progress_callback
        self.model_id: str | None = None  # the (first) model the worker has loaded for us
        self.model_ids: list[
            str
        ] = []  # all of them, sent with each request (a restarted worker reloads them)
        self.chat_opts: Any = None  # what reload() sent: one ChatOptions dict, a list of them, or None
        self._terminated: BaseException | None = None
        self.chat = _Chat(self)
        self.completions = _TextCompletions(self)
        self.port.set_listener(self._on_message, self._on_error)
        # Sent at once, in order before any later request; their errors surface on the first awaited call.
        self._setup: list[asyncio.Future[Any]] = []
        if app_config is not None:
            self._setup.append(self._send("setAppConfig", _config_dict(app_config)))
        if log_level is not None:
            self._setup.append(self._send("setLogLevel", log_level))

    # ---- transport ----------------------------------------------------------------------------------------------

    def _send(self, kind: str, content: Any = None, uuid: str | None = None) -> asyncio.Future[Any]:
        if self._terminated is not None:
            raise self._terminated
        # Refused here, before sending, naming the field: what is not JSON (a set, NaN, a lone surrogate, nesting
        # deeper than the worker reads) would otherwise fail in the port or come back as the worker's error.
        content = plain(content, "content")
        uuid = uuid or uuidlib.uuid4().hex
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[uuid] = future
        self.port.post(make_message(kind, uuid, content))
        return future

    async def _call(self, kind: str, content: Any = None, uuid: str | None = None) -> Any:
        while self._setup:
            await self._setup.pop(0)
        uuid = uuid or uuidlib.uuid4().hex
        try:
            return await self._send(kind, content, uuid)
        finally:
            self._pending.pop(uuid, None)  # answered, or the caller was cancelled

    def _post_nowait(self, kind: str, content: Any = None) -> None:
        """A request whose reply nobody waits for (ignored on arrival). Needs no event loop."""
        if self._terminated is None:
            self.port.post(make_message(kind, uuidlib.uuid4().hex, content))

    def _on_message(self, message: dict[str, Any]) -> None:
        if not isinstance(message, dict):
            return
        kind, uuid, content = message.get("kind"), message.get("uuid"), message.get("content")
        if kind == "initProgressCallback":
            if self._progress_callback is not None and isinstance(content, dict):
                try:
                    report = InitProgressReport(
                        progress=float(content.get("progress") or 0.0),
                        timeElapsed=float(content.get("timeElapsed") or 0.0),
                        text=str(content.get("text") or ""),
                    )
                    self._progress_callback(report)
                except Exception:  # the page's callback failed: report it, keep the protocol running
                    log.exception("initProgressCallback raised")
            return
        future = self._pending.pop(uuid, None) if isinstance(uuid, str) else None
        if future is None or future.done():
            if kind == "throw" and not uuid:  # the worker refused a message it could not tell the uuid of
                log.error("the worker refused a message: %s", error_from_content(content))
            return  # the reply to a fire-and-forget request, or to one whose caller was cancelled
        if kind == "return":
            future.set_result(content)
        elif kind == "throw":
            future.set_exception(error_from_content(content))
        else:
            future.set_exception(
                WorkerError("UnknownMessageKindError", f"unexpected reply kind {kind!r:.80}")
            )

    def _on_error(self, message: str) -> None:
        """The worker failed (an uncaught error, or a message that could not be cloned): nothing pending will be
        answered, so every waiting call raises instead of hanging."""
        self._fail_pending(WorkerError("WorkerError", message))

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    # ---- loading ----------------------------------------------------------------------------------------------

    async def reload(
        self,
        model_id: str | Sequence[str],
        chat_opts: ChatOptionsParam | Sequence[ChatOptionsParam] | None = None,
        *,
        chat_template: str | None = None,
        context_window_size: int | None = None,
    ) -> None:
        """Load ``model_id`` (one id, or a list: several models, requests routed by ``model``) in the worker,
        after unloading what was there; progress goes to the callback. ``chat_opts``: WebLLM's ``chatOpts`` (one
        dict, or one per id), see ``MLCEngine.reload``; the keyword arguments win over it."""
        given = {
            k: v
            for k, v in (("chat_template", chat_template), ("context_window_size", context_window_size))
            if v is not None
        }
        ids = [model_id] if isinstance(model_id, str) else list(model_id)
        if isinstance(chat_opts, list | tuple):
            opts: Any = [{**(o or {}), **given} for o in chat_opts]
        else:
            opts = {**(chat_opts or {}), **given} or None
        try:
            await self._call("reload", {"modelId": ids, "chatOpts": opts})
        except ReloadAbortedError as e:  # a later unload() or reload() aborted it: resolves, as in WebLLM
            log.warning("%s", e)
            return
        self.model_ids, self.model_id, self.chat_opts = ids, ids[0], opts

    async def unload(self) -> None:
        await self._call("unload")
        self.model_id = self.chat_opts = None
        self.model_ids = []

    # ---- requests -----------------------------------------------------------------------------------------------

    def _model_content(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"request": request, "modelId": self.model_ids or None, "chatOpts": self.chat_opts}

    async def chatCompletion(self, request: dict[str, Any]) -> ChatCompletion | WorkerChatCompletionStream:
        """WebLLM's raw-dict form of ``chat.completions.create``."""
        return await self._generate(
            request, "chatCompletionStreamInit", "chatCompletionNonStreaming", ChatCompletion.from_dict,
            ChatCompletionChunk.from_dict,
        )  # fmt: skip

    async def completion(self, request: dict[str, Any]) -> Any:
        """Text completion (``completions.create``): a ``Completion``, or a stream of them."""
        return await self._generate(
            request,
            "completionStreamInit",
            "completionNonStreaming",
            Completion.from_dict,
            Completion.from_dict,
        )

    async def _generate(
        self,
        request: dict[str, Any],
        stream_kind: str,
        whole_kind: str,
        decode_whole: Callable[[dict[str, Any]], Any],
        decode_chunk: Callable[[dict[str, Any]], Any],
    ) -> Any:
        content = self._model_content(request)
        if request.get("stream"):
            stream_id = uuidlib.uuid4().hex  # the init request's uuid names the stream in the worker
            await self._call(stream_kind, content, uuid=stream_id)
            return WorkerChatCompletionStream(self, stream_id, decode_chunk)
        return decode_whole(await self._call(whole_kind, content))

    # ---- WebLLM's other engine methods --------------------------------------------------------------------------

    def interruptGenerate(self) -> None:
        """End the running generation at its next token with finish_reason "abort" (not awaited, as in WebLLM)."""
        self._post_nowait("interruptGenerate")

    async def resetChat(self, keep_stats: bool = False, model_id: str | None = None) -> None:
        await self._call("resetChat", {"keepStats": keep_stats, "modelId": model_id})

    async def getMessage(self, model_id: str | None = None) -> str:
        return await self._call("getMessage", {"modelId": model_id})

    async def runtimeStatsText(self, model_id: str | None = None) -> str:
        return await self._call("runtimeStatsText", {"modelId": model_id})

    async def forwardTokensAndSample(
        self, input_ids: Sequence[int], is_prefill: bool, model_id: str | None = None
    ) -> int:
        """WebLLM's low-level step (see ``MLCEngine.forwardTokensAndSample``), run in the worker."""
        content = {"inputIds": list(input_ids), "isPrefill": is_prefill, "modelId": model_id}
        return await self._call("forwardTokensAndSample", content)

    async def getGPUVendor(self) -> str:
        return await self._call("getGPUVendor")

    async def getMaxStorageBufferBindingSize(self) -> int:
        return await self._call("getMaxStorageBufferBindingSize")

    async def setLogLevel(self, level: str) -> None:
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}; got {level!r}")
        await self._call("setLogLevel", level)

    async def setAppConfig(self, app_config: AppConfig | dict[str, Any]) -> None:
        await self._call("setAppConfig", _config_dict(app_config))

    async def getAppConfig(self) -> AppConfig:
        """The worker's app config (its model list), e.g. for a model picker."""
        return app_config_from_dict(await self._call("getAppConfig"))

    async def hasModelInCache(self, model_id: str) -> bool:
        return await self._call("hasModelInCache", {"modelId": model_id})

    async def deleteModelInCache(self, model_id: str) -> None:
        await self._call("deleteModelInCache", {"modelId": model_id})

    def setInitProgressCallback(self, callback: InitProgressCallback | None) -> None:
        self._progress_callback = callback

    def getInitProgressCallback(self) -> InitProgressCallback | None:
        return self._progress_callback

    def terminate(self) -> None:
        """Stop the worker. Calls still waiting raise ``WorkerError``, later ones too."""
        if self._terminated is None:
            self._terminated = WorkerError("WorkerTerminated", "the worker was terminated")
            self._fail_pending(self._terminated)
            self.port.close()


def _config_dict(app_config: AppConfig | dict[str, Any]) -> dict[str, Any]:
    return app_config_to_dict(app_config) if isinstance(app_config, AppConfig) else dict(app_config)


async def CreateWebWorkerMLCEngine(
    worker: Any,
    model_id: str,
    *,
    init_progress_callback: InitProgressCallback | None = None,
    app_config: AppConfig | dict[str, Any] | None = None,
    chat_opts: ChatOptionsParam | Sequence[ChatOptionsParam] | None = None,
    chat_template: str | None = None,
    context_window_size: int | None = None,
    log_level: str | None = None,
) -> WebWorkerMLCEngine:
    """WebLLM's ``CreateWebWorkerMLCEngine``: a ``WebWorkerMLCEngine`` over ``worker`` with ``model_id`` loaded."""
    engine = WebWorkerMLCEngine(
        worker, init_progress_callback=init_progress_callback, app_config=app_config, log_level=log_level
    )
    await engine.reload(
        model_id, chat_opts, chat_template=chat_template, context_window_size=context_window_size
    )
    return engine
