"""Tool calling without a model: prompts with tools byte-identical to transformers' ``apply_chat_template(tools=...)``
for every family (tests/data/goldens/tool_templates.json, made by scripts/make_template_goldens.py), the format
each template is recognized as, canned model outputs per family parsed into calls at every chunking, the calls
grammar of each format, request validation, and the whole API path on the fake engine: streamed tool-call deltas
validated by openai-python's types and accumulated by its own stream state equal to the non-streaming message."""

from __future__ import annotations

import asyncio
import json
import random
from functools import cache
from pathlib import Path

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from webllm_py import errors
from webllm_py.api.mlc_engine import MLCEngine
from webllm_py.config import AppConfig, ModelRecord
from webllm_py.conversation import JinjaTemplate
from webllm_py.grammar import Grammar
from webllm_py.protocol import check_chat_completion_request
from webllm_py.tools import (
    FORMATS,
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    ToolCall,
    ToolCallParser,
    ToolRequest,
    call_text,
    calls_grammar,
    mistral_id,
    template_messages,
    tool_format,
)

from ._fake_engine import FakeEngine, no_preflight
from .openai_check import validate
from .test_chat_templates import CONTROL

DATA = Path(__file__).resolve().parent.parent / "data"
GOLDENS = json.loads((DATA / "goldens" / "tool_templates.json").read_text())
TOOLS = GOLDENS["tools"]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def source(name: str) -> str:
    return (DATA / "chat_templates" / GOLDENS["templates"][name]["file"]).read_text()


@cache
def template(name: str) -> JinjaTemplate:
    info = GOLDENS["templates"][name]
    return JinjaTemplate(
        source(name), bos_token=info["bos_token"], eos_token=info["eos_token"], control_texts=CONTROL
    )


def render(name: str, messages: list[dict], **kwargs) -> str:
    """The prompt as the engine builds it: validated request -> template_messages -> the model's template."""
    checked = check_chat_completion_request({"messages": messages, "tools": TOOLS})
    fmt = tool_format(source(name))
    msgs, tools = template_messages([m.to_dict() for m in checked.messages], fmt, checked.tools)
    return template(name).render(msgs, tools=tools, template_kwargs=kwargs)


@pytest.mark.parametrize("name", sorted(GOLDENS["templates"]))
def test_tool_prompts_equal_transformers(name, monkeypatch):
    import datetime

    from webllm_py import conversation

    monkeypatch.setattr(conversation, "_now", lambda: datetime.datetime.fromisoformat(GOLDENS["now"]))
    cases = [c for c in GOLDENS["cases"] if c["template"] == name]
    assert cases
    for case in cases:
        messages = GOLDENS["conversations"][case["conversation"]]
        what = f"{name} {case['conversation']} {case['kwargs']}"
        if "error" in case:
            with pytest.raises(errors.InvalidMessagesError, match="single tool-calls"):
                render(name, messages, **case["kwargs"])
            continue
        got = render(name, messages, **case["kwargs"])
        assert got == case["text"], what
        assert '"arguments": "{' not in got, f"{what}: arguments double-encoded"


def test_every_family_is_recognized_from_its_template():
    want = {"qwen2.5": "hermes", "qwen3": "hermes", "hermes-2-pro": "hermes", "llama-3.1": "llama3"}
    want |= {"llama-3.2": "llama3", "mistral-nemo": "mistral", "mistral-v0.3": "mistral"}
    for name, family in want.items():
        assert tool_format(source(name)).name == family, name
    assert tool_format(source("mistral-nemo")).first == "[TOOL_CALLS]["
    assert tool_format(source("mistral-v0.3")).first == "[TOOL_CALLS] ["
    for name in ("smollm2", "gemma-3", "phi-3.5", "llama-2", "mistral-small-3.2"):
        assert tool_format((DATA / "chat_templates" / f"{name}.jinja").read_text()) is GENERIC, name


# Every prebuilt family (model-id prefix) -> the template its GGUF carries (tests/data/chat_templates/README.md).
PREBUILT_TEMPLATES = {
    "Qwen2.5-": "qwen2.5.jinja", "Qwen3-": "qwen3.jinja", "Llama-3.1-": "llama-3.1.jinja",
    "Llama-3.2-": "llama-3.2.jinja", "Mistral-7B-Instruct-v0.3-": "mistral-v0.3.jinja", "SmolLM2-": "smollm2.jinja",
    "Phi-3.5-": "phi-3.5.jinja", "gemma-2-": "gemma-2.jinja", "gemma-3-": "gemma-3.jinja",
}  # fmt: skip


