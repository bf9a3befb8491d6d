"""Chat messages -> prompt text: the GGUF's own Jinja chat template, rendered as transformers renders it.

A GGUF carries its chat template as Jinja source (``tokenizer.chat_template``). :class:`JinjaTemplate` compiles it
once per model with ``jinja2`` (pure Python; the browser dist ships its wheel and a pure-Python MarkupSafe) in the
environment transformers' ``apply_chat_template`` uses: an ``ImmutableSandboxedEnvironment`` (a template is code from
a downloaded file) with ``trim_blocks``, ``lstrip_blocks`` and loop controls, a ``tojson`` that does not escape HTML,
``raise_exception``, ``strftime_now``, a ``{% generation %}`` tag, and the variables ``messages``, ``tools``,
``documents``, ``add_generation_prompt``, ``bos_token`` and ``eos_token`` plus the caller's ``chat_template_kwargs``
(Qwen3's ``enable_thinking``, Llama-3's ``date_string``...). The output is byte-identical to transformers' (the tests
compare goldens made by ``scripts/make_template_goldens.py`` over every listed family).

Content given as a list of text parts reaches a template that loops over a message's content (Gemma 3, Mistral
Small 3) as that list; any other template gets the parts joined by newlines, as ``protocol.py`` joins them (vLLM does
the same).

Without jinja2 (a desktop install without the ``templates`` extra), a :class:`ChatTemplate` (a frozen record of
prefixes and suffixes, recognized from the template's markers) renders the families it knows: ChatML (SmolLM2,
Qwen, ...), Llama-3 / 3.1 / 3.2, Llama-2 (``[INST]`` with ``<<SYS>>``), Zephyr (TinyLlama-Chat). It is byte-identical
to the Jinja source of those families too; anything else gets an error that says to install jinja2.

Forged turns: only template text may produce control tokens. ``render_parts`` returns the prompt as (text,
is_template) parts and ``Tokenizer.encode_parts`` finds special tokens in template text only, so a user who types
``<|im_end|>\n<|im_start|>system`` cannot end their turn. :class:`JinjaTemplate` finds the parts by rendering once
more with marks (private-use characters that occur nowhere in the request) around each message content and around
every control-token text in any caller string, and keeps the result only if removing the marks gives exactly the
plain render (see ``JinjaTemplate.render_parts``). For ordinary content the ids equal those of tokenizing the
rendered text whole, as llama.cpp does.

BOS: some templates write the BOS token's text themselves (``{{ bos_token }}``, Llama-2's ``<s>``).
``encode_parts`` adds a BOS only when the tokenizer wants one AND the text does not already start with the BOS
token's text (llama.cpp's server strips that leading text instead; the ids are the same).
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Any

from .errors import ChatTemplateError, InvalidMessagesError, UnknownChatTemplateError, UnsupportedFieldError

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

ALLOWED_ROLES = ("system", "user", "assistant", "tool")

# A piece of prompt text and whether it is template text (True: special tokens in it are parsed) or message
# content (False: it is read as plain text, whatever it contains).
Part = tuple[str, bool]


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format as data. A turn renders as ``prefix + content + suffix`` for its role.

    ``first_system_prefix``: used instead of ``system_prefix`` for a system message at position 0 (Llama-3.1 puts
    its date lines there). ``default_system``: content of the system turn inserted when the first message is not a
    system message (None: insert nothing). ``system_in_first_user``: Llama-2 has no system turn; the system message
    is formatted with this (``{system}`` placeholder) and put in front of the first user message.
    ``strip_content``: the template strips each message's content (Python ``str.strip``). ``alternate``: roles must
    go user, assistant, user, ... (after an optional leading system message). ``date_format``: the template writes
    today's date (``strftime_now``); ``{date}`` in the prefixes is replaced by it.

    Tool results: ``tool_prefix`` / ``tool_suffix`` around each one (``tool_prefix`` None: the template has no tool
    role); ``tool_group_prefix`` / ``tool_group_suffix`` around each run of consecutive ones (Qwen2.5 puts them in
    one user turn); ``tool_json``: the content is written as a JSON string (Llama-3.1's ``tojson``), unstripped.
    """

    name: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    system_prefix: str = ""
    system_suffix: str = ""
    first_system_prefix: str | None = None
    default_system: str | None = None
    system_in_first_user: str | None = None
    bos_text: str = ""
    generation_prompt: str = ""
    strip_content: bool = False
    alternate: bool = False
    date_format: str | None = None
    tool_prefix: str | None = None
    tool_suffix: str = ""
    tool_group_prefix: str = ""
    tool_group_suffix: str = ""
    tool_json: bool = False
    # Text that ends the assistant's turn: generation stops there (as text, and as token when one exists).
    stop_strings: tuple[str, ...] = ()
    stop_token_texts: tuple[str, ...] = ()

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text for ``messages`` (OpenAI shape: ``role`` and ``content``), as the Jinja template gives."""
        parts = self.render_parts(
            messages, add_generation_prompt=add_generation_prompt, template_kwargs=template_kwargs
        )
        return "".join(text for text, _ in parts)

    def render_parts(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[Part]:
        """``render``'s text as (text, is_template) parts, for ``Tokenizer.encode_parts``."""
        if template_kwargs:
            raise UnsupportedFieldError(
                "chat_template_kwargs",
                dict(template_kwargs),
                f"the {self.name} chat template is rendered from data, not Jinja, so it takes no template "
                "variables (install jinja2 to render the model's own template)",
            )
        msgs = [(m["role"], content) for m, content in zip(messages, _contents(messages), strict=True)]
        if not msgs:
            raise InvalidMessagesError("messages", "at least one message is required")

        def clean(parts: list[Part]) -> list[Part]:
            return _strip_parts(parts) if self.strip_content else parts

        date = time.strftime(self.date_format) if self.date_format else ""
        out: list[Part] = [(self.bos_text, True)]

        system: str | None = None
        system_is_template = False  # a default system prompt is template text: it is written in the template
        if msgs[0][0] == "system":
            system = msgs[0][1]
            msgs = msgs[1:]
        elif self.default_system is not None:
            system = self.default_system
            system_is_template = True
        offset = len(messages) - len(msgs)
        if self.tool_prefix is None:
            for i, (role, _) in enumerate(msgs):
                if role == "tool":
                    raise InvalidMessagesError(
                        f"messages[{i + offset}].role",
                        f"the {self.name} chat template has no role for tool results; use a model whose template "
                        "has one (ChatML, Llama-3) or pass the result in a user message",
                    )

        if self.system_in_first_user is not None:
            # Llama-2: no system turn; the system text joins the first user message before stripping.
            for i, (role, _) in enumerate(msgs):
                if role != ("user" if i % 2 == 0 else "assistant"):
                    raise InvalidMessagesError(
                        f"messages[{i + offset}].role",
                        f"{self.name} needs roles to alternate user/assistant/user/... after an optional first "
                        f"system message; got {role!r}",
                    )
            for i, (role, content) in enumerate(msgs):
                body: list[Part] = [(content, False)]
                if i == 0 and system is not None:
                    head, _, tail = self.system_in_first_user.partition("{system}")
                    body = [(head, True), (system, system_is_template), (tail, True), *body]
                prefix, suffix = (
                    (self.user_prefix, self.user_suffix)
                    if role == "user"
                    else (self.assistant_prefix, self.assistant_suffix)
                )
                out += [(prefix, True), *clean(body), (suffix, True)]
        else:
            if system is not None:
                prefix = (
                    self.first_system_prefix if self.first_system_prefix is not None else self.system_prefix
                )
                out += [
                    (prefix.replace("{date}", date), True),
                    *clean([(system, system_is_template)]),
                    (self.system_suffix, True),
                ]
            for i, (role, content) in enumerate(msgs):
                if role == "tool":
                    if i == 0 or msgs[i - 1][0] != "tool":
                        out.append((self.tool_group_prefix, True))
                    text = json.dumps(content, ensure_ascii=False) if self.tool_json else content
                    body = [(text, False)] if self.tool_json else clean([(content, False)])
                    out += [(self.tool_prefix, True), *body, (self.tool_suffix, True)]
                    if i + 1 == len(msgs) or msgs[i + 1][0] != "tool":
                        out.append((self.tool_group_suffix, True))
                    continue
                if self.alternate and role != ("user" if i % 2 == 0 else "assistant"):
                    raise InvalidMessagesError(
                        f"messages[{i + offset}].role",
                        f"{self.name} needs roles to alternate user/assistant/user/...; got {role!r}",
                    )
                prefix, suffix = self._affixes(role)
                out += [(prefix, True), *clean([(content, False)]), (suffix, True)]
        if add_generation_prompt:
            out.append((self.generation_prompt, True))
        return [(text, is_template) for text, is_template in out if text]

    def _affixes(self, role: str) -> tuple[str, str]:
        if role == "user":
            return self.user_prefix, self.user_suffix
        if role == "assistant":
            return self.assistant_prefix, self.assistant_suffix
        return self.system_prefix, self.system_suffix


