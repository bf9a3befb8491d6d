"""Hostile worker envelopes into the dedicated worker's handler and the service worker's, over a real MLCEngine on
the fake GPU engine. Every message with a usable uuid (a non-empty string) must get exactly one reply under it,
a ``return`` or a ``throw`` whose name is a ``webllm_py.errors`` class; every other message one ``throw`` under
uuid ``""``. Content is a plausible content for its kind with fields made hostile (JSON values only: the browser
converts messages through JSON). Afterwards the loaded model still answers."""

from __future__ import annotations

import asyncio
import json
import random
import uuid as uuidlib

from tests.unit.test_sw_handler import Clients
from tests.unit.test_worker_handler import FakeHost, Worker, world  # noqa: F401 - world is a fixture
from webllm_py import errors
from webllm_py.errors import _show
from webllm_py.protocol import CHAT_OPTIONS
from webllm_py.worker.messages import REQUEST_KINDS

from .harness import JSON_HOSTILE, hostile, nested, tally

CASES = 400
USER = [{"role": "user", "content": "Hi"}]
# A plausible content per kind, which the fuzz then damages.
PLAUSIBLE = {
    "reload": {"modelId": ["fake-model"], "chatOpts": {"temperature": 0.5, "prefill_chunk_size": 64}},
    "chatCompletionNonStreaming": {"request": {"messages": USER, "max_tokens": 2}, "modelId": ["fake-model"]},
    "chatCompletionStreamInit": {"request": {"messages": USER}, "selectedModelId": "fake-model"},
    "completionNonStreaming": {"request": {"prompt": "Once"}},
    "completionStreamInit": {"request": {"prompt": "Once", "max_tokens": 2}},
    "completionStreamNextChunk": {"streamId": "s-1"},
    "interruptGenerate": {"streamId": "s-1"},
    "resetChat": {"keepStats": True},
    "getMessage": {},
    "runtimeStatsText": {"modelId": "fake-model"},
    "setLogLevel": "WARN",
    "setAppConfig": {"model_list": [{"model_id": "fake-model", "model_url": "x.gguf"}]},
    "hasModelInCache": {"modelId": "fake-model"},
    "deleteModelInCache": {"modelId": "nope"},
}
KINDS = sorted(
    REQUEST_KINDS - {"unload"}
)  # a valid unload loses the model on purpose; its envelope is fuzzed too
ERROR_NAMES = {
    n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.WebLLMError)
}


def damage(rng: random.Random, value):
    """``value`` with one part replaced by a hostile JSON value (or left whole, sometimes)."""
    r = rng.random()
    if r < 0.15:
        return value
    if r < 0.3 or not isinstance(value, dict) or not value:
        return hostile(rng, json_only=True)
    out = dict(value)
    key = rng.choice([*out, "extra", "request"])
    if key == "request" and isinstance(out.get("request"), dict) and rng.random() < 0.6:
        request = dict(out["request"])
        request[rng.choice(["messages", "prompt", "stream", "max_tokens", "stop", "x"])] = hostile(rng, True)
        out["request"] = request
    elif key == "chatOpts" and isinstance(out.get("chatOpts"), dict) and rng.random() < 0.6:
        opts = dict(
            out["chatOpts"]
        )  # one chat option (or an unknown one) hostile: a typed error, never a hang
        opts[rng.choice([*CHAT_OPTIONS, "x"])] = hostile(rng, True)
        out["chatOpts"] = opts
    else:
        out[key] = hostile(rng, json_only=True)
    return out


def envelope(rng: random.Random, stream_ids: list[str]) -> dict:
    r = rng.random()
    kind = rng.choice(KINDS) if r < 0.85 else hostile(rng, json_only=True)
    content = PLAUSIBLE.get(kind) if isinstance(kind, str) else None
    if kind in ("completionStreamNextChunk", "interruptGenerate") and stream_ids and rng.random() < 0.7:
        content = {"streamId": rng.choice(stream_ids)}
    message = {"kind": kind, "uuid": uuidlib.uuid4().hex, "content": damage(rng, content)}
    r = rng.random()
    if r < 0.08:
        message["uuid"] = hostile(rng, json_only=True)
    elif r < 0.12:
        del message["uuid"]
    elif r < 0.15:
        return hostile(rng, json_only=True)  # not even an object
    elif r < 0.18:
        message["content"] = nested(rng.choice([65, 600, 3000]))
    try:  # as the browser hands it over (what JSON cannot hold stays as it is)
        return json.loads(json.dumps(message)) if rng.random() < 0.5 else message
    except (RecursionError, ValueError):
        return message


