"""The worker side of the protocol (worker/handler.py, worker/messages.py), message by message, in CPython.

A real ``MLCEngine`` over the fake GPU engine (``_fake_engine.py``) behind a ``WorkerHandler``; every message in
and out goes through a JSON round trip, so whatever the handler posts is plain JSON as ``postMessage`` needs.
``Worker`` and ``world`` here are also used by test_worker_client.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid as uuidlib
from types import SimpleNamespace

import pytest

import webllm_py.engine as engine_module
from tests.unit._fake_engine import FakeEngine, FakeGeneration
from webllm_py import errors
from webllm_py.api.mlc_engine import MLCEngine
from webllm_py.config import AppConfig, ModelRecord
from webllm_py.worker import messages
from webllm_py.worker.handler import WorkerHandler, create_handler

USER = [{"role": "user", "content": "Hi"}]
ALPHABET = list("abcdefghijklmnopqrstuvwxyz")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))  # a hang fails the test instead of the run


def json_copy(value):
    return json.loads(json.dumps(value))


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Two local fake models, and a load_engine that builds a FakeEngine saying "Hello there!"."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    config = AppConfig(
        model_list=[ModelRecord("fake-model", str(gguf)), ModelRecord("other-model", str(gguf))],
        cache_dir=str(tmp_path / "cache"),
    )
    loaded: list[FakeEngine] = []
    knobs = SimpleNamespace(step_delay=0.0, script=["Hello", " there", "!"])

    async def fake_load_engine(record, gguf_path, *, device=None, progress=None):
        progress(0.0, "Loading weights")
        await asyncio.sleep(0)
        progress(0.5, "Loading weights")
        fake = FakeEngine(record.model_id, step_delay=knobs.step_delay)
        fake.record = record  # what reload() made of the app config's record and the chat options
        fake.say(knobs.script)
        loaded.append(fake)
        return fake

    monkeypatch.setattr(engine_module, "load_engine", fake_load_engine)
    return SimpleNamespace(config=config, loaded=loaded, knobs=knobs)


class FakeHost:
    def __init__(self) -> None:
        self.cached = {"fake-model"}

    async def gpu_vendor(self) -> str:
        return "fake-vendor"

    async def max_storage_buffer_binding_size(self) -> int:
        return 1 << 30

    async def has_model_in_cache(self, record, app_config) -> bool:
        return record.model_id in self.cached

    async def delete_model_in_cache(self, record, app_config) -> None:
        self.cached.discard(record.model_id)


class Worker:
    """A handler fed raw messages; ``ask`` sends one request and returns its reply (and any progress seen)."""

    def __init__(self, world, host=None):
        self.outbox: asyncio.Queue[dict] = asyncio.Queue()
        self.engine = MLCEngine(app_config=world.config)
        self.handler = WorkerHandler(self.engine, lambda m: self.outbox.put_nowait(json_copy(m)), host=host)
        self.replies: dict[str, dict] = {}
        self.progress: list[dict] = []

    async def send(self, kind: str, content=None, uuid: str | None = None) -> str:
        uuid = uuid or uuidlib.uuid4().hex
        await self.handler.on_message(json_copy({"kind": kind, "uuid": uuid, "content": content}))
        return uuid

    async def reply(self, uuid: str) -> dict:
        while uuid not in self.replies:
            message = await self.outbox.get()
            if message["kind"] == "initProgressCallback":
                self.progress.append(message)
            else:
                assert message["uuid"] not in self.replies, "a request was answered twice"
                self.replies[message["uuid"]] = message
        return self.replies[uuid]

    async def ask(self, kind: str, content=None) -> dict:
        return await self.reply(await self.send(kind, content))

    async def value(self, kind: str, content=None):
        message = await self.ask(kind, content)
        assert message["kind"] == "return", message
        return message["content"]

    async def pull_all(self, stream_id: str) -> list[dict]:
        chunks = []
        while (chunk := await self.value("completionStreamNextChunk", {"streamId": stream_id})) is not None:
            chunks.append(chunk)
        return chunks


def text_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def finish_of(chunks: list[dict]) -> list[str]:
    return [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]


async def loaded_worker(world, host=None) -> Worker:
    worker = Worker(world, host)
    assert await worker.value("reload", {"modelId": ["fake-model"]}) is None
    return worker


async def open_stream(worker: Worker, pulls: int = 0, usage: bool = False) -> tuple[str, list[dict]]:
    """Start a stream and pull ``pulls`` chunks; returns its id and those chunks."""
    request = {"messages": USER, **({"stream_options": {"include_usage": True}} if usage else {})}
    stream_id = (await worker.ask("chatCompletionStreamInit", {"request": request}))["uuid"]
    head = [await worker.value("completionStreamNextChunk", {"streamId": stream_id}) for _ in range(pulls)]
    return stream_id, head


# ---- loading ------------------------------------------------------------------------------------------------------


def test_reload_reports_progress_under_its_uuid(world):
    async def go():
        worker = Worker(world)
        uuid = await worker.send(
            "reload", {"modelId": "fake-model", "chatOpts": {"context_window_size": 512}}
        )
        return worker, uuid, await worker.reply(uuid)

    worker, uuid, reply = run(go())
    assert reply == {"kind": "return", "uuid": uuid, "content": None}
    assert [p["content"]["progress"] for p in worker.progress] == [0.0, 0.5, 1.0]
    assert {p["uuid"] for p in worker.progress} == {uuid}
    assert worker.progress[-1]["content"].keys() == {"progress", "timeElapsed", "text"}
    assert worker.engine.model_id == "fake-model"


def test_reload_errors_cross_with_their_names(world):
    async def go():
        worker = Worker(world)
        return (
            await worker.ask("reload", {"modelId": ["nope"]}),
            await worker.ask("reload", {"modelId": ["fake-model", "other-model"]}),
            await worker.ask("reload", {"modelId": "fake-model", "chatOpts": {"sliding_window_size": 64}}),
            await worker.ask("reload", {}),
            await worker.ask("reload", {"modelId": "fake-model", "chatOpts": [{"top_p": 2}]}),
        )

    unknown, two, opts, missing, bad = run(go())
    assert unknown["kind"] == "throw" and unknown["content"]["name"] == "ModelNotFoundError"
    assert "fake-model, other-model" in unknown["content"]["message"]
    assert two == {"kind": "return", "uuid": two["uuid"], "content": None}  # several models load
    assert opts["content"]["name"] == "UnsupportedFieldError"
    assert opts["content"]["details"]["field"] == "chatOpts.sliding_window_size"
    assert missing["content"]["name"] == "InvalidFieldTypeError"
    assert bad["content"]["name"] == "InvalidRangeError"
    assert bad["content"]["details"]["field"] == "chatOpts[0].top_p"


def test_chat_opts_reach_the_engine_and_come_back_with_a_restarted_worker(world):
    """reload's chatOpts set the model's sampling defaults; a request carries them (with modelId), so a worker that
    restarted loads the model with the same defaults before serving it."""

    async def go():
        worker = Worker(world)
        opts = {"temperature": 0.25, "repetition_penalty": 1.3}
        await worker.value("reload", {"modelId": ["fake-model"], "chatOpts": opts})
        await worker.value("chatCompletionNonStreaming", {"request": {"messages": USER}})
        fresh = Worker(world)  # the page's worker restarted: nothing loaded
        request = {"request": {"messages": USER, "top_p": 0.5}, "modelId": ["fake-model"], "chatOpts": opts}
        await fresh.value("chatCompletionNonStreaming", request)

    run(go())
    first, restarted = (e.generations[0]._params for e in world.loaded)
    assert (first.temperature, first.top_p, first.repetition_penalty) == (0.25, 1.0, 1.3)
    assert (restarted.temperature, restarted.top_p, restarted.repetition_penalty) == (0.25, 0.5, 1.3)


def test_several_models_through_the_worker(world):
    both = ["fake-model", "other-model"]

    async def go():
        worker = Worker(world)
        assert await worker.value("reload", {"modelId": both}) is None
        routed = await worker.value(
            "chatCompletionNonStreaming",
            {"request": {"messages": USER, "model": "other-model"}, "modelId": both},
        )
        unclear = await worker.ask(
            "chatCompletionNonStreaming", {"request": {"messages": USER}, "modelId": both}
        )
        missing = await worker.ask(
            "chatCompletionNonStreaming", {"request": {"messages": USER, "model": "x"}, "modelId": both}
        )
        # A stream left open on one model does not stop a request to the other; one to its own model ends it.
        a = (
            await worker.ask(
                "chatCompletionStreamInit",
                {"request": {"messages": USER, "model": "fake-model"}, "modelId": both},
            )
        )["uuid"]
        first = await worker.value("completionStreamNextChunk", {"streamId": a})
        other = await worker.value(
            "chatCompletionNonStreaming",
            {"request": {"messages": USER, "model": "other-model"}, "modelId": both},
        )
        still_open = await worker.value("completionStreamNextChunk", {"streamId": a})
        same = await worker.value(
            "chatCompletionNonStreaming",
            {"request": {"messages": USER, "model": "fake-model"}, "modelId": both},
        )
        ended = await worker.pull_all(a)
        routed = (routed, other, same, [first, still_open], ended)
        return routed, unclear, missing, worker.engine.model_ids

    (routed, other, same, head, ended), unclear, missing, loaded = run(go())
    assert routed["model"] == "other-model" and loaded == both
    assert (
        other["choices"][0]["message"]["content"]
        == same["choices"][0]["message"]["content"]
        == "Hello there!"
    )
    assert (
        text_of(head) == "Hello there"
        and finish_of(ended) == ["abort"]
        and ended[-1]["model"] == "fake-model"
    )
    assert (
        unclear["content"]["name"] == "UnclearModelToUseError"
        and "fake-model, other-model" in unclear["content"]["message"]
    )
    assert (
        missing["content"]["name"] == "SpecifiedModelNotFoundError"
        and missing["content"]["details"]["field"] == "model"
    )


def test_unload_then_requests_fail_typed(world):
    async def go():
        worker = await loaded_worker(world)
        assert await worker.value("unload") is None
        return await worker.ask("chatCompletionNonStreaming", {"request": {"messages": USER}})

    reply = run(go())
    assert reply["content"]["name"] == "EngineNotLoadedError"
    assert world.loaded[0].unloaded


# ---- requests -----------------------------------------------------------------------------------------------------


def test_non_streaming(world):
    async def go():
        worker = await loaded_worker(world)
        return await worker.value(
            "chatCompletionNonStreaming",
            {"request": {"messages": USER, "max_tokens": 8}, "modelId": ["fake-model"]},
        )

    reply = run(go())
    assert reply["object"] == "chat.completion" and reply["model"] == "fake-model"
    assert reply["choices"][0]["message"]["content"] == "Hello there!"
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == 4 and "decode_tokens_per_s" in reply["usage"]["extra"]


def test_bad_requests_throw_typed_errors_with_details(world):
    async def go():
        worker = await loaded_worker(world)
        return (
            await worker.ask("chatCompletionNonStreaming", {"request": {"messages": USER, "temperature": 5}}),
            await worker.ask("chatCompletionStreamInit", {"request": {"messages": USER, "top_p": 0}}),
            await worker.ask("chatCompletionNonStreaming", {"request": {"messages": []}}),
            await worker.ask("chatCompletionNonStreaming", {"request": {"messages": USER, "model": "other"}}),
            await worker.ask("chatCompletionNonStreaming", {"request": "hi"}),
            await worker.value("chatCompletionNonStreaming", {"request": {"messages": USER}}),
        )

    temperature, top_p, empty, model, not_a_dict, ok = run(go())
    assert temperature["content"]["name"] == "InvalidRangeError"
    assert temperature["content"]["details"] == {"field": "temperature", "value": 5, "allowed": "in [0, 2]"}
    assert "`temperature` must be in [0, 2]" in temperature["content"]["message"]
    assert top_p["content"]["name"] == "InvalidRangeError" and top_p["content"]["details"]["field"] == "top_p"
    assert empty["content"]["name"] == "InvalidMessagesError"
    assert model["content"]["name"] == "SpecifiedModelNotFoundError"
    assert not_a_dict["content"]["name"] == "InvalidFieldTypeError"
    assert ok["choices"][0]["message"]["content"] == "Hello there!"  # none of them held the engine


def test_streaming_pull_one_chunk_per_request(world):
    async def go():
        worker = await loaded_worker(world)
        init = await worker.ask(
            "chatCompletionStreamInit",
            {
                "request": {"messages": USER, "stream_options": {"include_usage": True}},
                "selectedModelId": "fake-model",
            },
        )
        fake = world.loaded[0]
        assert fake.generations[0].yielded == []  # init only validates and opens: nothing generated yet
        first = await worker.value("completionStreamNextChunk", {"streamId": init["uuid"]})
        assert len(fake.generations[0].yielded) == 1  # one pull, one decode step
        rest = await worker.pull_all(init["uuid"])
        after_end = await worker.value("completionStreamNextChunk", {"streamId": init["uuid"]})
        return init, [first, *rest], after_end

    init, chunks, after_end = run(go())
    assert init["content"] is None and after_end is None
    assert text_of(chunks) == "Hello there!" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert finish_of(chunks) == ["stop"] and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1


def test_streamed_text_equals_non_streamed_text(world):
    world.knobs.script = ["Un", "é", b"\xf0\x9f", b"\x98\x80", " fin"]  # a 4-byte emoji split across tokens

    async def go():
        worker = await loaded_worker(world)
        whole = await worker.value("chatCompletionNonStreaming", {"request": {"messages": USER}})
        init = await worker.ask("chatCompletionStreamInit", {"request": {"messages": USER}})
        return whole, await worker.pull_all(init["uuid"])

    whole, chunks = run(go())
    assert text_of(chunks) == whole["choices"][0]["message"]["content"] == "Uné😀 fin"


def test_interrupt_mid_stream_ends_with_abort_then_next_request_works(world):
    world.knobs.script = ALPHABET

    async def go():
        worker = await loaded_worker(world)
        stream_id, head = await open_stream(worker, pulls=2, usage=True)
        assert await worker.value("interruptGenerate") is None
        tail = await worker.pull_all(stream_id)
        message = await worker.value("getMessage")
        nxt = await worker.value("chatCompletionNonStreaming", {"request": {"messages": USER}})
        return head, tail, message, nxt

    head, tail, message, nxt = run(go())
    assert text_of(head) == "ab" and text_of(tail) == "" and message == "ab"
    assert finish_of(tail) == ["abort"] and tail[-1]["usage"]["completion_tokens"] == 2
    assert nxt["choices"][0]["message"]["content"] == "".join(ALPHABET)
    assert [g.finish_reason for g in world.loaded[0].generations] == ["abort", "stop"]


def test_interrupt_while_a_pull_is_running(world):
    world.knobs.script = ALPHABET
    world.knobs.step_delay = 0.01  # each decode step yields to the loop, so the interrupt arrives mid-pull

    async def go():
        worker = await loaded_worker(world)
        init = await worker.ask("chatCompletionStreamInit", {"request": {"messages": USER}})
        await worker.value("completionStreamNextChunk", {"streamId": init["uuid"]})
        pull = await worker.send("completionStreamNextChunk", {"streamId": init["uuid"]})
        interrupt = await worker.send("interruptGenerate")
        assert (await worker.reply(interrupt))["content"] is None
        pulled = (await worker.reply(pull))["content"]
        return [pulled, *await worker.pull_all(init["uuid"])]

    chunks = run(go())
    assert finish_of(chunks) == ["abort"] and len(text_of(chunks)) <= 2
    assert world.loaded[0].generations[0].finish_reason == "abort"


def test_abandoned_stream_is_ended_by_the_next_request(world):
    """mlc-ai/mlc-llm#3113: a consumer stops pulling; WebLLM then hangs every later request on the model lock."""
    world.knobs.script = ALPHABET

    async def go():
        worker = await loaded_worker(world)
        stream_id, head = await open_stream(worker, pulls=2, usage=True)
        nxt = await worker.value("chatCompletionNonStreaming", {"request": {"messages": USER}})
        late = await worker.pull_all(stream_id)  # the consumer comes back after all
        return head, nxt, late

    head, nxt, late = run(go())
    assert text_of(head) == "ab" and nxt["choices"][0]["message"]["content"] == "".join(ALPHABET)
    assert finish_of(late) == ["abort"] and late[-1]["usage"] is not None  # it learns how its stream ended
    assert [g.finish_reason for g in world.loaded[0].generations] == ["abort", "stop"]