def _strip_parts(parts: list[Part]) -> list[Part]:
    """``str.strip`` of the parts' concatenation, keeping the parts apart."""
    parts = list(parts)
    while parts and not parts[0][0].strip():
        parts.pop(0)
    if parts:
        parts[0] = (parts[0][0].lstrip(), parts[0][1])
    while parts and not parts[-1][0].strip():
        parts.pop()
    if parts:
        parts[-1] = (parts[-1][0].rstrip(), parts[-1][1])
    return parts


def _contents(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each message's content as one string; checks roles and content types on the way."""
    out: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InvalidMessagesError(
                f"messages[{i}]", f"must be an object with role and content; got {m!r}"
            )
        role = m.get("role")
        if role not in ALLOWED_ROLES:
            raise InvalidMessagesError(
                f"messages[{i}].role", f"role {role!r} is not supported; allowed: {', '.join(ALLOWED_ROLES)}"
            )
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            out.append(content)
            continue
        if not isinstance(content, list):
            raise InvalidMessagesError(
                f"messages[{i}].content",
                f"must be a string or a list of text parts; got {type(content).__name__}",
            )
        texts: list[str] = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, Mapping)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise InvalidMessagesError(
                    f"messages[{i}].content[{j}]",
                    f'only {{"type": "text", "text": ...}} parts are supported; got {kind!r}',
                )
            texts.append(part["text"])
        out.append(join_text_parts(texts))
    return out


