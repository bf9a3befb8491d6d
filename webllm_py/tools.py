"""Tool calling: each model family's call format as data, the prompt side (tools and past calls rendered through the
model's own chat template), the grammar that constrains calls, and the parser that turns a reply's text into
OpenAI tool-call deltas.

Formats (``FORMATS``), detected from the chat template's source by ``tool_format``:

=========  ==============================================================  =========================================
family     a call as the model writes it                                   rules
=========  ==============================================================  =========================================
hermes     ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``  Qwen2.5/3, Hermes 2 Pro / 3; several
                                                                           calls, one block each, ``\\n`` between
llama3     ``{"name": "f", "parameters": {...}}``                          Llama 3.1 / 3.2 / 3.3: one call a reply,
                                                                           no marker (the JSON itself opens it)
mistral    ``[TOOL_CALLS][{"name": "f", "arguments": {...}, "id": "a1B2c3D4e"}]``  Mistral 7B v0.3 / Nemo: ids of 9
                                                                           alphanumerics, written by the model
generic    as hermes, described by our own system prompt                   templates without a tools branch
                                                                           (SmolLM2, TinyLlama, Phi-3.5, ...)
=========  ==============================================================  =========================================

How a request with tools runs (``ToolPlan``): the tools go to the template (``tools=``; generic: a system message of
ours), past assistant ``tool_calls`` get their ``arguments`` parsed from OpenAI's JSON string to an object first (the
templates ``tojson`` them), ids are mapped to the format's rule (Mistral: 9 alphanumerics). ``tool_choice`` decides
the grammar: ``auto`` arms it lazily at the format's marker (text until then; a marker that is a control token, such
as Mistral's ``[TOOL_CALLS]``, arms it by id), ``required`` and a named function constrain from the first token
(a control-token marker is then appended to the prompt instead of sampled), ``none`` applies no grammar. Every
call's arguments are constrained by its function's ``parameters`` schema. ``ToolCallParser`` follows the reply:
content until the marker (a possible marker prefix is held back, as ``StopStringFilter`` holds stop prefixes), then
per call a header delta (index, id, type, name, ``arguments: ""``) and argument pieces as they are generated.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidMessagesError

# ---- formats ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolFormat:
    """One family's tool-call syntax. A reply's calls are ``first CALL (sep CALL)* last``, each CALL
    ``open {"name": "<f>", "<args_key>": <arguments>[, "id": "<id>"]} close``.

    ``marker``: the text that starts the calls (the lazy grammar's trigger under ``tool_choice: auto``); it is
    the beginning of ``first + open``. ``max_calls``: None for any number. ``id_chars``: the model writes each
    call's id of that many alphanumerics after the arguments (0: ids are ours). ``native``: the template renders
    tools and calls itself (False: generic, we describe the tools in a system message)."""

    name: str
    marker: str
    open: str = ""
    close: str = ""
    first: str = ""
    sep: str = ""
    last: str = ""
    args_key: str = "arguments"
    id_chars: int = 0
    max_calls: int | None = None
    native: bool = True
    ignore: tuple[str, ...] = ()  # control texts a model may put before a call (Llama's <|python_tag|>)

    @property
    def head(self) -> str:
        """The text every reply that calls starts with, up to the first call's name."""
        return self.first + self.open + '{"name": "'


HERMES = ToolFormat("hermes", marker="<tool_call>", open="<tool_call>\n", close="\n</tool_call>", sep="\n")
GENERIC = ToolFormat(
    "generic", marker="<tool_call>", open="<tool_call>\n", close="\n</tool_call>", sep="\n", native=False
)
LLAMA3 = ToolFormat(
    "llama3", marker='{"name": ', args_key="parameters", max_calls=1, ignore=("<|python_tag|>",)
)
MISTRAL = ToolFormat("mistral", marker="[TOOL_CALLS]", first="[TOOL_CALLS][", sep=", ", last="]", id_chars=9)
FORMATS = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, GENERIC)}


def tool_format(template_source: str | None) -> ToolFormat:
    """The format a chat template's tools branch uses, recognized from its markers; ``GENERIC`` for a template with
    no tools branch or one we do not know (its tool branch is then not used: ``native`` is False)."""
    src = template_source or ""
    if not re.search(r"\btools\b", src):
        return GENERIC
    if "<tool_call>" in src:
        return HERMES
    if "[TOOL_CALLS]" in src and "[ARGS]" not in src:
        spaced = "[TOOL_CALLS] [" in src  # Mistral 7B v0.3 writes a space there, Nemo does not
        return MISTRAL if not spaced else ToolFormat(**{**MISTRAL.__dict__, "first": "[TOOL_CALLS] ["})
    if '"parameters": ' in src and "<|start_header_id|>" in src:
        return LLAMA3
    return GENERIC


