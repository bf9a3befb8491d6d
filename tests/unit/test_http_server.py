"""``webllm-py serve`` (host/http_server.py + the shared worker/local_endpoint.py) over the fake GPU engine, with
openai-python as the client: every answer parses as OpenAI's types, malformed bodies get 400 in OpenAI's error
shape, and a client that disconnects mid-stream frees the model for the next request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest

import webllm_py.engine as engine_module
from tests.unit._fake_engine import FakeEngine
from webllm_py import cli
from webllm_py.api.mlc_engine import MLCEngine
from webllm_py.config import AppConfig, ModelRecord
from webllm_py.host.http_server import OpenAIServer

ROOT = Path(__file__).resolve().parents[2]
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def world(tmp_path, monkeypatch):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    config = AppConfig(model_list=[ModelRecord("fake-model", str(gguf))], cache_dir=str(tmp_path / "cache"))
    loaded: list[FakeEngine] = []
    knobs = SimpleNamespace(step_delay=0.0, script=list("Hello there!"))

    async def fake_load_engine(record, gguf_path, *, device=None, progress=None):
        fake = FakeEngine(record.model_id, step_delay=knobs.step_delay)
        fake.say(knobs.script)
        loaded.append(fake)
        return fake

    monkeypatch.setattr(engine_module, "load_engine", fake_load_engine)
    return SimpleNamespace(config=config, loaded=loaded, knobs=knobs, gguf=str(gguf))


async def http(base: str, method: str, path: str, data: bytes = b"", headers: bytes = b"") -> bytes:
    """One raw HTTP/1.1 exchange (Connection: close): the whole answer, status line to body."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
    writer.write(head.encode() + headers + b"\r\n" + data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def serving(world, body, **server_kw):
    """Run ``body(client, base_url, server)`` against a server on a free port, within 20 s."""

    async def go():
        engine = MLCEngine(app_config=world.config)
        await engine.reload("fake-model")
        server = OpenAIServer(engine, **server_kw)
        host, port = await server.start("127.0.0.1", 0)
        base = f"http://{host}:{port}"
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        try:
            return await body(client, base, server)
        finally:
            await client.close()
            await server.close()
            await engine.unload()

    return asyncio.run(asyncio.wait_for(go(), 20))


def test_openai_client_models_chat_completion_and_streams(world):
    async def body(client, base, server):
        models = await client.models.list()
        whole = await client.chat.completions.create(model="fake-model", messages=USER)
        stream = await client.chat.completions.create(
            model="fake-model", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        text = await client.completions.create(model="fake-model", prompt="Once", max_tokens=5)
        text_chunks = [
            c async for c in await client.completions.create(model="fake-model", prompt="Once", stream=True)
        ]
        return models, whole, chunks, text, text_chunks

    models, whole, chunks, text, text_chunks = serving(world, body)
    assert [m.id for m in models.data] == ["fake-model"]
    assert isinstance(whole, openai.types.chat.ChatCompletion)
    assert whole.choices[0].message.content == "Hello there!" and whole.usage.completion_tokens > 0
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert text.object == "text_completion" and text.choices[0].text == "Hello"
    assert "".join(c.choices[0].text for c in text_chunks if c.choices) == "Hello there!"


def test_client_that_disconnects_mid_stream_frees_the_model(world):
    world.knobs.step_delay = 0.05
    world.knobs.script = list("abcdefghijklmnopqrstuvwxyz" * 4)

    async def body(client, base, server):
        stream = await client.chat.completions.create(model="fake-model", messages=USER, stream=True)
        seen = []
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
            if len(seen) == 3:
                break
        await stream.close()  # closes the HTTP connection mid-body
        # the next request is served at once, not after the 104-token script: the disconnect ended it
        reply = await asyncio.wait_for(
            client.chat.completions.create(model="fake-model", messages=USER, max_tokens=2), 3
        )
        return seen, reply

    seen, reply = serving(world, body)
    first, second = world.loaded[0].generations
    assert seen == ["a", "b", "c"] and first.finish_reason == "abort" and len(first.yielded) < 20
    assert reply.choices[0].message.content == "ab" and second.finish_reason == "length"


def test_malformed_bodies_get_400_in_openais_shape(world):
    deep = "[" * 600 + "]" * 600  # 1.2 KB that used to hang the endpoint
    bodies = {
        "not json": (b"{nope", 400, None),
        "stream as a string": (json.dumps({"messages": USER, "stream": "false"}).encode(), 400, "stream"),
        "nested 600 deep": (json.dumps({"messages": USER, "stop": json.loads(deep)}).encode(), 400, None),
        "100,000 brackets": (b"[" * 100_000, 400, None),
        "NaN": (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, None),
        "an array": (b"[1, 2]", 400, None),
        "a lone surrogate": (
            b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
            400,
            "messages[0].content",
        ),
        "huge number": (json.dumps({"messages": USER, "temperature": 10**400}).encode(), 400, "temperature"),
        "not UTF-8": (b'{"messages": "\xff"}', 400, None),
        "too large": (b" " * 300_000, 413, None),
    }

    async def body(client, base, server):
        out = {}
        for name, (data, _, _) in bodies.items():
            out[name] = status_and_json(await http(base, "POST", "/v1/chat/completions", data))
        ok = await client.chat.completions.create(model="fake-model", messages=USER)  # nothing was lost
        return out, ok

    out, ok = serving(world, body, max_body_bytes=200_000)
    for name, (status, error) in out.items():
        _, want_status, want_param = bodies[name]
        assert status == want_status, (name, status, error)
        assert set(error["error"]) == {"message", "type", "param", "code"}, name
        assert error["error"]["type"] == "invalid_request_error", name
        if want_param:
            assert error["error"]["param"] == want_param, (name, error)
    assert ok.choices[0].message.content == "Hello there!"


def test_malformed_http_is_answered_and_the_server_keeps_serving(world):
    async def raw(host: str, port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer

    async def body(client, base, server):
        host, port = base.removeprefix("http://").split(":")
        answers = [
            await raw(host, int(port), data)
            for data in (
                b"GARBAGE\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"GET /v1/nothing HTTP/1.1\r\nConnection: close\r\n\r\n",
                b"GET /v1/models HTTP/1.1\r\nX: " + b"y" * 70_000 + b"\r\n\r\n",
            )
        ]
        return answers, await client.models.list()

    answers, models = serving(world, body)
    statuses = [int(a.split(b" ", 2)[1]) for a in answers]
    assert statuses == [400, 400, 501, 404, 431]
    assert all(b'"error"' in a for a in answers)
    assert [m.id for m in models.data] == ["fake-model"]


def test_cli_chat_and_serve_on_a_local_gguf(world, capsys):
    assert cli.main(["chat", "--gguf", world.gguf, "--model", "fake-model", "Hi"]) == 0
    assert capsys.readouterr().out == "Hello there!\n"

    async def go():
        args = cli._parser().parse_args(["serve", "--gguf", world.gguf, "--port", "0"])
        ready = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(cli.serve(args, ready=ready))
        host, port = await ready
        async with openai.AsyncOpenAI(base_url=f"http://{host}:{port}/v1", api_key="-", max_retries=0) as c:
            reply = await c.chat.completions.create(model="fake", messages=USER)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return reply

    assert asyncio.run(asyncio.wait_for(go(), 10)).model == "fake"  # the model id from the file name
    assert cli.main(["chat", "--model", "no-such-model", "Hi"]) == 2
    assert "ModelNotFoundError" in capsys.readouterr().err


def test_console_script_points_at_a_real_main():
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["webllm-py"]
    module, _, function = target.partition(":")
    assert (module, function) == ("webllm_py.cli", "main")
    out = subprocess.run(
        [sys.executable, "-m", "webllm_py.cli", "serve", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0 and "--port" in out.stdout and "--model" in out.stdout