def test_never_pulled_stream_is_closed_without_running_its_prefill(world):
    async def go():
        worker = await loaded_worker(world)
        first = await worker.ask("chatCompletionStreamInit", {"request": {"messages": USER}})
        second = await worker.ask(
            "chatCompletionStreamInit", {"request": {"messages": USER}}
        )  # must not hang
        return await worker.pull_all(first["uuid"]), await worker.pull_all(second["uuid"])

    first, second = run(go())
    gens = world.loaded[0].generations
    assert gens[0].finish_reason == "abort" and gens[0].yielded == []  # never stepped
    assert len(first) == 1 and finish_of(first) == ["abort"] and first[0]["model"] == "fake-model"
    assert text_of(second) == "Hello there!" and finish_of(second) == ["stop"]


def test_two_stream_inits_at_once_do_not_deadlock(world):
    async def go():
        worker = await loaded_worker(world)
        a = await worker.send("chatCompletionStreamInit", {"request": {"messages": USER}})
        b = await worker.send("chatCompletionStreamInit", {"request": {"messages": USER}})
        await worker.reply(a), await worker.reply(b)
        return await worker.pull_all(a), await worker.pull_all(b)

    a, b = run(go())
    assert finish_of(a) == ["abort"] and text_of(b) == "Hello there!"