def test_function_calling_model_ids_are_the_prebuilt_families_with_a_native_format():
    """prebuilt_models.json's "tool_calling" families are exactly the prebuilt families whose template is read as a
    native format (that format); functionCallingModelIds are their records; every other family is generic."""
    from webllm_py.config import PREBUILT_TABLE, functionCallingModelIds, prebuilt_app_config

    table = json.loads((Path(errors.__file__).parent / PREBUILT_TABLE).read_text())
    formats = {
        p: tool_format((DATA / "chat_templates" / t).read_text()) for p, t in PREBUILT_TEMPLATES.items()
    }
    assert table["tool_calling"]["families"] == {p: f.name for p, f in formats.items() if f.native}
    ids = [r.model_id for r in prebuilt_app_config.model_list]
    for model_id in ids:  # each record is of exactly one family listed above
        assert sum(model_id.startswith(p) for p in PREBUILT_TEMPLATES) == 1, model_id
    native = [i for i in ids if any(i.startswith(p) and formats[p].native for p in formats)]
    assert list(functionCallingModelIds) == native and "SmolLM2-135M-Instruct-Q4_1" not in native


def test_the_golden_calls_are_the_formats_calls():
    """What each template writes for a past call is what its format's grammar and parser expect a model to say
    (so the conversation the KV cache holds re-renders to the same text)."""
    calls = [ToolCall("a1B2c3D4e", "get_weather", '{"city": "Paris", "unit": "C"}')]
    by_name = {c["template"]: c for c in GOLDENS["cases"] if c["conversation"] == "one_call_result"}
    for name in ("qwen2.5", "hermes-2-pro", "llama-3.1", "mistral-nemo", "mistral-v0.3"):
        fmt = tool_format(source(name))
        assert call_text(fmt, calls) in by_name[name]["text"], name


def test_generic_format_describes_the_tools_in_the_system_message():
    smollm2 = JinjaTemplate((DATA / "chat_templates" / "smollm2.jinja").read_text(), control_texts=CONTROL)
    checked = check_chat_completion_request(
        {"messages": GOLDENS["conversations"]["two_calls_results"], "tools": TOOLS}
    )
    msgs, tools = template_messages([m.to_dict() for m in checked.messages], GENERIC, checked.tools)
    assert tools is None
    text = smollm2.render(msgs)
    assert text.startswith("<|im_start|>system\nYou are a terse assistant.\n\nYou can call functions")
    assert json.dumps(TOOLS[0], ensure_ascii=False) in text
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'
    assert f"<|im_start|>assistant\n{call}\n<tool_call>" in text
    assert "<|im_start|>user\n<tool_response>\n14:05\n</tool_response><|im_end|>" in text


def test_mistral_ids_are_nine_alphanumerics_and_stable():
    assert mistral_id("a1B2c3D4e") == "a1B2c3D4e"
    other = mistral_id("call_5f3e2a1b0c9d8e7f6a5b4c3d")
    assert len(other) == 9 and other.isalnum() and other == mistral_id("call_5f3e2a1b0c9d8e7f6a5b4c3d")
    # An OpenAI-style id from another model still renders in Mistral's template (mapped the same in call and result).
    conv = json.loads(json.dumps(GOLDENS["conversations"]["one_call_result"]))
    conv[1]["tool_calls"][0]["id"] = conv[2]["tool_call_id"] = "call_5f3e2a1b0c9d8e7f6a5b4c3d"
    text = render("mistral-nemo", conv)
    assert f'"id": "{other}"' in text and f'"call_id": "{other}"' in text


# ---- parsing the model's output ------------------------------------------------------------------------------------

CALLS = [
    ToolCall("a1B2c3D4e", "get_weather", '{"city": "Pa\\"ris {x}", "unit": "C"}'),
    ToolCall("Zz9Yy8Xx7", "get_time", '{"zone": "Europe/Paris", "n": [1, {"k": []}]}'),
]


def parse(fmt, text: str, pieces: list[int], **kw):
    p = ToolCallParser(fmt, **kw)
    events = []
    at = 0
    for n in pieces:
        events += p.push(text[at : at + n])
        at += n
    events += p.push(text[at:])
    events += p.finish()
    content = "".join(e[1] for e in events if e[0] == "content")
    return content, p, events


