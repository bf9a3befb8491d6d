"""The service-worker handlers (worker/service_worker.py) and the local endpoint (worker/local_endpoint.py), in
CPython, with fake clients: each client is an outbox the handler posts to, as ``client.postMessage`` would.

A real ``MLCEngine`` over the fake GPU engine (``world`` from test_worker_handler.py) serves every client; every
message crosses a JSON round trip.
"""

from __future__ import annotations

import asyncio
import json
import uuid as uuidlib

import openai.types
import openai.types.chat
import pytest

from tests.unit import test_worker_handler as handler_tests
from tests.unit.test_worker_handler import ALPHABET, USER, json_copy, run
from webllm_py.api.mlc_engine import MLCEngine
from webllm_py.worker.local_endpoint import LocalEndpoint
from webllm_py.worker.service_worker import (
    ExtensionServiceWorkerMLCEngineHandler,
    ServiceWorkerMLCEngineHandler,
)

world = handler_tests.world  # two fake models behind a real MLCEngine; knobs.script, knobs.step_delay


class Clients:
    """The tabs of an origin: an outbox per client id; ``alive`` is what ``clients.get`` would answer."""

    def __init__(self, world, handler_class=ServiceWorkerMLCEngineHandler, engine=None, **kw):
        self.outboxes: dict[str, asyncio.Queue[dict]] = {}
        self.alive: set[str] = set()
        self.engine = engine or MLCEngine(app_config=world.config)
        if handler_class is ServiceWorkerMLCEngineHandler:
            kw.setdefault("client_alive", self._alive)
        self.handler = handler_class(self.engine, self._post, recheck_s=0.01, **kw)
        self.replies: dict[str, dict] = {}
        self.progress: dict[str, list[dict]] = {}
        self.heartbeats: dict[str, dict] = {}
        self.order: list[str] = []  # uuids of return / throw replies, in the order they were posted

    def open(self, client: str) -> Clients:
        self.outboxes[client] = asyncio.Queue()
        self.alive.add(client)
        return self

    def close(self, client: str) -> None:
        self.alive.discard(client)

    def _post(self, client: str, message: dict) -> None:
        message = json_copy(message)
        if message["kind"] in ("return", "throw"):
            self.order.append(message["uuid"])
        self.outboxes[client].put_nowait(message)

    async def _alive(self, client: str) -> bool:
        await asyncio.sleep(0)  # clients.get is a promise
        return client in self.alive

    async def send(self, client: str, kind: str, content=None, uuid: str | None = None) -> str:
        uuid = uuid or uuidlib.uuid4().hex
        await self.handler.on_client_message(
            client, json_copy({"kind": kind, "uuid": uuid, "content": content})
        )
        return uuid

    async def reply(self, client: str, uuid: str) -> dict:
        while uuid not in self.replies and uuid not in self.heartbeats:
            message = await self.outboxes[client].get()
            if message["kind"] == "initProgressCallback":
                self.progress.setdefault(message["uuid"], []).append(message["content"])
            elif message["kind"] == "heartbeat":
                self.heartbeats[message["uuid"]] = message
            else:
                assert message["uuid"] not in self.replies, "a request was answered twice"
                self.replies[message["uuid"]] = message
        return self.replies.get(uuid) or self.heartbeats[uuid]

    async def ask(self, client: str, kind: str, content=None) -> dict:
        return await self.reply(client, await self.send(client, kind, content))

    async def value(self, client: str, kind: str, content=None):
        message = await self.ask(client, kind, content)
        assert message["kind"] == "return", message
        return message["content"]

    async def open_stream(self, client: str, pulls: int = 0) -> tuple[str, list[dict]]:
        stream_id = await self.send(client, "chatCompletionStreamInit", {"request": {"messages": USER}})
        assert (await self.reply(client, stream_id))["kind"] == "return"
        head = [await self.pull(client, stream_id) for _ in range(pulls)]
        return stream_id, head

    async def pull(self, client: str, stream_id: str):
        return await self.value(client, "completionStreamNextChunk", {"streamId": stream_id})

    async def pull_all(self, client: str, stream_id: str) -> list[dict]:
        chunks = []
        while (chunk := await self.pull(client, stream_id)) is not None:
            chunks.append(chunk)
        return chunks

    def sent_to(self, client: str) -> list[dict]:
        """Everything still waiting in a client's outbox (without taking it)."""
        return list(self.outboxes[client]._queue)  # noqa: SLF001 - a test peeking at its own queue


