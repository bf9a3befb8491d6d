"""The recognized-template table (conversation.ChatTemplate, the fallback when jinja2 is not installed): its
rendering must equal the real Jinja templates, byte for byte."""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path

import jinja2
import jinja2.sandbox
import pytest

from webllm_py.conversation import (
    CHATML,
    LLAMA_2,
    LLAMA_3,
    LLAMA_3_1,
    LLAMA_3_2,
    TEMPLATES,
    ZEPHYR,
    ChatTemplate,
    get_chat_template,
    join_text_parts,
    recognize,
)
from webllm_py.errors import InvalidMessagesError, UnknownChatTemplateError, UnsupportedFieldError

DATA = Path(__file__).resolve().parent.parent / "data" / "chat_templates"


class T:
    """The real templates of the families the table knows (tests/data/chat_templates/README.md says where from)."""

    SMOLLM2 = (DATA / "smollm2.jinja").read_text()
    LLAMA2 = (DATA / "llama-2.jinja").read_text()
    LLAMA3 = (DATA / "llama-3.jinja").read_text()
    LLAMA31 = (DATA / "llama-3.1.jinja").read_text()
    LLAMA32 = (DATA / "llama-3.2.jinja").read_text()
    QWEN25 = (DATA / "qwen2.5.jinja").read_text()
    ZEPHYR = (DATA / "tinyllama-zephyr.jinja").read_text()
    PHI35 = (DATA / "phi-3.5.jinja").read_text()
    MISTRAL_NEMO = (DATA / "mistral-nemo.jinja").read_text()
    # Generic ChatML, as many fine-tunes ship it (no default system prompt).
    CHATML_PLAIN = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


def _raise_exception(msg: str) -> None:
    raise jinja2.exceptions.TemplateError(msg)


@cache
def _compiled(template: str) -> jinja2.Template:
    # transformers' apply_chat_template environment; compiled once per template (compiling dominates the time).
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    # transformers replaces Jinja's HTML-escaping tojson with plain json.dumps
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["strftime_now"] = time.strftime
    return env.from_string(template)


def jinja_render(
    template: str, messages: list[dict], *, bos: str, eos: str, add_generation_prompt: bool
) -> str:
    """What transformers' apply_chat_template renders."""
    return _compiled(template).render(
        messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=add_generation_prompt
    )


def plain(messages: list[dict]) -> list[dict]:
    """Jinja templates want string content; ours also takes text parts, which it joins."""
    out = []
    for m in messages:
        c = m["content"]
        out.append({**m, "content": c if isinstance(c, str) else join_text_parts([p["text"] for p in c])})
    return out


SYS = {"role": "system", "content": "You are a terse assistant."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "Paris."}
U2 = {"role": "user", "content": "And of Japan? 🗾"}

CONVERSATIONS = {
    "single": [U1],
    "system": [SYS, U1],
    "multi": [U1, A1, U2],
    "system_multi": [SYS, U1, A1, U2],
    "empty_user": [{"role": "user", "content": ""}],
    "empty_system": [{"role": "system", "content": ""}, U1],
    "ends_with_assistant": [U1, A1],
    "unicode": [{"role": "user", "content": "Привет! 你好 مرحبا नमस्ते 👨‍👩‍👧 e\u0301"}],
    "whitespace": [
        {"role": "system", "content": "  padded system \n"},
        {"role": "user", "content": "\n\t padded user  \n"},
        {"role": "assistant", "content": "  padded answer  "},
        {"role": "user", "content": " last "},
    ],
    "newlines": [{"role": "user", "content": "line 1\nline 2\n\nline 4"}],
    "specialish": [{"role": "user", "content": "<|im_start|> [INST] <<SYS>> </s> <|eot_id|>"}],
    "parts": [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Summarize: "}, {"type": "text", "text": "cats."}],
        }
    ],
    "long_multi": [SYS] + [U1, A1] * 5 + [U2],
}

