"""Request validation: an OpenAI request dict becomes a frozen ``ChatRequest`` / ``CompletionRequest`` once, here.

Nothing below this module reads the raw dict (STYLE rule 5). ``check_chat_completion_request`` and
``check_completion_request`` are functions of numbered checks, in the spirit of WebLLM's ``postInitAndCheckFields``
and ``postInitAndCheckGenerationConfigValues`` (webllm_anchor.md section 2.1); the generation knobs both share are
checked once, by ``_check_generation``. Each failure raises its own ``InvalidRequestError`` subclass naming the field,
the value and what is allowed.

Differences from WebLLM, on purpose:
- Unknown keys are an error (WebLLM ignores them), so a typo such as ``max_token`` does not silently do nothing.
- OpenAI fields we do not implement are an error naming the field, unless they carry their no-op default
  (``tools=[]``, ``response_format={"type": "text"}``...): clients such as LangChain send those explicitly.
- ``max_completion_tokens`` (OpenAI's newer name) is accepted as ``max_tokens``; ``developer`` (OpenAI's newer name
  for the system role) as ``system``.
- ``top_logprobs`` goes up to 20 (OpenAI's limit; WebLLM stops at 5), and ``logprobs: true`` alone returns the
  chosen tokens' log-probabilities (WebLLM returns an empty list).
- ``top_k`` (an int, 0 or -1 = off) is accepted as an extension, as vLLM does.
- ``extra_body`` is merged into the request, as openai-python does before sending it, so
  ``extra_body={"enable_latency_breakdown": True}`` (WebLLM's spelling) and ``extra_body={"top_k": 40}`` both work.
- Text completions accept a prompt given as token ids, ``echo`` when streaming, and OpenAI's integer ``logprobs``.
- ``chat_template_kwargs`` (vLLM's name; also through ``extra_body``): extra variables for the model's Jinja chat
  template, e.g. ``{"enable_thinking": false}`` for Qwen3; JSON values only, and not the names the engine sets.
- A text completion's prompt never turns control-token text (``<|im_start|>``) into control tokens unless the
  request says ``parse_special: true`` (also through ``extra_body``): text from a user is text.
- ``response_format`` takes OpenAI's shapes (``{"type": "json_object"}``, ``{"type": "json_schema", "json_schema":
  {name, schema, strict, description}}``) and WebLLM's (``{"type": "json_object", "schema": <JSON text or object>}``,
  ``{"type": "grammar", "grammar": <EBNF>}``), for chat and text completions; what a schema or grammar holds is
  checked when it is compiled (webllm_py/grammar/: an unsupported keyword is an error naming it).
- ``tools``, ``tool_choice`` (``none``, ``auto``, ``required``, a named function) and ``parallel_tool_calls`` work
  for every chat model (webllm_py/tools.py); assistant messages may carry ``tool_calls`` (content then null).

Every value is checked before anything reads it as what it should be: numbers are finite and in range (an integer
of 400 digits is a range error, not an OverflowError), counts and token ids fit the GPU's 32-bit fields, text is
valid Unicode (a lone surrogate is refused naming its field, not found later by the tokenizer). The JSON limits at
the bottom (``loads_json``, ``MAX_JSON_DEPTH``) are shared by every boundary that takes JSON: the local endpoint's
bodies and the worker's messages.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .conversation import RESERVED_TEMPLATE_VARIABLES
from .errors import (
    FieldDependencyError,
    InvalidFieldTypeError,
    InvalidJSONError,
    InvalidMessagesError,
    InvalidRangeError,
    UnsupportedFieldError,
    _show,
)
from .tools import Function, ToolCall, ToolRequest

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_LOGIT_BIAS = 300  # entries; the GPU sampler's bias list holds this many (ops.Sampler.MAX_BIAS)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit; the GPU sampler writes this many (ops.Sampler.MAX_TOP_LOGPROBS)
MAX_N = 128  # OpenAI's limit on choices per request
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for text completions (chat has none)
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_INT = 2**31 - 1  # counts and token ids: what the GPU's u32 Params fields and i32 JSON readers all hold
SEED_RANGE = (-(2**63), 2**64 - 1)  # OpenAI's seed is a 64-bit integer; either signedness is accepted

# Request fields both endpoints understand and apply.
GENERATION_FIELDS = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "stop",
        "n",
        "ignore_eos",
        "enable_latency_breakdown",
        "extra_body",
        "response_format",
    }
)
CHAT_FIELDS = GENERATION_FIELDS | {
    "messages",
    "max_completion_tokens",
    "chat_template_kwargs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
}
COMPLETION_FIELDS = GENERATION_FIELDS | {"prompt", "echo", "parse_special"}
MAX_TOOLS = 128  # OpenAI's limit on functions per request
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function and json_schema names
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema", "grammar")
MAX_TEMPLATE_KWARGS_DEPTH = 8  # nesting of a chat_template_kwargs value

# OpenAI chat fields that are not implemented, with the values that mean "not used", which we accept.
CHAT_NOT_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "functions": ([],),
    "function_call": ("none",),
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
# WebLLM's CompletionCreateParamsUnsupportedFields, plus OpenAI's newer ones.
COMPLETION_NOT_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "suffix": (),
    "best_of": (1,),
    "user": (),
}
# Why each unsupported field is refused, for the error message.
WHY_NOT = {
    "functions": "deprecated by OpenAI: use tools",
    "function_call": "deprecated by OpenAI: use tool_choice",
    "suffix": "fill-in-the-middle needs a model trained for it",
    "best_of": "several candidates per choice are not generated; ask for n choices instead",
    "user": "there is no abuse monitoring to pass an end-user id to",
}


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant" | "tool" ("developer" arrives as "system")
    content: str  # text parts already joined
    name: str | None = None
    tool_call_id: str | None = None
    parts: tuple[str, ...] | None = None  # the text parts, when content came as a list of them
    tool_calls: tuple[ToolCall, ...] | None = None  # an assistant's calls (its content may then be "")

    def to_dict(self) -> dict[str, Any]:
        """The shape a chat template's ``render`` takes (content as text parts when it came as a list: templates
        that loop over content, such as Gemma 3's, get them one by one)."""
        content: Any = self.content
        if self.parts is not None:
            content = [{"type": "text", "text": t} for t in self.parts]
        d = {"role": self.role, "content": content}
        if self.name is not None:
            d["name"] = self.name
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            d["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        return d


@dataclass(frozen=True)
class GenerationConfig:
    # None means "not given": the engine applies the model record's overrides, then its own defaults.
    max_tokens: int | None = (
        None  # generated tokens per choice, > 0; None => until the context window is full
    )
    temperature: float | None = None  # [0, 2]; 0 => greedy
    top_p: float | None = None  # (0, 1]
    top_k: int | None = None  # >= 0; 0 => off
    frequency_penalty: float | None = None  # [-2, 2], per occurrence of a token in this reply
    presence_penalty: float | None = None  # [-2, 2], once for every token already in this reply
    repetition_penalty: float | None = None  # > 0; 1 => off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100]), ids distinct
    logprobs: bool = False  # return the chosen tokens' log-probabilities
    top_logprobs: int = 0  # and this many most likely alternatives at each position, [0, 20]
    seed: int | None = None
    stop: tuple[str, ...] = ()  # request stop strings (the chat template adds its own later)
    ignore_eos: bool = False
    n: int = 1  # choices, [1, 128]; more than 1 only without streaming
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    enable_latency_breakdown: bool = False  # usage.extra.latencyBreakdown (WebLLM's extra_body field)
    model: str | None = None
    response_format: ResponseFormat | None = None  # None: plain text


@dataclass(frozen=True)
class ResponseFormat:
    """A constraint on the reply's text (``response_format``), compiled by ``grammar.Grammar`` when used."""

    type: str  # "json_object" (a schema or any object), "json_schema" (OpenAI's) or "grammar" (EBNF)
    schema: str | None = None  # the JSON Schema as JSON text; None: any JSON object
    strict: bool = True  # OpenAI's strict mode: no extra keys unless the schema allows them
    grammar: str | None = None  # EBNF text (type "grammar")
    name: str | None = None  # json_schema.name

    def compile(self) -> Any:
        """The ``Grammar`` of this format (raises ``UnsupportedSchemaError`` / ``InvalidGrammarError``)."""
        from .grammar import Grammar

        if self.type == "grammar":
            return Grammar.ebnf(self.grammar or "")
        if self.schema is None:
            return Grammar.json_object()
        return Grammar.json_schema(self.schema, strict=self.strict)

    @property
    def key(self) -> str:
        """The compiled grammar's cache key, known without compiling."""
        if self.type == "grammar":
            return f"ebnf:root:{self.grammar}"
        if self.schema is None:
            return "json_object:0"
        return "json_schema:" + json.dumps([json.loads(self.schema), self.strict, 0], ensure_ascii=False)


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    config: GenerationConfig
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)  # chat_template_kwargs
    tools: ToolRequest | None = None  # tools, tool_choice, parallel_tool_calls; None: no tools


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str | tuple[int, ...]  # text, or token ids given by the caller
    echo: bool  # the reply's text starts with the prompt's
    config: GenerationConfig
    parse_special: bool = False  # control-token text in the prompt becomes control tokens