def text_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def finishes(chunks: list[dict]) -> list[str]:
    return [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]


LOAD = {"modelId": ["fake-model"]}


# ---- routing and loading ----------------------------------------------------------------------------------------


def test_replies_and_progress_go_to_the_client_that_asked(world):
    async def go():
        tabs = Clients(world).open("A").open("B")
        load = await tabs.send("A", "reload", LOAD)
        await tabs.reply("A", load)
        vendor_of_b = await tabs.ask("B", "getAppConfig")
        return tabs, load, vendor_of_b

    tabs, load, b = run(go())
    assert tabs.replies[load] == {"kind": "return", "uuid": load, "content": None}
    assert [p["progress"] for p in tabs.progress[load]] == [0.0, 0.5, 1.0]
    assert b["kind"] == "return" and tabs.sent_to("A") == [] and tabs.sent_to("B") == []
    assert tabs.handler._client_of == {}  # nothing left over once everything is answered


def test_a_second_tab_reuses_the_loaded_model(world):
    async def go():
        tabs = Clients(world).open("A").open("B")
        await tabs.value("A", "reload", LOAD)
        second = await tabs.send("B", "reload", LOAD)
        await tabs.reply("B", second)
        answer = await tabs.value("B", "chatCompletionNonStreaming", {"request": {"messages": USER}, **LOAD})
        other_opts = await tabs.send("B", "reload", {**LOAD, "chatOpts": {"context_window_size": 512}})
        await tabs.reply("B", other_opts)
        return tabs, second, answer

    tabs, second, answer = run(go())
    assert len(world.loaded) == 2 and tabs.handler.loads == 2  # A's load, then B's with other chatOpts
    (report,) = tabs.progress[second]
    assert report["progress"] == 1.0 and "already loaded" in report["text"]
    assert answer["choices"][0]["message"]["content"] == "Hello there!"


def test_a_reload_arriving_during_the_same_load_waits_for_it_and_sees_its_progress(world):
    async def go():
        tabs = Clients(world).open("A").open("B")
        first = await tabs.send("A", "reload", LOAD)
        second = await tabs.send("B", "reload", LOAD)
        await tabs.reply("A", first)
        await tabs.reply("B", second)
        return tabs, first, second

    tabs, first, second = run(go())
    assert len(world.loaded) == 1 and tabs.handler.loads == 1
    assert tabs.replies[second]["kind"] == "return"
    seen_by_b = [p["progress"] for p in tabs.progress[second]]
    assert seen_by_b[-1] == 1.0 and "already loaded" in tabs.progress[second][-1]["text"]
    assert 0.5 in seen_by_b  # the load A started, reported to B while B waited for it


def test_a_restarted_worker_reloads_the_model_a_request_carries(world):
    async def go():
        tabs = Clients(world).open("A")
        await tabs.value("A", "reload", LOAD)
        restarted = Clients(world).open("A")  # a fresh worker: new engine, nothing loaded
        request = {"request": {"messages": USER}, **LOAD, "chatOpts": None}
        uuid = await restarted.send("A", "chatCompletionNonStreaming", request)
        return restarted, uuid, await restarted.reply("A", uuid)

    restarted, uuid, reply = run(go())
    assert (
        reply["kind"] == "return" and reply["content"]["choices"][0]["message"]["content"] == "Hello there!"
    )
    assert len(world.loaded) == 2 and restarted.handler.loads == 1
    assert restarted.progress[uuid][-1]["progress"] == 1.0  # the reload reports under the request's uuid


def test_a_pull_for_a_stream_this_worker_never_opened_raises_engine_lost(world):
    async def go():
        tabs = Clients(world).open("A")
        await tabs.value("A", "reload", LOAD)
        stream_id, _ = await tabs.open_stream("A")
        chunks = await tabs.pull_all("A", stream_id)
        after_end = await tabs.pull("A", stream_id)
        return (
            chunks,
            after_end,
            await tabs.ask("A", "completionStreamNextChunk", {"streamId": "from-before"}),
        )

    chunks, after_end, lost = run(go())
    assert text_of(chunks) == "Hello there!" and after_end is None  # an ended stream stays ended
    assert lost["kind"] == "throw" and lost["content"]["name"] == "EngineLostError"


