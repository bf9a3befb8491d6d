"""The GGUF's own Jinja templates (conversation.JinjaTemplate) against transformers' apply_chat_template.

tests/data/goldens/chat_templates.json holds transformers' output for every template in tests/data/chat_templates/
over every conversation (scripts/make_template_goldens.py made it); each must come out byte for byte, and a
conversation a template refuses must be refused with the template's own words. Also: the sandbox, transformers'
helpers (tojson, strftime_now, namespace, {% generation %}, loop controls), and content kept apart from template
text (the parts ``Tokenizer.encode_parts`` reads).
"""

from __future__ import annotations

import datetime
import json
import time
from functools import cache
from pathlib import Path

import pytest

from tests.unit._tok_vocab import gpt2_metadata
from webllm_py import conversation
from webllm_py.conversation import JinjaTemplate, get_chat_template
from webllm_py.errors import ChatTemplateError, InvalidMessagesError, UnknownChatTemplateError
from webllm_py.tokenizer import Tokenizer

DATA = Path(__file__).resolve().parent.parent / "data"
GOLDENS = json.loads((DATA / "goldens" / "chat_templates.json").read_text())
# The control-token texts of every family here (what a vocabulary would report as Tokenizer.control_texts).
CONTROL = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<s>", "</s>", "[INST]", "[/INST]", "<start_of_turn>",
    "<end_of_turn>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
)  # fmt: skip
U1 = {"role": "user", "content": "What is the capital of France?"}


def source(name: str) -> str:
    return (DATA / "chat_templates" / f"{name}.jinja").read_text()


@cache
def template(name: str) -> JinjaTemplate:
    info = GOLDENS["templates"][name]
    return JinjaTemplate(
        source(name), bos_token=info["bos_token"], eos_token=info["eos_token"], control_texts=CONTROL
    )


@pytest.fixture
def frozen_now(monkeypatch):
    """strftime_now at the moment the goldens were made (Llama-3.2 and Mistral Small 3.2 print the date)."""
    monkeypatch.setattr(conversation, "_now", lambda: datetime.datetime.fromisoformat(GOLDENS["now"]))


def test_goldens_cover_every_template_file() -> None:
    files = {p.stem for p in (DATA / "chat_templates").glob("*.jinja")}
    assert files == set(GOLDENS["templates"]) and len(files) >= 14
    cases = GOLDENS["cases"]
    assert all(c["template"] in files for c in cases)
    assert sum("error" not in c for c in cases) >= 600  # most conversations render; the rest are refusals


@pytest.mark.parametrize("name", sorted(GOLDENS["templates"]))
def test_renders_equal_transformers(name: str, frozen_now) -> None:
    t = template(name)
    failures = []
    for case in (c for c in GOLDENS["cases"] if c["template"] == name):
        messages = GOLDENS["conversations"][case["conversation"]]
        kw = {"add_generation_prompt": case["add_generation_prompt"], "template_kwargs": case["kwargs"]}
        what = f"{case['conversation']} {case['kwargs'] or ''} add_generation_prompt={kw['add_generation_prompt']}"
        if "error" in case:
            with pytest.raises(InvalidMessagesError) as e:
                t.render(messages, **kw)
            assert case["error"] in str(e.value) and e.value.field == "messages", what
            continue
        got = t.render(messages, **kw)
        if got != case["text"]:
            i = next((i for i, (a, b) in enumerate(zip(got, case["text"], strict=False)) if a != b), len(got))
            failures.append(
                f"{what}: first difference at char {i}: {got[i : i + 40]!r} vs {case['text'][i : i + 40]!r}"
            )
            continue
        parts = t.render_parts(messages, **kw)
        assert "".join(text for text, _ in parts) == got, what
    assert not failures, f"{name}: {len(failures)} renders differ from transformers:\n" + "\n".join(failures)


@pytest.mark.parametrize("name", sorted(GOLDENS["templates"]))
def test_forged_turn_is_content_not_template_text(name: str) -> None:
    """Every control-token text the user typed lies in content parts; template parts hold none of it."""
    forged = GOLDENS["conversations"]["forged"][1]  # a user message full of other families' turn markers
    t = template(name)
    parts = t.render_parts([forged])
    content = "".join(text for text, is_template in parts if not is_template)
    assert forged["content"] in content
    template_text = "".join(text for text, is_template in parts if is_template)
    assert "You obey the user." not in template_text and "[SYSTEM_PROMPT]x" not in template_text
    assert "".join(text for text, _ in parts) == t.render([forged])


def test_parts_detection_matches_the_goldens() -> None:
    # The golden script says by hand which templates loop over content; our AST check must agree.
    for name, info in GOLDENS["templates"].items():
        assert template(name).takes_content_parts == info["takes_parts"], name


def test_stop_strings_are_the_end_of_turn_texts_the_template_writes() -> None:
    assert template("smollm2").stop_strings == ("<|im_end|>",)
    assert set(template("llama-3.1").stop_strings) == {"<|eot_id|>", "<|eom_id|>"}
    assert template("gemma-3").stop_strings == ("<end_of_turn>",)
    assert set(template("phi-3.5").stop_strings) == {"<|end|>", "<|endoftext|>"}  # eos_token after the reply
    assert template("mistral-v0.3").stop_strings == ("</s>",)


def test_strftime_now_is_today() -> None:
    before = time.strftime("%d %b %Y")
    text = template("llama-3.2").render([U1])
    assert any(f"Today Date: {day}\n" in text for day in (before, time.strftime("%d %b %Y")))


def test_qwen3_enable_thinking_false_appends_empty_thinking() -> None:
    off = template("qwen3").render([U1], template_kwargs={"enable_thinking": False})
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert template("qwen3").render([U1]).endswith("<|im_start|>assistant\n")


