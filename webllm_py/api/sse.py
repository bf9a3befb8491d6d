"""Server-Sent Events: a chunk stream -> the bytes of an OpenAI-compatible streaming HTTP body, and any such body
-> typed chunks again.

The format (the SSE spec, as OpenAI uses it): each event is ``data: <one JSON object>`` and a blank line; the stream
ends with ``data: [DONE]``. Parsing follows the spec's rules: lines end with LF, CR LF or CR; lines starting with
``:`` are comments (keep-alives); ``event:``/``id:``/``retry:`` lines are ignored; several ``data:`` lines of one
event are joined with newlines. An event whose JSON carries ``error`` (how OpenAI-compatible servers report a
failure mid-stream) raises ``ServerSentEventsError`` with the server's message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from ..errors import ServerSentEventsError
from .types import ChatCompletionChunk, Completion

DONE = b"data: [DONE]\n\n"


def sse_event(chunk: Any) -> bytes:
    """One chunk (ours, or a JSON-able dict) as one SSE event."""
    data = chunk.to_dict() if hasattr(chunk, "to_dict") else chunk
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def to_sse(chunks: AsyncIterable[Any]) -> AsyncIterator[bytes]:
    """The streaming HTTP body of ``chunks``: one event per chunk, then ``[DONE]``."""
    async for chunk in chunks:
        yield sse_event(chunk)
    yield DONE


def _events(lines: Iterable[str]) -> Iterator[str]:
    """The data of each event, from the body's lines (without their line endings)."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:  # a body that ends without the last blank line
        yield "\n".join(data)


def _typed(data: str) -> ChatCompletionChunk | Completion | None:
    if data.strip() == "[DONE]":
        return None
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        raise ServerSentEventsError(f"an event's data is not JSON ({e.msg}): {data[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ServerSentEventsError(f"an event's data is not a JSON object: {data[:80]!r}")
    if "error" in obj:
        error = obj["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise ServerSentEventsError(f"the server reported an error in the stream: {message}")
    kind = obj.get("object")
    try:
        if kind == "chat.completion.chunk":
            return ChatCompletionChunk.from_dict(obj)
        if kind == "text_completion":
            return Completion.from_dict(obj)
    except (KeyError, TypeError) as e:
        raise ServerSentEventsError(f"a {kind} event lacks a field or has the wrong type: {e}") from None
    raise ServerSentEventsError(
        f"an event's object is {kind!r}, not 'chat.completion.chunk' or 'text_completion'"
    )


def parse_sse(body: bytes | str) -> list[ChatCompletionChunk | Completion]:
    """All chunks of a whole SSE body (up to ``[DONE]``)."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    out = []
    for data in _events(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")):
        chunk = _typed(data)
        if chunk is None:
            break
        out.append(chunk)
    return out


async def aparse_sse(body: AsyncIterable[bytes]) -> AsyncIterator[ChatCompletionChunk | Completion]:
    """Chunks as the body arrives, in pieces of any size (an event or a UTF-8 character may span pieces)."""
    buffer = b""
    data: list[str] = []
    async for piece in body:
        buffer += piece
        while True:
            cut = min((i for i in (buffer.find(b"\n"), buffer.find(b"\r")) if i >= 0), default=-1)
            if cut < 0 or (buffer[cut : cut + 1] == b"\r" and cut + 1 == len(buffer)):
                break  # no whole line yet (a CR at the end may be the first half of CR LF)
            line = buffer[:cut].decode("utf-8")
            buffer = buffer[cut + (2 if buffer[cut : cut + 2] == b"\r\n" else 1) :]
            if line == "":
                if data:
                    chunk = _typed("\n".join(data))
                    data = []
                    if chunk is None:
                        return
                    yield chunk
                continue
            for event in _events([line]):
                data.append(event)
    for event in _events([buffer.decode("utf-8")] if buffer else []):
        data.append(event)
    if data:
        chunk = _typed("\n".join(data))
        if chunk is not None:
            yield chunk