# ---- keepAlive and heartbeat ------------------------------------------------------------------------------------


def test_keep_alive_is_answered_at_once_with_that_clients_pending_requests(world):
    world.knobs.step_delay = 0.01

    async def go():
        tabs = Clients(world).open("A").open("B")
        await tabs.value("A", "reload", LOAD)
        a_request = await tabs.send("A", "chatCompletionNonStreaming", {"request": {"messages": USER}})
        b_request = await tabs.send("B", "chatCompletionNonStreaming", {"request": {"messages": USER}})
        beat_a = await tabs.ask("A", "keepAlive")
        beat_b = await tabs.ask("B", "keepAlive")
        pending_a = a_request not in tabs.replies
        await tabs.reply("A", a_request)
        await tabs.reply("B", b_request)
        beat_after = await tabs.ask("A", "keepAlive")
        return beat_a, beat_b, beat_after, a_request, b_request, pending_a

    beat_a, beat_b, beat_after, a_request, b_request, pending_a = run(go())
    assert pending_a  # the heartbeat came while the generation was still running
    assert beat_a["kind"] == "heartbeat" and beat_a["content"] == {"pending": [a_request]}
    assert beat_b["content"] == {"pending": [b_request]}
    assert beat_after["content"] == {"pending": []}


# ---- clients do not cut each other off --------------------------------------------------------------------------


def test_another_tabs_request_waits_for_a_live_tabs_stream(world):
    world.knobs.script = ALPHABET

    async def go():
        tabs = Clients(world).open("A").open("B")
        await tabs.value("A", "reload", LOAD)
        stream_id, head = await tabs.open_stream("A", pulls=2)
        b_request = await tabs.send("B", "chatCompletionNonStreaming", {"request": {"messages": USER}})
        await asyncio.sleep(0.05)  # B's request had every chance to run; it must still wait for A's stream
        waited = b_request not in tabs.order
        rest = await tabs.pull_all("A", stream_id)
        b_reply = await tabs.reply("B", b_request)
        return head + rest, waited, b_reply

    chunks, waited, b_reply = run(go())
    assert waited
    assert text_of(chunks) == "".join(ALPHABET) and finishes(chunks) == ["stop"]  # A's stream was not cut
    assert b_reply["content"]["choices"][0]["message"]["content"] == "".join(ALPHABET)


def test_a_stream_whose_tab_closed_is_ended_and_does_not_block_the_next_request(world):
    world.knobs.script = ALPHABET

    async def go():
        tabs = Clients(world).open("A").open("B")
        await tabs.value("A", "reload", LOAD)
        stream_id, head = await tabs.open_stream("A", pulls=2)
        tabs.close("A")  # the tab went away mid-stream; it never pulls again
        b_reply = await tabs.ask("B", "chatCompletionNonStreaming", {"request": {"messages": USER}})
        return tabs, stream_id, b_reply

    tabs, stream_id, b_reply = run(go())
    assert b_reply["content"]["choices"][0]["message"]["content"] == "".join(ALPHABET)
    stream = tabs.handler._streams[stream_id]
    assert finishes(list(stream.queued)) == ["abort"]  # ended for it, with what a late pull would have read


def test_the_same_tabs_new_request_ends_its_own_abandoned_stream(world):
    world.knobs.script = ALPHABET

    async def go():
        tabs = Clients(world).open("A")
        await tabs.value("A", "reload", LOAD)
        stream_id, head = await tabs.open_stream("A", pulls=2)
        answer = await tabs.value("A", "chatCompletionNonStreaming", {"request": {"messages": USER}})
        return head + await tabs.pull_all("A", stream_id), answer

    chunks, answer = run(go())
    assert finishes(chunks) == ["abort"] and answer["choices"][0]["finish_reason"] == "stop"


