"""Hostile bodies, routes and methods into the local endpoint (worker/local_endpoint.py: the one implementation the
service worker and ``webllm-py serve`` share), over a real MLCEngine on the fake GPU engine. Every answer must come
in time with a status OpenAI uses (never 500): 200 with a body openai-python validates (SSE read to ``[DONE]``), or
4xx with OpenAI's error shape ``{"error": {message, type, param, code}}``. Bodies: valid requests with fields made
hostile, JSON that nests too deep, truncated or mangled JSON, raw bytes, NaN, huge numbers, surrogates."""

from __future__ import annotations

import asyncio
import json
import random

from tests.unit.openai_check import validate
from tests.unit.test_sw_handler import Clients
from tests.unit.test_worker_handler import world  # noqa: F401 - a fixture
from webllm_py.worker.local_endpoint import LocalEndpoint

from .harness import hostile, nested, run_async, tally
from .test_fuzz_requests import chat_request, text_request

CASES = 300
ROUTES = [("POST", "v1/chat/completions")] * 6 + [("POST", "v1/completions")] * 3 + [
    ("GET", "v1/models"), ("GET", "v1/chat/completions"), ("PUT", "v1/models"), ("POST", "v1/embeddings"),
    ("OPTIONS", "v1/completions"), ("POST", "/v1/chat/completions/"), ("DELETE", "v2"),
]  # fmt: skip


def as_json(value) -> str | None:
    try:
        return json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return None  # what JSON cannot hold is not a body


def body_for(rng: random.Random, route: str) -> str | bytes | None:
    r = rng.random()
    request = chat_request(rng) if "chat" in route else text_request(rng)
    text = as_json(request) or as_json(
        {"messages": [{"role": "user", "content": "x"}], "stream": hostile(rng, True)}
    )
    if r < 0.55:
        return text
    if r < 0.65:
        return text[: rng.randrange(len(text))]  # truncated
    if r < 0.72:
        cut = rng.randrange(len(text))
        return (
            text[:cut] + rng.choice(["NaN", "Infinity", "\\ud800", "]", "{", "1" * 5000, "\x00"]) + text[cut:]
        )
    if r < 0.8:
        return rng.choice(["[", "{"]) * rng.choice([65, 600, 100_000]) + "1"
    if r < 0.86:
        return json.dumps({"messages": nested(rng.choice([65, 600]), {"role": "user", "content": "x"})})
    if r < 0.92:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    return rng.choice([None, "", "null", "[]", '"x"', "1", json.dumps({"stream": "false", "prompt": "x"})])


def checker(method: str, route: str):
    async def check(response) -> None:
        assert response.status != 500, (response.status, response.body[:300])
        if response.status >= 400:
            error = json.loads(response.body)["error"]
            assert set(error) == {"message", "type", "param", "code"}, error
            assert response.status in (400, 404, 405, 413, 501), response.status
            return "typed"
        if response.events is not None:
            events = [e async for e in response.events]
            assert events[-1] == "data: [DONE]\n\n", events[-1:]
            for event in events[:-1]:
                data = json.loads(event.removeprefix("data: "))
                assert "error" not in data, data
                validate(data)
        elif route.endswith("models"):
            assert json.loads(response.body)["object"] == "list"
        elif response.status == 200:
            validate(json.loads(response.body))

    return check


def test_hostile_endpoint_bodies(world):  # noqa: F811
    t = tally("endpoint bodies")
    rng = random.Random(78)

    async def go():
        endpoint = LocalEndpoint(Clients(world).handler, max_body_bytes=1 << 20)
        for i in range(CASES):
            method, route = rng.choice(ROUTES)
            body = body_for(rng, route)
            shown = repr(body[:80]) if body else repr(body)
            await run_async(
                t, f"case {i}: {method} {route} {shown}",
                lambda m=method, r=route, b=body: endpoint.handle(m, r, b), checker(method, route), 3.0,
            )  # fmt: skip
        return await endpoint.handle(
            "POST", "v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}]})
        )

    last = asyncio.run(go())
    assert last.status == 200 and json.loads(last.body)["choices"][0]["message"]["content"] == "Hello there!"
    assert t.cases == CASES and t.answers > CASES // 10 and t.typed > CASES // 3
    t.assert_clean()