# ---- the known families -------------------------------------------------------------------------------------------


def chatml(
    default_system: str | None = None, name: str = "chatml", *, qwen_tools: bool = False
) -> ChatTemplate:
    """ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; ``default_system`` as in SmolLM2 / Qwen.

    Tool results: a ``tool`` turn (the generic template writes any role's name), or with ``qwen_tools`` Qwen2.5's
    ``<tool_response>`` blocks, a run of them in one user turn."""
    tools = (
        {
            "tool_prefix": "\n<tool_response>\n",
            "tool_suffix": "\n</tool_response>",
            "tool_group_prefix": "<|im_start|>user",
            "tool_group_suffix": "<|im_end|>\n",
        }
        if qwen_tools
        else {"tool_prefix": "<|im_start|>tool\n", "tool_suffix": "<|im_end|>\n"}
    )
    return ChatTemplate(
        name=name,
        system_prefix="<|im_start|>system\n",
        system_suffix="<|im_end|>\n",
        user_prefix="<|im_start|>user\n",
        user_suffix="<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_suffix="<|im_end|>\n",
        default_system=default_system,
        generation_prompt="<|im_start|>assistant\n",
        stop_strings=("<|im_end|>",),
        stop_token_texts=("<|im_end|>",),
        **tools,
    )


_L3_HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"