def test_interrupt_without_a_stream_id_ends_only_the_asking_tabs_generation(world):
    world.knobs.script = ALPHABET

    async def go():
        tabs = Clients(world).open("A").open("B")
        await tabs.value("A", "reload", LOAD)
        stream_id, head = await tabs.open_stream("A", pulls=2)
        await tabs.value("B", "interruptGenerate")  # B has nothing running: A's stream goes on
        return head + await tabs.pull_all("A", stream_id)

    chunks = run(go())
    assert text_of(chunks) == "".join(ALPHABET) and finishes(chunks) == ["stop"]


def test_a_generation_whose_tab_closed_is_interrupted_when_another_request_arrives(world):
    world.knobs.script = ALPHABET * 40
    world.knobs.step_delay = 0.002

    async def go():
        tabs = Clients(world).open("A").open("B")
        await tabs.value("A", "reload", LOAD)
        a_request = await tabs.send("A", "chatCompletionNonStreaming", {"request": {"messages": USER}})
        await asyncio.sleep(0.02)  # A's generation is running
        tabs.close("A")
        b_reply = await tabs.ask("B", "chatCompletionNonStreaming", {"request": {"messages": USER}})
        return await tabs.reply("A", a_request), b_reply

    a_reply, b_reply = run(go())
    assert a_reply["content"]["choices"][0]["finish_reason"] == "abort"
    assert b_reply["content"]["choices"][0]["finish_reason"] == "stop"


def test_an_extension_port_that_disconnects_has_its_stream_ended_at_once(world):
    world.knobs.script = ALPHABET

    async def go():
        popups = Clients(world, ExtensionServiceWorkerMLCEngineHandler).open("port-1").open("port-2")
        handler = popups.handler
        handler.connect("port-1")
        handler.connect("port-2")
        await popups.value("port-1", "reload", LOAD)
        stream_id, _ = await popups.open_stream("port-1", pulls=1)
        handler.disconnect("port-1")
        await handler.join()
        ended = handler._streams[stream_id].exhausted or handler._streams[stream_id].finished
        answer = await popups.value("port-2", "chatCompletionNonStreaming", {"request": {"messages": USER}})
        return ended, answer, popups.sent_to("port-1")

    ended, answer, late = run(go())
    assert ended and answer["choices"][0]["finish_reason"] == "stop"
    assert late == []  # nothing is posted to a port that disconnected


# ---- the local endpoint -----------------------------------------------------------------------------------------


def parse_sse(text: str) -> list[str]:
    """The data of each event of a text/event-stream body."""
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            events.append(block[len("data: ") :])
    return events


async def read_all(response) -> str:
    return "".join([piece async for piece in response.events])


def test_endpoint_models_and_chat_completion_validate_as_openai_types(world):
    async def go():
        tabs = Clients(world)
        endpoint = LocalEndpoint(tabs.handler)
        models = await endpoint.handle("GET", "v1/models")
        body = json.dumps({"model": "fake-model", "messages": USER})
        whole = await endpoint.handle("POST", "/v1/chat/completions", body)
        return models, whole, tabs

    models, whole, tabs = run(go())
    assert models.status == 200
    listed = [openai.types.Model.model_validate(m) for m in json.loads(models.body)["data"]]
    assert [m.id for m in listed] == ["fake-model", "other-model"]
    assert whole.status == 200 and whole.headers["Content-Type"] == "application/json"
    completion = openai.types.chat.ChatCompletion.model_validate_json(whole.body)
    assert completion.choices[0].message.content == "Hello there!" and completion.model == "fake-model"
    assert tabs.handler.loads == 1  # the request's model was loaded for it


