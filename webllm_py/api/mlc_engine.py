"""``MLCEngine``: WebLLM's engine object (webllm_anchor.md section 1.3) over our GPU ``Engine``.

One request at a time: the request path is validate (``protocol.py``) -> take the lock -> render the chat template
-> tokenize -> ``Engine.generate`` -> ``streaming.py`` turns ids into chunks. The lock is held by a non-streaming
request until it returns, and by a stream until its generation ends or it is closed (``ChatCompletionStream``).

WebLLM's known trap (mlc-ai/mlc-llm#3113): a consumer that ``break``s out of a stream and then makes another
request waits forever on its own stream's lock. Here a new request from the task (or, for ``MLCEngineSync``, the
thread) that owns an open stream, made while that task is not reading it, closes that stream first: the owner
cannot be reading it, and waiting could only deadlock.

``MLCEngineSync`` runs an ``MLCEngine`` on an event loop in a background thread, for plain scripts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from webllm_py.config import AppConfig, ModelRecord, prebuilt_app_config
from webllm_py.errors import EngineNotLoadedError, SpecifiedModelNotFoundError
from webllm_py.protocol import ChatRequest, check_chat_completion_request
from webllm_py.streaming import StreamState, chat_completion_chunks, collect_chat_completion

from .chat import Chat, ChatCompletionStream, ChatSync
from .types import ChatCompletion

if TYPE_CHECKING:
    from webllm_py.conversation import ChatTemplate
    from webllm_py.engine import Engine, GenerationStats

T = TypeVar("T")
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class InitProgressReport:
    """WebLLM's ``InitProgressReport``. Also readable as a dict (``report["progress"]``), the shape JS callers
    and ported WebLLM code use."""

    progress: float  # 0..1 within the current phase (download, then load), as in WebLLM
    timeElapsed: float  # seconds since reload() started
    text: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __getitem__(self, key: str) -> Any:
        if key not in ("progress", "timeElapsed", "text"):
            raise KeyError(key)
        return getattr(self, key)


InitProgressCallback = Callable[[InitProgressReport], None]
# (record, app_config, progress) -> local GGUF path. The desktop default downloads with urllib in a thread; the
# browser host passes its own (fetch + its cache).
ModelResolver = Callable[[ModelRecord, AppConfig, Progress], Awaitable[str]]


async def _resolve_on_desktop(record: ModelRecord, app_config: AppConfig, progress: Progress) -> str:
    from webllm_py.model.download import (
        resolve_model_path,  # desktop only; keeps urllib out of the browser import
    )

    loop = asyncio.get_running_loop()

    def from_thread(fraction: float, text: str) -> None:
        loop.call_soon_threadsafe(progress, fraction, text)  # callbacks run on the loop, in order

    return await asyncio.to_thread(resolve_model_path, record, app_config, from_thread)


class MLCEngine:
    """WebLLM's ``MLCEngine``: ``chat.completions.create``, ``reload``, ``unload``, ``interruptGenerate``..."""

    def __init__(
        self,
        *,
        app_config: AppConfig | None = None,
        init_progress_callback: InitProgressCallback | None = None,
        device: Any = None,
        resolve_model: ModelResolver | None = None,
    ):
        self.app_config = app_config or prebuilt_app_config
        self._progress_callback = init_progress_callback
        self._device = device  # None => the engine picks the host's default GPU
        self._resolve_model = resolve_model or _resolve_on_desktop
        self._engine: Engine | None = None
        self._record: ModelRecord | None = None
        self._lock = asyncio.Lock()  # one request at a time; binds to the loop on first use
        self._active_stream: ChatCompletionStream | None = None
        self._generation: Any = None  # the running engine Generation, for interruptGenerate()
        self._last_state = StreamState()  # getMessage()
        self._last_stats: GenerationStats | None = None  # runtimeStatsText()
        self.chat = Chat(self)

    @property
    def model_id(self) -> str | None:
        return self._engine.model_id if self._engine is not None else None

    # ---- loading --------------------------------------------------------------------------------------------------

    async def reload(
        self,
        model_id: str,
        *,
        chat_template: str | ChatTemplate | None = None,
        context_window_size: int | None = None,
    ) -> None:
        """Unload the current model, then fetch (or find in the cache) and load ``model_id``."""
        record = self.app_config.get_record(model_id)  # ModelNotFoundError before anything is unloaded
        if chat_template is not None:
            record = dataclasses.replace(record, chat_template=chat_template)
        if context_window_size is not None:
            record = dataclasses.replace(record, context_window_size=context_window_size)
        start = time.perf_counter()
        callback = self._progress_callback

        def report(fraction: float, text: str) -> None:
            if callback is not None:
                callback(
                    InitProgressReport(progress=fraction, timeElapsed=time.perf_counter() - start, text=text)
                )

        await self._end_current_request()
        # Loading holds the lock, so a request made meanwhile waits for the new model instead of failing.
        async with self._lock:
            await self._unload_locked()
            gguf_path = await self._resolve_model(record, self.app_config, report)
            from webllm_py.engine import (
                load_engine,  # the GPU stack is imported on first load, not with the package
            )

            self._engine = await load_engine(record, gguf_path, device=self._device, progress=report)
            self._record = record
        report(1.0, f"Finish loading {model_id} on WebGPU ({time.perf_counter() - start:.1f} s)")

    async def unload(self) -> None:
        """End any generation, then free the model's GPU memory. No-op when nothing is loaded."""
        await self._end_current_request()
        async with self._lock:
            await self._unload_locked()

    async def _end_current_request(self) -> None:
        self.interruptGenerate()  # a non-streaming request, or a stream being read, stops at its next token
        stream = self._active_stream
        if stream is not None and not stream.iterating:
            await stream.aclose()

    async def _unload_locked(self) -> None:
        engine, self._engine, self._record = self._engine, None, None
        if engine is not None:
            await engine.unload()

    # ---- requests -------------------------------------------------------------------------------------------------

    async def chatCompletion(self, request: Mapping[str, Any]) -> ChatCompletion | ChatCompletionStream:
        """WebLLM's ``engine.chatCompletion(request)``: the raw-dict form of ``chat.completions.create``."""
        return await self._chat_completion(request, owner=asyncio.current_task())

    async def _chat_completion(
        self, request: Mapping[str, Any], *, owner: object
    ) -> ChatCompletion | ChatCompletionStream:
        checked = check_chat_completion_request(request)  # a bad request fails at once, without waiting
        await self._acquire(owner)
        try:
            # Checked after the wait: the model may have been unloaded or swapped while this request queued.
            engine = self._require_engine(checked.config.model)
            generation, chunks = self._start(engine, checked)
        except BaseException:
            self._lock.release()
            raise

        if checked.config.stream:

            def release() -> None:
                self._done(generation)
                if self._active_stream is stream:
                    self._active_stream = None
                self._lock.release()

            stream = ChatCompletionStream(chunks, generation, on_release=release, owner=owner)
            self._active_stream = stream
            return stream

        try:
            async with aclosing(chunks):
                return await collect_chat_completion(chunks)
        finally:
            self._done(generation)
            self._lock.release()

    def _done(self, generation: Any) -> None:
        self._last_stats = generation.stats
        if self._generation is generation:
            self._generation = None

    async def _acquire(self, owner: object) -> None:
        stale = self._active_stream
        if stale is not None and stale.owner == owner and not stale.iterating:
            await stale.aclose()  # abandoned by its owner, who is here asking again (see module docstring)
        await self._lock.acquire()

    def _require_engine(self, requested_model: str | None) -> Engine:
        if self._engine is None:
            raise EngineNotLoadedError(
                "No model is loaded: call `await engine.reload(model_id)` or create the engine with CreateMLCEngine"
            )
        if requested_model is not None and requested_model != self._engine.model_id:
            raise SpecifiedModelNotFoundError(
                f"`model` is {requested_model!r}, but this engine has {self._engine.model_id!r} loaded; "
                "leave `model` out or call reload() first"
            )
        return self._engine

    def _start(self, engine: Engine, checked: ChatRequest) -> tuple[Any, Any]:
        """Render, tokenize and start one generation; return it and its (not yet started) chunk iterator.

        Everything that can fail comes before ``engine.generate``: once a generation exists it holds the engine
        until it is closed, which this synchronous function could not do."""
        from webllm_py.engine import (
            SamplingParams,
        )  # imported by load_engine already; lazy for the same reason

        config = checked.config
        messages = [m.to_dict() for m in checked.messages]
        prompt_ids = engine.tokenizer.encode(
            engine.chat_template.render(messages, add_generation_prompt=True)
        )
        # Request value, else the model record's default (overrides), else OpenAI's default.
        defaults = self._record.overrides if self._record is not None else {}
        params = SamplingParams(
            temperature=_first(config.temperature, defaults.get("temperature"), 1.0),
            top_p=_first(config.top_p, defaults.get("top_p"), 1.0),
            seed=config.seed,
            max_tokens=config.max_tokens,
            ignore_eos=config.ignore_eos,
        )
        # ignore_eos means "run to max_tokens": the template's end-of-turn strings no longer stop it, but stop
        # strings the caller asked for in this very request still do.
        stop_strings = (() if config.ignore_eos else tuple(engine.chat_template.stop_strings)) + config.stop
        end_ids = params.stop_token_ids | (frozenset() if config.ignore_eos else engine.tokenizer.eot_ids)
        decoder = engine.tokenizer.stream_decoder()

        generation = engine.generate(prompt_ids, params)  # may raise ContextWindowSizeExceededError
        self._generation = generation
        self._last_state = state = StreamState()
        chunks = chat_completion_chunks(
            generation,
            decoder,
            model=engine.model_id,
            stop_strings=stop_strings,
            end_ids=end_ids,
            # The non-streaming answer is the collected stream; it always reports usage.
            include_usage=config.include_usage or not config.stream,
            state=state,
        )
        return generation, chunks

    # ---- WebLLM's other engine methods ----------------------------------------------------------------------------

    def interruptGenerate(self) -> None:
        """End the running generation at its next token with finish_reason "abort"; no-op when none runs."""
        if self._generation is not None:
            self._generation.interrupt()

    async def resetChat(self, keep_stats: bool = False) -> None:
        """Forget the last reply (and its stats unless ``keep_stats``). There is no KV-cache reuse across
        requests yet, so there is no conversation state to reset beyond that."""
        self._last_state = StreamState()
        if not keep_stats:
            self._last_stats = None

    async def getMessage(self) -> str:
        """The text of the current or last reply, as far as it has been streamed."""
        return self._last_state.text

    async def runtimeStatsText(self) -> str:
        """WebLLM's ``"prefill: X tokens/sec, decoding: Y tokens/sec"`` for the last request."""
        stats = self._last_stats
        prefill = stats.prefill_tokens_per_s if stats is not None else 0.0
        decode = stats.decode_tokens_per_s if stats is not None else 0.0
        return f"prefill: {prefill:.4f} tokens/sec, decoding: {decode:.4f} tokens/sec"

    def setInitProgressCallback(self, callback: InitProgressCallback | None) -> None:
        self._progress_callback = callback

    def getInitProgressCallback(self) -> InitProgressCallback | None:
        return self._progress_callback

    def setAppConfig(self, app_config: AppConfig) -> None:
        self.app_config = app_config


