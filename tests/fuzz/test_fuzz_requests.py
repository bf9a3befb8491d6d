"""Hostile request fields through the desktop API (``MLCEngine.chatCompletion`` / ``completion``, the path every
host's requests take to protocol.py) over the fake GPU engine: each case is a valid request with one to three
fields made hostile (wrong types, huge or non-finite numbers, lone surrogates, deep nesting, unknown keys, objects
that are not data). Each must give a reply openai-python validates (streams read to the end) or a typed error, in
time; afterwards the model still answers."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest

import webllm_py.engine as engine_module
from tests.unit._fake_engine import FakeEngine
from tests.unit.openai_check import validate
from webllm_py.api.mlc_engine import MLCEngine
from webllm_py.config import AppConfig, ModelRecord

from .harness import hostile, nested, run_async, tally

CASES = 500
CHAT_FIELDS = [
    "messages", "model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias", "logprobs",
    "top_logprobs", "seed", "stop", "n", "ignore_eos", "enable_latency_breakdown", "extra_body", "tools",
    "response_format", "user", "max_token", "__proto__",
]  # fmt: skip
TEXT_FIELDS = ["prompt", "echo", "suffix", "best_of", *CHAT_FIELDS[1:20]]
MESSAGE_KEYS = ["role", "content", "name", "tool_call_id", "tool_calls", "refusal"]
# Values each field may validly hold, mixed in so that cases also combine valid fields into real replies.
VALID = {
    "model": ["fake-model"], "stream": [True, False], "stream_options": [{"include_usage": True}],
    "max_tokens": [1, 3, 2**31 - 1], "max_completion_tokens": [2], "temperature": [0, 0.5, 2], "top_p": [0.1, 1],
    "top_k": [0, -1, 5, 2**31 - 1], "frequency_penalty": [-2, 0.5], "presence_penalty": [2.0],
    "repetition_penalty": [1.1, 1e6], "logit_bias": [{"5": 10}, {3: -100}, {}], "logprobs": [True, False],
    "top_logprobs": [0, 3, 20], "seed": [0, -5, 2**63], "stop": ["l", ["!", "x"], []], "n": [1, 2],
    "ignore_eos": [True], "enable_latency_breakdown": [True], "extra_body": [{"top_k": 3}, {}], "tools": [[]],
    "response_format": [{"type": "text"}], "echo": [True, False], "prompt": ["Once", [5, 6], [[1, 2]]],
    "best_of": [1], "messages": [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]],
}  # fmt: skip


def value_for(rng: random.Random, field: str):
    return rng.choice(VALID[field]) if field in VALID and rng.random() < 0.5 else hostile(rng)


@pytest.fixture
def world(tmp_path, monkeypatch):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    config = AppConfig(model_list=[ModelRecord("fake-model", str(gguf))])

    async def fake_load_engine(record, gguf_path, *, device=None, progress=None):
        fake = FakeEngine(record.model_id)
        fake.say(["Hel", "lo", " \u00e9", "!"])
        return fake

    monkeypatch.setattr(engine_module, "load_engine", fake_load_engine)
    return SimpleNamespace(config=config)


def chat_request(rng: random.Random) -> dict:
    request: dict = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    for _ in range(rng.randint(1, 3)):
        where = rng.random()
        if where < 0.6:
            field = rng.choice(CHAT_FIELDS)
            request[field] = value_for(rng, field)
        elif where < 0.8:  # inside a message
            message = {"role": "user", "content": "Hi"}
            message[rng.choice(MESSAGE_KEYS)] = hostile(rng)
            request["messages"] = [message]
        elif where < 0.9:  # content parts
            request["messages"] = [{"role": "user", "content": [{"type": "text", "text": hostile(rng)}]}]
        else:  # many or deep messages
            request["messages"] = (
                nested(rng.choice([2, 50, 2000])) if rng.random() < 0.5 else [hostile(rng)] * 3
            )
    return request


def text_request(rng: random.Random) -> dict:
    request: dict = {"prompt": "Once", "max_tokens": 3}
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(TEXT_FIELDS)
        request[field] = (
            value_for(rng, field) if rng.random() < 0.8 else [rng.choice([0, 1, 999, 1000, 2**31])]
        )
    return request


async def answered(reply) -> None:
    """A reply openai-python validates; a stream is read to its end, every chunk validated."""
    if hasattr(reply, "__aiter__"):
        async for chunk in reply:
            validate(chunk)
    else:
        validate(reply)


def test_hostile_request_fields(world):
    t = tally("requests (desktop API)")
    rng = random.Random(12)

    async def go():
        engine = MLCEngine(app_config=world.config)
        await engine.reload("fake-model")
        for i in range(CASES):
            chat = rng.random() < 0.7
            request = chat_request(rng) if chat else text_request(rng)
            make = engine.chatCompletion if chat else engine.completion
            await run_async(
                t,
                f"case {i}: {sorted(request)}",
                lambda make=make, request=request: make(request),
                answered,
                2.0,
            )
        # nothing was lost: the model answers a plain request, streamed and not
        reply = await asyncio.wait_for(
            engine.chatCompletion({"messages": [{"role": "user", "content": "x"}]}), 2
        )
        stream = await engine.completion({"prompt": "Once", "stream": True})
        text = "".join([c.choices[0].text async for c in stream if c.choices])
        await engine.unload()
        return reply, text

    reply, text = asyncio.run(go())
    assert reply.choices[0].message.content == "Hello \u00e9!" and text == "Hello \u00e9!"
    assert t.cases == CASES and t.typed > CASES // 3 and t.answers > CASES // 10
    t.assert_clean()