def test_endpoint_streams_server_sent_events_ending_in_done(world):
    async def go():
        tabs = Clients(world)
        endpoint = LocalEndpoint(tabs.handler)
        body = {
            "model": "fake-model",
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = await endpoint.handle("POST", "v1/chat/completions", json.dumps(body))
        return response, await read_all(response)

    response, text = run(go())
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    events = parse_sse(text)
    assert events[-1] == "[DONE]"
    chunks = [openai.types.chat.ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_endpoint_answers_text_completions_as_openai_types(world):
    async def go():
        endpoint = LocalEndpoint(Clients(world).handler)
        whole = await endpoint.handle(
            "POST", "v1/completions", json.dumps({"model": "fake-model", "prompt": "Once"})
        )
        body = json.dumps({"model": "fake-model", "prompt": "Once", "stream": True})
        streamed = await endpoint.handle("POST", "v1/completions", body)
        return whole, streamed, await read_all(streamed)

    whole, streamed, text = run(go())
    assert whole.status == 200
    completion = openai.types.Completion.model_validate_json(whole.body)
    assert completion.object == "text_completion" and completion.choices[0].text
    events = parse_sse(text)
    assert streamed.status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == completion.choices[0].text


def test_endpoint_errors_are_openai_shaped(world):
    async def go():
        tabs = Clients(world)
        endpoint = LocalEndpoint(tabs.handler)
        post = endpoint.handle
        return {
            "no model loaded": await post("POST", "v1/chat/completions", json.dumps({"messages": USER})),
            "unknown model": await post(
                "POST", "v1/chat/completions", json.dumps({"model": "x", "messages": USER})
            ),
            "bad json": await post("POST", "v1/chat/completions", "{"),
            "bad range": await post(
                "POST",
                "v1/chat/completions",
                json.dumps({"model": "fake-model", "messages": USER, "top_p": 9}),
            ),
            "bad stream range": await post(
                "POST",
                "v1/chat/completions",
                json.dumps({"model": "fake-model", "messages": USER, "top_p": 9, "stream": True}),
            ),
            "text completion, unsupported field": await post(
                "POST", "v1/completions", json.dumps({"model": "fake-model", "prompt": "Once", "suffix": "!"})
            ),
            "no route": await post("GET", "v1/embeddings"),
            "wrong method": await post("GET", "v1/chat/completions"),
            "options": await post("OPTIONS", "v1/chat/completions"),
        }

    out = run(go())
    status = {name: r.status for name, r in out.items()}
    assert status == {
        "no model loaded": 400,
        "unknown model": 404,
        "bad json": 400,
        "bad range": 400,
        "bad stream range": 400,
        "text completion, unsupported field": 400,
        "no route": 404,
        "wrong method": 405,
        "options": 204,
    }
    for name, response in out.items():
        if name != "options":
            error = json.loads(response.body)["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], name
    assert json.loads(out["bad range"].body)["error"]["param"] == "top_p"
    assert json.loads(out["unknown model"].body)["error"]["code"] == "model_not_found"


def test_a_fetch_closed_mid_stream_ends_its_generation_and_the_next_one_runs(world):
    world.knobs.script = ALPHABET

    async def go():
        tabs = Clients(world)
        endpoint = LocalEndpoint(tabs.handler)
        body = {"model": "fake-model", "messages": USER, "stream": True}
        response = await endpoint.handle("POST", "v1/chat/completions", json.dumps(body))
        events = response.events
        first = [await events.__anext__(), await events.__anext__()]
        await events.aclose()  # the page aborted the fetch
        whole = await endpoint.handle("POST", "v1/chat/completions", json.dumps({**body, "stream": False}))
        return first, whole

    first, whole = run(go())
    assert len(parse_sse("".join(first))) == 2
    assert json.loads(whole.body)["choices"][0]["message"]["content"] == "".join(ALPHABET)


def test_a_fetch_waits_for_a_tabs_stream_instead_of_cutting_it(world):
    world.knobs.script = ALPHABET

    async def go():
        tabs = Clients(world).open("A")
        endpoint = LocalEndpoint(tabs.handler)
        await tabs.value("A", "reload", LOAD)
        stream_id, head = await tabs.open_stream("A", pulls=2)
        fetch = asyncio.ensure_future(
            endpoint.handle("POST", "v1/chat/completions", json.dumps({"messages": USER}))
        )
        await asyncio.sleep(0.05)
        waited = not fetch.done()
        chunks = head + await tabs.pull_all("A", stream_id)
        return waited, chunks, await fetch

    waited, chunks, whole = run(go())
    assert waited and finishes(chunks) == ["stop"]
    assert json.loads(whole.body)["choices"][0]["message"]["content"] == "".join(ALPHABET)


@pytest.mark.parametrize("route", ["v1/chat/completions", "/v1/chat/completions/"])
def test_endpoint_routes_ignore_surrounding_slashes(world, route):
    async def go():
        tabs = Clients(world)
        return await LocalEndpoint(tabs.handler).handle("PUT", route)

    assert run(go()).status == 405


# ---- the page side: worker/service_worker_client.py -------------------------------------------------------------


class ServiceWorkerPort:
    """A page's channel to "the" service worker of an origin: ``stop()`` drops the running instance (its pending
    work is lost, as when the browser stops it) and the next message starts a fresh one (a new handler and engine,
    nothing loaded). ``silent``: the worker takes messages and never answers (a hung or unreachable worker)."""

    def __init__(self, world, client="tab"):
        self.world, self.client = world, client
        self.instances: list[Clients] = []
        self.silent = False
        self._on_message = None
        self._tasks: set[asyncio.Task] = set()

    def set_listener(self, on_message, on_error=None):
        self._on_message, self._on_error = on_message, on_error

    def disconnect(self):
        """An extension Port's onDisconnect: the worker was stopped, and the page is told at once."""
        self.stop()
        self._on_error("the extension's service worker disconnected")

    def post(self, message):
        if self.silent:
            return
        if not self.instances:
            self.instances.append(Clients(self.world).open(self.client))
        worker = self.instances[-1]
        worker.outboxes[self.client] = _Forward(self, worker)
        task = asyncio.ensure_future(worker.handler.on_client_message(self.client, json_copy(message)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self):
        worker = self.instances[-1]
        worker.outboxes[self.client] = _Forward(None, worker)  # what the stopped instance posts is lost
        for task in list(worker.handler._tasks):
            task.cancel()
        self.instances.append(Clients(self.world).open(self.client))

    def close(self):
        pass


class _Forward:
    """An outbox that hands each message to the page (or drops it: a stopped worker)."""

    def __init__(self, port, worker):
        self.port, self.worker = port, worker

    def put_nowait(self, message):
        if self.port is not None and self.worker is self.port.instances[-1]:
            asyncio.get_running_loop().call_soon(self.port._on_message, message)


def test_python_proxy_shares_the_model_and_answers_heartbeats(world):
    from webllm_py.worker.service_worker_client import CreateServiceWorkerMLCEngine

    async def go():
        port = ServiceWorkerPort(world)
        engine = await CreateServiceWorkerMLCEngine("fake-model", None, None, 5, port=port)
        reply = await engine.chat.completions.create(messages=USER)
        await asyncio.sleep(0.05)  # several keepAlive / heartbeat rounds
        missed = engine.missed_heartbeats
        engine.terminate()
        return reply, missed, port

    reply, missed, port = run(go())
    assert reply.choices[0].message.content == "Hello there!"
    assert missed == 0 and len(port.instances) == 1 and port.instances[0].handler.loads == 1


def test_python_proxy_a_request_lost_with_a_stopped_worker_raises_and_the_next_reloads(world):
    from webllm_py.errors import EngineLostError
    from webllm_py.worker.service_worker_client import CreateServiceWorkerMLCEngine

    world.knobs.script = ALPHABET * 40
    world.knobs.step_delay = 0.005
    lost_reports = []

    async def go():
        port = ServiceWorkerPort(world)
        config = {"on_engine_lost": lost_reports.append}
        engine = await CreateServiceWorkerMLCEngine("fake-model", config, None, 5, port=port)
        held = asyncio.ensure_future(engine.chat.completions.create(messages=USER))
        await asyncio.sleep(0.02)  # the generation runs in the first instance
        port.stop()
        with pytest.raises(EngineLostError, match="stopped the service worker"):
            await held  # the restarted worker's heartbeat does not list it
        world.knobs.script = ["ok"]
        reply = await engine.chat.completions.create(messages=USER)
        engine.terminate()
        return reply, port

    reply, port = run(go())
    assert reply.choices[0].message.content == "ok"
    assert len(lost_reports) == 1 and isinstance(lost_reports[0], EngineLostError)
    assert port.instances[-1].handler.loads == 1  # the fresh instance loaded the model the request carried


def test_python_proxy_missed_heartbeats_fail_waiting_calls_and_report_once(world):
    from webllm_py.errors import EngineLostError
    from webllm_py.worker.service_worker_client import ServiceWorkerMLCEngine

    lost_reports = []

    async def go():
        port = ServiceWorkerPort(world)
        port.silent = True  # the worker never answers
        engine = ServiceWorkerMLCEngine(
            port, keep_alive_ms=5, max_missed_heartbeats=2, on_engine_lost=lost_reports.append
        )
        with pytest.raises(EngineLostError, match="did not answer 2 heartbeats"):
            await engine.chat.completions.create(messages=USER)
        await asyncio.sleep(0.05)  # more missed rounds: reported once
        engine.terminate()

    run(go())
    assert len(lost_reports) == 1


def test_python_proxy_tolerates_more_missed_heartbeats_while_a_model_loads(world):
    from webllm_py.errors import EngineLostError
    from webllm_py.worker.service_worker_client import RELOAD_HEARTBEAT_FACTOR, ServiceWorkerMLCEngine

    async def go():
        port = ServiceWorkerPort(world)
        port.silent = True  # the worker never answers (a load that never yields, then a dead worker)
        engine = ServiceWorkerMLCEngine(port, keep_alive_ms=5, max_missed_heartbeats=2)
        assert engine.heartbeat_limit == 2
        reload = asyncio.ensure_future(engine.reload("fake-model"))
        await asyncio.sleep(0)
        assert engine.heartbeat_limit == 2 * RELOAD_HEARTBEAT_FACTOR
        while engine.missed_heartbeats < 2:
            await asyncio.sleep(0.002)
        assert not reload.done()  # 2 missed heartbeats do not lose a loading engine
        with pytest.raises(EngineLostError, match=f"did not answer {2 * RELOAD_HEARTBEAT_FACTOR} heartbeats"):
            await reload  # but a worker that stays silent is still noticed
        assert engine.heartbeat_limit == 2
        engine.terminate()

    run(go())


def test_python_proxy_rejects_bad_keep_alive_settings(world):
    from webllm_py.worker.service_worker_client import ServiceWorkerMLCEngine

    async def go():
        with pytest.raises(ValueError, match="keep_alive_ms"):
            ServiceWorkerMLCEngine(ServiceWorkerPort(world), keep_alive_ms=0)

    run(go())


def test_an_event_stream_closed_while_a_pull_runs_ends_its_generation_after_that_pull(world):
    from webllm_py.worker.local_endpoint import EventStream

    world.knobs.script = ALPHABET
    world.knobs.step_delay = 0.01

    async def go():
        tabs = Clients(world)
        endpoint = LocalEndpoint(tabs.handler)
        body = {"model": "fake-model", "messages": USER, "stream": True}
        response = await endpoint.handle("POST", "v1/chat/completions", json.dumps(body))
        events = EventStream(response.events)
        first = await events.next()
        pulling = asyncio.ensure_future(events.next())
        await asyncio.sleep(0)  # the pull is running when the page cancels
        await events.close()
        second = await pulling
        after = await events.next()
        whole = await endpoint.handle("POST", "v1/chat/completions", json.dumps({**body, "stream": False}))
        return first, second, after, whole, tabs

    first, second, after, whole, tabs = run(go())
    assert first.startswith("data: {") and second.startswith("data: {") and after is None
    assert json.loads(whole.body)["choices"][0]["message"]["content"] == "".join(ALPHABET)
    ended = [s for s in tabs.handler._streams.values() if s.id.endswith("-stream")]
    assert ended and all(s.finished or s.exhausted for s in ended)


def test_python_extension_proxy_a_disconnect_fails_pending_calls_and_the_next_request_reloads(world):
    from webllm_py.errors import EngineLostError
    from webllm_py.worker.service_worker_client import CreateExtensionServiceWorkerMLCEngine

    world.knobs.script = ALPHABET * 40
    world.knobs.step_delay = 0.005
    lost_reports = []

    async def go():
        port = ServiceWorkerPort(world, client="port-1")
        config = {"on_engine_lost": lost_reports.append}
        engine = await CreateExtensionServiceWorkerMLCEngine("fake-model", config, None, 1000, port=port)
        held = asyncio.ensure_future(engine.chat.completions.create(messages=USER))
        await asyncio.sleep(0.02)
        port.disconnect()
        with pytest.raises(EngineLostError, match="disconnected"):
            await held  # at once, without waiting for a heartbeat
        world.knobs.script = ["ok"]
        reply = await engine.chat.completions.create(messages=USER)
        engine.terminate()
        return reply, port

    reply, port = run(go())
    assert reply.choices[0].message.content == "ok" and len(lost_reports) == 1
    assert port.instances[-1].handler.loads == 1
