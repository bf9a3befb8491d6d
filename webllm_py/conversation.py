"""Chat messages -> prompt text, with chat templates kept as data.

A GGUF carries its chat template as Jinja source (``tokenizer.chat_template``). We do not run Jinja (it is not in
Pyodide's standard library and a template is code); we recognize the template family by distinctive markers and
render it with a :class:`ChatTemplate`, a frozen record of prefixes and suffixes. The output is byte-identical to
what the Jinja template renders with Hugging Face's settings (``trim_blocks`` and ``lstrip_blocks``, transformers'
``tojson``); the tests check that against ``jinja2`` for every family.

Families: ChatML (SmolLM2, Qwen, ...), Llama-3 / 3.1 / 3.2, Llama-2 (``[INST]`` with ``<<SYS>>``), Zephyr
(TinyLlama-Chat: ``<|user|>\\n...</s>``).

Tool results (``role: "tool"``) render as each template renders them: generic ChatML and Llama-3 as a turn of their
own, Qwen2.5 as ``<tool_response>`` blocks in a user turn, Llama-3.1/3.2 as an ``ipython`` turn holding the content as
a JSON string. Llama-2 and Zephyr have no place for them: an error names the template.

``render_parts`` keeps template text and message content apart: ``Tokenizer.encode_parts`` finds special tokens
(``<|im_end|>``) in the template text only, so a user who types ``<|im_end|>`` cannot end their own turn; for
ordinary content the ids equal those of tokenizing the rendered text whole, as llama.cpp does.

BOS: some templates write the BOS token's text themselves (Llama-3 ``bos_text``, Llama-2 ``<s>`` in each user
prefix). ``encode_parts`` adds a BOS only when the tokenizer wants one AND the text does not already start with the
BOS token's text (llama.cpp's server strips that leading text instead; the ids are the same).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .errors import InvalidMessagesError, UnknownChatTemplateError

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

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (OpenAI shape: ``role`` and ``content``), as the Jinja template gives."""
        return "".join(
            text for text, _ in self.render_parts(messages, add_generation_prompt=add_generation_prompt)
        )

    def render_parts(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> list[Part]:
        """``render``'s text as (text, is_template) parts, for ``Tokenizer.encode_parts``."""
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
        # OpenAI concatenates text parts; we add no separator so nothing is invented.
        out.append("".join(texts))
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


def get_chat_template(gguf_template: str | None, override: str | ChatTemplate | None = None) -> ChatTemplate:
    """The ChatTemplate to use: ``override`` (a name from :data:`TEMPLATES` or an instance) wins, else the family
    recognized from the GGUF's ``tokenizer.chat_template``."""
    if isinstance(override, ChatTemplate):
        return override
    if override is not None:
        if override not in TEMPLATES:
            raise UnknownChatTemplateError(
                f"chat_template={override!r} is not a template name we know; known: {', '.join(TEMPLATES)}"
            )
        return TEMPLATES[override]
    found = recognize(gguf_template) if gguf_template else None
    if found is not None:
        return found
    shown = (
        "the GGUF has no tokenizer.chat_template"
        if not gguf_template
        else f"the GGUF's chat template is not one we recognize: {gguf_template[:200]!r}"
        + (" ..." if len(gguf_template) > 200 else "")
    )
    raise UnknownChatTemplateError(
        f"{shown}. Pass one explicitly: chat_template=<name> when loading the model (or the model record's "
        f"chat_template override), with a name from: {', '.join(TEMPLATES)}; or a "
        "webllm_py.conversation.ChatTemplate instance."
    )
