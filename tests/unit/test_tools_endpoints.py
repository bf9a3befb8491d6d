"""Tool calls through every boundary a request crosses, on the fake GPU engine (generic format: the fake template has
no tools branch): the service-worker endpoint and the desktop ``webllm-py serve`` (both worker/local_endpoint.py)
answer a tool request that openai-python parses, streamed as server-sent events its stream state accumulates; the
Python worker proxy gives the same calls as the desktop API."""

from __future__ import annotations

import json

import openai
import openai.types.chat
from openai.lib.streaming.chat import ChatCompletionStreamState

from tests.unit import test_http_server as http_tests
from tests.unit import test_worker_client as client_tests
from tests.unit import test_worker_handler as handler_tests
from tests.unit.test_sw_handler import Clients, parse_sse, read_all
from tests.unit.test_worker_handler import run
from webllm_py.tools import GENERIC, ToolCall, call_text

world = handler_tests.world
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = call_text(GENERIC, [ToolCall("x", "get_weather", '{"city": "Paris"}')])
SCRIPT = ["Sure.", "\n", CALL[:9], CALL[9:30], CALL[30:45], CALL[45:]]


def check_call(message, finish_reason) -> str:
    assert finish_reason == "tool_calls" and message.content == "Sure."
    (call,) = message.tool_calls
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == (
        "function", "get_weather", {"city": "Paris"},
    )  # fmt: skip
    return call.id


def test_service_worker_endpoint_answers_a_tool_request_openai_parses(world):
    world.knobs.script = SCRIPT

    async def go():
        from webllm_py.worker.local_endpoint import LocalEndpoint

        tabs = Clients(world)
        endpoint = LocalEndpoint(tabs.handler)
        body = {"model": "fake-model", "messages": ASK, "tools": TOOLS}
        whole = await endpoint.handle("POST", "v1/chat/completions", json.dumps(body))
        world.loaded[0].say(SCRIPT)
        stream = await endpoint.handle("POST", "v1/chat/completions", json.dumps({**body, "stream": True}))
        return whole, await read_all(stream)

    whole, text = run(go())
    completion = openai.types.chat.ChatCompletion.model_validate_json(whole.body)
    check_call(completion.choices[0].message, completion.choices[0].finish_reason)
    events = parse_sse(text)
    assert events[-1] == "[DONE]"
    state = ChatCompletionStreamState()
    for e in events[:-1]:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate_json(e))
    final = state.get_final_completion().choices[0]
    check_call(final.message, final.finish_reason)


def test_desktop_server_answers_openai_python_with_tool_calls(monkeypatch, tmp_path):
    import webllm_py.engine as engine_module
    from tests.unit._fake_engine import FakeEngine, no_preflight

    async def fake_load_engine(record, gguf_path, *, device=None, progress=None):
        fake = FakeEngine(record.model_id)
        fake.say(SCRIPT)
        return fake

    monkeypatch.setattr(engine_module, "load_engine", fake_load_engine)
    monkeypatch.setattr(engine_module, "preflight", no_preflight)  # fake files: no header to check
    from types import SimpleNamespace

    from webllm_py.config import AppConfig, ModelRecord

    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    config = AppConfig(model_list=[ModelRecord("fake-model", str(gguf))], cache_dir=str(tmp_path / "c"))

    async def body(client, base, server):
        whole = await client.chat.completions.create(model="fake-model", messages=ASK, tools=TOOLS)
        async with client.chat.completions.stream(model="fake-model", messages=ASK, tools=TOOLS) as s:
            async for _ in s:
                pass
            streamed = await s.get_final_completion()
        return whole, streamed

    whole, streamed = http_tests.serving(SimpleNamespace(config=config), body)
    check_call(whole.choices[0].message, whole.choices[0].finish_reason)
    check_call(streamed.choices[0].message, streamed.choices[0].finish_reason)


def test_python_worker_proxy_gives_the_desktop_calls(world):
    world.knobs.script = SCRIPT

    async def go():
        engine, port = await client_tests.connect(world)
        whole = await engine.chat.completions.create(messages=ASK, tools=TOOLS)
        port.engine._slots["fake-model"].engine.say(SCRIPT)
        stream = await engine.chat.completions.create(messages=ASK, tools=TOOLS, stream=True)
        chunks = [c async for c in stream]
        return whole, chunks

    whole, chunks = run(go())
    check_call(whole.choices[0].message, whole.choices[0].finish_reason)
    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(c.to_dict()))
    final = state.get_final_completion().choices[0]
    check_call(final.message, final.finish_reason)