def check_chat_completion_request(request: Mapping[str, Any]) -> ChatRequest:
    """Validate an OpenAI chat-completion request dict; raise the first problem found."""
    # 1. A dict; extra_body merged in; every key known; unsupported fields pass only with their no-op value.
    request = _check_keys(request, CHAT_FIELDS, CHAT_NOT_SUPPORTED, "chat-completion")

    # 2. messages: a non-empty list; roles, content and order checked message by message.
    messages = _check_messages(request.get("messages"))

    # 3. max_tokens / max_completion_tokens: an int > 0; if both are given they must agree.
    max_tokens = _optional_positive_int(request, "max_tokens")
    max_completion_tokens = _optional_positive_int(request, "max_completion_tokens")
    if max_tokens is not None and max_completion_tokens is not None and max_tokens != max_completion_tokens:
        raise InvalidRangeError(
            "max_completion_tokens",
            max_completion_tokens,
            f"equal to max_tokens ({max_tokens}) when both are given",
        )

    # 4. Everything chat and text completions share (sampling, stop, n, stream...).
    config = _check_generation(request, max_tokens if max_tokens is not None else max_completion_tokens)

    # 5. top_logprobs needs logprobs=true (OpenAI's rule; WebLLM's DependencyError).
    if request.get("top_logprobs") is not None and not config.logprobs:
        raise FieldDependencyError("top_logprobs", "logprobs=True")

    # 6. chat_template_kwargs: a dict of JSON values, none of them a variable the engine sets.
    template_kwargs = _check_template_kwargs(request.get("chat_template_kwargs"))

    # 7. tools: function definitions with unique names; tool_choice one of them (or none/auto/required);
    #    parallel_tool_calls a bool. Calls in the history name tools of... any name (earlier requests' tools).
    tools = _check_tools(request)
    return ChatRequest(messages=messages, config=config, template_kwargs=template_kwargs, tools=tools)


