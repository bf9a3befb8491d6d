"""Structured output and tool calls on the real model (SmolLM2-135M-Instruct): a JSON schema (nested objects,
arrays, enums, $ref, anyOf) gives replies that validate (jsonschema), greedy and sampled; ``tool_choice: "required"`` makes the 135M model emit a well-formed call for a given schema, streamed
as tool-call deltas that openai-python's own stream state accumulates into the non-streaming message; the call
and its result go back for a second round that reuses the KV cache."""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

import webllm_py
from webllm_py.streaming import collect_chat_completion

from ..unit.openai_check import validate
from . import test_chat_api
from .model_path import DEFAULT_MODEL_ID, smollm2_path

loop = test_chat_api.loop  # a module-scoped event loop (fixture)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "pet": {"$ref": "#/$defs/pet"},
        "tags": {"type": "array", "items": {"enum": ["cute", "lazy", "loud"]}, "maxItems": 2},
        "contact": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 10}},
                    "required": ["city"],
                },
            ]
        },
    },
    "required": ["name", "age", "pet", "tags", "contact"],
    "$defs": {
        "pet": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["cat", "dog"]},
                "legs": {"type": "integer", "minimum": 0, "maximum": 8},
            },
            "required": ["kind", "legs"],
        }
    },
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    }
]
SAMPLING = [{"temperature": 0}, {"temperature": 1.0, "seed": 7}]


@pytest.fixture(scope="module")
def api(loop, gpu_device):
    config = webllm_py.AppConfig(
        model_list=[webllm_py.ModelRecord(model_id=DEFAULT_MODEL_ID, model_url=str(smollm2_path()))]
    )
    engine = loop.run_until_complete(
        webllm_py.CreateMLCEngine(
            DEFAULT_MODEL_ID, app_config=config, device=gpu_device, context_window_size=512
        )
    )
    yield engine
    loop.run_until_complete(engine.unload())


def ask(loop, api, content: str, **kw):
    reply = loop.run_until_complete(
        api.chat.completions.create(messages=[{"role": "user", "content": content}], max_tokens=120, **kw)
    )
    validate(reply)
    return reply


@pytest.mark.parametrize("sampling", SAMPLING, ids=["greedy", "sampled"])
def test_a_nested_schema_always_holds(loop, api, sampling):
    """The nested schema ($ref, anyOf, enums, arrays), greedy and sampled. A prefill costs seconds on lavapipe, so
    JSON mode and EBNF run on the tiny model's matrix (tests/kernels/test_engine_grammar.py, greedy and sampled)
    and, on this model, seeded in Chromium against the desktop (tests/browser/test_proxies.py, an EBNF grammar)."""
    reply = ask(
        loop, api, "Describe a person and their pet as JSON.",
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}, **sampling,
    )  # fmt: skip
    jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
    assert reply.choices[0].finish_reason == "stop"
    extra = reply.usage.extra
    assert extra["grammar_init_s"] >= 0 and 0 < extra["grammar_per_token_s"] < 0.1


def test_required_makes_a_small_model_call_and_the_stream_accumulates_to_it(loop, api):
    knobs = dict(tools=TOOLS, tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=80)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    create = api.chat.completions.create

    async def stream():
        s = await create(messages=messages, stream=True, stream_options={"include_usage": True}, **knobs)
        return [c async for c in s]

    chunks = loop.run_until_complete(stream())
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(validate(c))
    streamed = state.get_final_completion().choices[0]

    async def replay():
        for c in chunks:
            yield c

    # The non-streaming reply is this very accumulation (MLCEngine collects its own stream): compare the two.
    whole = loop.run_until_complete(collect_chat_completion(replay()))
    validate(whole)
    choice = whole.choices[0]
    assert choice.finish_reason == streamed.finish_reason == "tool_calls"
    assert choice.message.content is None and streamed.message.content is None
    (call,) = choice.message.tool_calls
    (scall,) = streamed.message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        scall.id, scall.function.name, scall.function.arguments,
    )  # fmt: skip
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), TOOLS[0]["function"]["parameters"])
    pieces = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert pieces[0].function.arguments == "" and pieces[0].id == call.id and len(pieces) > 2

    # Round two: the call and its result go back; the prompt up to the end of the call is in the KV cache.
    history = webllm_py.Messages(messages).assistant_tool_calls([call]).tool(call.id, '{"temperature": 21}')
    second = loop.run_until_complete(create(messages=history, tools=TOOLS, temperature=0, max_tokens=16))
    validate(second)
    assert second.choices[0].message.content or second.choices[0].message.tool_calls
    engine = api._slots[DEFAULT_MODEL_ID].engine
    prompt_len = len(engine.kv_ids) - (
        second.usage.completion_tokens - 1
    )  # the cache: prompt + consumed reply
    assert second.usage.prompt_tokens < prompt_len / 4  # only the tool turn was prefilled
