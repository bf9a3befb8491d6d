"""``engine.chat.completions.create(...)``: openai-python's resource shape over ``MLCEngine.chatCompletion``.

``create`` is keyword-only with overloads on ``stream`` (STYLE rule 6): ``stream=True`` gives a
``ChatCompletionStream`` (openai's ``AsyncStream[ChatCompletionChunk]`` shape), otherwise a ``ChatCompletion``.
Keyword arguments become the OpenAI request dict unchanged; ``protocol.py`` decides what is valid, so an
unsupported field such as ``tools=[...]`` fails there with an error naming it.

The ``*Sync`` twins serve ``MLCEngineSync``: the same calls, blocking, with a plain iterator of chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack, overload

from .types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionCreateParams,
    ChatCompletionMessageParam,
    Completion,
    CompletionCreateParams,
)

if TYPE_CHECKING:
    from .mlc_engine import MLCEngine

T = TypeVar("T")


class ChatCompletionStream:
    """An async iterator of ``ChatCompletionChunk`` that holds the engine while it is open.

    The engine serves one request at a time; an open stream is that request. It lets go of the engine as soon
    as the generation has ended (the chunk carrying ``finish_reason``), when closed (``aclose()``, ``async with``),
    when an error ends it, when an ``async for`` over it is left early (``break``, ``return``, an exception), or
    when it is garbage collected.

    Leaving ``async for`` early closes the stream, as it would an async generator: ``__aiter__`` hands each loop
    its own small generator, which the loop drops on ``break`` and CPython then closes at once (asyncio's
    async-generator finalizer), even while the caller still holds this object. Reading it by hand with
    ``__anext__`` does not do that; there, close it, or send the next request from the same task (see
    ``MLCEngine._acquire``).
    """

    def __init__(
        self,
        chunks: AsyncGenerator[ChatCompletionChunk, None],
        generation: Any,
        on_release: Callable[[], None],
        owner: object,
    ):
        self._chunks = chunks
        self._generation = generation  # the engine's Generation the chunks come from
        self._on_release: Callable[[], None] | None = on_release
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self.owner = owner  # the asyncio task (or, for MLCEngineSync, the thread) that made the request
        self.iterating = False  # True while a task is inside __anext__

    def __aiter__(self) -> AsyncGenerator[ChatCompletionChunk, None]:
        return self._iterate()

    async def _iterate(self) -> AsyncGenerator[ChatCompletionChunk, None]:
        try:
            while True:
                try:
                    chunk = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            await self.aclose()  # the loop was left, normally or early: nobody will read the rest

    async def __anext__(self) -> ChatCompletionChunk:
        if self._closed:
            raise StopAsyncIteration
        self.iterating = True
        try:
            chunk = await self._chunks.__anext__()
        except BaseException:  # exhausted, failed or cancelled: nothing more will come
            self.iterating = False
            await self.aclose()
            raise
        self.iterating = False
        if chunk.choices and chunk.choices[0].finish_reason is not None:
            # The generation has been closed; what may follow (the usage chunk) is plain data. Let the next
            # request start now rather than when this consumer gets round to pulling StopAsyncIteration.
            self._release()
        return chunk

    @property
    def closed(self) -> bool:
        return self._closed

    def interrupt(self) -> None:
        """End this request only, at its next token, with finish_reason "abort" (the chunks up to then, the final
        chunk and the usage chunk still come); safe from any task, and a no-op once it has ended."""
        self._generation.interrupt()

    async def aclose(self) -> None:
        """Stop the generation (finish_reason "abort") and release the engine; safe to call twice."""
        if self._closed:
            return
        if self.iterating:
            raise RuntimeError(
                "ChatCompletionStream.aclose() was called while another task is reading the stream; "
                "call engine.interruptGenerate() to end it instead"
            )
        self._closed = True
        try:
            await self._chunks.aclose()  # runs streaming.py's finally blocks, which close the generation...
            await self._generation.aclose()  # ...unless it was never started: then they never run
        finally:
            self._release()

    async def __aenter__(self) -> ChatCompletionStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _release(self) -> None:
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()

    def __del__(self) -> None:
        # Dropped while open (a consumer that broke out and forgot the stream): close it on its loop, which
        # also releases the engine. Scheduling a coroutine that refers to self resurrects self; that is allowed.
        if getattr(self, "_on_release", None) is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._loop.create_task, self.aclose())
            except RuntimeError:  # the loop closed in between
                pass


class Completions:
    def __init__(self, engine: MLCEngine):
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
    ) -> ChatCompletionStream: ...

    @overload
    async def create(
        self,
        *,
        messages: Sequence[ChatCompletionMessageParam],
        stream: bool,
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletion | ChatCompletionStream: ...

    async def create(
        self, *, messages: Sequence[ChatCompletionMessageParam], stream: bool = False, **params: Any
    ) -> ChatCompletion | ChatCompletionStream:
        """Create a chat completion; see OpenAI's ``chat.completions.create`` and ``protocol.py`` for the fields."""
        return await self._engine.chatCompletion(_request(messages, stream, params))