def usable(message) -> str | None:
    uuid = message.get("uuid") if isinstance(message, dict) else None
    return uuid if isinstance(uuid, str) and uuid else None


def judge(t, case: str, replies: list[dict], uuid: str | None) -> None:
    want = uuid or ""
    mine = [r for r in replies if r.get("uuid") == want and r["kind"] in ("return", "throw", "heartbeat")]
    if not mine:
        t.add("hang", case)
    elif len(mine) > 1 and uuid is not None:
        t.add("wrong", case, f"answered {len(mine)} times")
    elif mine[0]["kind"] == "throw":
        name = mine[0]["content"].get("name")
        t.add(
            "typed" if name in ERROR_NAMES else "wrong",
            case,
            f"threw {name}: {mine[0]['content'].get('message')}",
        )
    elif uuid is None:
        t.add("wrong", case, "a message without a usable uuid was not refused")
    else:
        t.add("answer", case)


async def settle(handler, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(handler.join(), timeout_s)
        return True
    except TimeoutError:
        return False


def drain(queue: asyncio.Queue) -> list[dict]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_hostile_envelopes_dedicated_worker(world):  # noqa: F811
    t = tally("worker envelopes")
    rng = random.Random(34)

    async def go():
        worker = Worker(world, FakeHost())
        await worker.value("reload", {"modelId": ["fake-model"]})
        stream_ids: list[str] = []
        for i in range(CASES):
            message = envelope(rng, stream_ids)
            uuid = usable(message)
            if uuid and message.get("kind") in ("chatCompletionStreamInit", "completionStreamInit"):
                stream_ids.append(uuid)
            await worker.handler.on_message(message)
            settled = await settle(worker.handler, 2.0)
            replies = drain(worker.outbox)
            judge(t, f"case {i}: {_show(message)}", replies if settled else [], uuid)
            if not settled:
                break
        await worker.value("setAppConfig", json.loads(json.dumps({"model_list": [
            {"model_id": "fake-model", "model_url": world.config.model_list[0].model_url}]})))  # fmt: skip
        return await worker.value(
            "chatCompletionNonStreaming", {"request": {"messages": USER}, "modelId": ["fake-model"]}
        )

    reply = asyncio.run(go())
    assert reply["choices"][0]["message"]["content"] == "Hello there!"  # nothing was lost
    assert t.cases == CASES and t.typed > CASES // 3 and t.answers > CASES // 20
    t.assert_clean()


def test_hostile_envelopes_service_worker(world):  # noqa: F811
    t = tally("service-worker envelopes")
    rng = random.Random(56)

    async def go():
        tabs = Clients(world, host=FakeHost()).open("tab")
        first = await tabs.send("tab", "reload", {"modelId": ["fake-model"]})
        await tabs.reply("tab", first)
        stream_ids: list[str] = []
        for i in range(CASES // 2):
            message = envelope(rng, stream_ids)
            uuid = usable(message)
            if uuid and message.get("kind") in ("chatCompletionStreamInit", "completionStreamInit"):
                stream_ids.append(uuid)
            await tabs.handler.on_client_message("tab", message)
            settled = await settle(tabs.handler, 2.0)
            replies = drain(tabs.outboxes["tab"])
            judge(t, f"case {i}: {_show(message)}", replies if settled else [], uuid)
            if not settled:
                break
        config = {
            "model_list": [{"model_id": "fake-model", "model_url": world.config.model_list[0].model_url}]
        }
        done = await tabs.send("tab", "setAppConfig", config)
        await tabs.reply("tab", done)
        ask = await tabs.send("tab", "chatCompletionNonStreaming", {"request": {"messages": USER}})
        return await tabs.reply("tab", ask)

    reply = asyncio.run(go())
    assert reply["kind"] == "return", reply
    assert reply["content"]["choices"][0]["message"]["content"] == "Hello there!"
    assert t.cases == CASES // 2 and t.typed > CASES // 6
    t.assert_clean()


assert all(isinstance(v, (type(None), bool, int, float, str, list, dict)) for v in JSON_HOSTILE)
