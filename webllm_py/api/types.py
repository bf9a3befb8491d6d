"""OpenAI wire types for chat completions, as plain dataclasses.

Names, fields and JSON follow openai-python's ``openai.types.chat`` (``ChatCompletion``, ``ChatCompletionChunk``,
``CompletionUsage``), so ``chunk.choices[0].delta.content`` reads the same and
``openai.types.chat.ChatCompletionChunk.model_validate(chunk.to_dict())`` accepts what we produce. They are not
pydantic models because the package must install in Pyodide with no compiled wheel.

Two WebLLM extensions ride along: ``finish_reason`` may be ``"abort"`` (after ``interruptGenerate()``), and
``CompletionUsage.extra`` carries speed numbers (openai-python keeps it as an extra field).

Request-side shapes are TypedDicts, as in openai-python: they describe what a caller passes, nothing checks them
at runtime (``protocol.py`` does the checking).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self, TypedDict

FinishReason = Literal["stop", "length", "abort"]
Role = Literal["system", "user", "assistant"]


# ---- request side -----------------------------------------------------------------------------------------------


class ChatCompletionContentPartTextParam(TypedDict):
    type: Literal["text"]
    text: str


class ChatCompletionMessageParam(TypedDict, total=False):
    role: Role  # required
    content: str | list[ChatCompletionContentPartTextParam]  # required
    name: str


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
    seed: int
    stop: str | list[str]  # up to 4; the reply is cut before the first one
    n: int  # only 1 for now
    ignore_eos: bool  # WebLLM extension: generate to max_tokens, past end-of-turn


# ---- response side ----------------------------------------------------------------------------------------------


@dataclass
class CompletionUsage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # WebLLM's speed numbers: prefill_tokens_per_s, decode_tokens_per_s, time_to_first_token_s,
    # time_per_output_token_s, e2e_latency_s (all floats, seconds or tokens per second).
    extra: dict[str, float] = field(default_factory=dict)

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
class ChatCompletionMessage:
    content: str | None
    role: Literal["assistant"] = "assistant"
    refusal: str | None = None

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return _drop_none({"role": self.role, "content": self.content, "refusal": self.refusal}, exclude_none)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatCompletionMessage:
        return cls(content=d.get("content"), role=d.get("role", "assistant"), refusal=d.get("refusal"))


@dataclass
class ChoiceDelta:
    content: str | None = None
    role: Literal["assistant"] | None = None
    refusal: str | None = None

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        # OpenAI's stream leaves unset delta keys out entirely (the last chunk's delta is `{}`), so a delta is
        # always written without its None fields.
        return _drop_none({"role": self.role, "content": self.content, "refusal": self.refusal}, True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChoiceDelta:
        return cls(content=d.get("content"), role=d.get("role"), refusal=d.get("refusal"))


@dataclass
class Choice:
    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: None = None  # logprobs are not supported yet; OpenAI writes null

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return _drop_none(
            {
                "index": self.index,
                "message": self.message.to_dict(exclude_none),
                "finish_reason": self.finish_reason,
                "logprobs": self.logprobs,
            },
            exclude_none,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Choice:
        return cls(d["index"], ChatCompletionMessage.from_dict(d["message"]), d["finish_reason"])


@dataclass
class ChunkChoice:
    index: int
    delta: ChoiceDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None

    def to_dict(self, exclude_none: bool = False) -> dict[str, Any]:
        return _drop_none(
            {
                "index": self.index,
                "delta": self.delta.to_dict(exclude_none),
                "finish_reason": self.finish_reason,
                "logprobs": self.logprobs,
            },
            exclude_none,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkChoice:
        return cls(d["index"], ChoiceDelta.from_dict(d.get("delta") or {}), d.get("finish_reason"))


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