# name -> (template source, the ChatTemplate it must be recognized as or None, bos text, eos text)
FAMILIES = {
    "smollm2": (T.SMOLLM2, None, "<|im_start|>", "<|im_end|>"),
    "chatml": (T.CHATML_PLAIN, None, "<|im_start|>", "<|im_end|>"),
    "qwen2.5": (T.QWEN25, None, "<|endoftext|>", "<|im_end|>"),
    "llama-3": (T.LLAMA3, LLAMA_3, "<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.1": (T.LLAMA31, LLAMA_3_1, "<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.2": (T.LLAMA32, LLAMA_3_2, "<|begin_of_text|>", "<|eot_id|>"),
    "llama-2": (T.LLAMA2, LLAMA_2, "<s>", "</s>"),
    "zephyr": (T.ZEPHYR, ZEPHYR, "<s>", "</s>"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("conv", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_jinja(family: str, conv: str, add_generation_prompt: bool) -> None:
    source, expected_template, bos, eos = FAMILIES[family]
    messages = CONVERSATIONS[conv]
    template = recognize(source)
    if expected_template is not None:
        assert template == expected_template
    want = jinja_render(
        source, plain(messages), bos=bos, eos=eos, add_generation_prompt=add_generation_prompt
    )
    got = template.render(messages, add_generation_prompt=add_generation_prompt)
    assert got == want, f"{family}/{conv}: first difference at {_first_diff(got, want)}:\n{got!r}\n{want!r}"


def _first_diff(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_smollm2_default_system_prompt() -> None:
    t = recognize(T.SMOLLM2)
    assert t.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    text = t.render([U1])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert t.stop_token_texts == ("<|im_end|>",)
    assert "<|im_end|>" in t.stop_strings


def test_plain_chatml_has_no_default_system() -> None:
    assert recognize(T.CHATML_PLAIN) == CHATML
    assert CHATML.render([U1]).startswith("<|im_start|>user\n")


def test_qwen_default_system_is_extracted() -> None:
    t = recognize(T.QWEN25)
    assert t.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_recognition_by_markers_not_whole_string() -> None:
    # A reformatted copy (extra whitespace, other comments) is still recognized.
    assert recognize("{# my copy #}\n" + T.LLAMA3 + "\n") == LLAMA_3
    assert recognize(T.LLAMA2.replace("{% endif %}", "{%- endif %}")) == LLAMA_2
    assert recognize(T.ZEPHYR) == ZEPHYR
    assert recognize(T.LLAMA31) == LLAMA_3_1
    assert recognize(T.LLAMA32) == LLAMA_3_2
    # Phi-3.5 uses <|user|> but ends turns with <|end|>: not Zephyr. Mistral uses [INST] without <<SYS>>.
    assert recognize(T.PHI35) is None
    assert recognize(T.MISTRAL_NEMO) is None


def test_override_by_name_and_instance() -> None:
    for name, template in TEMPLATES.items():
        assert get_chat_template(None, name) is template
        assert get_chat_template(T.SMOLLM2, name) is template
    custom = ChatTemplate(
        name="custom", user_prefix="U: ", user_suffix="\n", assistant_prefix="A: ", assistant_suffix="\n"
    )
    assert get_chat_template("anything", custom) is custom
    assert custom.render([U1, A1]) == "U: What is the capital of France?\nA: Paris.\n"


def test_unknown_template_error_says_how_to_fix(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(
        sys.modules, "jinja2", None
    )  # the table is the fallback when jinja2 cannot be imported
    with pytest.raises(UnknownChatTemplateError) as e:
        get_chat_template(T.MISTRAL_NEMO)
    msg = str(e.value)
    assert repr(T.MISTRAL_NEMO[:200]) in msg
    assert "chat_template=" in msg and "jinja2" in msg
    for name in TEMPLATES:
        assert name in msg
    with pytest.raises(UnknownChatTemplateError, match="no tokenizer.chat_template"):
        get_chat_template(None)
    with pytest.raises(UnknownChatTemplateError, match="'nope' is neither a template name"):
        get_chat_template(T.SMOLLM2, "nope")


def test_table_takes_no_template_kwargs() -> None:
    with pytest.raises(UnsupportedFieldError) as e:
        CHATML.render([U1], template_kwargs={"enable_thinking": False})
    assert e.value.field == "chat_template_kwargs" and "install jinja2" in str(e.value)


def test_rejects_unknown_role() -> None:
    with pytest.raises(InvalidMessagesError) as e:
        CHATML.render([U1, {"role": "function", "content": "42"}])
    assert "'function'" in str(e.value)
    assert "system, user, assistant, tool" in str(e.value)
    assert e.value.field == "messages[1].role"


# ---- tool results ----------------------------------------------------------------------------------------------------

T1 = {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": "call_1"}
T2 = {"role": "tool", "content": " <b>sunny</b> & 'dry' \n", "tool_call_id": "call_2"}
TOOL_CONVERSATIONS = {
    "one_result": [U1, A1, T1],
    "two_results": [SYS, U1, A1, T1, T2],
    "result_then_user": [U1, A1, T1, A1, U2],
}
TOOL_FAMILIES = ["smollm2", "chatml", "qwen2.5", "llama-3", "llama-3.1", "llama-3.2"]


@pytest.mark.parametrize("family", TOOL_FAMILIES)
@pytest.mark.parametrize("conv", list(TOOL_CONVERSATIONS))
def test_tool_results_render_as_jinja(family: str, conv: str) -> None:
    source, _, bos, eos = FAMILIES[family]
    messages = TOOL_CONVERSATIONS[conv]
    want = jinja_render(source, plain(messages), bos=bos, eos=eos, add_generation_prompt=True)
    got = recognize(source).render(messages)
    assert got == want, f"{family}/{conv}: first difference at {_first_diff(got, want)}:\n{got!r}\n{want!r}"


@pytest.mark.parametrize("family", ["llama-2", "zephyr"])
def test_templates_without_a_tool_role_name_themselves(family: str) -> None:
    template = recognize(FAMILIES[family][0])
    with pytest.raises(InvalidMessagesError) as e:
        template.render([U1, A1, T1])
    assert e.value.field == "messages[2].role" and f"the {template.name} chat template" in str(e.value)


# ---- template text and content kept apart ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_render_parts_join_to_render_and_flag_only_content(family: str) -> None:
    template = recognize(FAMILIES[family][0])
    messages = CONVERSATIONS["system_multi"]
    parts = template.render_parts(messages)
    assert "".join(t for t, _ in parts) == template.render(messages)
    content = {t for t, is_template in parts if not is_template}
    for m in messages:
        assert any(m["content"].strip() in c for c in content) or family == "llama-2"
    assert all("<|" not in t and "[INST]" not in t for t in content)


def test_default_system_prompt_is_template_text() -> None:
    parts = recognize(T.SMOLLM2).render_parts([U1])
    assert ("You are a helpful AI assistant named SmolLM, trained by Hugging Face", True) in parts


def test_rejects_non_text_parts_and_bad_content() -> None:
    with pytest.raises(InvalidMessagesError, match="image_url"):
        CHATML.render([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(InvalidMessagesError, match="string or a list"):
        CHATML.render([{"role": "user", "content": 5}])
    with pytest.raises(InvalidMessagesError, match="at least one message"):
        CHATML.render([])


def test_llama2_requires_alternation() -> None:
    with pytest.raises(InvalidMessagesError, match="alternate"):
        LLAMA_2.render([U1, U2])
    with pytest.raises(InvalidMessagesError, match="alternate"):
        LLAMA_2.render([SYS, A1])


def test_none_content_is_empty() -> None:
    assert CHATML.render([{"role": "user", "content": None}]) == CHATML.render(
        [{"role": "user", "content": ""}]
    )