def check_completion_request(request: Mapping[str, Any]) -> CompletionRequest:
    """Validate an OpenAI text-completion request dict (``completions.create``); raise the first problem found."""
    # 1. A dict; extra_body merged in; every key known; suffix, best_of and user are named and refused.
    request = _check_keys(request, COMPLETION_FIELDS, COMPLETION_NOT_SUPPORTED, "completion")

    # 2. prompt: a string, or a list of token ids (or a list holding one of those: one prompt per request).
    prompt = _check_prompt(request.get("prompt"))

    # 3. echo is a bool. Prompt-token log-probabilities would need the logits of every prompt position.
    echo = _optional_bool(request, "echo")

    # 4. logprobs: OpenAI's int (that many alternatives, [0, 20] here, 5 at OpenAI) or WebLLM's bool with
    #    top_logprobs.
    logprobs = request.get("logprobs")
    fields = dict(request)
    if isinstance(logprobs, int) and not isinstance(logprobs, bool):
        if not 0 <= logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRangeError("logprobs", logprobs, f"an integer in [0, {MAX_TOP_LOGPROBS}] or a bool")
        if request.get("top_logprobs") is not None:
            raise UnsupportedFieldError(
                "top_logprobs",
                request["top_logprobs"],
                "give it only with logprobs=True, not with an integer",
            )
        fields["logprobs"], fields["top_logprobs"] = True, logprobs
    if echo and fields.get("logprobs"):
        raise UnsupportedFieldError(
            "echo", True, "echo with logprobs would need the prompt tokens' log-probabilities"
        )

    # 5. Everything chat and text completions share; max_tokens defaults to 16, as at OpenAI.
    max_tokens = _optional_positive_int(request, "max_tokens")
    config = _check_generation(
        fields, max_tokens if max_tokens is not None else DEFAULT_COMPLETION_MAX_TOKENS
    )

    # 6. top_logprobs needs logprobs.
    if request.get("top_logprobs") is not None and not config.logprobs:
        raise FieldDependencyError("top_logprobs", "logprobs=True")

    # 7. parse_special is a bool (off: the prompt's text is read as plain text, control-token texts included).
    parse_special = _optional_bool(request, "parse_special")
    return CompletionRequest(prompt=prompt, echo=echo, config=config, parse_special=parse_special)


def _check_keys(
    request: Any, known: frozenset[str], not_supported: dict[str, tuple[Any, ...]], kind: str
) -> dict[str, Any]:
    if not isinstance(request, Mapping):
        raise InvalidFieldTypeError("request", request, f"a dict of OpenAI {kind} fields")
    out = dict(request)
    extra = out.pop("extra_body", None)
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise InvalidFieldTypeError("extra_body", extra, "a dict of extra request fields")
        for key, value in extra.items():
            if key in out and out[key] is not None:
                raise UnsupportedFieldError(
                    f"extra_body.{key}", value, f"`{key}` is given both in the request and in extra_body"
                )
            if key not in known and key not in not_supported:
                raise UnsupportedFieldError(f"extra_body.{key}", value, f"not a {kind} request field")
            out[key] = value
    refused = []
    for key, value in out.items():
        if key in known:
            continue
        if key in not_supported:
            if value is None or any(value == ok and type(value) is type(ok) for ok in not_supported[key]):
                continue
            refused.append(key)
            continue
        raise UnsupportedFieldError(key, value, f"not a {kind} request field")
    if refused:
        # Every refused field at once, so a client learns in one round trip what to remove.
        field = ", ".join(refused)
        reasons = "; ".join(f"{k}: {WHY_NOT.get(k, 'not implemented in webllm_py')}" for k in refused)
        value = out[refused[0]] if len(refused) == 1 else {k: out[k] for k in refused}
        raise UnsupportedFieldError(field, value, reasons)
    return out


