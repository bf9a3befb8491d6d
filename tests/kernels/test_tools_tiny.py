"""Tool calls on the architectures whose templates have a tools branch, through the whole engine: a tiny random
qwen2 / qwen3 / llama (llama3 RoPE factors) GGUF carrying Qwen2.5's, Qwen3's, Llama-3.2's or Mistral v0.3's real
chat template (tests/data/chat_templates). The format is recognized from the GGUF's own template, the prompt is that
template's tools rendering (the text tests/unit/test_tools.py checks byte-identical to transformers), ``required``
makes the random model emit one call in the family's syntax with arguments valid for the schema, the stream
accumulates (openai-python) to the non-streaming message, and the next round, with the call and its result in the
history, renders through the family's template (Mistral's 9-character ids, Llama's ipython turn)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import openai.types.chat
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

import webllm_py
from webllm_py.config import AppConfig, ModelRecord
from webllm_py.conversation import JinjaTemplate
from webllm_py.protocol import check_chat_completion_request
from webllm_py.tools import template_messages

from ..unit.openai_check import validate
from .tiny_llama import build_tiny_model

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "chat_templates"
# family: (architecture of the tiny model, template file, the format its tools branch is, what its prompt holds)
FAMILIES = {
    "qwen2.5": (dict(arch="qwen2", qkv_bias=True), "qwen2.5.jinja", "hermes", "<tools>\n"),
    "qwen3": (dict(arch="qwen3", qk_norm=True, head_dim=32), "qwen3.jinja", "hermes", "<tools>\n"),
    "llama-3.2": (dict(arch="llama", rope_factors=True), "llama-3.2.jinja", "llama3", "Environment: ipython"),
    "mistral-v0.3": (dict(arch="llama", tied=False), "mistral-v0.3.jinja", "mistral", "[AVAILABLE_TOOLS]"),
}
PARAMETERS = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome"]}, "metric": {"type": "boolean"}},
    "required": ["city", "metric"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    shape, template_file, fmt, landmark = FAMILIES[request.param]
    template = (TEMPLATES / template_file).read_text()
    path = build_tiny_model(
        tmp_path_factory.mktemp("tools") / f"{request.param}.gguf",
        seed=7,
        ctx=2048,
        extra_metadata={"tokenizer.chat_template": template},
        **shape,
    )
    return request.param, str(path), template, fmt, landmark


def test_required_call_renders_parses_and_streams_in_each_family(family, gpu_device):
    name, path, template_source, fmt, landmark = family

    async def resolve(record, app_config, progress):
        return path

    async def go():
        config = AppConfig(model_list=[ModelRecord(name, path, context_window_size=2048)])
        engine = webllm_py.MLCEngine(app_config=config, device=gpu_device, resolve_model=resolve)
        await engine.reload(name)
        try:
            create = engine.chat.completions.create
            knobs = dict(tools=TOOLS, tool_choice="required", parallel_tool_calls=False, temperature=0)
            whole = await create(messages=ASK, max_tokens=160, **knobs)
            slot = engine._slots[name]
            prompt = slot.conversation_text
            chunks = [c async for c in await create(messages=ASK, max_tokens=160, **knobs, stream=True)]
            message = whole.choices[0].message
            history = [
                *ASK,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [c.to_dict() for c in message.tool_calls],
                },
                {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": '{"celsius": 21}'},
            ]
            second = await create(messages=history, tools=TOOLS, max_tokens=2, temperature=0)
            second_prompt = slot.conversation_text
            return whole, chunks, second, prompt, second_prompt, slot.tool_format, slot.engine.tokenizer
        finally:
            await engine.unload()

    whole, chunks, second, prompt, second_prompt, tool_format, tokenizer = asyncio.run(go())
    assert tool_format.name == fmt, name

    # The prompt is the GGUF template's own tools rendering (as tests/unit/test_tools.py renders it).
    checked = check_chat_completion_request({"messages": ASK, "tools": TOOLS})
    msgs, tools = template_messages([m.to_dict() for m in checked.messages], tool_format, checked.tools)
    bos, eos = (
        tokenizer.id_to_token(i) if i is not None else "" for i in (tokenizer.bos_id, tokenizer.eos_id)
    )
    expected = JinjaTemplate(template_source, bos_token=bos, eos_token=eos).render(msgs, tools=tools)
    assert prompt.startswith(expected) and landmark in expected and "get_weather" in expected

    # One call in the family's syntax, arguments valid for the schema.
    for r in (whole, *chunks):
        validate(r)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS)
    reply = prompt[len(expected) :]
    assert reply.lstrip().startswith(tool_format.head.lstrip()), reply
    if fmt == "mistral":
        assert len(call.id) == 9 and call.id.isalnum() and f'"id": "{call.id}"' in reply

    # The stream accumulates to the same message (ids are ours, fresh per request, except Mistral's).
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(c.to_dict()))
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    (streamed,) = final.message.tool_calls
    assert (streamed.function.name, streamed.function.arguments) == (
        call.function.name,
        call.function.arguments,
    )
    assert (streamed.id == call.id) == (fmt == "mistral")

    # Round two renders the call and its result through the family's template.
    validate(second)
    assert '{"celsius": 21}' in second_prompt or '{\\"celsius\\": 21}' in second_prompt