def test_interrupt_naming_a_stream_ends_only_that_stream(world):
    world.knobs.script = ALPHABET

    async def go():
        worker = await loaded_worker(world)
        old = await worker.ask("chatCompletionStreamInit", {"request": {"messages": USER}})
        old_chunks = await worker.pull_all(old["uuid"])
        live = await worker.ask("chatCompletionStreamInit", {"request": {"messages": USER}})
        first = await worker.value("completionStreamNextChunk", {"streamId": live["uuid"]})
        # the consumer of the finished stream leaves late: the live one must not notice
        assert await worker.value("interruptGenerate", {"streamId": old["uuid"]}) is None
        rest = await worker.pull_all(live["uuid"])
        # now the live stream's own consumer leaves early
        third = await worker.ask("chatCompletionStreamInit", {"request": {"messages": USER}})
        await worker.value("completionStreamNextChunk", {"streamId": third["uuid"]})
        assert await worker.value("interruptGenerate", {"streamId": third["uuid"]}) is None
        assert await worker.value("interruptGenerate", {"streamId": "no-such-stream"}) is None
        return old_chunks, [first, *rest], await worker.pull_all(third["uuid"])

    old, live, third = run(go())
    assert finish_of(old) == ["stop"] and finish_of(live) == ["stop"] and text_of(live) == "".join(ALPHABET)
    assert finish_of(third) == ["abort"]
    assert world.loaded[0].generations[2].finish_reason == "abort"