def _check_generation(request: Mapping[str, Any], max_tokens: int | None) -> GenerationConfig:
    # a. stream is a bool; stream_options only with stream=True and only include_usage in it.
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

    # b. temperature in [0, 2]; top_p in (0, 1]; top_k an int >= 0 (-1 also means off, as in vLLM).
    temperature = _optional_number(request, "temperature")
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise InvalidRangeError("temperature", temperature, "in [0, 2]")
    top_p = _optional_number(request, "top_p")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InvalidRangeError("top_p", top_p, "in (0, 1]")
    top_k = _optional_int(request, "top_k")
    if top_k is not None:
        if top_k < -1:
            raise InvalidRangeError("top_k", top_k, ">= 0 (0 or -1: no top-k)")
        if top_k > MAX_INT:
            raise InvalidRangeError(
                "top_k", top_k, f"at most {MAX_INT} (any value >= the vocabulary: no top-k)"
            )
        top_k = max(top_k, 0)

    # c. frequency_penalty and presence_penalty in [-2, 2]; repetition_penalty > 0 (WebLLM's MinValueError).
    penalties = {}
    for key in ("frequency_penalty", "presence_penalty"):
        penalties[key] = value = _optional_number(request, key)
        if value is not None and not -2.0 <= value <= 2.0:
            raise InvalidRangeError(key, value, "in [-2, 2]")
    repetition_penalty = _optional_number(request, "repetition_penalty")
    if repetition_penalty is not None and not repetition_penalty > 0.0:
        raise InvalidRangeError("repetition_penalty", repetition_penalty, "> 0 (1: no penalty)")

    # d. logit_bias: {token id: bias}, ids as ints or strings of ints (JSON keys are strings), bias in [-100, 100].
    logit_bias = _check_logit_bias(request.get("logit_bias"))

    # e. logprobs is a bool; top_logprobs an int in [0, 20] (its dependency on logprobs: the callers' last check).
    logprobs = _optional_bool(request, "logprobs")
    top_logprobs = _optional_int(request, "top_logprobs")
    if top_logprobs is not None and not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRangeError("top_logprobs", top_logprobs, f"in [0, {MAX_TOP_LOGPROBS}]")

    # f. seed is an integer (WebLLM's SeedTypeError).
    seed = _optional_int(request, "seed")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise InvalidRangeError("seed", seed, "a 64-bit integer, in [-2^63, 2^64)")

    # g. stop: a non-empty string or a list of at most 4 of them.
    stop = _check_stop(request.get("stop"))

    # h. n in [1, 128]; only 1 when streaming (WebLLM's StreamingCountError).
    n = _optional_int(request, "n")
    if n is not None and not 1 <= n <= MAX_N:
        raise InvalidRangeError("n", n, f"in [1, {MAX_N}]")
    if n is not None and n > 1 and stream:
        raise InvalidRangeError("n", n, "1 when stream=True (a stream carries one choice)")

    # i. ignore_eos and enable_latency_breakdown are bools; model is a string (which one is loaded: the engine's
    #    check).
    ignore_eos = _optional_bool(request, "ignore_eos")
    enable_latency_breakdown = _optional_bool(request, "enable_latency_breakdown")
    model = request.get("model")
    if model is not None:
        check_text(model, "model", "a model id string")

    # j. response_format: OpenAI's or WebLLM's shape (the schema or grammar itself is checked by its compiler).
    response_format = _check_response_format(request.get("response_format"))

    return GenerationConfig(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        frequency_penalty=penalties["frequency_penalty"],
        presence_penalty=penalties["presence_penalty"],
        repetition_penalty=repetition_penalty,
        logit_bias=logit_bias,
        logprobs=logprobs,
        top_logprobs=top_logprobs or 0,
        seed=seed,
        stop=stop,
        ignore_eos=ignore_eos,
        n=n or 1,
        stream=stream,
        include_usage=include_usage,
        enable_latency_breakdown=enable_latency_breakdown,
        model=model,
        response_format=response_format,
    )


def _check_logit_bias(bias: Any) -> tuple[tuple[int, float], ...]:
    if bias is None:
        return ()
    if not isinstance(bias, Mapping):
        raise InvalidFieldTypeError("logit_bias", bias, 'a dict of token id -> bias, e.g. {"50256": -100}')
    if len(bias) > MAX_LOGIT_BIAS:
        raise InvalidRangeError("logit_bias", bias, f"at most {MAX_LOGIT_BIAS} entries (got {len(bias)})")
    out: dict[int, float] = {}
    for key, value in bias.items():
        where = f"logit_bias[{_show(key)}]"
        token = key
        if isinstance(key, str):
            # int() of a string of thousands of digits raises ValueError too (Python's digit limit)
            token = int(key) if re.fullmatch(r"[0-9]{1,10}", key.strip()) else None
        if not isinstance(token, int) or isinstance(token, bool) or token < 0:
            raise InvalidFieldTypeError(where, key, "a token id: a non-negative integer, or a string of one")
        if token > MAX_INT:
            raise InvalidRangeError(where, key, f"a token id in [0, {MAX_INT}]")
        if token in out:
            raise InvalidRangeError(where, key, f"a token id given once (token {token} appears twice)")
        number = _finite(value, where)
        if not -100.0 <= number <= 100.0:
            raise InvalidRangeError(where, value, "in [-100, 100]")
        out[token] = number
    return tuple(out.items())