class Chat:
    def __init__(self, engine: MLCEngine):
        self.completions = Completions(engine)


class TextCompletions:
    """``engine.completions``: OpenAI's (legacy) text completions. ``create(stream=True)`` gives a stream of
    ``Completion`` objects, as openai-python's ``AsyncStream[Completion]``."""

    def __init__(self, engine: MLCEngine):
        self._engine = engine

    @overload
    async def create(
        self,
        *,
        prompt: str | list[int],
        stream: Literal[False] = False,
        **params: Unpack[CompletionCreateParams],
    ) -> Completion: ...

    @overload
    async def create(
        self, *, prompt: str | list[int], stream: Literal[True], **params: Unpack[CompletionCreateParams]
    ) -> ChatCompletionStream: ...

    async def create(
        self, *, prompt: str | list[int], stream: bool = False, **params: Any
    ) -> Completion | ChatCompletionStream:
        """Continue ``prompt`` (no chat template); see ``protocol.check_completion_request`` for the fields."""
        return await self._engine.completion(_text_request(prompt, stream, params))


# ---- blocking twins for MLCEngineSync -------------------------------------------------------------------------------


class ChatCompletionStreamSync:
    """A plain iterator of ``ChatCompletionChunk`` (openai's ``Stream`` shape) over a ``ChatCompletionStream``."""

    def __init__(self, stream: ChatCompletionStream, call: Callable[[Coroutine[Any, Any, T]], T]):
        self._stream = stream
        self._call = call

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        # A generator per loop, for the same reason as ChatCompletionStream.__aiter__: a `for` left early drops
        # it, and CPython closes a dropped generator at once, which closes the stream and frees the engine.
        try:
            while True:
                try:
                    chunk = next(self)
                except StopIteration:
                    return
                yield chunk
        finally:
            self.close()

    def __next__(self) -> ChatCompletionChunk:
        try:
            return self._call(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        if not self._stream.closed:  # also keeps a late close() from touching a closed engine's loop
            self._call(self._stream.aclose())

    def __enter__(self) -> ChatCompletionStreamSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CompletionsSync:
    def __init__(
        self, engine: MLCEngine, call: Callable[[Coroutine[Any, Any, T]], T], owner: Callable[[], object]
    ):
        self._engine = engine
        self._call = call
        self._owner = owner

    @overload
    def create(
        self,
        *,
        messages: Sequence[ChatCompletionMessageParam],
        stream: Literal[False] = False,
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        messages: Sequence[ChatCompletionMessageParam],
        stream: Literal[True],
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletionStreamSync: ...

    @overload
    def create(
        self,
        *,
        messages: Sequence[ChatCompletionMessageParam],
        stream: bool,
        **params: Unpack[ChatCompletionCreateParams],
    ) -> ChatCompletion | ChatCompletionStreamSync: ...

    def create(
        self, *, messages: Sequence[ChatCompletionMessageParam], stream: bool = False, **params: Any
    ) -> ChatCompletion | ChatCompletionStreamSync:
        """Blocking ``chat.completions.create``; with ``stream=True`` a plain iterator of chunks."""
        # Each blocking call runs as its own asyncio task, so the calling thread, not the task, owns the request.
        result = self._call(
            self._engine._chat_completion(_request(messages, stream, params), owner=self._owner())
        )
        if isinstance(result, ChatCompletionStream):
            return ChatCompletionStreamSync(result, self._call)
        return result


class TextCompletionsSync:
    def __init__(
        self, engine: MLCEngine, call: Callable[[Coroutine[Any, Any, T]], T], owner: Callable[[], object]
    ):
        self._engine = engine
        self._call = call
        self._owner = owner

    def create(
        self, *, prompt: str | list[int], stream: bool = False, **params: Any
    ) -> Completion | ChatCompletionStreamSync:
        """Blocking ``completions.create``; with ``stream=True`` a plain iterator of ``Completion`` chunks."""
        request = _text_request(prompt, stream, params)
        result = self._call(self._engine._text_completion(request, owner=self._owner()))
        if isinstance(result, ChatCompletionStream):
            return ChatCompletionStreamSync(result, self._call)
        return result


class ChatSync:
    def __init__(
        self, engine: MLCEngine, call: Callable[[Coroutine[Any, Any, T]], T], owner: Callable[[], object]
    ):
        self.completions = CompletionsSync(engine, call, owner)


def _request(
    messages: Sequence[ChatCompletionMessageParam], stream: bool, params: dict[str, Any]
) -> dict[str, Any]:
    # None means "not given", like openai-python's NOT_GIVEN; everything else goes to validation as written.
    return {"messages": messages, "stream": stream, **{k: v for k, v in params.items() if v is not None}}


def _text_request(prompt: Any, stream: bool, params: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt, "stream": stream, **{k: v for k, v in params.items() if v is not None}}
