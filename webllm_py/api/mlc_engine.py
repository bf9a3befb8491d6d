"""``MLCEngine``: WebLLM's engine object (webllm_anchor.md section 1.3) over our GPU ``Engine``.

One request at a time: the request path is validate (``protocol.py``) -> take the lock -> render the chat template
-> tokenize -> ``Engine.generate`` -> ``streaming.py`` turns ids into chunks. The lock is held by a non-streaming
request until it returns, and by a stream until its generation ends or it is closed (``ChatCompletionStream``).

A ``response_format`` or tools add a grammar (compiled once per schema: the engine's ``GrammarCache``) and a
``Matcher`` over the model's ``TokenIndex``; tools also go through ``tools.py`` (the model family's call format) on
the way in and out.

WebLLM's known trap (mlc-ai/mlc-llm#3113): a consumer that stops reading a stream and makes another request (or
lets another task make one) waits forever on the stream's lock. Here a stream nobody reads any more lets go of its
model, three ways, so it works in CPython and in Pyodide alike:

1. The engine holds its open stream by a weak reference only, and nothing the stream owns refers back to it, so a
   stream that its consumer dropped (a task that ended without closing it) is freed by reference counting at once
   (the same in Pyodide, which is CPython); its finalizer closes it on its loop, which releases the model.
2. A request that finds its model held by a stream nobody is reading runs the cycle collector once first: a stream
   kept alive only by a reference cycle (a traceback, a closure) is finalized then, not whenever the collector
   would get round to it.
3. A request from the task (or, for ``MLCEngineSync``, the thread) that owns an open stream, made while that task
   is not reading it, closes that stream first: the owner cannot be reading it, and waiting could only deadlock.

A stream still referenced from live code (a list, a JS object holding a PyProxy of it) is a live stream: later
requests wait for it, as for any request in progress.

``unload()`` or a second ``reload()`` aborts a reload in progress, as in WebLLM: its download stops (the partial
file is removed) or its load is dropped, and the aborted ``reload()`` returns after logging a warning. The models
loaded before it was called stay loaded until the call that aborted it unloads them.

``MLCEngineSync`` runs an ``MLCEngine`` on an event loop in a background thread, for plain scripts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from webllm_py.config import AppConfig, ModelRecord, check_loadable, prebuilt_app_config
from webllm_py.conversation import parts_after
from webllm_py.errors import (
    EngineNotLoadedError,
    InvalidFieldTypeError,
    InvalidRangeError,
    ReloadModelIdNotUniqueError,
    SpecifiedModelNotFoundError,
    UnclearModelToUseError,
)
from webllm_py.grammar import GrammarCache
from webllm_py.protocol import (
    ChatMessage,
    GenerationConfig,
    ResponseFormat,
    chat_options_per_model,
    check_chat_completion_request,
    check_completion_request,
    check_token_ids,
)
from webllm_py.streaming import (
    StreamState,
    chat_completion_chunks,
    collect_chat_completion,
    completion_chunks,
    completion_from_chat,
    logprob_entries,
    merge_choices,
)
from webllm_py.tools import ToolCallParser, ToolFormat, calls_grammar, template_messages, tool_format

from .chat import Chat, ChatCompletionStream, ChatSync, TextCompletions, TextCompletionsSync
from .types import ChatCompletion, ChatOptionsParam, Completion

if TYPE_CHECKING:
    from webllm_py.conversation import AnyTemplate
    from webllm_py.engine import Engine, GenerationStats

T = TypeVar("T")
Progress = Callable[[float, str], None]
log = logging.getLogger("webllm_py")


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


# (record, app_config) -> its GGUF header (no tensor data read), or None when it cannot be had before the download.
HeaderReader = Callable[[ModelRecord, AppConfig], Awaitable[Any]]


async def _header_on_desktop(record: ModelRecord, app_config: AppConfig) -> Any:
    from webllm_py.model.download import read_header  # desktop only, as above

    return await read_header(record, app_config)


async def _no_header(record: ModelRecord, app_config: AppConfig) -> None:
    return None


async def _resolve_on_desktop(record: ModelRecord, app_config: AppConfig, progress: Progress) -> str:
    from webllm_py.model.download import (
        resolve_model_path,  # desktop only; keeps urllib out of the browser import
    )

    loop = asyncio.get_running_loop()
    stop = threading.Event()  # set when this reload is aborted: the download thread stops at its next piece

    def from_thread(fraction: float, text: str) -> None:
        loop.call_soon_threadsafe(progress, fraction, text)  # callbacks run on the loop, in order

    try:
        return await asyncio.to_thread(resolve_model_path, record, app_config, from_thread, stop.is_set)
    except asyncio.CancelledError:
        stop.set()
        raise


@dataclass
class _Slot:
    """One loaded model and what its requests share: the lock that serves them first-come-first-served, the
    running generation, and the conversation its KV cache holds (multi-round reuse)."""

    engine: Engine
    record: ModelRecord
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # FIFO: asyncio wakes waiters in arrival order
    # The open stream, weakly: a stream its consumer dropped must be collectable (see the module docstring).
    stream_ref: weakref.ref[ChatCompletionStream] | None = None
    generation: Any = None  # the running engine Generation, for interruptGenerate()
    last_state: StreamState = field(default_factory=StreamState)  # getMessage()
    last_stats: GenerationStats | None = None  # runtimeStatsText()
    # The messages the KV cache holds, the model's last reply included; None after a reset or a text completion.
    conversation: tuple[ChatMessage, ...] | None = None
    # That conversation as prompt text up to the end of the reply, and its token ids: the prompt ids as they were
    # plus the reply's ids as generated (re-tokenizing the reply's text may split it differently, which would
    # cost a prefill of the whole reply). None when the reply's text is not its ids' (cut by a stop string).
    conversation_text: str = ""
    conversation_ids: list[int] | None = None
    pending: tuple[str, list[int], frozenset[int]] | None = None  # this request's prompt text, ids, end ids
    tool_format: ToolFormat | None = None  # the model family's tool-call syntax (from its chat template)
    # forwardTokensAndSample: the ids forwarded so far (what the KV cache holds), and their speed since a reset.
    forwarded: list[int] = field(default_factory=list)
    forward_stats: list[float] = field(
        default_factory=lambda: [0, 0.0, 0, 0.0]
    )  # prefill ids, s; decode ids, s

    @property
    def active_stream(self) -> ChatCompletionStream | None:
        return self.stream_ref() if self.stream_ref is not None else None


@dataclass
class _Constraint:
    """What a request's grammar needs at generation time: the grammar, how the matcher starts (lazily at a trigger
    under tool_choice auto), the parser of tool calls, the grammar's compile time."""

    grammar: Any
    triggers: tuple[bytes, ...] = ()
    trigger_ids: tuple[int, ...] = ()
    compile_s: float = 0.0
    parser: Callable[[], ToolCallParser] | None = None