# meta-llama/Meta-Llama-3-8B-Instruct: every message "<|start_header_id|>role<|end_header_id|>\n\n" + trim + eot.
LLAMA_3 = ChatTemplate(
    name="llama-3",
    system_prefix=_L3_HEADER.format("system"),
    system_suffix="<|eot_id|>",
    user_prefix=_L3_HEADER.format("user"),
    user_suffix="<|eot_id|>",
    assistant_prefix=_L3_HEADER.format("assistant"),
    assistant_suffix="<|eot_id|>",
    bos_text="<|begin_of_text|>",
    generation_prompt=_L3_HEADER.format("assistant"),
    strip_content=True,
    tool_prefix=_L3_HEADER.format("tool"),  # the generic template writes any role's name
    tool_suffix="<|eot_id|>",
    stop_strings=("<|eot_id|>",),
    stop_token_texts=("<|eot_id|>", "<|eom_id|>"),
)

# Llama-3.1 (and 3.2, which writes today's date): a system turn always comes first, with knowledge/date lines.
_L31_SYSTEM = _L3_HEADER.format("system") + "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
LLAMA_3_1 = replace(
    LLAMA_3,
    name="llama-3.1",
    first_system_prefix=_L31_SYSTEM.replace("{date}", "26 Jul 2024"),
    default_system="",
    tool_prefix=_L3_HEADER.format("ipython"),
    tool_json=True,
)
LLAMA_3_2 = replace(LLAMA_3_1, name="llama-3.2", first_system_prefix=_L31_SYSTEM, date_format="%d %b %Y")

# meta-llama/Llama-2-7b-chat-hf: "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>".
LLAMA_2 = ChatTemplate(
    name="llama-2",
    user_prefix="<s>[INST] ",
    user_suffix=" [/INST]",
    assistant_prefix=" ",
    assistant_suffix=" </s>",
    system_in_first_user="<<SYS>>\n{system}\n<</SYS>>\n\n",
    strip_content=True,
    alternate=True,
    stop_strings=("</s>",),
    stop_token_texts=("</s>",),
)

# HuggingFaceH4/zephyr-7b-beta, TinyLlama-1.1B-Chat-v1.0: "<|role|>\n{content}</s>\n", prompt "<|assistant|>\n".
ZEPHYR = ChatTemplate(
    name="zephyr",
    system_prefix="<|system|>\n",
    system_suffix="</s>\n",
    user_prefix="<|user|>\n",
    user_suffix="</s>\n",
    assistant_prefix="<|assistant|>\n",
    assistant_suffix="</s>\n",
    generation_prompt="<|assistant|>\n",
    stop_strings=("</s>",),
    stop_token_texts=("</s>",),
)

CHATML = chatml()

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t for t in (CHATML, LLAMA_3, LLAMA_3_1, LLAMA_3_2, LLAMA_2, ZEPHYR)
}

# A ChatML default system prompt, written literally in the template: '<|im_start|>system\n...<|im_end|>'
# (the newline is a real one or a Jinja "\n" escape). A capture with Jinja syntax in it is an expression, not text.
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", re.DOTALL)


def _chatml_default_system(template: str) -> str | None:
    if "loop.first" not in template and "messages[0]" not in template:
        return None  # the template never looks at the first message, so it cannot insert a default
    for m in _CHATML_DEFAULT_SYSTEM.finditer(template):
        text = m.group(1)
        if not any(c in text for c in "'\"{}+"):
            return text.replace("\\n", "\n")
    return None


def recognize(gguf_template: str) -> ChatTemplate | None:
    """The template family of a GGUF chat template, from its markers; None when we do not know it."""
    t = gguf_template
    if "<|im_start|>" in t and "<|im_end|>" in t:
        return chatml(_chatml_default_system(t), qwen_tools="<tool_response>" in t)
    if "<|start_header_id|>" in t and "<|eot_id|>" in t:
        if "Cutting Knowledge Date" in t:
            return LLAMA_3_2 if "strftime_now" in t else LLAMA_3_1
        return LLAMA_3
    if "[INST]" in t and "<<SYS>>" in t:
        return LLAMA_2
    if "<|user|>" in t and "<|assistant|>" in t and "eos_token" in t and "<|end|>" not in t:
        return ZEPHYR
    return None


# ---- the GGUF's own template, rendered with jinja2 ----------------------------------------------------------------