def chunkings(text: str) -> list[list[int]]:
    rng = random.Random(len(text))
    return [[1] * len(text), [len(text)], *[[rng.randint(1, 7) for _ in range(len(text))] for _ in range(5)]]


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL], ids=lambda f: f.name)
def test_canned_outputs_parse_into_calls_at_every_chunking(fmt):
    calls = CALLS[: fmt.max_calls or 2]
    said = call_text(fmt, calls)
    prose = "Let me check that.\n"
    for text, content in ((said, ""), (prose + said, prose.rstrip())):
        for pieces in chunkings(text):
            got, parser, events = parse(fmt, text, pieces)
            assert got == content, (text, pieces)
            done = parser.complete_calls
            assert [(c.name, c.arguments) for c in done] == [(c.name, c.arguments) for c in calls]
            if fmt.id_chars:  # the model wrote the ids
                assert [c.id for c in done] == [c.id for c in calls]
            else:
                assert all(c.id.startswith("call_") for c in done) and len({c.id for c in done}) == len(done)
            # one header per call, before its argument pieces; the pieces join to the arguments
            heads = [e for e in events if e[0] == "call"]
            assert [h[3] for h in heads] == [c.name for c in calls]
            for i, c in enumerate(calls):
                assert "".join(e[2] for e in events if e[0] == "args" and e[1] == i) == c.arguments


def test_parser_edge_cases():
    # a marker in prose, without a call after it: content, and the search goes on
    text = "Use <tool_call> tags. " + call_text(HERMES, CALLS[:1])
    got, p, _ = parse(HERMES, text, [3] * 40)
    assert got == "Use <tool_call> tags." and len(p.complete_calls) == 1
    # a possible marker at the end that never completes is content
    assert parse(HERMES, "a <tool_ca", [2] * 6)[0] == "a <tool_ca"
    # Llama's <|python_tag|> before a call is dropped; elsewhere it is text
    assert parse(LLAMA3, "<|python_tag|>" + call_text(LLAMA3, CALLS[:1]), [4] * 30)[0] == ""
    assert parse(LLAMA3, "x <|python_tag|> y", [1] * 20)[0] == "x <|python_tag|> y"
    # forced, with the control-token marker in the prompt (Mistral under tool_choice required)
    text = call_text(MISTRAL, CALLS).removeprefix("[TOOL_CALLS]")
    got, p, _ = parse(MISTRAL, text, [5] * 40, forced=True, skipped="[TOOL_CALLS]")
    assert got == "" and [c.id for c in p.complete_calls] == ["a1B2c3D4e", "Zz9Yy8Xx7"]
    # cut inside the arguments (max_tokens): the call stays, incomplete; cut before them: nothing
    text = call_text(HERMES, CALLS[:1])
    start = text.index('{"city"')
    _, p, _ = parse(HERMES, text[: start + 9], [3] * 20)
    assert len(p.calls) == 1 and not p.complete_calls and p.calls[0].arguments == text[start : start + 9]
    got, p, _ = parse(HERMES, text[: start - 5], [3] * 20)  # past the name: a call that never began
    assert got == "" and not p.calls
    got, p, _ = parse(HERMES, text[:20], [3] * 10)  # the head unfinished: it might have been prose
    assert got == text[:20] and not p.calls


# ---- grammars -----------------------------------------------------------------------------------------------------


def functions():
    return check_chat_completion_request({"messages": ASK, "tools": TOOLS}).tools.functions


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL, GENERIC], ids=lambda f: f.name)
def test_calls_grammar_is_the_format(fmt):
    req = ToolRequest(functions())
    _, build = calls_grammar(fmt, req, marker_is_token=False)
    g = build()
    calls = [ToolCall("a1B2c3D4e", "get_weather", '{"city": "Paris", "unit": "C"}')]
    assert g.matches(call_text(fmt, calls))
    two = calls + [ToolCall("Zz9Yy8Xx7", "get_time", '{"zone": "UTC"}')]
    assert g.matches(call_text(fmt, two)) == (fmt.max_calls is None)
    assert not g.matches(
        call_text(fmt, [ToolCall("a1B2c3D4e", "get_weather", '{"unit": "C"}')])
    )  # city required
    assert not g.matches(call_text(fmt, [ToolCall("a1B2c3D4e", "get_wind", '{"city": "Paris"}')]))
    # one call only without parallel calls; only the named function when one is forced
    single = calls_grammar(fmt, ToolRequest(functions(), parallel=False), marker_is_token=False)[1]()
    assert not single.matches(call_text(fmt, two))
    named = calls_grammar(fmt, ToolRequest(functions(), choice="get_time"), marker_is_token=False)[1]()
    assert named.matches(call_text(fmt, two[1:])) and not named.matches(call_text(fmt, calls))
    # a control-token marker is not part of the grammar
    if fmt is MISTRAL:
        after = calls_grammar(fmt, req, marker_is_token=True)[1]()
        assert after.matches(call_text(fmt, calls).removeprefix("[TOOL_CALLS]"))
    key, _ = calls_grammar(fmt, req, marker_is_token=False)
    assert key == g.key  # the cache key is known without compiling