def test_interrupt_non_streaming(world):
    world.knobs.script = ALPHABET
    world.knobs.step_delay = 0.005

    async def go():
        worker = await loaded_worker(world)
        request = await worker.send("chatCompletionNonStreaming", {"request": {"messages": USER}})
        while not (await worker.value("getMessage")):  # wait until it has produced something
            await asyncio.sleep(0.005)
        await worker.send("interruptGenerate")
        return (await worker.reply(request))["content"]

    reply = run(go())
    assert reply["choices"][0]["finish_reason"] == "abort"
    assert 0 < len(reply["choices"][0]["message"]["content"]) < 26


def test_unload_and_reload_end_an_open_stream(world):
    world.knobs.script = ALPHABET

    async def go():
        worker = await loaded_worker(world)
        a = await worker.ask("chatCompletionStreamInit", {"request": {"messages": USER}})
        await worker.value("completionStreamNextChunk", {"streamId": a["uuid"]})
        await worker.value("reload", {"modelId": ["other-model"]})
        b = await worker.ask("chatCompletionStreamInit", {"request": {"messages": USER}})
        await worker.value("completionStreamNextChunk", {"streamId": b["uuid"]})
        await worker.value("unload")
        return await worker.pull_all(a["uuid"]), await worker.pull_all(b["uuid"])

    a, b = run(go())
    assert finish_of(a) == ["abort"] and finish_of(b) == ["abort"]
    assert all(fake.unloaded for fake in world.loaded)