# Variables the engine sets; chat_template_kwargs may not replace them (protocol.py refuses them by name).
RESERVED_TEMPLATE_VARIABLES = (
    "messages",
    "tools",
    "documents",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
)


class _TemplateRaised(Exception):
    """A template's own ``raise_exception(message)``: it refuses the messages."""


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: Any = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # transformers' filter: plain json.dumps (Jinja's own escapes <, >, & and ' for HTML).
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now()  # local time, as transformers; tests replace this function


def _strftime_now(fmt: str) -> str:
    return _now().strftime(fmt)


class _DictGlobal:
    """``dict(...)`` and ``dict.fromkeys(...)`` for templates, without handing them the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


@cache
def _environment() -> Any:
    """The Jinja environment every template is compiled in (built once; importing jinja2 costs ~0.3 s in Pyodide,
    so it happens at the first model load, not at import)."""
    import jinja2.ext
    import jinja2.nodes
    import jinja2.sandbox
    import jinja2.utils

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers marks the assistant's tokens with it for
        training masks): renders its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """``namespace()`` that refuses attribute names starting with ``_`` (no way to CPython internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's signature, so namespace(self=1) works
            self, rest = args[0], args[1:]
            for name in dict(*rest, **kwargs):
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, *rest, **kwargs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"a namespace attribute may not start with '_': {name!r}"
                )

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_DictGlobal(), namespace=Namespace
    )
    return env


@cache
def _compile(source: str) -> tuple[Any, bool]:
    """(compiled template, whether it loops over a message's content), once per template source."""
    import jinja2
    import jinja2.nodes

    env = _environment()
    try:
        tree = env.parse(source)
        compiled = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"the chat template does not compile (line {e.lineno}: {e.message}); pass another one with "
            f"chat_template=<name or Jinja source> when loading the model. Template start: {source[:120]!r}"
        ) from None
    takes_parts = False
    for loop in tree.find_all(jinja2.nodes.For):
        node = loop.iter
        while isinstance(node, jinja2.nodes.Filter):
            node = node.node
        if (isinstance(node, jinja2.nodes.Getattr) and node.attr == "content") or (
            isinstance(node, jinja2.nodes.Getitem)
            and isinstance(node.arg, jinja2.nodes.Const)
            and node.arg.value == "content"
        ):
            takes_parts = True
    return compiled, takes_parts