# ---- validation ---------------------------------------------------------------------------------------------------


def check(**fields):
    return check_chat_completion_request({"messages": ASK, **fields})


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, errors.InvalidFieldTypeError, "tools[0].function.name"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, errors.InvalidRangeError, "tools[1].function.name"),
        ({"tools": [{"type": "custom", "custom": {}}]}, errors.UnsupportedFieldError, "tools[0].type"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, errors.InvalidRangeError, "tool_choice.function.name"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, errors.InvalidFieldTypeError, "tool_choice"),
        ({"tool_choice": "required"}, errors.FieldDependencyError, "tool_choice"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, errors.InvalidFieldTypeError, "parallel_tool_calls"),
        ({"response_format": {"type": "json_schema"}}, errors.InvalidFieldTypeError, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}}, errors.InvalidFieldTypeError, "response_format.json_schema.name"),
        ({"response_format": {"type": "text", "schema": "{}"}}, errors.UnsupportedFieldError, "response_format.schema"),
        ({"response_format": {"type": "grammar"}}, errors.InvalidFieldTypeError, "response_format.grammar"),
        ({"response_format": {"type": "json_object", "schema": "{not json"}}, errors.InvalidFieldTypeError, "response_format.schema"),
        ({"response_format": {"type": "structural_tag"}}, errors.UnsupportedFieldError, "response_format.type"),
        ({"response_format": {"type": "xml"}}, errors.InvalidFieldTypeError, "response_format.type"),
    ],
)  # fmt: skip
def test_bad_tool_and_format_fields_are_named(fields, error, field):
    with pytest.raises(error) as info:
        check(**fields)
    assert info.value.field == field


def test_response_format_shapes():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    openai = check(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    webllm_text = check(response_format={"type": "json_object", "schema": json.dumps(schema)})
    webllm_obj = check(response_format={"type": "json_object", "schema": schema})
    for c in (openai, webllm_text, webllm_obj):
        rf = c.config.response_format
        assert rf.compile().matches('{"a": 3}') and rf.key == rf.compile().key
    assert (
        check(response_format={"type": "json_object"}).config.response_format.compile().matches('{"x": [1]}')
    )
    ebnf = check(
        response_format={"type": "grammar", "grammar": 'root ::= "yes" | "no"'}
    ).config.response_format
    assert ebnf.compile().matches("no") and not ebnf.compile().matches("maybe")
    assert check(response_format={"type": "text"}).config.response_format is None
    loose = check(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": schema, "strict": False},
        }
    )
    assert loose.config.response_format.compile().matches('{"a": 3, "b": 4}')  # fmt: skip
    with pytest.raises(errors.UnsupportedSchemaError, match="uniqueItems"):
        Grammar.json_schema({"type": "array", "uniqueItems": True})


def test_assistant_tool_calls_in_the_history():
    history = GOLDENS["conversations"]["one_call_result"]
    m = check_chat_completion_request({"messages": history}).messages
    assert (
        m[1].content == "" and m[1].tool_calls[0].name == "get_weather" and m[2].tool_call_id == "a1B2c3D4e"
    )
    bad = [
        ASK[0],
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x", "function": {"name": "f"}}]},
    ]
    with pytest.raises(errors.InvalidMessagesError) as info:
        check_chat_completion_request({"messages": [*bad, {"role": "user", "content": "?"}]})
    assert info.value.field == "messages[1].tool_calls[0].function.arguments"


# ---- the API on the fake engine -----------------------------------------------------------------------------------

QWEN = (DATA / "chat_templates" / "qwen2.5.jinja").read_text()


