"""Request validation: an OpenAI chat-completion request dict becomes a frozen ``ChatRequest`` once, here.

Nothing below this module reads the raw dict (STYLE rule 5). ``check_chat_completion_request`` is one function of
numbered checks, in the spirit of WebLLM's ``postInitAndCheckFields`` and ``postInitAndCheckGenerationConfigValues``
(webllm_anchor.md section 2.1); each failure raises its own ``InvalidRequestError`` subclass naming the field, the
value and what is allowed.

Differences from WebLLM, on purpose:
- Unknown keys are an error (WebLLM ignores them), so a typo such as ``max_token`` does not silently do nothing.
- OpenAI fields we do not implement yet are an error naming the field, unless they carry their no-op default
  (``frequency_penalty=0``, ``logprobs=False``, ``tools=[]``...): clients such as LangChain send those explicitly.
- ``max_completion_tokens`` (OpenAI's newer name) is accepted as ``max_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import (
    FieldDependencyError,
    InvalidFieldTypeError,
    InvalidMessagesError,
    InvalidRangeError,
    UnsupportedFieldError,
)

MAX_STOP_STRINGS = 4  # OpenAI's limit
ROLES = ("system", "user", "assistant")

# Fields we understand and apply.
SUPPORTED_FIELDS = frozenset(
    {
        "messages",
        "model",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "n",
        "ignore_eos",
    }
)

# OpenAI (or WebLLM) fields that are not implemented yet, with the value that means "not used", which we accept.
NOT_YET_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (True, False),  # meaningless without tools
    "functions": ([],),
    "function_call": ("none",),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "repetition_penalty": (1, 1.0),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "web_search_options": (),
    "store": (False,),
    "metadata": ({},),
    "service_tier": ("auto",),
    "user": (),
    "prompt_cache_key": (),
    "safety_identifier": (),
    "verbosity": (),
}


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str  # text parts already joined
    name: str | None = None

    def to_dict(self) -> dict[str, str]:
        """The shape ``ChatTemplate.render`` takes."""
        d = {"role": self.role, "content": self.content}
        if self.name is not None:
            d["name"] = self.name
        return d


@dataclass(frozen=True)
class GenerationConfig:
    # None means "not given": the engine applies the model record's overrides, then its own defaults.
    max_tokens: int | None = None  # generated tokens, > 0; None => until the context window is full
    temperature: float | None = None  # [0, 2]; 0 => greedy
    top_p: float | None = None  # (0, 1]
    seed: int | None = None
    stop: tuple[str, ...] = ()  # request stop strings (the chat template adds its own later)
    ignore_eos: bool = False
    n: int = 1
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    model: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    config: GenerationConfig


def check_chat_completion_request(request: Mapping[str, Any]) -> ChatRequest:
    """Validate an OpenAI chat-completion request dict; raise the first problem found."""
    # 1. Every key is known. Not-yet-supported fields pass only with their no-op value.
    if not isinstance(request, Mapping):
        raise InvalidFieldTypeError("request", request, "a dict of OpenAI chat-completion fields")
    for key, value in request.items():
        if key in SUPPORTED_FIELDS:
            continue
        if key in NOT_YET_SUPPORTED:
            if value is None or any(value == ok and type(value) is type(ok) for ok in NOT_YET_SUPPORTED[key]):
                continue
            raise UnsupportedFieldError(key, value, "not implemented yet in webllm_py")
        raise UnsupportedFieldError(key, value, "not a chat-completion request field")

    # 2. messages: a non-empty list; roles, content and order checked message by message.
    messages = _check_messages(request.get("messages"))

    # 3. stream is a bool; stream_options only with stream=True and only include_usage in it.
    stream = _optional_bool(request, "stream")
    include_usage = False
    stream_options = request.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise FieldDependencyError("stream_options", "stream=True")
        if not isinstance(stream_options, Mapping):
            raise InvalidFieldTypeError(
                "stream_options", stream_options, 'a dict such as {"include_usage": true}'
            )
        for key in stream_options:
            if key != "include_usage":
                raise UnsupportedFieldError(
                    f"stream_options.{key}", stream_options[key], "only include_usage is"
                )
        include_usage = _optional_bool(stream_options, "include_usage", prefix="stream_options.")

    # 4. max_tokens / max_completion_tokens: an int > 0; if both are given they must agree.
    max_tokens = _optional_positive_int(request, "max_tokens")
    max_completion_tokens = _optional_positive_int(request, "max_completion_tokens")
    if max_tokens is not None and max_completion_tokens is not None and max_tokens != max_completion_tokens:
        raise InvalidRangeError(
            "max_completion_tokens",
            max_completion_tokens,
            f"equal to max_tokens ({max_tokens}) when both are given",
        )
    if max_tokens is None:
        max_tokens = max_completion_tokens

    # 5. temperature in [0, 2].
    temperature = _optional_number(request, "temperature")
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise InvalidRangeError("temperature", temperature, "in [0, 2]")

    # 6. top_p in (0, 1].
    top_p = _optional_number(request, "top_p")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InvalidRangeError("top_p", top_p, "in (0, 1]")

    # 7. seed is an integer (WebLLM's SeedTypeError).
    seed = request.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise InvalidFieldTypeError("seed", seed, "an integer")

    # 8. stop: a non-empty string or a list of at most 4 of them.
    stop = _check_stop(request.get("stop"))

    # 9. n: only 1 for now (several choices would need several generations; not implemented yet).
    n = request.get("n")
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool):
            raise InvalidFieldTypeError("n", n, "an integer")
        if n != 1:
            raise InvalidRangeError("n", n, "1 (several choices per request are not supported yet)")

    # 10. ignore_eos is a bool.
    ignore_eos = _optional_bool(request, "ignore_eos")

    # 11. model is a string; whether it is the loaded model is the engine's check.
    model = request.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidFieldTypeError("model", model, "a model id string")

    config = GenerationConfig(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=stop,
        ignore_eos=ignore_eos,
        n=1,
        stream=stream,
        include_usage=include_usage,
        model=model,
    )
    return ChatRequest(messages=messages, config=config)


def _check_messages(messages: Any) -> tuple[ChatMessage, ...]:
    if messages is None:
        raise InvalidMessagesError("messages", "is required: a list of {role, content} dicts")
    if not isinstance(messages, list | tuple) or not messages:
        raise InvalidMessagesError(
            "messages", f"must be a non-empty list of {{role, content}} dicts; got {messages!r:.80}"
        )
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidMessagesError(where, f"must be a dict with role and content; got {message!r:.80}")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidMessagesError(
                f"{where}.role", f"must be one of {', '.join(ROLES)}; got {role!r:.80}"
            )
        for key, value in message.items():
            # tool_calls, audio, refusal... would be silently dropped from the prompt; say so instead.
            if key not in ("role", "content", "name") and value is not None:
                raise UnsupportedFieldError(
                    f"{where}.{key}", value, "messages may carry only role, content and name"
                )
        # WebLLM's SystemMessageOrderError: the system prompt is rendered once, at the top.
        if role == "system" and i != 0:
            raise InvalidMessagesError(where, "a system message is only allowed as the first message")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidMessagesError(f"{where}.name", f"must be a string; got {name!r:.80}")
        out.append(ChatMessage(role=role, content=_message_text(message.get("content"), where), name=name))
    # WebLLM's MessageOrderError: the model answers the last user message.
    if out[-1].role != "user":
        raise InvalidMessagesError(
            f"messages[{len(out) - 1}].role", f"the last message must have role 'user'; got {out[-1].role!r}"
        )
    return tuple(out)


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        texts = []
        for j, part in enumerate(content):
            part_type = part.get("type") if isinstance(part, Mapping) else None
            if part_type != "text":
                raise InvalidMessagesError(
                    f"{where}.content[{j}]",
                    f"only text parts ({{'type': 'text', 'text': ...}}) are supported; got type {part_type!r:.40}",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidMessagesError(
                    f"{where}.content[{j}].text", f"must be a string; got {text!r:.80}"
                )
            texts.append(text)
        # OpenAI shows consecutive text parts to the model as one text; a newline keeps words from gluing.
        return "\n".join(texts)
    raise InvalidMessagesError(
        f"{where}.content", f"must be a string or a list of text parts; got {content!r:.80}"
    )


def _check_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list | tuple):
        raise InvalidFieldTypeError("stop", stop, "a string or a list of strings")
    if len(items) > MAX_STOP_STRINGS:
        raise InvalidRangeError("stop", stop, f"at most {MAX_STOP_STRINGS} strings")
    for s in items:
        if not isinstance(s, str):
            raise InvalidFieldTypeError("stop", stop, "a string or a list of strings")
        if not s:
            # An empty stop string would match at once and end every reply before its first character.
            raise InvalidRangeError("stop", stop, "non-empty strings")
    return tuple(items)


def _optional_bool(d: Mapping[str, Any], key: str, prefix: str = "") -> bool:
    value = d.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidFieldTypeError(prefix + key, value, "true or false")
    return value


def _optional_number(d: Mapping[str, Any], key: str) -> float | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidFieldTypeError(key, value, "a finite number")
    return float(value)


def _optional_positive_int(d: Mapping[str, Any], key: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidFieldTypeError(key, value, "an integer")
    if value <= 0:
        raise InvalidRangeError(key, value, "> 0")
    return value