def _check_messages(messages: Any) -> tuple[ChatMessage, ...]:
    if messages is None:
        raise InvalidMessagesError("messages", "is required: a list of {role, content} dicts")
    if not isinstance(messages, list | tuple) or not messages:
        raise InvalidMessagesError(
            "messages", f"must be a non-empty list of {{role, content}} dicts; got {_show(messages)}"
        )
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidMessagesError(where, f"must be a dict with role and content; got {_show(message)}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidMessagesError(
                f"{where}.role", f"must be one of {', '.join(ROLES)}; got {_show(role)}"
            )
        allowed = ("role", "content", "name") + {"tool": ("tool_call_id",), "assistant": ("tool_calls",)}.get(
            role, ()
        )
        for key, value in message.items():
            # audio, refusal, function_call... would be silently dropped from the prompt; say so instead.
            if key not in allowed and value is not None:
                why = (
                    "deprecated by OpenAI: use tool_calls"
                    if key == "function_call"
                    else f"{role} messages may carry only {', '.join(allowed)}"
                )
                raise UnsupportedFieldError(f"{where}.{key}", value, why)
        if role == "developer":
            role = "system"  # OpenAI's newer name for it
        # WebLLM's SystemMessageOrderError: the system prompt is rendered once, at the top.
        if role == "system" and i != 0:
            raise InvalidMessagesError(where, "a system message is only allowed as the first message")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidMessagesError(f"{where}.name", f"must be a string; got {_show(name)}")
        if name is not None:
            check_text(name, f"{where}.name")
        tool_call_id = message.get("tool_call_id")
        if role == "tool" and not isinstance(tool_call_id, str):
            raise InvalidMessagesError(
                f"{where}.tool_call_id",
                f"a tool message must name the tool call it answers (a string); got {_show(tool_call_id)}",
            )
        if tool_call_id is not None:
            check_text(tool_call_id, f"{where}.tool_call_id")
        content = message.get("content")
        tool_calls = _check_tool_calls(message.get("tool_calls"), where)
        if tool_calls and content is None:
            content = ""  # OpenAI's assistant message that only calls: content null
        out.append(
            ChatMessage(
                role=role,
                content=_message_text(content, where),
                name=name,
                tool_call_id=tool_call_id,
                parts=tuple(p["text"] for p in content) if isinstance(content, list | tuple) else None,
                tool_calls=tool_calls,
            )
        )
    # WebLLM's MessageOrderError: the model answers the last user message (or tool result).
    if out[-1].role not in ("user", "tool"):
        raise InvalidMessagesError(
            f"messages[{len(out) - 1}].role",
            f"the last message must have role 'user' or 'tool'; got {out[-1].role!r}",
        )
    return tuple(out)


def _check_tool_calls(calls: Any, where: str) -> tuple[ToolCall, ...] | None:
    """An assistant message's ``tool_calls``: [{id, type: "function", function: {name, arguments}}]."""
    if calls is None:
        return None
    if not isinstance(calls, list | tuple):
        raise InvalidMessagesError(f"{where}.tool_calls", f"must be a list of tool calls; got {calls!r:.80}")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, Mapping) or call.get("type", "function") != "function":
            raise InvalidMessagesError(
                at, f'must be {{"id", "type": "function", "function"}}; got {call!r:.80}'
            )
        fn = call.get("function")
        if not isinstance(fn, Mapping):
            raise InvalidMessagesError(f"{at}.function", f"must be {{name, arguments}}; got {fn!r:.80}")
        call_id, name, arguments = call.get("id"), fn.get("name"), fn.get("arguments")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidMessagesError(f"{at}.id", f"must be a non-empty string; got {call_id!r:.80}")
        if not isinstance(name, str) or not name:
            raise InvalidMessagesError(f"{at}.function.name", f"must be a non-empty string; got {name!r:.80}")
        if isinstance(arguments, Mapping):  # a dict, as Hugging Face's chat format writes it
            arguments = json.dumps(arguments, ensure_ascii=False)
        if not isinstance(arguments, str):
            raise InvalidMessagesError(
                f"{at}.function.arguments", f"must be JSON text (a string); got {arguments!r:.80}"
            )
        out.append(ToolCall(call_id, name, arguments))
    return tuple(out)