class ToolTemplate:
    """The fake engine's template with Qwen's tool format: ChatML-ish text, tools listed (render checks the engine
    passes them)."""

    source = QWEN
    stop_strings = ("<|im_end|>",)

    def render_parts(self, messages, *, add_generation_prompt=True, template_kwargs=None, tools=None):
        self.tools = tools
        self.messages = messages
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return [(text + "assistant: ", True)]


def run_engine(body, *, reply: list[str], template_source: str = QWEN):
    fake = FakeEngine()
    fake.chat_template = ToolTemplate()
    fake.chat_template.source = template_source
    fake.say(reply)

    async def resolve(record, app_config, progress):
        return "fake.gguf"

    async def go():
        engine = MLCEngine(
            app_config=AppConfig(model_list=[ModelRecord("fake", "fake.gguf")]), resolve_model=resolve
        )
        import webllm_py.engine as engine_module

        original = engine_module.load_engine, engine_module.preflight

        async def load(record, path, **kw):
            return fake

        engine_module.load_engine = load
        engine_module.preflight = no_preflight  # "fake.gguf" is no file: no header to check
        try:
            await engine.reload("fake")
        finally:
            engine_module.load_engine, engine_module.preflight = original
        return await body(engine, fake)

    return asyncio.run(go())


REPLY = [
    "I will ", "check.\n", "<tool", "_call>\n", '{"name": "', "get_weather", '", "arguments": ', '{"city": ', '"Par',
    'is", "unit": "C"}', "}\n</tool_call>", "\n<tool_call>\n", '{"name": "get_time", "arguments": {"zone": "UTC"}}',
    "\n</tool_call>",
]  # fmt: skip