class JinjaTemplate:
    """A GGUF's Jinja chat template, compiled once; ``render`` equals transformers' ``apply_chat_template``.

    ``control_texts``: the vocabulary's control-token texts (``Tokenizer.control_texts``), which caller text must
    never turn into tokens; ``stop_texts``: its end-of-generation token texts, of which those the template writes
    become the stop strings (llama.cpp stops on those tokens; the strings catch a model that spells one out)."""

    def __init__(
        self,
        source: str,
        *,
        name: str = "jinja",
        bos_token: str = "",
        eos_token: str = "",
        control_texts: Sequence[str] = (),
        stop_texts: Sequence[str] | None = None,
    ):
        self.name = name
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._compiled, self.takes_content_parts = _compile(source)
        self._control = _ControlTexts(tuple(control_texts))
        if stop_texts is None:
            from .tokenizer import EOG_TEXTS  # llama.cpp's end-of-generation texts

            stop_texts = EOG_TEXTS
        stops = [t for t in stop_texts if t and t in source]
        if eos_token and "eos_token" in source and eos_token not in stops:
            stops.append(eos_token)
        self.stop_strings: tuple[str, ...] = tuple(stops)

    def __repr__(self) -> str:
        return f"JinjaTemplate(name={self.name!r}, source={self.source[:60]!r}...)"

    # ---- rendering ----

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt text for ``messages`` (OpenAI shape) as transformers renders this template."""
        return self._render(self._messages(messages), add_generation_prompt, template_kwargs, tools)

    def render_parts(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[Part]:
        """``render``'s text as (text, is_template) parts, for ``Tokenizer.encode_parts``.

        The template runs again on marked input: each message content with a mark pair at its inner edges (after
        leading, before trailing whitespace, so ``| trim`` still trims), and every control-token text in any
        caller string (content, names, tools, template kwargs) with another pair, as is a piece of one at a
        string's edge that template text next to it could complete. Marked text is content; the rest is template
        text. A render is used only if its marks pair up and removing them gives the plain render exactly; else
        the next, with fewer marks: (1) contents and control texts, (2) control texts with edge pieces, (3) whole
        control texts only. A template that rewrites a marked control text in all three (slices through it) is
        refused rather than guessed at."""
        msgs = self._messages(messages)
        plain = self._render(msgs, add_generation_prompt, template_kwargs, tools)
        given = (msgs, template_kwargs or {}, tools or [])
        marks = _free_marks(plain, given, self.source)
        for contents, edges in ((True, True), (False, True), (False, False)):
            marker = _Marker(marks, self._control, contents=contents, edges=edges)
            marked = marker.apply(given)
            if not marker.used:
                # Nothing in the request needed a mark: every text is where the plain render put it, and no caller
                # string holds or ends with control-token text, so tokenizing the parts as one text is safe.
                return [(plain, True)] if plain else []
            try:
                text = self._render(marked[0], add_generation_prompt, marked[1], marked[2] or tools)
            except (InvalidMessagesError, ChatTemplateError):
                continue
            parts = _split_marked(text, marks)
            if parts is not None and "".join(t for t, _ in parts) == plain:
                return parts
        raise InvalidMessagesError(
            "messages",
            "a message holds control-token text that this chat template rewrites, so it cannot be kept apart "
            "from the template's own tokens; remove texts such as "
            + ", ".join(repr(t) for t in self._control.found_in(given)[:3]),
        )

    def _messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The messages as the template sees them: plain dicts without None values (as transformers drops them),
        content a string, or a list of text parts for a template that loops over content."""
        texts = _contents(messages)  # checks roles and content types
        if not texts:
            raise InvalidMessagesError("messages", "at least one message is required")
        out = []
        for m, text in zip(messages, texts, strict=True):
            d = {k: v for k, v in m.items() if v is not None}
            content = m.get("content")
            if isinstance(content, list) and self.takes_content_parts:
                d["content"] = [{"type": "text", "text": p["text"]} for p in content]
            else:
                d["content"] = text
            out.append(d)
        return out

    def _render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        template_kwargs: Mapping[str, Any] | None,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> str:
        context = {
            **(template_kwargs or {}),
            "messages": messages,
            "tools": list(tools) if tools else None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        try:
            return self._compiled.render(**context)
        except _TemplateRaised as e:
            raise InvalidMessagesError(
                "messages", f"the model's chat template refuses these messages: {e}"
            ) from None
        except Exception as e:  # the template's own code failed: UndefinedError, SecurityError, TypeError...
            raise ChatTemplateError(
                f"the {self.name} chat template failed on these messages: {type(e).__name__}: {e}"
            ) from None


class _ControlTexts:
    """A vocabulary's control-token texts, with the lookups marking needs (built once per template)."""

    def __init__(self, texts: tuple[str, ...]):
        self.texts = tuple(sorted({t for t in texts if t}, key=lambda t: (-len(t), t)))  # longest first
        self.first_chars = frozenset(t[0] for t in self.texts)
        self.by_first: dict[str, list[str]] = {}
        for t in self.texts:
            self.by_first.setdefault(t[0], []).append(t)  # longest first, as self.texts
        chars = "".join(sorted(self.first_chars))
        self._starts = re.compile(f"[{re.escape(chars)}]") if chars else None
        self.max_len = max((len(t) for t in self.texts), default=0)
        self.prefixes = frozenset(t[:k] for t in self.texts for k in range(1, len(t)))
        self.suffixes = frozenset(t[k:] for t in self.texts for k in range(1, len(t)))

    def spans(self, s: str, *, edges: bool) -> list[tuple[int, int]]:
        """Sorted, disjoint (start, end) spans of ``s`` to mark: every control text (leftmost, then longest), and
        with ``edges`` the longest proper prefix of one ending the stripped text / proper suffix starting it."""
        spans: list[tuple[int, int]] = []
        if not self.texts:
            return spans
        if self._starts is not None and not self.first_chars.isdisjoint(s):
            at = 0
            for m in self._starts.finditer(s):
                i = m.start()
                if i < at:
                    continue
                for t in self.by_first[s[i]]:
                    if s.startswith(t, i):
                        spans.append((i, i + len(t)))
                        at = i + len(t)
                        break
        if edges:
            lo = len(s) - len(s.lstrip())
            hi = len(s.rstrip())
            for k in range(min(hi - lo, self.max_len - 1), 0, -1):
                if s[hi - k : hi] in self.prefixes:
                    if all(hi - k >= b or hi <= a for a, b in spans):
                        spans.append((hi - k, hi))
                    break
            for k in range(min(hi - lo, self.max_len - 1), 0, -1):
                if s[lo : lo + k] in self.suffixes:
                    if all(lo >= b or lo + k <= a for a, b in spans):
                        spans.append((lo, lo + k))
                    break
        return sorted(spans)

    def found_in(self, value: Any) -> list[str]:
        """The control texts that occur in any string inside ``value``."""
        found: list[str] = []
        for s in _strings(value):
            found += [t for t in self.texts if t in s and t not in found]
        return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


# Content open/close, control-text open/close.
_MARK_NAMES = 4


def _free_marks(*values: Any) -> str:
    """Four private-use characters that occur in none of ``values`` (the request and the template)."""
    used = set()
    for s in _strings(list(values)):
        used.update(s)
    free = "".join(
        itertools.islice((c for c in map(chr, range(0xE000, 0xF900)) if c not in used), _MARK_NAMES)
    )
    if len(free) < _MARK_NAMES:  # 6400 distinct private-use characters in one request: no mark left
        raise InvalidMessagesError(
            "messages", "uses every private-use character; no mark is left to keep it apart"
        )
    return free


class _Marker:
    """Puts marks into a copy of the request's strings (see ``JinjaTemplate.render_parts``)."""

    def __init__(self, marks: str, control: _ControlTexts, *, contents: bool, edges: bool):
        self.c_open, self.c_close, self.t_open, self.t_close = marks
        self.control = control
        self.contents = contents
        self.edges = edges
        self.used = False

    def apply(
        self, given: tuple[list[dict], Mapping[str, Any], Sequence[Any]]
    ) -> tuple[list[dict], dict, list]:
        messages, kwargs, tools = given
        out = []
        for m in messages:
            d = {k: (v if k == "content" else self._any(v)) for k, v in m.items()}
            content = m.get("content")
            if isinstance(content, str):
                d["content"] = self._content(content)
            elif isinstance(content, list):
                d["content"] = [{**p, "text": self._content(p["text"])} for p in content]
            out.append(d)
        return out, {k: self._any(v) for k, v in kwargs.items()}, [self._any(t) for t in tools]

    def _any(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._string(value)
        if isinstance(value, Mapping):
            return {k: self._any(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._any(v) for v in value]
        return value

    def _string(self, s: str) -> str:
        spans = self.control.spans(s, edges=self.edges)
        if not spans:
            return s
        self.used = True
        pieces, at = [], 0
        for a, b in spans:
            pieces += [s[at:a], self.t_open, s[a:b], self.t_close]
            at = b
        pieces.append(s[at:])
        return "".join(pieces)

    def _content(self, s: str) -> str:
        marked = self._string(s)
        if not self.contents or not s.strip():
            return marked
        self.used = True
        lo = len(marked) - len(marked.lstrip())
        hi = len(marked.rstrip())
        return marked[:lo] + self.c_open + marked[lo:hi] + self.c_close + marked[hi:]


def _split_marked(text: str, marks: str) -> list[Part] | None:
    """A marked render -> parts: text inside either kind of mark pair is content. None when the marks do not pair
    up (the template cut through a marked string), so the render cannot be trusted."""
    c_open, c_close, t_open, t_close = marks
    in_content = in_control = False
    parts: list[Part] = []
    for piece in re.split(f"([{re.escape(marks)}])", text):
        if piece == c_open:
            if in_content:
                return None
            in_content = True
        elif piece == c_close:
            if not in_content:
                return None
            in_content = False
        elif piece == t_open:
            if in_control:
                return None
            in_control = True
        elif piece == t_close:
            if not in_control:
                return None
            in_control = False
        elif piece:
            parts.append((piece, not (in_content or in_control)))
    return None if in_content or in_control else parts


def parts_after(parts: Sequence[Part], offset: int) -> list[Part]:
    """The parts of the text from character ``offset`` on (the new turn of a conversation whose start is in the
    KV cache already)."""
    out: list[Part] = []
    at = 0
    for text, is_template in parts:
        end = at + len(text)
        if end > offset:
            out.append((text[max(0, offset - at) :], is_template))
        at = end
    return out


def join_text_parts(texts: Sequence[str]) -> str:
    """Text parts of one message as one string, for templates that take a string: joined by newlines, as
    ``protocol.py`` joins them (OpenAI shows consecutive parts as one text; a newline keeps words apart)."""
    return "\n".join(texts)


# ---- choosing the template --------------------------------------------------------------------------------------

AnyTemplate = ChatTemplate | JinjaTemplate


def _looks_like_jinja(text: str) -> bool:
    return "{{" in text or "{%" in text


def get_chat_template(
    gguf_template: str | None,
    override: str | AnyTemplate | None = None,
    *,
    tokenizer: Tokenizer | None = None,
) -> AnyTemplate:
    """The template to chat with: ``override`` (a name from :data:`TEMPLATES`, Jinja source, or a template object)
    wins, else the GGUF's ``tokenizer.chat_template``, rendered with jinja2 (or, without jinja2, by the family
    recognized from its markers). ``tokenizer`` gives the BOS/EOS texts, the control tokens content must not
    produce and the end-of-generation texts."""
    if isinstance(override, ChatTemplate | JinjaTemplate):
        return override
    if override is not None:
        if override in TEMPLATES:
            return TEMPLATES[override]
        if not _looks_like_jinja(override):
            raise UnknownChatTemplateError(
                f"chat_template={override!r} is neither a template name we know ({', '.join(TEMPLATES)}) nor Jinja "
                "source"
            )
        return _from_source(override, tokenizer, "the chat_template override", "custom")
    if not gguf_template:
        raise UnknownChatTemplateError(
            "the GGUF has no tokenizer.chat_template. Pass one explicitly: chat_template=<name> when loading the "
            f"model (or the model record's chat_template override), with a name from: {', '.join(TEMPLATES)}; or "
            "Jinja source; or a webllm_py.conversation.ChatTemplate instance."
        )
    return _from_source(gguf_template, tokenizer, "the GGUF's tokenizer.chat_template", "gguf")


def _from_source(source: str, tokenizer: Tokenizer | None, what: str, name: str) -> AnyTemplate:
    try:
        import jinja2  # noqa: F401 - only whether it imports
    except ImportError:
        found = recognize(source)
        if found is not None:
            return found
        shown = repr(source[:200]) + (" ..." if len(source) > 200 else "")
        raise UnknownChatTemplateError(
            f"{what} needs jinja2 to render (install it: pip install 'webllm-py[templates]'; the browser dist ships "
            f"it), and it is not one of the families rendered without it ({', '.join(TEMPLATES)}): {shown}. Or "
            "pass chat_template=<one of those names> when loading the model."
        ) from None
    if tokenizer is None:
        return JinjaTemplate(source, name=name)

    def text(token_id: int | None) -> str:
        return tokenizer.id_to_token(token_id) if token_id is not None else ""

    return JinjaTemplate(
        source,
        name=name,
        bos_token=text(tokenizer.bos_id),
        eos_token=text(tokenizer.eos_id),
        control_texts=tokenizer.control_texts,
        stop_texts=[tokenizer.id_to_token(i) for i in sorted(tokenizer.eot_ids)],
    )