def test_error_in_the_middle_of_a_stream_crosses_then_the_stream_is_over(world, monkeypatch):
    original = FakeGeneration.__anext__

    async def failing(self):
        if len(self.yielded) == 2:
            raise errors.DeviceLostError("the GPU went away")
        return await original(self)

    monkeypatch.setattr(FakeGeneration, "__anext__", failing)
    world.knobs.script = ALPHABET

    async def go():
        worker = await loaded_worker(world)
        init = await worker.ask("chatCompletionStreamInit", {"request": {"messages": USER}})
        replies = [
            await worker.ask("completionStreamNextChunk", {"streamId": init["uuid"]}) for _ in range(4)
        ]
        monkeypatch.setattr(FakeGeneration, "__anext__", original)
        return replies, await worker.value("chatCompletionNonStreaming", {"request": {"messages": USER}})

    replies, nxt = run(go())
    assert [r["kind"] for r in replies] == ["return", "return", "throw", "return"]
    assert replies[2]["content"]["name"] == "DeviceLostError" and replies[3]["content"] is None
    assert nxt["choices"][0]["message"]["content"] == "".join(ALPHABET)


def test_reload_if_unmatched(world):
    """A request names the model the page believes is loaded; a worker that lost it loads it first."""

    async def go():
        worker = Worker(world)  # a fresh worker: nothing loaded (as after a restart)
        uuid = await worker.send(
            "chatCompletionNonStreaming",
            {"request": {"messages": USER}, "modelId": ["other-model"], "chatOpts": None},
        )
        return worker, uuid, (await worker.reply(uuid))["content"]

    worker, uuid, reply = run(go())
    assert reply["model"] == "other-model" and worker.engine.model_id == "other-model"
    assert worker.progress and {p["uuid"] for p in worker.progress} == {uuid}


# ---- the other kinds ------------------------------------------------------------------------------------------------


def test_stats_message_and_reset(world):
    async def go():
        worker = await loaded_worker(world)
        await worker.value("chatCompletionNonStreaming", {"request": {"messages": USER}})
        stats, message = await worker.value("runtimeStatsText", {}), await worker.value("getMessage", {})
        await worker.value("resetChat", {"keepStats": True})
        kept = await worker.value("runtimeStatsText")
        await worker.value("resetChat")
        return stats, message, kept, await worker.value("runtimeStatsText"), await worker.value("getMessage")

    stats, message, kept, reset, empty = run(go())
    assert stats.startswith("prefill: ") and "decoding: " in stats and stats == kept
    assert message == "Hello there!" and reset == "prefill: 0.0000 tokens/sec, decoding: 0.0000 tokens/sec"
    assert empty == ""


def test_gpu_and_cache_questions_go_to_the_host(world):
    async def go():
        worker = await loaded_worker(world, host=FakeHost())
        return (
            await worker.value("getGPUVendor"),
            await worker.value("getMaxStorageBufferBindingSize"),
            await worker.value("hasModelInCache", {"modelId": "fake-model"}),
            await worker.value("hasModelInCache", {"modelId": "other-model"}),
            await worker.value("deleteModelInCache", {"modelId": "fake-model"}),
            await worker.value("hasModelInCache", {"modelId": "fake-model"}),
            await worker.ask("hasModelInCache", {"modelId": "nope"}),
        )

    vendor, size, cached, other, deleted, after, unknown = run(go())
    assert (vendor, size, cached, other, deleted, after) == ("fake-vendor", 1 << 30, True, False, None, False)
    assert unknown["content"]["name"] == "ModelNotFoundError"


def test_without_a_host_gpu_questions_fail_typed(world):
    async def go():
        worker = await loaded_worker(world)
        return await worker.ask("getGPUVendor"), await worker.ask(
            "hasModelInCache", {"modelId": "fake-model"}
        )

    vendor, cached = run(go())
    assert vendor["content"]["name"] == cached["content"]["name"] == "WebGPUNotAvailableError"