async def CreateMLCEngine(
    model_id: str,
    *,
    init_progress_callback: InitProgressCallback | None = None,
    app_config: AppConfig | None = None,
    chat_template: str | ChatTemplate | None = None,
    context_window_size: int | None = None,
    device: Any = None,
) -> MLCEngine:
    """WebLLM's ``CreateMLCEngine``: a new ``MLCEngine`` with ``model_id`` loaded."""
    engine = MLCEngine(app_config=app_config, init_progress_callback=init_progress_callback, device=device)
    await engine.reload(model_id, chat_template=chat_template, context_window_size=context_window_size)
    return engine


class MLCEngineSync:
    """A blocking ``MLCEngine`` for plain scripts: the same methods, without ``await``.

    It runs an event loop in a daemon thread; ``init_progress_callback`` is called on that thread. Not for use
    inside a running event loop's callbacks (that would block the loop it waits on), nor in Pyodide (no threads).
    """

    def __init__(
        self,
        model_id: str | None = None,
        *,
        init_progress_callback: InitProgressCallback | None = None,
        app_config: AppConfig | None = None,
        chat_template: str | ChatTemplate | None = None,
        context_window_size: int | None = None,
        device: Any = None,
    ):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webllm_py-engine", daemon=True)
        self._thread.start()
        self.engine = MLCEngine(
            app_config=app_config, init_progress_callback=init_progress_callback, device=device
        )
        # Each blocking call is its own task on the loop, so the calling thread is what owns a stream.
        self.chat = ChatSync(self.engine, self._call, owner=lambda: ("thread", threading.get_ident()))
        if model_id is not None:
            try:
                self.reload(model_id, chat_template=chat_template, context_window_size=context_window_size)
            except BaseException:
                self.close()
                raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "MLCEngineSync methods cannot be called from its own loop (e.g. a progress callback)"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C while waiting: cancel the task, which closes its generation
            raise

    def reload(
        self,
        model_id: str,
        *,
        chat_template: str | ChatTemplate | None = None,
        context_window_size: int | None = None,
    ) -> None:
        self._call(
            self.engine.reload(model_id, chat_template=chat_template, context_window_size=context_window_size)
        )

    def unload(self) -> None:
        self._call(self.engine.unload())

    def interruptGenerate(self) -> None:
        self._loop.call_soon_threadsafe(self.engine.interruptGenerate)

    def resetChat(self, keep_stats: bool = False) -> None:
        self._call(self.engine.resetChat(keep_stats))

    def getMessage(self) -> str:
        return self._call(self.engine.getMessage())

    def runtimeStatsText(self) -> str:
        return self._call(self.engine.runtimeStatsText())

    @property
    def model_id(self) -> str | None:
        return self.engine.model_id

    def close(self) -> None:
        """Unload the model and stop the background loop. Safe to call twice."""
        if self._loop.is_closed():
            return
        try:
            self.unload()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> MLCEngineSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)