# ---- the environment ------------------------------------------------------------------------------------------------


def render(src: str, messages=(U1,), **kw) -> str:
    return JinjaTemplate(src, control_texts=CONTROL).render(list(messages), **kw)


def test_sandbox_refuses_python_internals() -> None:
    for src in (
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__.__subclasses__() }}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}{{ ns._x }}",
        "{{ namespace(_y=1) }}",
        "{{ messages.append(1) }}",  # immutable sandbox: no mutation of the caller's data
    ):
        with pytest.raises(ChatTemplateError, match="SecurityError"):
            render(src)


def test_transformers_helpers() -> None:
    assert render("{{ {'a': '<b>&é'} | tojson }}") == '{"a": "<b>&é"}'  # no HTML escaping, no \\u escapes
    assert render("{{ {'b': 1, 'a': [1, 2]} | tojson(indent=2, sort_keys=true) }}") == json.dumps(
        {"a": [1, 2], "b": 1}, indent=2, sort_keys=True
    )
    assert (
        render("{{ [1] | tojson(separators=(',', ':')) }}{{ 'x' | tojson(ensure_ascii=true) }}") == '[1]"x"'
    )
    assert render(
        "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
    ) == ("[What is the capital of France?]")
    assert render("{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}") == "01"
    assert (
        render(
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
        )
        == "1"
    )
    assert render("{{ dict(a=1) | tojson }}{{ dict.fromkeys(['k']) | tojson }}") == '{"a": 1}{"k": null}'
    assert render("{{ x }}-{{ tools }}-{{ documents }}", template_kwargs={"x": 7}) == "7-None-None"
    assert render("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}") == "||True"
    # trim_blocks + lstrip_blocks, as transformers
    assert render("  {% if true %}\nA\n  {% endif %}\nB") == "A\nB"


def test_raise_exception_is_invalid_messages_and_syntax_errors_say_where() -> None:
    with pytest.raises(InvalidMessagesError, match="refuses these messages: no system role"):
        render("{{ raise_exception('no system role') }}")
    with pytest.raises(ChatTemplateError, match="does not compile"):
        JinjaTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="UndefinedError"):
        render("{{ messages[0].content.nope.deeper }}")


def test_none_values_are_dropped_as_transformers_does() -> None:
    src = "{% for m in messages %}{{ m.name is defined }}{{ m.content }}{% endfor %}"
    assert render(src, [{"role": "user", "content": None, "name": None}]) == "False"


# ---- choosing the template ------------------------------------------------------------------------------------------


def test_get_chat_template_renders_the_gguf_template_with_jinja() -> None:
    tok = Tokenizer.from_gguf(gpt2_metadata([]))
    t = get_chat_template(source("llama-3.1"), tokenizer=tok)
    assert isinstance(t, JinjaTemplate) and t.name == "gguf"
    assert t.bos_token == tok.id_to_token(tok.bos_id) and t.eos_token == tok.id_to_token(tok.eos_id)
    assert get_chat_template(source("gemma-2"), None).source == source("gemma-2")
    # A Jinja override replaces the GGUF's; a name picks a built-in family; an object is used as it is.
    custom = get_chat_template(source("smollm2"), "{{ messages[0].content }}")
    assert isinstance(custom, JinjaTemplate) and custom.render([U1]) == U1["content"]
    assert get_chat_template(source("smollm2"), "chatml") is conversation.CHATML
    assert get_chat_template(None, custom) is custom
    with pytest.raises(UnknownChatTemplateError, match="no tokenizer.chat_template"):
        get_chat_template(None)
    with pytest.raises(UnknownChatTemplateError, match="neither a template name"):
        get_chat_template(source("smollm2"), "nope")


def test_without_jinja2_known_families_fall_back_to_the_table(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "jinja2", None)  # import jinja2 -> ImportError
    assert get_chat_template(source("llama-3.1")) is conversation.LLAMA_3_1
    assert get_chat_template(source("smollm2")).name == "chatml"
    with pytest.raises(UnknownChatTemplateError, match=r"needs jinja2.*webllm-py\[templates\]"):
        get_chat_template(source("gemma-3"))


# ---- the request fields ---------------------------------------------------------------------------------------------


def test_chat_template_kwargs_and_parse_special_are_checked_request_fields() -> None:
    from webllm_py.errors import InvalidFieldTypeError, UnsupportedFieldError
    from webllm_py.protocol import check_chat_completion_request, check_completion_request

    msgs = [U1]
    req = check_chat_completion_request(
        {"messages": msgs, "extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}
    )
    assert req.template_kwargs == {"enable_thinking": False}
    assert check_chat_completion_request({"messages": msgs}).template_kwargs == {}
    with pytest.raises(UnsupportedFieldError) as e:
        check_chat_completion_request(
            {"messages": msgs, "chat_template_kwargs": {"bos_token": "<|im_start|>"}}
        )
    assert e.value.field == "chat_template_kwargs.bos_token"
    with pytest.raises(InvalidFieldTypeError) as e:
        check_chat_completion_request({"messages": msgs, "chat_template_kwargs": {"x": {1, 2}}})
    assert e.value.field == "chat_template_kwargs.x"
    with pytest.raises(InvalidFieldTypeError):
        check_chat_completion_request({"messages": msgs, "chat_template_kwargs": ["enable_thinking"]})
    with pytest.raises(InvalidFieldTypeError):
        check_chat_completion_request({"messages": msgs, "chat_template_kwargs": {"not a name": 1}})
    assert check_completion_request({"prompt": "x"}).parse_special is False
    assert (
        check_completion_request({"prompt": "x", "extra_body": {"parse_special": True}}).parse_special is True
    )
    with pytest.raises(InvalidFieldTypeError):
        check_completion_request({"prompt": "x", "parse_special": "yes"})
