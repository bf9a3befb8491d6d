"""Token ids -> text deltas -> ``ChatCompletionChunk``s; stop strings, finish reasons and usage.

Pure async generators over the engine's ``Generation`` (an async iterator of token ids) and the tokenizer's
stream decoder, so everything here is tested with a fake engine (STYLE rule 8). Three layers, each feeding the next:

``StopStringFilter``   text in, safe text out: holds back any tail that could still become a stop string
``text_deltas``        ids -> decoder -> filter -> non-empty text pieces; ends the generation on a stop string
``chat_completion_chunks``  text pieces -> OpenAI chunks: role first, a final chunk with finish_reason, usage;
                       with tools, ``tools.ToolCallParser`` splits the text into content and tool-call deltas
``collect_chat_completion`` chunks -> one ``ChatCompletion``: the non-streaming answer is the concatenated stream

Whatever way iteration ends (exhausted, stop string, consumer ``break``/``aclose()``, an exception),
``generation.aclose()`` is awaited, which releases the engine. Interrupts are the engine's business
(``Generation.interrupt()``): the generation then simply ends with finish_reason "abort".
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from .api.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
    ChatCompletionTokenLogprob,
    Choice,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionUsage,
    Function,
    TopLogprob,
)
from .tools import ToolCall, ToolCallParser

# One token's (id, log-probability, [(alternative id, log-probability)]) as the engine records it.
LogprobRecord = tuple[int, float, list[tuple[int, float]]]


class StreamDecoder(Protocol):
    def push(self, token_id: int) -> str: ...  # complete characters only
    def flush(self) -> str: ...  # whatever was held back (an incomplete character at the end)


class StopStringFilter:
    """Cut text before the first stop string, never letting out text that may turn out to be part of one.

    Invariant: ``_held`` is the longest tail of the text seen so far that is a proper prefix of some stop string.
    Everything before it has been let out, and no stop string can start there: had it started there, the text
    from its start to the end would be a prefix of that stop string and would have been held.
    """

    def __init__(self, stop_strings: Sequence[str]):
        self._stops = tuple(s for s in stop_strings if s)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Feed new text; return the part that is safe to show now."""
        if self.stopped or not self._stops:
            return "" if self.stopped else text
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buf[: min(hits)]
        keep = self._partial_stop_len(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """The generation ended without a stop string: the held tail was real text after all."""
        held, self._held = self._held, ""
        return held

    def _partial_stop_len(self, buf: str) -> int:
        longest = min(len(buf), max(len(s) for s in self._stops) - 1)
        for k in range(longest, 0, -1):
            tail = buf[-k:]
            if any(s.startswith(tail) for s in self._stops):
                return k
        return 0


@dataclass
class StreamState:
    """What one generation has produced so far; the engine keeps it for ``getMessage()``."""

    text: str = ""  # all text let out so far (stop string excluded): what the model said, calls included
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls" | "abort", set when the stream ended
    content: str = ""  # with tools: the text that is not calls (without tools, the same as text)
    tool_calls: list[ToolCall] = field(default_factory=list)  # with tools: the complete calls
    # For each token of the reply (end ids excluded): how many characters were decoded before it. A token whose
    # start is below len(text) has some of its text let out.
    token_starts: list[int] = field(default_factory=list)
    cut_by_stop_string: bool = False  # a stop string ended the reply: the text from its start on is not in it


async def text_deltas(
    generation: Any,
    decoder: StreamDecoder,
    stop_strings: Sequence[str] = (),
    *,
    end_ids: frozenset[int] = frozenset(),
    state: StreamState | None = None,
) -> AsyncIterator[str]:
    """Yield non-empty text pieces of ``generation``'s tokens; set ``state.finish_reason`` at the end.

    ``end_ids`` are the ids the engine stops on (end-of-turn, EOS, request stop ids). The engine yields that last
    id before it finishes; it is not part of the reply, so it is not decoded (``<|endoftext|>`` would otherwise
    show up whenever the template's stop strings do not name it).
    """
    state = state if state is not None else StreamState()
    stops = StopStringFilter(stop_strings)
    finish = None
    decoded = 0  # characters the decoder has given so far
    try:
        async for token_id in generation:
            if token_id in end_ids:
                continue  # the generation ends after this id
            state.token_starts.append(decoded)
            piece = decoder.push(token_id)
            decoded += len(piece)
            text = stops.push(piece)
            if text:
                state.text += text
                yield text
            if stops.stopped:
                finish = "stop"  # our stop, not the engine's: aclose() below would otherwise report "abort"
                break
        if not stops.stopped:
            # The decoder may hold the bytes of an incomplete last character; the filter its possible-stop tail.
            tail = stops.push(decoder.flush())
            if stops.stopped:
                finish = "stop"
            else:
                tail += stops.flush()
            if tail:
                state.text += tail
                yield tail
    finally:
        await generation.aclose()
    state.cut_by_stop_string = stops.stopped
    state.finish_reason = finish or generation.finish_reason


def usage_from_stats(stats: Any, *, latency_breakdown: bool = False) -> CompletionUsage:
    """OpenAI usage plus WebLLM's ``extra`` speed numbers, from the engine's ``GenerationStats``.

    ``latency_breakdown`` adds WebLLM's ``latencyBreakdown`` with the one series we can measure, ``totalTime``
    (host seconds between token ids): bias, penalties and sampling run fused in one GPU dispatch, so WebLLM's
    per-stage series have no separate timings here."""
    extra: dict[str, Any] = {
        "prefill_tokens_per_s": stats.prefill_tokens_per_s,
        "decode_tokens_per_s": stats.decode_tokens_per_s,
        "time_to_first_token_s": stats.time_to_first_token_s,
        "time_per_output_token_s": stats.time_per_output_token_s,
        "e2e_latency_s": stats.e2e_latency_s,
    }
    if getattr(stats, "grammar_init_s", None) is not None:
        extra["grammar_init_s"] = stats.grammar_init_s
        extra["grammar_per_token_s"] = stats.grammar_per_token_s
    if latency_breakdown:
        extra["latencyBreakdown"] = {"totalTime": list(getattr(stats, "token_times_s", []))}
    return CompletionUsage(
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
        total_tokens=stats.prompt_tokens + stats.completion_tokens,
        extra=extra,
    )


def logprob_entries(
    token_bytes: Callable[[int], bytes],
) -> Callable[[LogprobRecord], ChatCompletionTokenLogprob]:
    """Engine records -> OpenAI's per-token entries, with each token's text and exact bytes."""

    def top(token_id: int, logprob: float) -> TopLogprob:
        raw = token_bytes(token_id)
        return TopLogprob(raw.decode("utf-8", errors="replace"), logprob, list(raw))

    def entry(record: LogprobRecord) -> ChatCompletionTokenLogprob:
        token_id, logprob, alternatives = record
        head = top(token_id, logprob)
        return ChatCompletionTokenLogprob(
            head.token, logprob, head.bytes, [top(i, lp) for i, lp in alternatives]
        )

    return entry


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


async def chat_completion_chunks(
    generation: Any,
    decoder: StreamDecoder,
    *,
    model: str,
    stop_strings: Sequence[str] = (),
    end_ids: frozenset[int] = frozenset(),
    include_usage: bool = False,
    state: StreamState | None = None,
    completion_id: str | None = None,
    created: int | None = None,
    logprob_entry: Callable[[LogprobRecord], ChatCompletionTokenLogprob] | None = None,
    latency_breakdown: bool = False,
    tool_parser: ToolCallParser | None = None,
) -> AsyncIterator[ChatCompletionChunk]:
    """OpenAI's chunk sequence: text chunks (the first one with ``role``), a final chunk with an empty delta and
    the finish reason, then, with ``include_usage``, a usage chunk with no choices.

    With ``logprob_entry`` (the request asked for logprobs), a token's entry (from ``generation.logprobs``) goes
    with the chunk that lets out the first of its text; tokens whose text the decoder or the stop-string filter
    still holds wait for a later chunk, or the final one. Tokens none of whose text is in the reply, because a stop
    string cut it there, have no entry, and neither do end-of-turn ids.

    With ``tool_parser`` (a request with tools), the text goes through it: content deltas and tool-call deltas
    come out, and a reply that ended on its own with at least one complete call finishes with "tool_calls"."""
    state = state if state is not None else StreamState()
    sent = 0  # entries of generation.logprobs handed out (or dropped) so far
    tokens = 0  # of them, the reply's tokens (end ids excluded): an index into state.token_starts

    def new_logprobs(final: bool = False) -> ChoiceLogprobs | None:
        nonlocal sent, tokens
        if logprob_entry is None:
            return None
        records, entries = generation.logprobs, []
        while sent < len(records):
            record = records[sent]
            if record[0] not in end_ids:
                starts = state.token_starts
                shown = tokens < len(starts) and starts[tokens] < len(state.text)
                if not shown and not final:
                    break  # its text is held back: its entry goes with the chunk that lets it out
                tokens += 1
                if shown or not state.cut_by_stop_string:
                    entries.append(logprob_entry(record))
            sent += 1
        return ChoiceLogprobs(content=entries)

    completion_id = completion_id or new_completion_id()
    created = int(time.time()) if created is None else created

    def chunk(choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=completion_id, choices=choices, created=created, model=model, usage=usage
        )

    role: Any = "assistant"  # only the first chunk names the role, as OpenAI does
    async with aclosing(
        text_deltas(generation, decoder, stop_strings, end_ids=end_ids, state=state)
    ) as deltas:
        async for text in deltas:
            for delta in _deltas(text, tool_parser, state):
                delta.role = role
                yield chunk([ChunkChoice(index=0, delta=delta, logprobs=new_logprobs())])
                role = None
    if tool_parser is not None:
        for delta in _deltas(None, tool_parser, state):
            delta.role = role
            yield chunk([ChunkChoice(index=0, delta=delta, logprobs=new_logprobs())])
            role = None
        state.tool_calls = [ToolCall(c.id or "", c.name, c.arguments) for c in tool_parser.complete_calls]
        if state.tool_calls and state.finish_reason == "stop":
            state.finish_reason = "tool_calls"
    else:
        state.content = state.text
    final = ChunkChoice(
        index=0,
        delta=ChoiceDelta(role=role),
        finish_reason=state.finish_reason,
        logprobs=new_logprobs(final=True),
    )
    yield chunk([final])
    if include_usage:
        yield chunk([], usage=usage_from_stats(generation.stats, latency_breakdown=latency_breakdown))


def _deltas(text: str | None, parser: ToolCallParser | None, state: StreamState) -> list[ChoiceDelta]:
    """The chunk deltas of one text piece (None: the end of the reply). Without tools, the piece as content;
    with tools, the parser's events: content, a call's first delta (index, id, type, name, ``arguments: ""``), its
    argument pieces, and (Mistral, whose model writes the id after the arguments) its id."""
    if parser is None:
        return [ChoiceDelta(content=text)] if text else []
    out: list[ChoiceDelta] = []
    for event in parser.push(text) if text is not None else parser.finish():
        kind = event[0]
        if kind == "content":
            state.content += event[1]
            out.append(ChoiceDelta(content=event[1]))
            continue
        index = event[1]
        if kind == "call":
            fn = ChoiceDeltaToolCallFunction(name=event[3], arguments="")
            call = ChoiceDeltaToolCall(index, id=event[2], type="function", function=fn)
        elif kind == "args":
            call = ChoiceDeltaToolCall(index, function=ChoiceDeltaToolCallFunction(arguments=event[2]))
        else:  # "id": with an empty arguments piece, as clients (openai-python) want `function` in every delta
            call = ChoiceDeltaToolCall(index, id=event[2], function=ChoiceDeltaToolCallFunction(arguments=""))
        out.append(ChoiceDelta(tool_calls=[call]))
    return out


async def collect_chat_completion(chunks: AsyncIterable[ChatCompletionChunk]) -> ChatCompletion:
    """The non-streaming answer: the stream's deltas accumulated (text joined; tool calls by index, their argument
    pieces joined), its finish reason and usage (stream it with ``include_usage=True``). Content is None when the
    reply is only calls, as openai-python's accumulator leaves it."""
    parts: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    entries: list[ChatCompletionTokenLogprob] | None = None
    first = finish_reason = usage = None
    async for c in chunks:
        first = first or c
        for choice in c.choices:
            if choice.delta.content is not None:
                parts.append(choice.delta.content)
            for d in choice.delta.tool_calls or ():
                call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += d.id or ""
                if d.function is not None:
                    call["name"] += d.function.name or ""
                    call["arguments"] += d.function.arguments or ""
            finish_reason = choice.finish_reason or finish_reason
            if choice.logprobs is not None:
                entries = (entries or []) + (choice.logprobs.content or [])
        usage = c.usage or usage
    if first is None or finish_reason is None:
        raise RuntimeError("chat completion stream ended without its final chunk")  # a bug in this module
    tool_calls = [
        ChatCompletionMessageToolCall(c["id"], Function(c["name"], c["arguments"]))
        for _, c in sorted(calls.items())
    ]
    content = "".join(parts) if parts or not tool_calls else None
    return ChatCompletion(
        id=first.id,
        choices=[
            Choice(
                index=0,
                message=ChatCompletionMessage(content=content, tool_calls=tool_calls or None),
                finish_reason=finish_reason,
                logprobs=ChoiceLogprobs(content=entries) if entries is not None else None,
            )
        ],
        created=first.created,
        model=first.model,
        usage=usage,
    )


def merge_choices(replies: Sequence[ChatCompletion]) -> ChatCompletion:
    """``n`` sequential generations -> one ``ChatCompletion`` with choices 0..n-1. The prompt is counted once (as
    OpenAI does); completion tokens add up."""
    first = replies[0]
    choices = [dataclasses.replace(r.choices[0], index=i) for i, r in enumerate(replies)]
    usage = first.usage
    if usage is not None and len(replies) > 1:
        completion = sum(r.usage.completion_tokens for r in replies if r.usage is not None)
        usage = dataclasses.replace(
            usage, completion_tokens=completion, total_tokens=usage.prompt_tokens + completion
        )
    return dataclasses.replace(first, choices=choices, usage=usage)


def _completion_logprobs(
    content: Sequence[ChatCompletionTokenLogprob] | None, offset: int
) -> CompletionLogprobs | None:
    """Chat-shaped per-token entries -> the legacy parallel lists of text completions."""
    if content is None:
        return None
    out = CompletionLogprobs()
    for entry in content:
        out.tokens.append(entry.token)
        out.token_logprobs.append(entry.logprob)
        out.top_logprobs.append({t.token: t.logprob for t in entry.top_logprobs})
        out.text_offset.append(offset)
        offset += len(entry.token)
    return out


def completion_from_chat(reply: ChatCompletion, *, echo: str | None = None) -> Completion:
    """A text completion is generated like a chat reply (without the template); only the wire shape differs."""
    prefix = echo or ""
    return Completion(
        id="cmpl-" + reply.id.removeprefix("chatcmpl-"),
        choices=[
            CompletionChoice(
                index=c.index,
                text=prefix + (c.message.content or ""),
                finish_reason=c.finish_reason,
                logprobs=_completion_logprobs(c.logprobs.content if c.logprobs else None, len(prefix)),
            )
            for c in reply.choices
        ],
        created=reply.created,
        model=reply.model,
        usage=reply.usage,
    )


async def completion_chunks(
    chunks: AsyncIterator[ChatCompletionChunk], *, echo: str | None = None
) -> AsyncIterator[Completion]:
    """A chat chunk stream -> OpenAI's text-completion stream (``Completion`` objects whose choices carry ``text``
    pieces); with ``echo`` the first one starts with the prompt."""
    prefix = echo or ""
    offset = len(prefix)
    async with aclosing(chunks):
        async for c in chunks:
            choices = []
            for ch in c.choices:
                text = prefix + (ch.delta.content or "")
                logprobs = _completion_logprobs(ch.logprobs.content if ch.logprobs else None, offset)
                choices.append(CompletionChoice(ch.index, text, ch.finish_reason, logprobs))
                offset += len(text) - len(prefix)
                prefix = ""
            yield Completion(
                id="cmpl-" + c.id.removeprefix("chatcmpl-"),
                choices=choices,
                created=c.created,
                model=c.model,
                usage=c.usage,
            )
