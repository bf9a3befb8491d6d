"""The Messages builder and the Server-Sent Events helpers (chunks -> SSE bytes -> typed chunks)."""

from __future__ import annotations

import asyncio

import pytest

import webllm_py
from webllm_py import Messages, aparse_sse, errors, parse_sse, to_sse

from .openai_check import validate
from .test_mlc_engine_fake import create, world  # noqa: F401 - the fixture


def run(coro):
    return asyncio.run(coro)


def test_messages_builder_is_a_list_of_plain_dicts(world):  # noqa: F811
    messages = Messages().system("Be brief.").user("Hi", name="ann").assistant("Hello.").user("More")
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "More"},
    ]
    tool = Messages().developer("d").user("q").tool("42", tool_call_id="c1")
    assert tool[-1] == {"role": "tool", "content": "42", "tool_call_id": "c1"}
    from webllm_py.api.types import ChatCompletionMessageToolCall, Function

    calls = [ChatCompletionMessageToolCall("c1", Function("f", '{"a": 1}'))]
    m = Messages().user("q").assistant_tool_calls(calls).tool("c1", "42")
    m.assistant_tool_calls([{"id": "c2", "function": {"name": "g", "arguments": {"b": [2]}}}], content="hm")
    assert m[1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "assistant", "content": "hm", "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"b": [2]}'}}]},
    ]  # fmt: skip

    async def go():
        engine = await create(world)
        built = await engine.chat.completions.create(messages=Messages().user("Hi"))
        plain = await engine.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
        return built, plain, world.loaded[0].chat_template.rendered

    built, plain, rendered = run(go())
    assert built.choices[0].message.content == plain.choices[0].message.content and rendered[0] == rendered[1]


async def _collect(stream):
    return [c async for c in stream]


async def _pieces(body: bytes, size: int):
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_sse_round_trip(world):  # noqa: F811
    async def go():
        engine = await create(world)
        world.loaded[0].say(["Hé", "llo", " 🙂"])
        stream = await engine.chat.completions.create(
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            logprobs=True,
            top_logprobs=1,
            stream_options={"include_usage": True},
        )
        chunks = await _collect(stream)
        body = b"".join(await _collect(to_sse(_aiter(chunks))))
        byte_by_byte = await _collect(aparse_sse(_pieces(body, 1)))
        crlf = await _collect(aparse_sse(_pieces(body.replace(b"\n", b"\r\n"), 7)))
        return chunks, body, byte_by_byte, crlf

    chunks, body, byte_by_byte, crlf = run(go())
    assert body.endswith(b"data: [DONE]\n\n") and body.count(b"\n\ndata: ") == len(chunks)
    want = [c.to_dict() for c in chunks]
    for parsed in (parse_sse(body), parse_sse(body.decode().replace("\n", "\r\n")), byte_by_byte, crlf):
        assert [c.to_dict() for c in parsed] == want
        for c in parsed:
            validate(c)
    assert all(isinstance(c, webllm_py.ChatCompletionChunk) for c in byte_by_byte)


async def _aiter(items):
    for item in items:
        yield item


def test_parse_any_openai_compatible_body():
    body = (
        ": keep-alive\n\n"
        "event: message\nid: 1\n"
        'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-x",'
        '"system_fingerprint":"fp","service_tier":"default",\n'
        'data: "choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n'
        'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-x","choices":[],'
        '"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
        "data: [DONE]\n\n"
        'data: {"ignored": "after DONE"}\n\n'
    )
    chunks = parse_sse(body)
    assert [c.choices[0].delta.content for c in chunks[:1]] == ["Hi"] and chunks[0].system_fingerprint == "fp"
    assert chunks[1].usage.total_tokens == 4
    text = parse_sse(
        'data: {"id":"x","object":"text_completion","created":1,"model":"m","choices":'
        '[{"index":0,"text":"ab","finish_reason":"length","logprobs":null}]}\n\n'
    )
    assert isinstance(text[0], webllm_py.Completion) and text[0].choices[0].text == "ab"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('data: {"error": {"message": "overloaded"}}\n\n', "overloaded"),
        ("data: not json\n\n", "not JSON"),
        ("data: [1, 2]\n\n", "not a JSON object"),
        ('data: {"object": "list"}\n\n', "'list'"),
        ('data: {"object": "chat.completion.chunk"}\n\n', "lacks a field"),
    ],
)
def test_bad_bodies_raise_a_typed_error(body, words):
    with pytest.raises(errors.ServerSentEventsError, match=words):
        parse_sse(body)