def test_log_level(world):
    async def go():
        worker = Worker(world)
        return await worker.ask("setLogLevel", "ERROR"), await worker.ask("setLogLevel", "LOUD")

    logger = logging.getLogger("webllm_py")
    before = logger.level
    try:
        ok, bad = run(go())
        assert ok["content"] is None and logger.level == logging.ERROR
        assert bad["content"]["name"] == "UnsupportedFieldError"
    finally:
        logger.setLevel(before)


def test_app_config_round_trip(world):
    webllm_style = {
        "model_list": [
            {"model_id": "tiny", "model": "https://example.com/tiny.gguf", "overrides": {"temperature": 0.5}},
            {
                "model_id": "zipped",
                "model_url": "https://example.com/w.whl",
                "model_file": "pkg/m.gguf",
                "size": 3,
            },
        ]
    }

    async def go():
        worker = Worker(world)
        before = await worker.value("getAppConfig")
        assert await worker.value("setAppConfig", webllm_style) is None
        after = await worker.value("getAppConfig")
        # WebLLM's model_lib is accepted (ignored); a record without a file to load is refused, named
        bad = await worker.ask("setAppConfig", {"model_list": [{"model_id": "x", "model_lib": "x.wasm"}]})
        return worker, before, after, bad

    worker, before, after, bad = run(go())
    assert [r["model_id"] for r in before["model_list"]] == ["fake-model", "other-model"]
    assert after["model_list"][0]["model_url"] == "https://example.com/tiny.gguf"
    assert after["model_list"][0]["overrides"] == {"temperature": 0.5}
    assert after["model_list"][1]["model_file"] == "pkg/m.gguf" and after["cache_dir"] is None
    assert worker.engine.app_config.get_record("zipped").size == 3
    assert bad["content"]["name"] == "InvalidAppConfigError"
    assert bad["content"]["details"]["field"] == "appConfig.model_list[0].model_url"
    assert messages.app_config_from_dict(after) == worker.engine.app_config


def test_text_completion_through_the_worker(world):
    async def go():
        worker = await loaded_worker(world)
        whole = await worker.value("completionNonStreaming", {"request": {"prompt": "Once", "echo": True}})
        stream_id = (await worker.ask("completionStreamInit", {"request": {"prompt": "Once"}}))["uuid"]
        chunks = await worker.pull_all(stream_id)
        refused = await worker.ask("completionNonStreaming", {"request": {"prompt": "Once", "user": "u1"}})
        ok = await worker.value("chatCompletionNonStreaming", {"request": {"messages": USER}})
        return whole, chunks, refused, ok

    whole, chunks, refused, ok = run(go())
    assert whole["object"] == "text_completion" and whole["choices"][0]["text"] == "OnceHello there!"
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "Hello there!"
    assert refused["kind"] == "throw" and refused["content"]["name"] == "UnsupportedFieldError"
    assert refused["content"]["details"]["field"] == "user" and "`user`" in refused["content"]["message"]
    assert ok["choices"][0]["message"]["content"] == "Hello there!"


def test_unknown_kinds_and_bad_envelopes(world, caplog):
    async def go():
        worker = Worker(world)
        unknown = await worker.ask("embedding", {"request": {"input": "x"}})  # WebLLM's; not implemented
        await worker.handler.on_message({"kind": "reload", "content": {}})  # no uuid: answered under ""
        await worker.handler.on_message("not a dict")
        await worker.handler.join()
        return worker, unknown

    with caplog.at_level(logging.WARNING, logger="webllm_py"):
        worker, unknown = run(go())
    assert unknown["kind"] == "throw" and unknown["content"]["name"] == "UnknownMessageKindError"
    assert "interruptGenerate" in unknown["content"]["message"]  # it lists what is understood
    anonymous = [worker.outbox.get_nowait() for _ in range(2)]
    assert [(m["kind"], m["uuid"], m["content"]["name"]) for m in anonymous] == [
        ("throw", "", "UnknownMessageKindError")
    ] * 2
    assert "not a dict" in anonymous[1]["content"]["message"] and "without a usable uuid" in caplog.text


def test_every_kind_has_a_method_and_the_kinds_are_webllms():
    handler = WorkerHandler(MLCEngine(), lambda m: None)
    assert set(handler._methods) == messages.REQUEST_KINDS
    webllm = {
        "reload", "unload", "chatCompletionNonStreaming", "chatCompletionStreamInit", "completionNonStreaming",
        "completionStreamInit", "completionStreamNextChunk", "interruptGenerate", "resetChat", "getMessage",
        "runtimeStatsText", "getGPUVendor", "getMaxStorageBufferBindingSize", "setLogLevel", "setAppConfig",
        "keepAlive", "forwardTokensAndSample",
    }  # fmt: skip
    assert messages.REQUEST_KINDS - webllm == {"getAppConfig", "hasModelInCache", "deleteModelInCache"}
    assert messages.REQUEST_KINDS >= webllm