def _check_tools(request: Mapping[str, Any]) -> ToolRequest | None:
    tools = request.get("tools")
    choice = request.get("tool_choice")
    parallel = request.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidFieldTypeError("parallel_tool_calls", parallel, "true or false")
    if tools is None or (isinstance(tools, list | tuple) and not tools):
        if choice not in (None, "none", "auto"):
            raise FieldDependencyError("tool_choice", "a non-empty tools list")
        return None
    if not isinstance(tools, list | tuple):
        raise InvalidFieldTypeError("tools", tools, 'a list of {"type": "function", "function": {...}}')
    if len(tools) > MAX_TOOLS:
        raise InvalidRangeError("tools", f"{len(tools)} tools", f"at most {MAX_TOOLS}")
    functions: list[Function] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, Mapping) else tool
            raise UnsupportedFieldError(
                f"{where}.type", kind, 'only function tools ({"type": "function", "function": {...}}) are'
            )
        for key in tool:
            if key not in ("type", "function"):
                raise UnsupportedFieldError(f"{where}.{key}", tool[key], "a tool has only type and function")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise InvalidFieldTypeError(f"{where}.function", fn, "{name, description, parameters, strict}")
        for key in fn:
            if key not in ("name", "description", "parameters", "strict"):
                raise UnsupportedFieldError(
                    f"{where}.function.{key}", fn[key], "a function has name, description, parameters, strict"
                )
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise InvalidFieldTypeError(f"{where}.function.name", name, "1-64 characters of a-z A-Z 0-9 _ -")
        if any(f.name == name for f in functions):
            raise InvalidRangeError(f"{where}.function.name", name, "a name no other tool has")
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidFieldTypeError(f"{where}.function.description", description, "a string")
        parameters = fn.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, Mapping):
            raise InvalidFieldTypeError(f"{where}.function.parameters", parameters, "a JSON Schema object")
        _check_json_value(parameters, f"{where}.function.parameters", 0, limit=MAX_SCHEMA_DEPTH)
        strict = fn.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidFieldTypeError(f"{where}.function.strict", strict, "true or false")
        functions.append(Function(name, parameters, description, strict))
    if choice is None:
        choice = "auto"
    elif isinstance(choice, Mapping):
        fn = choice.get("function")
        named = fn.get("name") if isinstance(fn, Mapping) else None
        if choice.get("type") != "function" or not isinstance(named, str):
            raise InvalidFieldTypeError(
                "tool_choice",
                choice,
                '"none", "auto", "required" or {"type": "function", "function": {"name"}}',
            )
        if not any(f.name == named for f in functions):
            raise InvalidRangeError("tool_choice.function.name", named, "the name of one of the tools")
        choice = named
    elif choice not in ("none", "auto", "required"):
        raise InvalidFieldTypeError(
            "tool_choice", choice, '"none", "auto", "required" or {"type": "function", "function": {"name"}}'
        )
    return ToolRequest(tuple(functions), choice, parallel is not False)