class MLCEngine:
    """WebLLM's ``MLCEngine``: ``chat.completions.create``, ``completions.create``, ``reload``, ``unload``,
    ``interruptGenerate``... One or more models loaded at once; requests routed by their ``model`` field."""

    def __init__(
        self,
        *,
        app_config: AppConfig | None = None,
        init_progress_callback: InitProgressCallback | None = None,
        device: Any = None,
        resolve_model: ModelResolver | None = None,
        read_header: HeaderReader | None = None,
    ):
        self.app_config = app_config or prebuilt_app_config
        self._progress_callback = init_progress_callback
        self._device = device  # None => the engine picks the host's default GPU
        self._resolve_model = resolve_model or _resolve_on_desktop
        # The GGUF header before the download, to refuse a model that cannot fit (model/memory.py).
        # A custom resolver (the browser's) without a header reader: the check runs once the file is there, still
        # before anything is unloaded.
        self._read_header = read_header or (_header_on_desktop if resolve_model is None else _no_header)
        self._slots: dict[str, _Slot] = {}  # model id -> slot, in load order
        self._loading = asyncio.Lock()  # reload/unload; requests made meanwhile wait for it
        self.grammars = GrammarCache()  # compiled response formats and tool grammars (tokenizer-independent)
        self._reload_task: asyncio.Task[None] | None = None  # the load of the reload() in progress
        self._abort_reason = ""
        self.chat = Chat(self)
        self.completions = TextCompletions(self)

    @property
    def model_id(self) -> str | None:
        """The first loaded model's id (the only one, usually)."""
        return next(iter(self._slots), None)

    @property
    def model_ids(self) -> list[str]:
        return list(self._slots)

    # ---- loading --------------------------------------------------------------------------------------------------

    async def reload(
        self,
        model_id: str | Sequence[str],
        chat_opts: ChatOptionsParam | Sequence[ChatOptionsParam] | None = None,
        *,
        chat_template: str | AnyTemplate | None = None,
        context_window_size: int | None = None,
    ) -> None:
        """Fetch (or find in the cache) ``model_id`` (one id, or a list of them), then unload every model and load
        those, one after another, each with its own KV cache.

        ``chat_opts`` is WebLLM's ``chatOpts``: ``context_window_size``, ``prefill_chunk_size``, ``chat_template``,
        and the model's sampling defaults (``temperature``, ``top_p``, ``presence_penalty``, ``frequency_penalty``,
        ``repetition_penalty``), which a request's own values override. One dict for every model, or a list of one
        per id. The keyword arguments win over it."""
        ids = [model_id] if isinstance(model_id, str) else list(model_id)
        if not ids or not all(isinstance(i, str) for i in ids):
            raise InvalidFieldTypeError("model_id", model_id, "a model id or a non-empty list of them")
        if len(set(ids)) != len(ids):
            raise ReloadModelIdNotUniqueError(f"reload() got the same model id twice: {ids}", ids)
        records = []
        for i, opts in zip(ids, chat_options_per_model(chat_opts, len(ids)), strict=True):
            record = self.app_config.get_record(i)  # ModelNotFoundError before anything is unloaded
            records.append(
                dataclasses.replace(
                    record,
                    chat_template=_first(chat_template, opts.chat_template, record.chat_template),
                    context_window_size=_first(
                        context_window_size, opts.context_window_size, record.context_window_size
                    ),
                    prefill_chunk_size=_first(opts.prefill_chunk_size, record.prefill_chunk_size),
                    overrides={**record.overrides, **opts.sampling},
                )
            )
        for record in records:
            check_loadable(record)  # before anything is downloaded or unloaded
        start = time.perf_counter()
        callback = self._progress_callback

        def report(fraction: float, text: str) -> None:
            if callback is not None:
                callback(
                    InitProgressReport(progress=fraction, timeElapsed=time.perf_counter() - start, text=text)
                )

        await self._abort_reload("reload() was called again")
        task = asyncio.get_running_loop().create_task(self._load(records, report))
        self._reload_task = task
        try:
            await task  # a reload() that is cancelled itself cancels its load too
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                log.warning("reload(%s) was aborted: %s", ", ".join(ids), self._abort_reason)
                return  # aborted by unload() or another reload(): resolves, as WebLLM's does
            raise
        finally:
            if self._reload_task is task:
                self._reload_task = None
        memory = _gpu_summary([slot.engine for slot in self._slots.values()])
        report(
            1.0, f"Finish loading {', '.join(ids)} on WebGPU ({time.perf_counter() - start:.1f} s{memory})"
        )

    async def _load(self, records: list[ModelRecord], report: Progress) -> None:
        # Loading holds _loading, so a request made meanwhile waits for the new model instead of failing. Every file
        # is checked against the GPU (from its header: before the download) and found (or downloaded) before anything
        # is unloaded: a model that cannot fit, is missing or fails to download loses nothing already loaded.
        async with self._loading:
            from webllm_py import engine as engine_module  # the GPU stack is imported on first load only

            # The loaded models' memory is free again once they are unloaded.
            reclaimable = sum(_gpu_bytes(slot.engine) for slot in self._slots.values())
            fit = dict(device=self._device, reclaimable=reclaimable)

            async def header(record: ModelRecord) -> Any:
                return await self._read_header(record, self.app_config)

            known, beside = await engine_module.preflight(records, header, **fit)
            paths = [await self._resolve_model(record, self.app_config, report) for record in records]
            if not known:  # some header came only with its download: check again, still before unloading
                by_id = {r.model_id: p for r, p in zip(records, paths, strict=True)}
                _, beside = await engine_module.preflight(
                    records, lambda r: engine_module.open_gguf(by_id[r.model_id]), **fit
                )
            # A load can still fail midway (a corrupt tensor, the GPU running out): it frees what it allocated and
            # the models loaded before keep working. Where the new models fit beside them they load first; else the
            # old ones are unloaded first and, should the load fail (not be aborted), loaded again from their files.
            if beside and self._slots:
                slots = await self._load_slots(records, paths, report)
                await self._unload_all()
            else:
                previous = [slot.record for slot in self._slots.values()]
                await self._unload_all()
                try:
                    slots = await self._load_slots(records, paths, report)
                except Exception:
                    await self._restore(previous)
                    raise
            self._slots.update((slot.record.model_id, slot) for slot in slots)

    async def _load_slots(
        self, records: list[ModelRecord], paths: list[Any], report: Progress
    ) -> list[_Slot]:
        """Load ``records`` from ``paths``; if one fails or the reload is aborted, unload those loaded so far (an
        aborted or failed load leaves nothing half-loaded)."""
        from webllm_py import engine as engine_module

        slots: list[_Slot] = []
        try:
            for record, gguf_path in zip(records, paths, strict=True):
                engine = await engine_module.load_engine(
                    record, gguf_path, device=self._device, progress=report
                )
                slots.append(_Slot(engine, record))
        except BaseException:

            async def unload_loaded() -> None:
                for slot in slots:
                    await slot.engine.unload()

            await asyncio.shield(unload_loaded())
            raise
        return slots

    async def _restore(self, records: list[ModelRecord]) -> None:
        """Load again the models a failed reload had unloaded (from their files, cached by now); a model that cannot
        come back stays unloaded, and the reload's own error is the one raised."""
        for record in records:
            try:
                path = await self._resolve_model(record, self.app_config, lambda *_: None)
                (slot,) = await self._load_slots([record], [path], lambda *_: None)
            except Exception:
                continue
            self._slots[record.model_id] = slot

    async def _abort_reload(self, reason: str) -> None:
        """Abort the reload in progress, if any, and wait until it has let go (its download or load stopped)."""
        task = self._reload_task
        if task is None or task.done():
            return
        self._abort_reason = reason
        task.cancel()
        await asyncio.wait([task])

    async def unload(self) -> None:
        """Abort a reload in progress, end every generation, then free the models' GPU memory."""
        await self._abort_reload("unload() was called")
        async with self._loading:
            await self._unload_all()

    async def _unload_all(self) -> None:
        slots = list(self._slots.values())
        self._slots.clear()  # requests that queue from now on learn that nothing is loaded
        for slot in slots:
            await self._end_current_request(slot)
            async with slot.lock:  # the request being served has let go
                await slot.engine.unload()

    async def _end_current_request(self, slot: _Slot) -> None:
        if slot.generation is not None:
            slot.generation.interrupt()  # a non-streaming request, or a stream being read, stops at its next token
        stream = slot.active_stream
        if stream is not None and not stream.iterating:
            await stream.aclose()

    # ---- requests -------------------------------------------------------------------------------------------------

    async def chatCompletion(self, request: Mapping[str, Any]) -> ChatCompletion | ChatCompletionStream:
        """WebLLM's ``engine.chatCompletion(request)``: the raw-dict form of ``chat.completions.create``."""
        return await self._chat_completion(request, owner=asyncio.current_task())

    async def completion(self, request: Mapping[str, Any]) -> Completion | ChatCompletionStream:
        """WebLLM's ``engine.completion(request)``: the raw-dict form of ``completions.create``."""
        return await self._text_completion(request, owner=asyncio.current_task())

    async def _chat_completion(
        self, request: Mapping[str, Any], *, owner: object
    ) -> ChatCompletion | ChatCompletionStream:
        checked = check_chat_completion_request(request)  # a bad request fails at once, without waiting
        slot = await self._acquire(checked.config.model, owner)
        try:
            engine = slot.engine
            tools = checked.tools
            fmt = self._tool_format(slot)
            messages, template_tools = template_messages([m.to_dict() for m in checked.messages], fmt, tools)
            # Template text and message content stay apart: only the template's text may become control tokens,
            # so a message that types "<|im_end|>" cannot end its own turn (conversation.py).
            render_kw: dict[str, Any] = {"tools": template_tools} if template_tools else {}
            parts = engine.chat_template.render_parts(
                messages, add_generation_prompt=True, template_kwargs=checked.template_kwargs, **render_kw
            )
            constraint, forced_marker = self._constraint(slot, checked.config.response_format, tools, fmt)
            if forced_marker is not None:  # a control-token marker opening the calls: prefilled, not sampled
                parts = [*parts, (forced_marker, True)]
            text = "".join(t for t, _ in parts)
            # Multi-round chat: the KV cache is reused only when this request extends the conversation it holds
            # (everything but the new last message is that conversation, the model's reply included). Then only
            # the new turn's text is tokenized, after the conversation's ids.
            reuse = slot.conversation is not None and checked.messages[:-1] == slot.conversation
            if reuse and slot.conversation_ids is not None and text.startswith(slot.conversation_text):
                new_turn = engine.tokenizer.encode_parts(
                    parts_after(parts, len(slot.conversation_text)), add_bos=False
                )
                prompt_ids = slot.conversation_ids + new_turn
            else:
                prompt_ids = engine.tokenizer.encode_parts(parts)
            slot.pending = (text, prompt_ids, frozenset())
            return await self._run(
                slot, checked.config, prompt_ids, reuse, owner, checked.messages, constraint=constraint
            )
        except BaseException:
            self._release(slot, None)
            raise

    async def _text_completion(
        self, request: Mapping[str, Any], *, owner: object
    ) -> Completion | ChatCompletionStream:
        checked = check_completion_request(request)
        slot = await self._acquire(checked.config.model, owner)
        try:
            engine = slot.engine
            prompt = checked.prompt
            if isinstance(prompt, str):
                # Control-token text in a prompt stays text unless the caller asked for parse_special.
                prompt_ids = engine.tokenizer.encode(prompt, parse_special=checked.parse_special)
                prompt_text = prompt
            else:
                prompt_ids = list(prompt)
                check_token_ids(prompt_ids, engine.tokenizer.vocab_size, "prompt")  # before decoding them
                prompt_text = engine.tokenizer.decode(prompt_ids)
            # A raw prompt is not a conversation: as in WebLLM, the KV cache starts over.
            slot.conversation = slot.conversation_ids = slot.pending = None
            echo = prompt_text if checked.echo else None
            constraint, _ = self._constraint(slot, checked.config.response_format, None, None)
            return await self._run(
                slot, checked.config, prompt_ids, False, owner, None, text_echo=echo, constraint=constraint
            )
        except BaseException:
            self._release(slot, None)
            raise

    async def _run(
        self,
        slot: _Slot,
        config: GenerationConfig,
        prompt_ids: list[int],
        reuse: bool,
        owner: object,
        messages: tuple[ChatMessage, ...] | None,
        *,
        text_echo: str | None = None,
        constraint: _Constraint | None = None,
    ) -> Any:
        """Generate ``config.n`` choices one after another (the lock is held); a stream has one."""
        text = messages is None
        if config.stream:
            generation, chunks = self._start(
                slot, config, prompt_ids, reuse, 0, chat=not text, constraint=constraint
            )
            if text:
                chunks = completion_chunks(chunks, echo=text_echo)

            ref: weakref.ref[ChatCompletionStream] | None = None

            def release() -> None:  # refers to the stream only weakly: a dropped stream must be collectable
                if slot.stream_ref is ref:
                    slot.stream_ref = None
                self._release(slot, generation, messages)

            stream = ChatCompletionStream(chunks, generation, on_release=release, owner=owner)
            ref = slot.stream_ref = weakref.ref(stream)
            return stream

        replies: list[ChatCompletion] = []
        for index in range(config.n):
            # Later choices share the prompt: their prefill reuses all of it but the last token.
            generation, chunks = self._start(
                slot, config, prompt_ids, reuse or index > 0, index, chat=not text, constraint=constraint
            )
            try:
                async with aclosing(chunks):
                    replies.append(await collect_chat_completion(chunks))
            finally:
                self._done(slot, generation, messages if index == 0 else None)
        self._release(slot, None)
        reply = merge_choices(replies)
        return completion_from_chat(reply, echo=text_echo) if text else reply

    async def _acquire(self, model: str | None, owner: object) -> _Slot:
        """Wait for a reload in progress, route to the model, then queue for it (first come, first served)."""
        async with self._loading:
            pass
        slot = self._route(model)
        if slot.lock.locked():
            await self._reclaim_abandoned(slot, owner)
        await slot.lock.acquire()
        if self._slots.get(slot.record.model_id) is not slot:  # unloaded while this request queued
            slot.lock.release()
            return await self._acquire(model, owner)
        return slot

    async def _reclaim_abandoned(self, slot: _Slot, owner: object) -> None:
        """The model is busy: if a stream nobody reads holds it, let it go (ways 2 and 3 of the module docstring)."""
        stale = slot.active_stream
        if stale is None or stale.iterating:
            return  # a non-streaming request, or a stream being read: wait for it
        if stale.owner == owner:
            await stale.aclose()  # abandoned by its owner, who is here asking again
            return
        del stale  # this frame must not be what keeps it alive
        gc.collect()  # finalizes a stream held only by a reference cycle: its __del__ schedules its close

    def _route(self, model: str | None) -> _Slot:
        if not self._slots:
            raise EngineNotLoadedError(
                "No model is loaded: call `await engine.reload(model_id)` or create the engine with CreateMLCEngine"
            )
        if model is None:
            if len(self._slots) > 1:
                raise UnclearModelToUseError(
                    f"several models are loaded ({', '.join(self._slots)}); name one in the request's `model`"
                )
            return next(iter(self._slots.values()))
        slot = self._slots.get(model)
        if slot is None:
            raise SpecifiedModelNotFoundError(
                f"`model` is {model!r}, but the loaded models are {', '.join(map(repr, self._slots))}; "
                "name one of them, leave `model` out, or call reload() first",
                model,
            )
        return slot

    def _start(
        self,
        slot: _Slot,
        config: GenerationConfig,
        prompt_ids: list[int],
        reuse: bool,
        index: int,
        *,
        chat: bool,
        constraint: _Constraint | None = None,
    ) -> tuple[Any, Any]:
        """Start one generation; return it and its (not yet started) chunk iterator.

        Everything that can fail comes before ``engine.generate``: once a generation exists it holds the engine
        until it is closed, which this synchronous function could not do."""
        from webllm_py.engine import (
            SamplingParams,
        )  # imported by load_engine already; lazy for the same reason

        engine = slot.engine
        # Request value, else the model record's default (overrides), else OpenAI's default.
        defaults = slot.record.overrides
        seed = config.seed
        if seed is not None and index > 0:
            seed = (seed + 0x9E3779B9 * index) & 0xFFFFFFFF  # choice i: its own stream, the same every time
        params = SamplingParams(
            temperature=_first(config.temperature, defaults.get("temperature"), 1.0),
            top_p=_first(config.top_p, defaults.get("top_p"), 1.0),
            top_k=config.top_k or 0,
            presence_penalty=_first(config.presence_penalty, defaults.get("presence_penalty"), 0.0),
            frequency_penalty=_first(config.frequency_penalty, defaults.get("frequency_penalty"), 0.0),
            repetition_penalty=_first(config.repetition_penalty, defaults.get("repetition_penalty"), 1.0),
            logit_bias=config.logit_bias,
            logprobs=config.logprobs,
            top_logprobs=config.top_logprobs,
            seed=seed,
            max_tokens=config.max_tokens,
            ignore_eos=config.ignore_eos,
        )
        vocab = engine.tokenizer.vocab_size
        for token, _ in config.logit_bias:
            if token >= vocab:
                raise InvalidRangeError(f"logit_bias[{token!r}]", token, f"a token id in [0, {vocab})")
        # ignore_eos means "run to max_tokens": the template's end-of-turn strings no longer stop it, but stop
        # strings the caller asked for in this very request still do.
        template_stops = engine.chat_template.stop_strings if chat and not config.ignore_eos else ()
        stop_strings = tuple(template_stops) + config.stop
        end_ids = params.stop_token_ids | (frozenset() if config.ignore_eos else engine.tokenizer.eot_ids)
        decoder = engine.tokenizer.stream_decoder()
        if chat and slot.pending is not None:
            slot.pending = (slot.pending[0], slot.pending[1], end_ids)

        matcher = None
        if constraint is not None:
            from webllm_py.grammar import Matcher

            matcher = Matcher(
                constraint.grammar,
                engine.token_index,
                triggers=constraint.triggers,
                trigger_ids=constraint.trigger_ids,
            )
        # may raise ContextWindowSizeExceeded
        grammar_kw = {"matcher": matcher} if matcher is not None else {}
        generation = engine.generate(prompt_ids, params, reuse_kv=reuse, **grammar_kw)
        if constraint is not None and index == 0:
            generation.stats.grammar_init_s = (generation.stats.grammar_init_s or 0.0) + constraint.compile_s
        slot.generation = generation
        slot.last_state = state = StreamState()
        entry = logprob_entries(engine.tokenizer.token_bytes) if config.logprobs else None
        chunks = chat_completion_chunks(
            generation,
            decoder,
            model=engine.model_id,
            stop_strings=stop_strings,
            end_ids=end_ids,
            # The non-streaming answer is the collected stream; it always reports usage.
            include_usage=config.include_usage or not config.stream,
            state=state,
            logprob_entry=entry,
            latency_breakdown=config.enable_latency_breakdown,
            tool_parser=constraint.parser() if constraint is not None and constraint.parser else None,
        )
        return generation, chunks

    def _tool_format(self, slot: _Slot) -> ToolFormat:
        if slot.tool_format is None:
            slot.tool_format = tool_format(getattr(slot.engine.chat_template, "source", None))
        return slot.tool_format

    def _grammar(self, key: str, build: Callable[[], Any]) -> tuple[Any, float]:
        """A compiled grammar from the cache, or compiled now: (grammar, seconds spent compiling)."""
        grammar = self.grammars.get(key)
        if grammar is not None:
            return grammar, 0.0
        t0 = time.perf_counter()
        grammar = self.grammars.put(build())
        return grammar, time.perf_counter() - t0

    def _constraint(
        self, slot: _Slot, response_format: ResponseFormat | None, tools: Any, fmt: ToolFormat | None
    ) -> tuple[_Constraint | None, str | None]:
        """The grammar of a request and, for forced calls in a format whose marker is one control token, that
        marker (appended to the prompt). Compile errors are the request's typed errors."""
        answer = None
        compile_s = 0.0
        if response_format is not None:
            answer, compile_s = self._grammar(response_format.key, response_format.compile)
        if tools is None or tools.choice == "none" or fmt is None:
            return (_Constraint(answer, compile_s=compile_s) if answer is not None else None), None
        tokenizer = slot.engine.tokenizer
        marker_id = tokenizer.token_to_id(fmt.marker)
        marker_is_token = marker_id is not None and tokenizer.is_special(marker_id)
        calls, calls_s = self._grammar(*calls_grammar(fmt, tools, marker_is_token=marker_is_token))
        compile_s += calls_s
        skipped = fmt.marker if tools.forced and marker_is_token else ""

        def parser() -> ToolCallParser:
            return ToolCallParser(fmt, forced=tools.forced, skipped=skipped)

        if tools.forced:
            return _Constraint(calls, compile_s=compile_s, parser=parser), (
                fmt.marker if marker_is_token else None
            )
        if answer is not None:  # auto with a response format: a call, or else the formatted answer
            union_key = "union:" + json.dumps([calls.key, answer.key], ensure_ascii=False)
            union, union_s = self._grammar(union_key, lambda: _union(calls, answer))
            return _Constraint(union, compile_s=compile_s + union_s, parser=parser), None
        if marker_is_token:
            return _Constraint(calls, trigger_ids=(marker_id,), compile_s=compile_s, parser=parser), None
        return _Constraint(calls, triggers=(fmt.marker.encode(),), compile_s=compile_s, parser=parser), None

    def _done(self, slot: _Slot, generation: Any, messages: tuple[ChatMessage, ...] | None) -> None:
        """A generation ended: keep its stats and, for chat, the conversation the KV cache now holds."""
        slot.last_stats = generation.stats
        if slot.generation is generation:
            slot.generation = None
        if messages is not None and slot.pending is not None:
            state = slot.last_state
            reply = state.text
            calls = tuple(state.tool_calls) or None
            slot.conversation = (*messages, ChatMessage("assistant", state.content, tool_calls=calls))
            text, prompt_ids, end_ids = slot.pending
            reply_ids = [t for t in generation.output_ids if t not in end_ids]
            slot.conversation_text = text + reply
            same = slot.engine.tokenizer.decode(reply_ids) == reply
            slot.conversation_ids = prompt_ids + reply_ids if same else None
            slot.pending = None

    def _release(self, slot: _Slot, generation: Any, messages: tuple[ChatMessage, ...] | None = None) -> None:
        if generation is not None:
            self._done(slot, generation, messages)
        if slot.lock.locked():
            slot.lock.release()

    # ---- WebLLM's other engine methods ----------------------------------------------------------------------------

    def interruptGenerate(self, model_id: str | None = None) -> None:
        """End the running generation of ``model_id`` (of every model when None, as WebLLM's engine-wide flag) at
        its next token with finish_reason "abort"; no-op when none runs. One stream only: ``stream.interrupt()``
        or ``stream.aclose()``."""
        for mid, slot in self._slots.items():
            if slot.generation is not None and model_id in (None, mid):
                slot.generation.interrupt()

    async def resetChat(self, keep_stats: bool = False, model_id: str | None = None) -> None:
        """Forget the conversation (the next request prefills everything) and the last reply (and its stats
        unless ``keep_stats``). No-op when nothing is loaded, as in WebLLM."""
        if not self._slots:
            return
        slot = self._route(model_id)
        slot.conversation = None
        slot.conversation_ids = None
        slot.forwarded = []
        slot.last_state = StreamState()
        if not keep_stats:
            slot.last_stats = None
            slot.forward_stats = [0, 0.0, 0, 0.0]

    async def forwardTokensAndSample(
        self, input_ids: Sequence[int], is_prefill: bool, model_id: str | None = None
    ) -> int:
        """WebLLM's low-level step: run ``input_ids`` through the model after the ids forwarded before (since the
        last ``resetChat``), and sample one token with the model's default sampling (its record's overrides, else
        temperature 1, top_p 1). The sampled token is returned, not forwarded: pass it back next time.
        ``is_prefill`` only decides which speed ``runtimeStatsText`` counts the call in, as in WebLLM."""
        from webllm_py.engine import SamplingParams

        ids = list(input_ids) if isinstance(input_ids, list | tuple) else input_ids
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids)
        ):
            raise InvalidFieldTypeError("inputIds", input_ids, "a non-empty list of token ids")
        slot = await self._acquire(model_id, asyncio.current_task())
        try:
            vocab = slot.engine.tokenizer.vocab_size
            for i, t in enumerate(ids):
                if not 0 <= t < vocab:
                    raise InvalidRangeError(f"inputIds[{i}]", t, f"a token id in [0, {vocab})")
            defaults = slot.record.overrides
            params = SamplingParams(
                temperature=defaults.get("temperature", 1.0),
                top_p=defaults.get("top_p", 1.0),
                presence_penalty=defaults.get("presence_penalty", 0.0),
                frequency_penalty=defaults.get("frequency_penalty", 0.0),
                repetition_penalty=defaults.get("repetition_penalty", 1.0),
                max_tokens=1,
                ignore_eos=True,
            )
            prompt = slot.forwarded + ids
            # Raw ids are not a conversation: the next chat request starts over, as after a text completion.
            slot.conversation = slot.conversation_ids = slot.pending = None
            generation = slot.engine.generate(prompt, params, reuse_kv=True)
            slot.generation = generation
            try:
                token = [t async for t in generation][0]
            finally:
                if slot.generation is generation:
                    slot.generation = None
            slot.forwarded = prompt
            stats, time_s = slot.forward_stats, generation.stats.prefill_time_s
            at = 0 if is_prefill else 2
            stats[at] += len(ids)
            stats[at + 1] += time_s
            from webllm_py.engine import GenerationStats

            slot.last_stats = GenerationStats(
                prompt_tokens=int(stats[0]),
                prefill_time_s=stats[1],
                completion_tokens=int(stats[2]) + 1,  # decode speed counts ids after the first
                decode_time_s=stats[3],
            )
            return token
        finally:
            self._release(slot, None)

    async def getMessage(self, model_id: str | None = None) -> str:
        """The text of the current or last reply, as far as it has been streamed."""
        return self._route(model_id).last_state.text if self._slots else ""

    async def runtimeStatsText(self, model_id: str | None = None) -> str:
        """WebLLM's ``"prefill: X tokens/sec, decoding: Y tokens/sec"`` for the last request."""
        stats = self._route(model_id).last_stats if self._slots else None
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
    model_id: str | Sequence[str],
    *,
    init_progress_callback: InitProgressCallback | None = None,
    app_config: AppConfig | None = None,
    chat_opts: ChatOptionsParam | Sequence[ChatOptionsParam] | None = None,
    chat_template: str | AnyTemplate | None = None,
    context_window_size: int | None = None,
    device: Any = None,
) -> MLCEngine:
    """WebLLM's ``CreateMLCEngine``: a new ``MLCEngine`` with ``model_id`` loaded (``chat_opts``: see reload)."""
    engine = MLCEngine(app_config=app_config, init_progress_callback=init_progress_callback, device=device)
    await engine.reload(
        model_id, chat_opts, chat_template=chat_template, context_window_size=context_window_size
    )
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
        chat_opts: ChatOptionsParam | Sequence[ChatOptionsParam] | None = None,
        chat_template: str | AnyTemplate | None = None,
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
        owner = lambda: ("thread", threading.get_ident())  # noqa: E731
        self.chat = ChatSync(self.engine, self._call, owner=owner)
        self.completions = TextCompletionsSync(self.engine, self._call, owner=owner)
        if model_id is not None:
            try:
                self.reload(
                    model_id, chat_opts, chat_template=chat_template, context_window_size=context_window_size
                )
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
        model_id: str | Sequence[str],
        chat_opts: ChatOptionsParam | Sequence[ChatOptionsParam] | None = None,
        *,
        chat_template: str | AnyTemplate | None = None,
        context_window_size: int | None = None,
    ) -> None:
        self._call(
            self.engine.reload(
                model_id, chat_opts, chat_template=chat_template, context_window_size=context_window_size
            )
        )

    def unload(self) -> None:
        self._call(self.engine.unload())

    def interruptGenerate(self, model_id: str | None = None) -> None:
        self._loop.call_soon_threadsafe(self.engine.interruptGenerate, model_id)

    def resetChat(self, keep_stats: bool = False, model_id: str | None = None) -> None:
        self._call(self.engine.resetChat(keep_stats, model_id))

    def getMessage(self, model_id: str | None = None) -> str:
        return self._call(self.engine.getMessage(model_id))

    def runtimeStatsText(self, model_id: str | None = None) -> str:
        return self._call(self.engine.runtimeStatsText(model_id))

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


def _gpu_bytes(engine: Any) -> int:
    """GPU memory a loaded engine holds (its load_stats; 0 where it has none, e.g. a test's fake engine)."""
    stats = getattr(engine, "load_stats", None) or {}
    return sum(int(stats.get(k) or 0) for k in ("weight_bytes", "kv_cache_bytes", "activation_bytes"))


def _gpu_summary(engines: list[Any]) -> str:
    """ ", GPU memory X MiB (weights W, KV cache K)" for the reload's last progress report, "" without figures."""
    total = sum(_gpu_bytes(e) for e in engines)
    if not total:
        return ""
    from webllm_py.model.memory import gib

    stats = [getattr(e, "load_stats", None) or {} for e in engines]
    weights = sum(int(s.get("weight_bytes") or 0) for s in stats)
    kv = sum(int(s.get("kv_cache_bytes") or 0) for s in stats)
    return f", GPU memory {gib(total)}: weights {gib(weights)}, KV cache {gib(kv)}"


def _union(*grammars: Any) -> Any:
    from webllm_py.grammar import Grammar

    return Grammar.union(*grammars)


def _first(*values: Any) -> Any:
    """The first value that is not None (None if all are)."""
    return next((v for v in values if v is not None), None)