def test_create_handler_takes_an_engine_and_keeps_its_progress_callback(world):
    seen = []

    async def go():
        posted = []
        engine = MLCEngine(app_config=world.config, init_progress_callback=seen.append)
        handler = create_handler(posted.append, engine=engine)
        await handler.on_message({"kind": "reload", "uuid": "u1", "content": {"modelId": ["fake-model"]}})
        await handler.join()
        return posted

    posted = run(go())
    assert posted[-1] == {"kind": "return", "uuid": "u1", "content": None}
    assert len(seen) == 3 and [m["kind"] for m in posted[:-1]] == ["initProgressCallback"] * 3


# ---- messages.py: errors across the boundary ----------------------------------------------------------------------


def test_errors_round_trip_as_the_same_class():
    cases = [
        errors.InvalidRangeError("temperature", 5, "in [0, 2]"),
        errors.GGUFError("m.gguf", 12, "magic GGUF", "b'ABCD'"),
        errors.ModelNotFoundError("no such model"),
        errors.WebGPUNotAvailableError("no adapter"),
        ValueError("plain"),
        KeyError("k"),
    ]
    for original in cases:
        content = json_copy(messages.error_to_content(original))
        again = messages.error_from_content(content)
        assert type(again) is type(original) and str(again) == str(original)
        for key, value in vars(original).items():
            assert getattr(again, key) == value
    assert messages.error_from_content(json_copy(messages.error_to_content(ValueError("x"))))  # has a stack
    assert "stack" in messages.error_to_content(ValueError("x"))["details"]
    assert "stack" not in messages.error_to_content(errors.ModelNotFoundError("x"))["details"]


def test_every_error_class_crosses_with_its_name_and_field():
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.WebLLMError)]
    assert len(classes) > 20
    for cls in classes:
        if cls is errors.WorkerError:
            continue
        content = {"name": cls.__name__, "message": "what to fix", "details": {"field": "top_p", "value": 3}}
        again = messages.error_from_content(json_copy(content))
        assert type(again) is cls and str(again) == "what to fix"
        assert (again.field, again.value) == ("top_p", 3)
        assert messages.error_to_content(again)["name"] == cls.__name__


def test_unknown_error_names_keep_their_name():
    odd = messages.error_from_content({"name": "ZeroDivisionError", "message": "division by zero"})
    assert isinstance(odd, errors.WorkerError) and odd.name == "ZeroDivisionError"
    assert str(odd) == "ZeroDivisionError: division by zero"
    # passed on again (a proxy re-throwing), it keeps the original name and message
    assert messages.error_to_content(odd)["name"] == "ZeroDivisionError"
    assert messages.error_to_content(odd)["message"] == "division by zero"
    # names that are not exception classes are not instantiated
    assert isinstance(messages.error_from_content({"name": "AppConfig", "message": "x"}), errors.WorkerError)
    assert isinstance(messages.error_from_content({"name": "SystemExit", "message": "x"}), errors.WorkerError)
    assert isinstance(messages.error_from_content("boom"), errors.WorkerError)


def test_parse_request():
    assert messages.parse_request({"kind": "unload", "uuid": "u", "content": None}) == ("unload", "u", None)
    with pytest.raises(errors.UnknownMessageKindError) as e:
        messages.parse_request({"kind": "nope", "uuid": "u"})
    assert e.value.uuid == "u"
    for bad in ({"kind": "unload"}, {"kind": "unload", "uuid": ""}, None, []):
        with pytest.raises(errors.UnknownMessageKindError) as e:
            messages.parse_request(bad)
        assert e.value.uuid is None


def test_create_handler_takes_the_sites_app_config():
    site = {
        "model_list": [{"model_id": "m", "model_url": "models/m.gguf", "size": 10}],
        "cacheBackend": "opfs",
    }
    handler = create_handler(lambda m: None, engine=MLCEngine(), app_config=site)
    config = handler.engine.app_config
    assert config.get_record("m").model_url == "models/m.gguf" and config.cache_backend == "opfs"


def test_app_config_backend_spellings(caplog):
    record = {"model_id": "m", "model_url": "m.gguf"}
    assert messages.app_config_from_dict({"model_list": [record]}).cache_backend == "cache"
    assert messages.app_config_from_dict(
        {"model_list": [record], "cacheBackend": "indexeddb"}
    ).cache_backend == ("indexeddb")
    assert messages.app_config_from_dict(
        {"model_list": [record], "useIndexedDBCache": True}
    ).cache_backend == ("indexeddb")
    assert (
        messages.app_config_to_dict(AppConfig(model_list=[], cache_backend="opfs"))["cache_backend"] == "opfs"
    )
    with pytest.raises(ValueError, match="cache_backend"):
        messages.app_config_from_dict({"model_list": [record], "cache_backend": "floppy"})
    # WebLLM ignores keys it does not know (a page's own use_web_worker): logged, not refused
    with caplog.at_level(logging.WARNING, logger="webllm_py"):
        config = messages.app_config_from_dict({"model_list": [record], "use_web_worker": True})
    assert config.get_record("m").model_url == "m.gguf" and "appConfig.use_web_worker" in caplog.text