def test_streamed_tool_calls_validate_and_accumulate_to_the_message():
    async def body(engine, fake):
        create = engine.chat.completions.create
        stream = await create(messages=ASK, tools=TOOLS, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        fake.say(REPLY)
        whole = await create(messages=ASK, tools=TOOLS)
        return chunks, whole, fake

    chunks, whole, fake = run_engine(body, reply=REPLY)
    assert fake.chat_template.tools == TOOLS  # the template got the tools
    state = ChatCompletionStreamState()
    for c in chunks:
        validate(c)
        state.handle_chunk(validate(c))
    accumulated = state.get_final_completion().choices[0]
    validate(whole)
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == accumulated.finish_reason == "tool_calls"
    assert message.content == accumulated.message.content == "I will check."
    got = [(c.id, c.function.name, c.function.arguments) for c in accumulated.message.tool_calls]
    assert got == [
        (got[0][0], "get_weather", '{"city": "Paris", "unit": "C"}'),
        (got[1][0], "get_time", '{"zone": "UTC"}'),
    ]
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [g[1:] for g in got]
    # the first delta of a call: index, id, type, name and arguments ""; then argument pieces only
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    first = [d for d in deltas if d.function and d.function.name]
    assert [(d.index, d.type, d.function.arguments) for d in first] == [
        (0, "function", ""),
        (1, "function", ""),
    ]
    assert all(d.id is None and d.function.name is None for d in deltas if d not in first)
    assert sum(1 for d in deltas if d.index == 0) > 2  # arguments streamed in pieces as they were generated
    assert chunks[-1].usage.extra["grammar_init_s"] >= 0 and "grammar_per_token_s" in chunks[-1].usage.extra
    assert fake.matcher is not None and not fake.matcher.armed  # auto: lazy, armed at <tool_call>


@pytest.mark.parametrize("name", ["qwen2.5", "llama-3.2", "mistral-v0.3"])
def test_each_familys_stream_accumulates_in_openai_python_to_the_message(name):
    """Every format's deltas satisfy openai-python's stream state (which wants ``function`` in every delta of a
    function call: Mistral's id, written by the model after the arguments, comes in a delta of its own)."""
    fmt = tool_format(source(name))
    calls = CALLS[: fmt.max_calls or 2]
    said = call_text(fmt, calls)
    reply = [said[i : i + 5] for i in range(0, len(said), 5)]

    async def body(engine, fake):
        chunks = [
            c async for c in await engine.chat.completions.create(messages=ASK, tools=TOOLS, stream=True)
        ]
        fake.say(reply)
        return chunks, await engine.chat.completions.create(messages=ASK, tools=TOOLS)

    chunks, whole = run_engine(body, reply=reply, template_source=source(name))
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(validate(c))
    final = state.get_final_completion().choices[0]
    message = validate(whole).choices[0].message
    assert final.finish_reason == whole.choices[0].finish_reason == "tool_calls"
    got = [(c.function.name, c.function.arguments) for c in final.message.tool_calls]
    assert got == [(c.function.name, c.function.arguments) for c in message.tool_calls]
    assert got == [(c.name, c.arguments) for c in calls]
    if fmt.id_chars:
        assert [c.id for c in final.message.tool_calls] == [c.id for c in message.tool_calls]
        assert [c.id for c in message.tool_calls] == [c.id for c in calls]


def test_tool_choice_modes_and_the_next_round_reuses_the_cache():
    async def body(engine, fake):
        create = engine.chat.completions.create
        out = {}
        out["auto"] = await create(messages=ASK, tools=TOOLS)
        out["auto_matcher"] = fake.matcher
        fake.say(REPLY[2:11])
        out["required"] = await create(messages=ASK, tools=TOOLS, tool_choice="required")
        out["required_matcher"] = fake.matcher
        fake.say(["It is ", "21 C."])
        out["none"] = await create(messages=ASK, tools=TOOLS, tool_choice="none")
        out["none_matcher"] = fake.matcher
        # round 2: the call and its result go back; the cache holds round 1 up to the end of the reply
        fake.say(REPLY[2:11])
        first = await create(messages=ASK, tools=TOOLS, tool_choice="required")
        call = first.choices[0].message.tool_calls[0].to_dict()
        history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": call["id"], "content": '{"temperature": 21}'}]  # fmt: skip
        fake.say(["It is ", "21 C."])
        second = await create(messages=history, tools=TOOLS)
        out["reused"] = fake.generations[-1].reused
        out["second"] = second
        out["rendered"] = fake.chat_template.messages
        return out

    out = run_engine(body, reply=["Hello."])
    assert (
        out["auto"].choices[0].message.content == "Hello." and out["auto"].choices[0].finish_reason == "stop"
    )
    assert out["auto_matcher"].triggers == (b"<tool_call>",)
    required = out["required"].choices[0]
    assert required.finish_reason == "tool_calls" and required.message.content is None
    assert out["required_matcher"].armed  # constrained from the first token
    assert out["none"].choices[0].message.content == "It is 21 C." and out["none_matcher"] is None
    assert out["reused"] > 0  # the conversation with its tool call was in the KV cache
    assert out["rendered"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris", "unit": "C"}
    validate(out["second"])


def test_bad_schema_in_a_tool_is_the_requests_error_and_frees_the_engine():
    async def body(engine, fake):
        bad = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}]
        with pytest.raises(errors.UnsupportedSchemaError) as info:
            await engine.chat.completions.create(messages=ASK, tools=bad, tool_choice="required")
        assert info.value.keyword == "not" and info.value.field.startswith("f.parameters")
        with pytest.raises(errors.UnsupportedSchemaError, match="uniqueItems"):
            await engine.chat.completions.create(
                messages=ASK,
                response_format={"type": "json_object", "schema": {"type": "array", "uniqueItems": True}},
            )
        with pytest.raises(errors.InvalidGrammarError):
            await engine.chat.completions.create(
                messages=ASK, response_format={"type": "grammar", "grammar": "x"}
            )
        return await engine.chat.completions.create(messages=ASK)  # not stuck: the engine serves the next one

    assert run_engine(body, reply=["ok"]).choices[0].message.content == "ok"


def test_formats_table():
    assert set(FORMATS) == {"hermes", "llama3", "mistral", "generic"}


def test_tools_with_a_response_format_under_auto_is_a_call_or_the_formatted_answer():
    async def body(engine, fake):
        rf = {"type": "json_object", "schema": {"type": "object", "properties": {"t": {"type": "integer"}}}}
        reply = await engine.chat.completions.create(messages=ASK, tools=TOOLS, response_format=rf)
        return reply, fake.matcher

    reply, matcher = run_engine(body, reply=['{"t": ', "21}"])
    assert reply.choices[0].message.content == '{"t": 21}' and reply.choices[0].finish_reason == "stop"
    g = matcher.grammar
    assert matcher.armed and g.key.startswith(
        "union:"
    )  # constrained from the first token: either kind of reply
    assert g.matches('{"t": 21}') and g.matches(
        call_text(HERMES, [ToolCall("x", "get_time", '{"zone": "UTC"}')])
    )
    assert not g.matches("It is 21.")
