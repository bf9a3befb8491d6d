"""OpenAI wire types for chat completions, as plain dataclasses.

Names, fields and JSON follow openai-python's ``openai.types.chat`` (``ChatCompletion``, ``ChatCompletionChunk``,
``CompletionUsage``), so ``chunk.choices[0].delta.content`` reads the same and
``openai.types.chat.ChatCompletionChunk.model_validate(chunk.to_dict())`` accepts what we produce. They are not
pydantic models because the package must install in Pyodide with no compiled wheel.

Two WebLLM extensions ride along: ``finish_reason`` may be ``"abort"`` (after ``interruptGenerate()``), and
``CompletionUsage.extra`` carries speed numbers (openai-python keeps it as an extra field). "abort" is kept rather
than mapped to "stop" because it tells a client the reply is incomplete; openai-python's client parses responses
leniently (``construct_type``) and passes it through, only a strict ``model_validate`` rejects it (the tests validate
such replies strictly with that one field read as "stop", and leniently as sent: tests/unit/openai_check.py).

Request-side shapes are TypedDicts, as in openai-python: they describe what a caller passes, nothing checks them
at runtime (``protocol.py`` does the checking).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self, TypedDict

FinishReason = Literal["stop", "length", "tool_calls", "abort"]
Role = Literal["system", "developer", "user", "assistant", "tool"]


# ---- request side -----------------------------------------------------------------------------------------------


class ChatCompletionContentPartTextParam(TypedDict):
    type: Literal["text"]
    text: str


class ChatCompletionMessageToolCallFunctionParam(TypedDict):
    name: str
    arguments: str  # JSON text


class ChatCompletionMessageToolCallParam(TypedDict):
    id: str
    type: Literal["function"]
    function: ChatCompletionMessageToolCallFunctionParam


class ChatCompletionMessageParam(TypedDict, total=False):
    role: Role  # required
    content: (
        str | list[ChatCompletionContentPartTextParam] | None
    )  # required (None: an assistant that only calls)
    name: str
    tool_call_id: str  # tool messages only: the call this result answers
    tool_calls: list[ChatCompletionMessageToolCallParam]  # assistant messages only: the calls it made


class FunctionDefinitionParam(TypedDict, total=False):
    name: str  # required: 1-64 of a-z A-Z 0-9 _ -
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    strict: bool


class ChatCompletionToolParam(TypedDict):
    type: Literal["function"]
    function: FunctionDefinitionParam


class ResponseFormatJSONSchemaParam(TypedDict, total=False):
    name: str  # required
    description: str
    schema: dict[str, Any]
    strict: bool


class ResponseFormatParam(TypedDict, total=False):
    """OpenAI's ``{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}`` and WebLLM's
    ``{"type": "json_object", "schema": ...}`` / ``{"type": "grammar", "grammar": <EBNF>}``."""

    type: Literal["text", "json_object", "json_schema", "grammar"]  # required
    json_schema: ResponseFormatJSONSchemaParam
    schema: str | dict[str, Any]
    grammar: str


class ChatCompletionStreamOptionsParam(TypedDict, total=False):
    include_usage: bool


class ChatCompletionCreateParams(TypedDict, total=False):
    """The optional knobs of ``chat.completions.create`` besides ``messages`` and ``stream``."""

    model: str  # must be the loaded model's id when given
    stream_options: ChatCompletionStreamOptionsParam  # only with stream=True
    max_tokens: int  # > 0; None => until the context window is full
    max_completion_tokens: int  # OpenAI's newer name for max_tokens
    temperature: float  # [0, 2]; 0 => greedy
    top_p: float  # (0, 1]
    top_k: int  # extension (vLLM's): >= 0, 0 or -1 => off
    frequency_penalty: float  # [-2, 2]
    presence_penalty: float  # [-2, 2]
    repetition_penalty: float  # WebLLM extension: > 0, 1 => off
    logit_bias: dict[str, float]  # token id (as a string or int) -> bias in [-100, 100]
    logprobs: bool  # return the chosen tokens' log-probabilities
    top_logprobs: int  # [0, 20] alternatives per position; needs logprobs=True
    seed: int  # same seed, same tokens
    stop: str | list[str]  # up to 4; the reply is cut before the first one
    n: int  # [1, 128] choices; 1 when streaming
    ignore_eos: bool  # WebLLM extension: generate to max_tokens, past end-of-turn
    chat_template_kwargs: dict[
        str, Any
    ]  # vLLM's: variables for the model's Jinja template ({"enable_thinking": False})
    response_format: ResponseFormatParam  # JSON mode, a JSON schema, an EBNF grammar
    tools: list[ChatCompletionToolParam]
    tool_choice: (
        Literal["none", "auto", "required"] | dict[str, Any]
    )  # or {"type": "function", "function": {name}}
    parallel_tool_calls: bool
    extra_body: dict[str, Any]  # merged into the request (enable_latency_breakdown, top_k...)


# ---- response side ----------------------------------------------------------------------------------------------


@dataclass
class CompletionUsage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # WebLLM's speed numbers: prefill_tokens_per_s, decode_tokens_per_s, time_to_first_token_s,
    # time_per_output_token_s, e2e_latency_s (all floats, seconds or tokens per second); with
    # enable_latency_breakdown also latencyBreakdown: {"totalTime": [seconds per sampled token]}. With a grammar
    # (response_format, tool calls): grammar_init_s (compile + matcher set-up) and grammar_per_token_s (host
    # seconds in the matcher per generated token).
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompletionUsage:
        return cls(d["prompt_tokens"], d["completion_tokens"], d["total_tokens"], dict(d.get("extra") or {}))


@dataclass
class Function:
    name: str
    arguments: str  # JSON text of the arguments object, as the model wrote it

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ChatCompletionMessageToolCall:
    id: str
    function: Function
    type: Literal["function"] = "function"

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "function": self.function.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatCompletionMessageToolCall:
        fn = d["function"]
        return cls(d["id"], Function(fn["name"], fn["arguments"]), d.get("type", "function"))


@dataclass
class ChatCompletionMessage:
    content: str | None
    role: Literal["assistant"] = "assistant"
    refusal: str | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = (
        None  # the calls the model made (content may be None)
    )

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content, "refusal": self.refusal}
        if self.tool_calls:
            d["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        return _drop_none(d, exclude_none)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatCompletionMessage:
        calls = d.get("tool_calls")
        return cls(
            content=d.get("content"),
            role=d.get("role", "assistant"),
            refusal=d.get("refusal"),
            tool_calls=[ChatCompletionMessageToolCall.from_dict(c) for c in calls] if calls else None,
        )


@dataclass
class ChoiceDeltaToolCallFunction:
    name: str | None = None  # in the first delta of a call only
    arguments: str | None = None  # a piece of the arguments' JSON text ("" in the first delta)

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return _drop_none({"name": self.name, "arguments": self.arguments}, True)


@dataclass
class ChoiceDeltaToolCall:
    """One piece of one call of a stream: the first delta of a call carries ``id`` (unless the model writes it
    after the arguments, as Mistral's do: then a later delta), ``type`` and ``function.name`` with ``arguments:
    ""``; the next ones only ``index`` and an ``arguments`` piece. openai-python's accumulator joins them."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChoiceDeltaToolCallFunction | None = None

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        fn = self.function.to_dict() if self.function is not None else None
        return _drop_none({"index": self.index, "id": self.id, "type": self.type, "function": fn}, True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChoiceDeltaToolCall:
        fn = d.get("function")
        function = (
            ChoiceDeltaToolCallFunction(fn.get("name"), fn.get("arguments")) if fn is not None else None
        )
        return cls(d["index"], d.get("id"), d.get("type"), function)


@dataclass
class ChoiceDelta:
    content: str | None = None
    role: Literal["assistant"] | None = None
    refusal: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        # OpenAI's stream leaves unset delta keys out entirely (the last chunk's delta is `{}`), so a delta is
        # always written without its None fields.
        calls = [c.to_dict() for c in self.tool_calls] if self.tool_calls else None
        d = {"role": self.role, "content": self.content, "refusal": self.refusal, "tool_calls": calls}
        return _drop_none(d, True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChoiceDelta:
        calls = d.get("tool_calls")
        return cls(
            content=d.get("content"),
            role=d.get("role"),
            refusal=d.get("refusal"),
            tool_calls=[ChoiceDeltaToolCall.from_dict(c) for c in calls] if calls else None,
        )


@dataclass
class TopLogprob:
    token: str  # the token's text (invalid UTF-8 of a partial character shown as U+FFFD)
    logprob: float  # natural log of its probability in the distribution the token was sampled from
    bytes: list[int] | None = None  # the token's exact UTF-8 bytes

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return {"token": self.token, "logprob": self.logprob, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TopLogprob:
        return cls(d["token"], d["logprob"], d.get("bytes"))


@dataclass
class ChatCompletionTokenLogprob:
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = field(default_factory=list)  # most likely first, top_logprobs of them

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return {
            "token": self.token,
            "logprob": self.logprob,
            "bytes": self.bytes,
            "top_logprobs": [t.to_dict() for t in self.top_logprobs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatCompletionTokenLogprob:
        top = [TopLogprob.from_dict(t) for t in d.get("top_logprobs") or []]
        return cls(d["token"], d["logprob"], d.get("bytes"), top)


@dataclass
class ChoiceLogprobs:
    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        content = [c.to_dict() for c in self.content] if self.content is not None else None
        return _drop_none({"content": content, "refusal": None}, exclude_none)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ChoiceLogprobs | None:
        if d is None:
            return None
        content = d.get("content")
        return cls(
            [ChatCompletionTokenLogprob.from_dict(c) for c in content] if content is not None else None
        )


@dataclass
class Choice:
    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None  # with logprobs=True: one entry per generated token

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return _drop_none(
            {
                "index": self.index,
                "message": self.message.to_dict(exclude_none),
                "finish_reason": self.finish_reason,
                "logprobs": self.logprobs.to_dict() if self.logprobs is not None else None,
            },
            exclude_none,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Choice:
        return cls(
            d["index"],
            ChatCompletionMessage.from_dict(d["message"]),
            d["finish_reason"],
            ChoiceLogprobs.from_dict(d.get("logprobs")),
        )


@dataclass
class ChunkChoice:
    index: int
    delta: ChoiceDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None  # the entries of the tokens this chunk's text came from

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return _drop_none(
            {
                "index": self.index,
                "delta": self.delta.to_dict(exclude_none),
                "finish_reason": self.finish_reason,
                "logprobs": self.logprobs.to_dict() if self.logprobs is not None else None,
            },
            exclude_none,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkChoice:
        return cls(
            d["index"],
            ChoiceDelta.from_dict(d.get("delta") or {}),
            d.get("finish_reason"),
            ChoiceLogprobs.from_dict(d.get("logprobs")),
        )


class _Response:
    """What ChatCompletion and ChatCompletionChunk share: the same envelope around their own choice type."""

    _choice_type: Any  # Choice or ChunkChoice
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[Any]
    usage: CompletionUsage | None

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return _drop_none(
            {
                "id": self.id,
                "object": self.object,
                "created": self.created,
                "model": self.model,
                "system_fingerprint": self.system_fingerprint,
                "choices": [c.to_dict(exclude_none) for c in self.choices],
                "usage": self.usage.to_dict(exclude_none) if self.usage is not None else None,
            },
            exclude_none,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        usage = d.get("usage")
        return cls(
            id=d["id"],
            choices=[cls._choice_type.from_dict(c) for c in d["choices"]],
            created=d["created"],
            model=d["model"],
            usage=CompletionUsage.from_dict(usage) if usage is not None else None,
            system_fingerprint=d.get("system_fingerprint"),
        )

    def model_dump(self, exclude_none: bool = False) -> dict[str, Any]:
        """openai-python's name for to_dict()."""
        return self.to_dict(exclude_none)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    model_dump_json = to_json


@dataclass
class ChatCompletion(_Response):
    _choice_type: ClassVar[type] = Choice
    id: str  # "chatcmpl-..."
    choices: list[Choice]
    created: int  # Unix time, seconds
    model: str
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    object: Literal["chat.completion"] = "chat.completion"


@dataclass
class ChatCompletionChunk(_Response):
    _choice_type: ClassVar[type] = ChunkChoice
    id: str  # the same "chatcmpl-..." id for every chunk of one stream
    choices: list[ChunkChoice]  # empty in the final usage chunk
    created: int  # Unix time, seconds; the same for every chunk of one stream
    model: str
    usage: CompletionUsage | None = None  # only on the final usage chunk (stream_options.include_usage)
    system_fingerprint: str | None = None
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"


def _drop_none(d: dict[str, Any], exclude_none: bool) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None} if exclude_none else d


# ---- text completions (completions.create) ------------------------------------------------------------------------


class CompletionCreateParams(TypedDict, total=False):
    """The optional knobs of ``completions.create`` besides ``prompt`` and ``stream``: the sampling fields of
    ``ChatCompletionCreateParams`` plus ``echo``; ``logprobs`` may be OpenAI's int (that many alternatives)."""

    model: str
    echo: bool  # the text starts with the prompt
    stream_options: ChatCompletionStreamOptionsParam
    max_tokens: int  # default 16, as at OpenAI
    temperature: float
    top_p: float
    top_k: int
    frequency_penalty: float
    presence_penalty: float
    repetition_penalty: float
    logit_bias: dict[str, float]
    logprobs: bool | int
    top_logprobs: int
    seed: int
    stop: str | list[str]
    n: int
    ignore_eos: bool
    parse_special: (
        bool  # control-token texts in the prompt become control tokens (off: the prompt is plain text)
    )
    response_format: ResponseFormatParam
    extra_body: dict[str, Any]


@dataclass
class CompletionLogprobs:
    """OpenAI's legacy logprobs shape: parallel lists, one entry per generated token."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)  # token text -> logprob, per position
    text_offset: list[int] = field(
        default_factory=list
    )  # where each token's text starts in the choice's text

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return {
            "tokens": list(self.tokens),
            "token_logprobs": list(self.token_logprobs),
            "top_logprobs": [dict(t) for t in self.top_logprobs],
            "text_offset": list(self.text_offset),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CompletionLogprobs | None:
        if d is None:
            return None
        return cls(
            list(d.get("tokens") or []),
            list(d.get("token_logprobs") or []),
            [dict(t) for t in d.get("top_logprobs") or []],
            list(d.get("text_offset") or []),
        )


@dataclass
class CompletionChoice:
    index: int
    text: str
    finish_reason: FinishReason | None  # None on the chunks of a stream before the last
    logprobs: CompletionLogprobs | None = None

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return _drop_none(
            {
                "index": self.index,
                "text": self.text,
                "finish_reason": self.finish_reason,
                "logprobs": self.logprobs.to_dict() if self.logprobs is not None else None,
            },
            exclude_none,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompletionChoice:
        return cls(
            d["index"], d["text"], d.get("finish_reason"), CompletionLogprobs.from_dict(d.get("logprobs"))
        )


@dataclass
class Completion(_Response):
    """openai-python's ``openai.types.Completion``; a stream is a sequence of these too (as at OpenAI)."""

    _choice_type: ClassVar[type] = CompletionChoice
    id: str  # "cmpl-..."
    choices: list[CompletionChoice]
    created: int
    model: str
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    object: Literal["text_completion"] = "text_completion"


# ---- load-time options (reload(model_id, chat_opts)) --------------------------------------------------------------


class ChatOptionsParam(TypedDict, total=False):
    """WebLLM's ``ChatOptions``: how ``reload`` loads a model, and the model's sampling defaults, which a request's
    own values override (checked by ``protocol.check_chat_options``)."""

    context_window_size: int
    prefill_chunk_size: int  # tokens of one prefill step (default up to 1,024)
    chat_template: str  # a template name or template text; None => the GGUF's own
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