def test_js_null_stand_ins_mean_not_given(world):
    """Pyodide's to_py() turns JS null into a falsy ``jsnull`` object, not None: the handler reads it as None."""

    class JsNullLike:
        def __bool__(self) -> bool:
            return False

    null = JsNullLike()
    content = {
        "request": {"messages": USER, "max_tokens": null, "stop": None},
        "modelId": null,
        "chatOpts": null,
    }
    assert messages.plain(content) == {
        "request": {"messages": USER, "max_tokens": None, "stop": None},
        "modelId": None,
        "chatOpts": None,
    }
    with pytest.raises(errors.InvalidJSONError, match="content.modelId.*JSON data only") as e:
        messages.parse_request({"kind": "reload", "uuid": "u", "content": {"modelId": object()}})
    assert e.value.uuid == "u"

    async def go():
        worker = await loaded_worker(world)
        uuid = uuidlib.uuid4().hex
        await worker.handler.on_message(
            {"kind": "chatCompletionNonStreaming", "uuid": uuid, "content": content}
        )
        return (await worker.reply(uuid))["content"]

    assert run(go())["choices"][0]["message"]["content"] == "Hello there!"


# ---- WebLLM drop-in: abort-reload, per-model calls, forwardTokensAndSample ------------------------------------------


@pytest.mark.parametrize("aborter", ["unload", "reload"])
def test_an_aborted_reload_is_answered_with_reload_aborted_error(world, aborter):
    """The page's proxies resolve such a reload() with a warning (WebLLM's abort-reload example)."""

    async def go():
        worker = Worker(world)
        started = asyncio.Event()

        async def slow(record, config, progress):
            if record.model_id == "fake-model":
                started.set()
                await asyncio.sleep(3600)
            return record.model_url

        worker.engine._resolve_model = slow
        first = await worker.send("reload", {"modelId": ["fake-model"]})
        await started.wait()
        if aborter == "unload":
            second = await worker.value("unload")
        else:
            second = await worker.value("reload", {"modelId": ["other-model"]})
        return await worker.reply(first), second, worker.engine.model_ids

    first, second, loaded = run(go())
    assert first["kind"] == "throw" and first["content"]["name"] == "ReloadAbortedError"
    assert "fake-model" in first["content"]["message"] and second is None
    assert loaded == ([] if aborter == "unload" else ["other-model"])


def test_per_model_calls_take_their_model_id(world):
    async def go():
        worker = Worker(world)
        await worker.value("reload", {"modelId": ["fake-model", "other-model"]})
        reply = await worker.value(
            "chatCompletionNonStreaming", {"request": {"messages": USER, "model": "other-model"}}
        )
        messages_ = [await worker.value("getMessage", {"modelId": m}) for m in ("fake-model", "other-model")]
        stats = await worker.value("runtimeStatsText", {"modelId": "other-model"})
        unclear = await worker.ask("getMessage", {})
        await worker.value("resetChat", {"keepStats": True, "modelId": "other-model"})
        after = await worker.value("getMessage", {"modelId": "other-model"})
        return reply, messages_, stats, unclear, after

    reply, messages_, stats, unclear, after = run(go())
    assert messages_ == ["", reply["choices"][0]["message"]["content"]] and messages_[1]
    assert stats.startswith("prefill: ") and not stats.startswith("prefill: 0.0000")
    assert unclear["content"]["name"] == "UnclearModelToUseError"  # two models loaded, none named
    assert after == ""


def test_forward_tokens_and_sample_through_the_worker(world):
    async def go():
        worker = await loaded_worker(world)
        first = await worker.value("forwardTokensAndSample", {"inputIds": [42], "isPrefill": True})
        second = await worker.value("forwardTokensAndSample", {"inputIds": [first], "isPrefill": False})
        bad = await worker.ask("forwardTokensAndSample", {"inputIds": "42"})
        return worker, first, second, bad

    worker, first, second, bad = run(go())
    fake = world.loaded[-1]
    assert isinstance(first, int) and first == second == fake.script[0]
    assert [g.prompt_ids for g in fake.generations] == [[42], [42, first]]
    assert (
        bad["content"]["name"] == "InvalidFieldTypeError" and bad["content"]["details"]["field"] == "inputIds"
    )


def test_create_handler_puts_the_sites_records_over_the_prebuilt_list():
    site = {"model_list": [{"model_id": "SmolLM2-135M-Instruct-Q4_1", "model_url": "models/x.gguf"}]}
    config = create_handler(lambda m: None, engine=MLCEngine(), app_config=site).engine.app_config
    assert config.get_record("SmolLM2-135M-Instruct-Q4_1").model_url == "models/x.gguf"
    assert config.get_record("Llama-3.2-1B-Instruct-Q4_K_M").model_url.startswith("https://huggingface.co/")