# ---- the request side -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    name: str  # [A-Za-z0-9_-], at most 64 characters (OpenAI's rule)
    parameters: Mapping[str, Any]  # JSON Schema of the arguments object
    description: str | None = None
    strict: bool | None = None

    def to_tool(self) -> dict[str, Any]:
        """OpenAI's ``{"type": "function", "function": {...}}``, as templates and transformers take it."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        fn["parameters"] = dict(self.parameters)
        if self.strict is not None:
            fn["strict"] = self.strict
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolCall:
    """One call of an assistant message (OpenAI's ``{id, type: "function", function: {name, arguments}}``)."""

    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ToolRequest:
    """A request's ``tools``, ``tool_choice`` and ``parallel_tool_calls``, validated (protocol.py)."""

    functions: tuple[Function, ...]
    choice: str = "auto"  # "none" | "auto" | "required" | a function's name (forced)
    parallel: bool = True

    @property
    def forced(self) -> bool:
        """The reply must be calls from its first token on."""
        return self.choice not in ("none", "auto")


def generic_system_text(functions: Sequence[Function]) -> str:
    """The system text that describes the tools to a model whose template has no tools branch."""
    lines = "\n".join(json.dumps(f.to_tool(), ensure_ascii=False) for f in functions)
    return (
        "You can call functions to answer. Their signatures, one JSON object per line:\n"
        f"<tools>\n{lines}\n</tools>\n"
        "To call a function, answer with\n"
        '<tool_call>\n{"name": <function name>, "arguments": <the arguments as a JSON object>}\n</tool_call>\n'
        "once for each call, and nothing else."
    )


def call_text(fmt: ToolFormat, calls: Sequence[ToolCall]) -> str:
    """Calls as the model writes them in ``fmt`` (the generic format's history, and tests)."""
    parts = []
    for c in calls:
        body = '{"name": ' + json.dumps(c.name, ensure_ascii=False) + ', "' + fmt.args_key + '": '
        body += _compact(c.arguments)
        if fmt.id_chars:
            body += ', "id": ' + json.dumps(c.id)
        parts.append(fmt.open + body + "}" + fmt.close)
    return fmt.first + fmt.sep.join(parts) + fmt.last


def _compact(arguments: str) -> str:
    """OpenAI's arguments string as the grammar spells JSON (json.dumps separators); unparsable text unchanged."""
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        return arguments


def mistral_id(call_id: str) -> str:
    """A call id as Mistral's templates require (9 alphanumerics): kept if it is one, else derived from it (the
    same id always maps to the same one, so a call and its result still match)."""
    if len(call_id) == 9 and call_id.isalnum() and call_id.isascii():
        return call_id
    digest = hashlib.sha256(call_id.encode()).digest()
    alphabet = string.ascii_letters + string.digits
    return "".join(alphabet[b % len(alphabet)] for b in digest[:9])


def template_messages(
    messages: Sequence[Mapping[str, Any]], fmt: ToolFormat, tools: ToolRequest | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (OpenAI shape, already validated) and tools as this format's template takes them.

    Native formats: assistant ``tool_calls`` with their arguments as objects (templates ``tojson`` them; a string
    would be written double-encoded), ids mapped to the format's rule; the tools list passed as ``tools=``.
    Generic: past calls written into the assistant's content in the generic syntax, tool results as user turns
    wrapped in ``<tool_response>``, and the tools described in the system message."""
    out: list[dict[str, Any]] = []
    for m in messages:
        d = dict(m)
        calls = [_as_call(c) for c in d.get("tool_calls") or ()]
        if fmt.native:
            if calls:
                d["tool_calls"] = [_template_call(c, fmt) for c in calls]
                if d.get("content") is None:
                    d["content"] = ""
            if d.get("role") == "tool" and fmt.id_chars:
                d["tool_call_id"] = mistral_id(d["tool_call_id"])
        else:
            if calls:
                d.pop("tool_calls")
                text = d.get("content") or ""
                d["content"] = (text + "\n" if text else "") + call_text(fmt, calls)
            if d.get("role") == "tool":
                d = {
                    "role": "user",
                    "content": f"<tool_response>\n{d.get('content') or ''}\n</tool_response>",
                }
        out.append(d)
    if tools is None:
        return out, None
    if fmt.native:
        return out, [f.to_tool() for f in tools.functions]
    text = generic_system_text(tools.functions)
    if out and out[0].get("role") == "system":
        system = out[0].get("content") or ""
        out[0] = {**out[0], "content": (system + "\n\n" if system else "") + text}
    else:
        out.insert(0, {"role": "system", "content": text})
    return out, None


def _as_call(c: Any) -> ToolCall:
    if isinstance(c, ToolCall):
        return c
    fn = c["function"]
    return ToolCall(c["id"], fn["name"], fn["arguments"])


def _template_call(c: ToolCall, fmt: ToolFormat) -> dict[str, Any]:
    try:
        arguments: Any = json.loads(c.arguments)
    except ValueError:
        raise InvalidMessagesError(
            "messages.tool_calls.function.arguments",
            f"must be a JSON object (as text) for the chat template; got {c.arguments[:80]!r}",
        ) from None
    call_id = mistral_id(c.id) if fmt.id_chars else c.id
    return {"id": call_id, "type": "function", "function": {"name": c.name, "arguments": arguments}}


# ---- the grammar --------------------------------------------------------------------------------------------------


def calls_grammar(fmt: ToolFormat, tools: ToolRequest, *, marker_is_token: bool) -> tuple[str, Any]:
    """(cache key, build) of the grammar of this request's calls: the functions ``tool_choice`` allows, their
    arguments by their schemas, at most one call when ``parallel_tool_calls`` is false, a function is forced, or
    the family has one call a reply. With a marker that is one control token (``marker_is_token``) the grammar
    starts after it (the token is the lazy matcher's trigger, or prefilled)."""
    from .grammar import Grammar

    functions = tools.functions
    if tools.forced and tools.choice != "required":
        functions = tuple(f for f in functions if f.name == tools.choice)
    max_calls = fmt.max_calls
    if not tools.parallel or (tools.forced and tools.choice != "required"):
        max_calls = 1
    first = fmt.first.removeprefix(fmt.marker) if marker_is_token else fmt.first
    pairs = [(f.name, dict(f.parameters)) for f in functions]
    strict = all(f.strict is not False for f in functions)
    options = (fmt.open, fmt.close, fmt.args_key, fmt.id_chars, first, fmt.sep, fmt.last, max_calls, strict)

    def build() -> Any:
        return Grammar.calls(
            pairs,
            open=fmt.open,
            close=fmt.close,
            args_key=fmt.args_key,
            id_chars=fmt.id_chars,
            first=first,
            sep=fmt.sep,
            last=fmt.last,
            max_calls=max_calls,
            strict=strict,
        )

    return Grammar.calls_key(pairs, *options), build


# ---- the reply side -----------------------------------------------------------------------------------------------

# Parser events: ("content", text) | ("call", index, id | None, name) | ("args", index, text) | ("id", index, id)
Event = tuple[Any, ...]


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class _Call:
    name: str
    id: str | None
    arguments: str = ""
    complete: bool = False


@dataclass
class ToolCallParser:
    """A reply's text (as the stop-string filter lets it out) -> content and tool-call events.

    ``forced``: the reply is calls from its start (``required`` / a named function); ``skipped``: the part of the
    format's opening the prompt already holds (a control-token marker prefilled). Without ``forced`` the parser
    starts in text and looks for the marker, holding back a tail that may be its beginning and the whitespace
    before it. Once a call's head has come, the armed grammar guarantees the rest; a marker that is not followed by
    a call's head is prose (the lazy matcher forgets such a trigger too) and goes out as content."""

    fmt: ToolFormat
    forced: bool = False
    skipped: str = ""
    calls: list[_Call] = field(default_factory=list)

    # States: "text" (before the marker), then per call "head" (the literal up to the name), "name", "key" (up to
    # the arguments), "args", "id_key" and "id" (Mistral), "tail" (up to the call's end), then "between" (the next
    # call or the end) and "end".
    _NEXT = {"head": "name", "key": "args", "id_key": "id", "tail": "between"}

    def __post_init__(self) -> None:
        self._buf = ""  # text not handed out yet
        self._name = ""  # the name of the call whose head is being read
        self._held_ws = (
            ""  # whitespace between content and the marker (content again if the marker was prose)
        )
        self._state = "head" if self.forced else "text"
        self._expect = self.fmt.head.removeprefix(self.skipped) if self.forced else ""
        self._depth = 0  # of the arguments' JSON
        self._in_string = False
        self._escape = False

    @property
    def complete_calls(self) -> list[_Call]:
        return [c for c in self.calls if c.complete]

    def push(self, text: str) -> list[Event]:
        self._buf += text
        out: list[Event] = []
        while self._buf and self._step(out):
            pass
        return out

    def finish(self) -> list[Event]:
        """The reply ended. Held-back text before any call is content; a call cut before its arguments began is
        dropped, one cut inside them stays as it is (finish_reason "length")."""
        out: list[Event] = []
        if self._state == "text" or (self._state == "head" and not self.forced and not self.calls):
            text = (self._held_ws if self._state == "head" else "") + self._buf
            if text:
                out.append(("content", text))
        elif self._state == "end" and self._buf:
            out.append(("content", self._buf))
        self._buf = ""
        return out

    def _step(self, out: list[Event]) -> bool:  # noqa: C901 - one branch per state
        fmt, buf, state = self.fmt, self._buf, self._state
        if state == "text":
            at = buf.find(fmt.marker)
            if at < 0:
                keep = max(_held_prefix(buf, t + fmt.marker) for t in ("", *fmt.ignore))
                shown = buf[: len(buf) - keep].rstrip()
                if shown:
                    out.append(("content", shown))
                self._buf = buf[len(shown) :]
                return False
            before = buf[:at]
            for ignored in fmt.ignore:
                before = before.rstrip().removesuffix(ignored)
            before = before.rstrip()
            if before:
                out.append(("content", before))
            self._held_ws = buf[len(before) : at]
            self._buf = buf[at:]
            self._state, self._expect = "head", fmt.head
            return True
        if state in self._NEXT:
            lit = self._expect
            if buf.startswith(lit):
                self._buf = buf[len(lit) :]
                self._state = self._NEXT[state]
                if state == "key":  # the call's head is complete: it exists from now on
                    call = _Call(self._name, None if fmt.id_chars else new_call_id())
                    self.calls.append(call)
                    out.append(("call", len(self.calls) - 1, call.id, call.name))
                elif state == "tail":
                    self.calls[-1].complete = True
                    if fmt.max_calls is not None and len(self.calls) >= fmt.max_calls:
                        self._state = "end"
                return True
            if lit.startswith(buf):
                return False  # wait for more
            if state == "head" and not self.forced and not self.calls:
                # A marker in prose: it and what came before it are content; look for the next one after it.
                cut = len(fmt.marker)
                out.append(("content", self._held_ws + buf[:cut]))
                self._buf, self._held_ws, self._state = buf[cut:], "", "text"
                return True
            self._state = "end"  # off the format after a call began (only possible without a grammar)
            return True
        if state in ("name", "id"):
            at = buf.find('"')
            if at < 0:
                return False
            value, self._buf = buf[:at], buf[at + 1 :]
            if state == "name":
                self._name = value
                self._state, self._expect = "key", ', "' + fmt.args_key + '": '
            else:
                self.calls[-1].id = value
                out.append(("id", len(self.calls) - 1, value))
                self._state, self._expect = "tail", "}" + fmt.close
            return True
        if state == "args":
            n = self._json_value_end(buf)
            piece = buf if n is None else buf[:n]
            self.calls[-1].arguments += piece
            out.append(("args", len(self.calls) - 1, piece))
            self._buf = "" if n is None else buf[n:]
            if n is None:
                return False
            self._state, self._expect = ("id_key", ', "id": "') if fmt.id_chars else ("tail", "}" + fmt.close)
            return True
        if state == "between":
            nxt = fmt.sep + fmt.open + '{"name": "'
            if buf.startswith(nxt):
                self._buf, self._state = buf[len(nxt) :], "name"
                return True
            if fmt.last and buf.startswith(fmt.last):
                self._buf, self._state = buf[len(fmt.last) :], "end"
                return True
            if nxt.startswith(buf) or fmt.last.startswith(buf):
                return False
            self._state = "end"
            return True
        # "end": nothing follows the calls under a grammar; whatever does is content
        out.append(("content", buf))
        self._buf = ""
        return False

    def _json_value_end(self, buf: str) -> int | None:
        """Where the arguments' JSON value ends in ``buf`` (continuing the scan of earlier pieces), or None."""
        for i, ch in enumerate(buf):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return None


def _held_prefix(buf: str, marker: str) -> int:
    """Length of the longest tail of ``buf`` that is a proper prefix of ``marker``."""
    for k in range(min(len(buf), len(marker) - 1), 0, -1):
        if marker.startswith(buf[-k:]):
            return k
    return 0