def _check_response_format(rf: Any) -> ResponseFormat | None:
    if rf is None:
        return None
    if not isinstance(rf, Mapping):
        raise InvalidFieldTypeError("response_format", rf, 'a dict such as {"type": "json_object"}')
    kind = rf.get("type")
    if kind == "structural_tag":
        raise UnsupportedFieldError(
            "response_format.type", kind, "structural tags are not supported; use tools for tool calls"
        )
    if kind not in RESPONSE_FORMAT_TYPES:
        raise InvalidFieldTypeError("response_format.type", kind, " | ".join(RESPONSE_FORMAT_TYPES))
    allowed = {
        "text": (),
        "json_object": ("schema",),
        "json_schema": ("json_schema",),
        "grammar": ("grammar",),
    }
    for key, value in rf.items():
        if key != "type" and key not in allowed[kind] and value is not None:
            # WebLLM's InvalidResponseFormatError / InvalidResponseFormatGrammarError
            raise UnsupportedFieldError(
                f"response_format.{key}", value, f"not a field of type {kind!r}" + _FORMAT_HINT.get(key, "")
            )
    if kind == "text":
        return None
    if kind == "grammar":
        grammar = rf.get("grammar")
        if not isinstance(grammar, str) or not grammar.strip():
            raise InvalidFieldTypeError("response_format.grammar", grammar, "EBNF text (a non-empty string)")
        return ResponseFormat("grammar", grammar=grammar)
    if kind == "json_object":
        schema = rf.get("schema")
        if schema is None:
            return ResponseFormat("json_object")
        return ResponseFormat("json_object", schema=_schema_text(schema, "response_format.schema"))
    spec = rf.get("json_schema")
    if not isinstance(spec, Mapping):
        raise InvalidFieldTypeError(
            "response_format.json_schema", spec, "{name, schema, strict, description} (name required)"
        )
    for key in spec:
        if key not in ("name", "schema", "strict", "description"):
            raise UnsupportedFieldError(
                f"response_format.json_schema.{key}",
                spec[key],
                "fields are name, schema, strict, description",
            )
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidFieldTypeError(
            "response_format.json_schema.name", name, "1-64 characters of a-z A-Z 0-9 _ -"
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidFieldTypeError("response_format.json_schema.strict", strict, "true, false or null")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidFieldTypeError("response_format.json_schema.description", description, "a string")
    schema = spec.get("schema")
    text = None if schema is None else _schema_text(schema, "response_format.json_schema.schema")
    # Without strict, OpenAI's schema still has to hold (additionalProperties as JSON Schema says).
    return ResponseFormat("json_schema", schema=text, strict=strict is not False, name=name)


_FORMAT_HINT = {
    "schema": " (WebLLM's schema goes with type \"json_object\"; OpenAI's in json_schema.schema)",
    "grammar": ' (a grammar goes with type "grammar")',
    "json_schema": ' (it goes with type "json_schema")',
}
MAX_SCHEMA_DEPTH = 64  # nesting of a JSON schema (tool parameters, response formats)


def _schema_text(schema: Any, where: str) -> str:
    """A schema given as an object or as JSON text -> canonical JSON text."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise InvalidFieldTypeError(
                where, schema, f"a JSON Schema (this text is not JSON: {e})"
            ) from None
    if not isinstance(schema, Mapping | bool):
        raise InvalidFieldTypeError(where, schema, "a JSON Schema object (or its JSON text)")
    _check_json_value(schema, where, 0, limit=MAX_SCHEMA_DEPTH)
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def _check_template_kwargs(kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise InvalidFieldTypeError(
            "chat_template_kwargs",
            kwargs,
            'a dict of chat template variables, e.g. {"enable_thinking": false}',
        )
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise InvalidFieldTypeError(
                f"chat_template_kwargs[{key!r}]", key, "a variable name (an identifier)"
            )
        if key in RESERVED_TEMPLATE_VARIABLES:
            raise UnsupportedFieldError(
                f"chat_template_kwargs.{key}", value, "the engine sets this template variable itself"
            )
        _check_json_value(value, f"chat_template_kwargs.{key}", 0)
    return dict(kwargs)


def _check_json_value(value: Any, where: str, depth: int, limit: int = MAX_TEMPLATE_KWARGS_DEPTH) -> None:
    if depth > limit:
        raise InvalidRangeError(where, "...", f"nested at most {limit} deep")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidFieldTypeError(where, value, "a finite number")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_json_value(v, f"{where}[{i}]", depth + 1, limit)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidFieldTypeError(f"{where}[{k!r}]", k, "a string key")
            _check_json_value(v, f"{where}.{k}", depth + 1, limit)
        return
    raise InvalidFieldTypeError(where, value, "a JSON value (string, number, bool, null, list or dict)")


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return check_text(content, f"{where}.content")
    if isinstance(content, list | tuple):
        texts = []
        for j, part in enumerate(content):
            part_type = part.get("type") if isinstance(part, Mapping) else None
            if part_type != "text":
                raise InvalidMessagesError(
                    f"{where}.content[{j}]",
                    f"only text parts ({{'type': 'text', 'text': ...}}) are supported (no model here reads "
                    f"images or audio); got type {_show(part_type)}",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidMessagesError(
                    f"{where}.content[{j}].text", f"must be a string; got {_show(text)}"
                )
            texts.append(check_text(text, f"{where}.content[{j}].text"))
        # OpenAI shows consecutive text parts to the model as one text; a newline keeps words from gluing.
        return "\n".join(texts)
    raise InvalidMessagesError(
        f"{where}.content", f"must be a string or a list of text parts; got {_show(content)}"
    )


def _check_prompt(prompt: Any) -> str | tuple[int, ...]:
    if isinstance(prompt, list | tuple) and len(prompt) == 1 and isinstance(prompt[0], str | list | tuple):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRangeError("prompt", prompt, "a non-empty string")
        return check_text(prompt, "prompt")
    if isinstance(prompt, list | tuple):
        if prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            for i, t in enumerate(prompt):
                if t > MAX_INT:  # the model's own vocabulary bound is checked where it is known (the engine)
                    raise InvalidRangeError(f"prompt[{i}]", t, f"a token id in [0, {MAX_INT}]")
            return tuple(prompt)
        if len(prompt) > 1 and all(isinstance(p, str | list | tuple) for p in prompt):
            raise UnsupportedFieldError(
                "prompt", prompt, "one prompt per request; send one request per prompt"
            )
    raise InvalidFieldTypeError(
        "prompt", prompt, "a non-empty string or a non-empty list of token ids (non-negative integers)"
    )


def _check_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list | tuple):
        raise InvalidFieldTypeError("stop", stop, "a string or a list of strings")
    if len(items) > MAX_STOP_STRINGS:
        raise InvalidRangeError("stop", stop, f"at most {MAX_STOP_STRINGS} strings")
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise InvalidFieldTypeError("stop", stop, "a string or a list of strings")
        if not s:
            # An empty stop string would match at once and end every reply before its first character.
            raise InvalidRangeError("stop", stop, "non-empty strings")
        check_text(s, "stop" if isinstance(stop, str) else f"stop[{i}]")
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
    return None if value is None else _finite(value, key)


def _finite(value: Any, field: str) -> float:
    """``value`` as a finite float: an int too large for a float (10**400) is a range error like an infinite one."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidFieldTypeError(field, value, "a finite number")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float: a value, not a type, out of range
        raise InvalidRangeError(
            field, value, "a finite number (this integer is beyond a float's range)"
        ) from None
    if not math.isfinite(number):
        raise InvalidFieldTypeError(field, value, "a finite number")
    return number


def _optional_int(d: Mapping[str, Any], key: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidFieldTypeError(key, value, "an integer")
    return value


def _optional_positive_int(d: Mapping[str, Any], key: str) -> int | None:
    value = _optional_int(d, key)
    if value is not None and value <= 0:
        raise InvalidRangeError(key, value, "> 0")
    if value is not None and value > MAX_INT:
        raise InvalidRangeError(key, value, f"at most {MAX_INT}")
    return value


def check_token_ids(ids: Any, vocab: int, field: str) -> None:
    """Every id in ``ids`` in [0, vocab): the model's own bound, checked once the model is known (the engine, the
    text-completion path before it decodes a prompt given as ids). ``field`` names the list: ``prompt[3]``."""
    for i, t in enumerate(ids):
        if not 0 <= t < vocab:
            raise InvalidRangeError(
                f"{field}[{i}]", t, f"a token id in [0, {vocab}) (the model's vocabulary)"
            )


def check_text(value: Any, field: str, what: str = "a string") -> str:
    """``value`` if it is a string UTF-8 can encode; a lone UTF-16 surrogate (which JSON's ``\\ud800`` escapes and
    JavaScript strings can hold) is refused here, naming the field, instead of failing in the tokenizer."""
    if not isinstance(value, str):
        raise InvalidFieldTypeError(field, value, what)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidFieldTypeError(
            field,
            value,
            f"valid Unicode text (a lone surrogate U+{ord(value[e.start]):04X} at index {e.start} cannot be "
            "encoded)",
        ) from None
    return value


# ---- load-time chat options -----------------------------------------------------------------------------------------

# WebLLM's ChatOptions (``reload(modelId, chatOpts)``) that we apply: how the model is loaded, and its sampling
# defaults, which a request's own values override (they become the model record's ``overrides``).
CHAT_OPTION_SAMPLING = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
CHAT_OPTIONS = ("context_window_size", "prefill_chunk_size", "chat_template", *CHAT_OPTION_SAMPLING)


@dataclass(frozen=True)
class ChatOptions:
    context_window_size: int | None = None  # tokens; None => the record's, else the GGUF's
    # tokens of one prefill step; None => the record's, else the default
    prefill_chunk_size: int | None = None
    chat_template: Any = None  # a template name, template text or ChatTemplate; None => the record's
    sampling: Mapping[str, float] = field(default_factory=dict)  # {CHAT_OPTION_SAMPLING key: default value}


def check_chat_options(opts: Any, where: str = "chatOpts") -> ChatOptions:
    """Validate one WebLLM ``ChatOptions`` dict (None: none); errors name ``where.key``."""
    # 1. A dict of known keys: WebLLM ignores unknown ones, so a misspelt option would silently do nothing.
    if opts is None:
        return ChatOptions()
    if not isinstance(opts, Mapping):
        raise InvalidFieldTypeError(where, opts, "a dict of chat options")
    for key in opts:
        if key not in CHAT_OPTIONS:
            raise UnsupportedFieldError(f"{where}.{key}", opts[key], f"supported: {', '.join(CHAT_OPTIONS)}")

    # 2. context_window_size, prefill_chunk_size: ints > 0.
    for key in ("context_window_size", "prefill_chunk_size"):
        n = opts.get(key)
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= MAX_INT):
            raise InvalidRangeError(f"{where}.{key}", n, f"an integer in [1, {MAX_INT}]")
    template = opts.get("chat_template")
    if isinstance(template, str):
        check_text(template, f"{where}.chat_template")

    # 3. The sampling defaults: the ranges a request's own values must be in (the same checks, renamed).
    given = {k: opts[k] for k in CHAT_OPTION_SAMPLING if opts.get(k) is not None}
    try:
        config = _check_generation(given, None)
    except InvalidRangeError as e:
        raise InvalidRangeError(f"{where}.{e.field}", e.value, e.allowed) from None
    except InvalidFieldTypeError as e:
        raise InvalidFieldTypeError(f"{where}.{e.field}", e.value, e.expected) from None
    return ChatOptions(
        context_window_size=opts.get("context_window_size"),
        prefill_chunk_size=opts.get("prefill_chunk_size"),
        chat_template=opts.get("chat_template"),
        sampling={k: getattr(config, k) for k in given},
    )


def chat_options_per_model(opts: Any, n_models: int) -> list[ChatOptions]:
    """WebLLM's ``chatOpts`` for ``n_models`` model ids: one dict for all of them, or a list of one per id."""
    if isinstance(opts, list | tuple):
        if len(opts) != n_models:
            raise InvalidRangeError("chatOpts", opts, f"one ChatOptions per model id ({n_models})")
        return [check_chat_options(o, f"chatOpts[{i}]") for i, o in enumerate(opts)]
    return [check_chat_options(opts)] * n_models


# ---- JSON at the boundaries -----------------------------------------------------------------------------------------
# The local endpoint's bodies and the worker's messages are JSON from outside. Python's json module recurses once per
# nesting level (100,000 "[" raise RecursionError, and Pyodide's stack is smaller than CPython's), so the depth is
# measured first, without recursion; NaN and Infinity (Python's extensions, not JSON) are refused.

MAX_JSON_DEPTH = 64  # nesting levels; an OpenAI request needs about 6, a JSON schema in one a few dozen
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*\\?(?:"|\Z)', re.S)  # an unterminated string runs to the end:
_JSON_OPENERS = re.compile(r"[\[{]|[\]}]")  # no backtracking, so the scan is linear in the length of the text


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``text`` nests more than ``limit`` levels (brackets inside strings do not count). Linear time,
    no recursion."""
    if text.count("[") + text.count("{") <= limit:
        return False  # not enough brackets to be that deep: no scan needed
    depth = 0
    for m in _JSON_OPENERS.finditer(_JSON_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_json(text: str, field: str = "body") -> Any:
    """``json.loads`` for JSON from outside: typed errors (``InvalidJSONError`` naming ``field``) for text that does
    not parse, nests deeper than ``MAX_JSON_DEPTH``, or holds NaN / Infinity."""
    if not isinstance(text, str):
        raise InvalidJSONError(field, f"expected JSON text, got a {type(text).__name__}")
    if json_too_deep(text):
        raise InvalidJSONError(field, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (
        ValueError,
        RecursionError,
    ) as e:  # JSONDecodeError is a ValueError; so is an integer of 5,000 digits
        raise InvalidJSONError(field, f"not JSON ({_show(str(e))})") from None
