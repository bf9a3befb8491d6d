"""The page side of the protocol (worker/client.py) against the real handler, in CPython.

The handler runs in one asyncio task and the client in others, joined by two queues standing in for
``postMessage`` (every message makes a JSON round trip). The engine behind the handler is a real ``MLCEngine`` over
the fake GPU engine, so the client is checked against what the desktop API returns for the same requests.

The JS proxy (web/webllm_py.js) is tested the same way at the end, in Node, speaking to the same Python handler
through a subprocess's stdin/stdout.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

import webllm_py
from tests.unit import test_worker_handler as handler_tests
from tests.unit.openai_check import validate
from tests.unit.test_worker_handler import ALPHABET, USER, FakeHost, json_copy, run
from webllm_py import errors
from webllm_py.api.mlc_engine import MLCEngine
from webllm_py.api.types import ChatCompletion, ChatCompletionChunk
from webllm_py.worker.client import WebWorkerMLCEngine, WorkerChatCompletionStream
from webllm_py.worker.handler import WorkerHandler

ROOT = Path(__file__).resolve().parents[2]
world = handler_tests.world  # the same fixture: two fake models behind a real MLCEngine


class MemoryPort:
    """Both ends of a fake ``postMessage`` channel: the page's ``Port`` and the worker loop feeding a handler."""

    def __init__(self, world, host=None):
        self.to_worker: asyncio.Queue[dict] = asyncio.Queue()
        self.to_page: asyncio.Queue[dict] = asyncio.Queue()
        self.sent: list[dict] = []  # every message the page posted
        self.closed = False
        self.engine = MLCEngine(app_config=world.config)
        self.handler = WorkerHandler(self.engine, lambda m: self.to_page.put_nowait(json_copy(m)), host=host)
        self._on_message = self._on_error = None
        self._tasks = [asyncio.create_task(self._worker_loop()), asyncio.create_task(self._page_loop())]

    # the Port protocol
    def post(self, message: dict) -> None:
        assert not self.closed, "posted to a terminated worker"
        self.sent.append(message)
        self.to_worker.put_nowait(json_copy(message))

    def set_listener(self, on_message, on_error=None) -> None:
        self._on_message, self._on_error = on_message, on_error

    def close(self) -> None:
        self.closed = True
        for task in self._tasks:
            task.cancel()

    async def _worker_loop(self) -> None:
        while True:
            await self.handler.on_message(await self.to_worker.get())

    async def _page_loop(self) -> None:
        while True:
            message = await self.to_page.get()
            self._on_message(message)

    def kinds_sent(self) -> list[str]:
        return [m["kind"] for m in self.sent]


async def connect(world, host=None, **kw) -> tuple[WebWorkerMLCEngine, MemoryPort]:
    port = MemoryPort(world, host)
    engine = await webllm_py.CreateWebWorkerMLCEngine(port, "fake-model", **kw)
    return engine, port


async def text_of(stream) -> str:
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


# ---- loading ------------------------------------------------------------------------------------------------------


def test_create_loads_the_model_with_progress(world):
    reports = []

    async def go():
        engine, port = await connect(world, init_progress_callback=reports.append, context_window_size=512)
        return engine, port

    engine, port = run(go())
    assert isinstance(engine, webllm_py.WebWorkerMLCEngine) and engine.model_id == "fake-model"
    assert all(isinstance(r, webllm_py.InitProgressReport) for r in reports)
    assert [r.progress for r in reports] == [0.0, 0.5, 1.0] and "Finish loading" in reports[-1].text
    assert port.sent[0]["content"] == {"modelId": ["fake-model"], "chatOpts": {"context_window_size": 512}}
    assert port.engine.model_id == "fake-model"


def test_reload_unload_and_typed_errors(world):
    async def go():
        engine, port = await connect(world)
        with pytest.raises(errors.ModelNotFoundError, match="known model ids: fake-model, other-model"):
            await engine.reload("nope")
        assert engine.model_id == "fake-model"  # a failed reload changes nothing on this side
        await engine.reload("other-model")
        reply = await engine.chat.completions.create(messages=USER)
        await engine.unload()
        assert engine.model_id is None
        with pytest.raises(errors.EngineNotLoadedError):
            await engine.chat.completions.create(messages=USER)
        return reply

    assert run(go()).model == "other-model"


def test_chat_opts_set_the_models_defaults_in_the_worker(world):
    async def go():
        engine, port = await connect(
            world, chat_opts={"temperature": 0.25, "top_p": 0.5}, context_window_size=512
        )
        await engine.chat.completions.create(messages=USER, max_tokens=1)
        await engine.chat.completions.create(messages=USER, max_tokens=1, temperature=0)
        with pytest.raises(errors.InvalidRangeError) as info:
            await engine.reload("fake-model", {"temperature": 3})
        return port, info.value

    port, exc = run(go())
    opts = {"temperature": 0.25, "top_p": 0.5, "context_window_size": 512}
    assert port.sent[0]["content"] == {"modelId": ["fake-model"], "chatOpts": opts}
    assert port.sent[1]["content"]["chatOpts"] == opts  # with each request, for a worker that restarted
    default, given = (g._params for g in world.loaded[0].generations)
    assert (default.temperature, default.top_p, given.temperature, given.top_p) == (0.25, 0.5, 0.0, 0.5)
    assert world.loaded[0].record.context_window_size == 512
    assert exc.field == "chatOpts.temperature" and len(world.loaded) == 1


# ---- requests -----------------------------------------------------------------------------------------------------


def test_same_answers_as_the_desktop_engine(world):
    """Through the worker, the chunks and the reply are the desktop API's, field for field (ids and times aside)."""
    world.knobs.script = ["Un", "é", b"\xf0\x9f", b"\x98\x80", " fin"]

    def comparable(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in ("id", "created")}

    async def go():
        engine, port = await connect(world)
        desktop = await webllm_py.CreateMLCEngine("fake-model", app_config=world.config)
        request = {
            "messages": USER,
            "stream_options": {"include_usage": True},
            "max_tokens": 9,
            "logprobs": True,
            "top_logprobs": 2,
            "stop": ["zzz"],
            "logit_bias": {"7": 5},
            "frequency_penalty": 0.5,
            "extra_body": {"top_k": 3},
        }
        remote = [c async for c in await engine.chat.completions.create(stream=True, **request)]
        local = [c async for c in await desktop.chat.completions.create(stream=True, **request)]
        whole_remote = await engine.chat.completions.create(messages=USER, seed=1, n=2, logprobs=True)
        whole_local = await desktop.chat.completions.create(messages=USER, seed=1, n=2, logprobs=True)
        return remote, local, whole_remote, whole_local

    remote, local, whole_remote, whole_local = run(go())
    assert all(isinstance(c, ChatCompletionChunk) for c in remote) and isinstance(
        whole_remote, ChatCompletion
    )
    assert [comparable(c.to_dict()) for c in remote] == [comparable(c.to_dict()) for c in local]
    assert comparable(whole_remote.to_dict()) == comparable(whole_local.to_dict())
    text = "".join(c.choices[0].delta.content or "" for c in remote if c.choices)
    assert text == whole_remote.choices[0].message.content == "Uné😀 fin"
    assert remote[-1].choices == [] and remote[-1].usage.completion_tokens == 6
    assert "decode_tokens_per_s" in remote[-1].usage.extra
    assert len(whole_remote.choices) == 2 and whole_remote.choices[1].logprobs.content[0].logprob == -0.25
    assert remote[0].choices[0].logprobs.content[0].top_logprobs[1].logprob == -1.25
    for c in (*remote, whole_remote):
        validate(c)


def test_bad_requests_raise_the_workers_error_class(world):
    async def go():
        engine, _ = await connect(world)
        with pytest.raises(errors.InvalidRangeError, match=r"`temperature` must be in \[0, 2\]") as e:
            await engine.chat.completions.create(messages=USER, temperature=5)
        assert (e.value.field, e.value.value, e.value.allowed) == ("temperature", 5, "in [0, 2]")
        with pytest.raises(errors.InvalidRangeError):
            await engine.chat.completions.create(messages=USER, temperature=5, stream=True)
        with pytest.raises(errors.FieldDependencyError):
            await engine.chat.completions.create(messages=USER, stream_options={"include_usage": True})
        with pytest.raises(errors.UnsupportedFieldError, match="`tools`"):
            await engine.chat.completions.create(messages=USER, tools=[{"type": "function"}])
        with pytest.raises(errors.InvalidRequestError):  # the class hierarchy holds too
            await engine.chat.completions.create(messages=[{"role": "assistant", "content": "x"}])
        return await engine.chat.completions.create(messages=USER)

    assert run(go()).choices[0].message.content == "Hello there!"


def test_interrupt_mid_stream_then_next_request(world):
    world.knobs.script = ALPHABET

    async def go():
        engine, _ = await connect(world)
        stream = await engine.chat.completions.create(
            messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = []
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 2:
                engine.interruptGenerate()
        nxt = await engine.chat.completions.create(messages=USER)
        return chunks, nxt, await engine.getMessage()

    chunks, nxt, message = run(go())
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["abort"] and chunks[-1].usage is not None
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ab"
    assert nxt.choices[0].message.content == "".join(ALPHABET) and message == nxt.choices[0].message.content


def test_break_out_of_a_stream_frees_the_engine_at_once(world):
    world.knobs.script = ALPHABET

    async def go():
        engine, port = await connect(world)
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        async for _ in stream:
            break
        # `stream` is still referenced: only leaving the loop can end it. A stream from another task then
        # starts at once and runs to its end.
        other = asyncio.create_task(text_of(await engine.chat.completions.create(messages=USER, stream=True)))
        text = await other
        assert (
            stream.closed
            and {"kind": "interruptGenerate", "uuid": ANY, "content": {"streamId": stream.stream_id}}
            in port.sent
        )
        return text

    assert run(go()) == "".join(ALPHABET)
    assert [g.finish_reason for g in world.loaded[0].generations] == ["abort", "stop"]


def test_stream_read_by_hand_then_dropped_is_ended(world):
    world.knobs.script = ALPHABET

    async def go():
        engine, port = await connect(world)
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        await stream.__anext__()
        del stream
        gc.collect()
        assert port.kinds_sent()[-1] == "interruptGenerate"
        return await engine.chat.completions.create(messages=USER)

    assert run(go()).choices[0].message.content == "".join(ALPHABET)
    assert world.loaded[0].generations[0].finish_reason == "abort"


def test_abandoned_stream_then_new_request_from_the_same_page(world):
    """Even a stream kept but no longer read (no break, no aclose) cannot make the next request hang."""
    world.knobs.script = ALPHABET

    async def go():
        engine, _ = await connect(world)
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        first = await stream.__anext__()
        reply = await engine.chat.completions.create(messages=USER)
        rest = [c async for c in stream]  # the old reader comes back: its stream ended with "abort"
        return first, reply, rest

    first, reply, rest = run(go())
    assert first.choices[0].delta.content == "a" and reply.choices[0].message.content == "".join(ALPHABET)
    assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "abort"


def test_aclose_async_with_and_cancelled_reader(world):
    world.knobs.script = ALPHABET
    world.knobs.step_delay = 0.01

    async def go():
        engine, _ = await connect(world)
        never = await engine.chat.completions.create(messages=USER, stream=True)
        await never.aclose()
        await never.aclose()
        assert [c async for c in never] == []
        async with await engine.chat.completions.create(messages=USER, stream=True) as s:
            await s.__anext__()
        reader_stream = await engine.chat.completions.create(messages=USER, stream=True)
        reader = asyncio.create_task(text_of(reader_stream))
        await asyncio.sleep(0.05)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert reader_stream.closed
        return await engine.chat.completions.create(messages=USER)

    assert run(go()).choices[0].message.content == "".join(ALPHABET)
    assert [g.finish_reason for g in world.loaded[0].generations] == ["abort", "abort", "abort", "stop"]


def test_finished_stream_close_sends_nothing(world):
    async def go():
        engine, port = await connect(world)
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                break  # left before pulling the end: the engine is already free, nothing to interrupt
        await engine.getMessage()  # a round trip: the loop's generator has been finalized by now
        assert stream.closed
        return port

    port = run(go())
    assert "interruptGenerate" not in port.kinds_sent()


def test_concurrent_non_streaming_requests_are_served_in_turn(world):
    world.knobs.step_delay = 0.001

    async def go():
        engine, _ = await connect(world)
        replies = await asyncio.gather(*(engine.chat.completions.create(messages=USER) for _ in range(3)))
        return [r.choices[0].message.content for r in replies]

    assert run(go()) == ["Hello there!"] * 3


# ---- the other methods --------------------------------------------------------------------------------------------


def test_engine_methods(world):
    async def go():
        engine, _ = await connect(world, host=FakeHost(), log_level="WARN")
        await engine.chat.completions.create(messages=USER)
        out = {
            "stats": await engine.runtimeStatsText(),
            "message": await engine.getMessage(),
            "vendor": await engine.getGPUVendor(),
            "size": await engine.getMaxStorageBufferBindingSize(),
            "cached": await engine.hasModelInCache("fake-model"),
        }
        await engine.deleteModelInCache("fake-model")
        out["cached_after"] = await engine.hasModelInCache("fake-model")
        await engine.resetChat()
        out["message_after_reset"] = await engine.getMessage()
        config = await engine.getAppConfig()
        await engine.setAppConfig(
            webllm_py.AppConfig(model_list=[*config.model_list, webllm_py.ModelRecord("third", "/x.gguf")])
        )
        out["models"] = [r.model_id for r in (await engine.getAppConfig()).model_list]
        with pytest.raises(ValueError, match="log level"):
            await engine.setLogLevel("LOUD")
        await engine.setLogLevel("WARN")
        text = await engine.completions.create(prompt="Once upon", max_tokens=2, echo=True)
        out["text"] = (type(text).__name__, text.choices[0].text)
        streamed = await engine.completions.create(prompt="Once", stream=True)
        out["text_stream"] = "".join([c.choices[0].text async for c in streamed if c.choices])
        with pytest.raises(errors.UnsupportedFieldError, match="suffix"):
            await engine.completions.create(prompt="Once upon", suffix="end")
        return out

    out = run(go())
    assert out["stats"].startswith("prefill: ") and out["message"] == "Hello there!"
    assert (out["vendor"], out["size"], out["cached"], out["cached_after"]) == (
        "fake-vendor",
        1 << 30,
        True,
        False,
    )
    assert out["message_after_reset"] == "" and out["models"] == ["fake-model", "other-model", "third"]


def test_app_config_at_construction_is_sent_before_the_first_request(world):
    extra = webllm_py.AppConfig(
        model_list=[*world.config.model_list, webllm_py.ModelRecord("third", "/x.gguf")]
    )

    async def go():
        engine, port = await connect(world, app_config=extra)
        return engine, port

    engine, port = run(go())
    assert port.kinds_sent()[:2] == ["setAppConfig", "reload"]
    assert [r.model_id for r in port.engine.app_config.model_list] == ["fake-model", "other-model", "third"]


def test_worker_failure_and_terminate_fail_pending_calls(world):
    world.knobs.script = ALPHABET
    world.knobs.step_delay = 0.01

    async def go():
        engine, port = await connect(world)
        waiting = asyncio.create_task(engine.chat.completions.create(messages=USER))
        await asyncio.sleep(0.02)
        port._on_error("Uncaught RangeError: Maximum call stack size exceeded")
        with pytest.raises(errors.WorkerError, match="Maximum call stack") as e:
            await waiting
        assert e.value.name == "WorkerError"
        engine.terminate()
        assert port.closed
        with pytest.raises(errors.WorkerError, match="terminated"):
            await engine.getMessage()
        engine.interruptGenerate()  # after terminate: a no-op, not an error

    run(go())


def test_progress_callback_errors_do_not_break_the_protocol(world, caplog):
    def bad_callback(report):
        raise RuntimeError("page bug")

    async def go():
        engine, _ = await connect(world, init_progress_callback=bad_callback)
        return await engine.chat.completions.create(messages=USER)

    assert run(go()).choices[0].message.content == "Hello there!"
    assert "initProgressCallback raised" in caplog.text


def test_lazy_exports_do_not_import_js():
    code = (
        "import sys, webllm_py; e = webllm_py.WebWorkerMLCEngine; c = webllm_py.CreateWebWorkerMLCEngine; "
        "print([m for m in sys.modules if m.split('.')[0] in ('js', 'pyodide', 'wgpu', 'numpy')])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert webllm_py.WebWorkerMLCEngine is WebWorkerMLCEngine
    with pytest.raises(AttributeError):
        webllm_py.NoSuchThing  # noqa: B018


def test_stream_type_is_exported_shape():
    # openai-python's AsyncStream surface: async iteration, aclose, async with
    for name in ("__aiter__", "__anext__", "aclose", "__aenter__", "__aexit__"):
        assert callable(getattr(WorkerChatCompletionStream, name))


# ---- the JS proxy (web/webllm_py.js) in Node, against the same Python handler ----------------------------------------

NODE_DRIVER = r"""
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
const { CreateWebWorkerMLCEngine, WebLLMError, errorClass } = await import(pathToFileURL(process.argv[2]).href);

// A Worker whose other end is the Python test: one JSON message per line on stdout / stdin.
class StdioWorker extends EventTarget {
  postMessage(message) { process.stdout.write("MSG " + JSON.stringify(message) + "\n"); }
  terminate() { this.terminated = true; }
}
const worker = new StdioWorker();
createInterface({ input: process.stdin }).on("line", (line) =>
  worker.dispatchEvent(new MessageEvent("message", { data: JSON.parse(line) })));

const messages = [{ role: "user", content: "Hi" }];
const text = (chunks) => chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
const finishes = (chunks) => chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean);
const out = {};

const progress = [];
const engine = await CreateWebWorkerMLCEngine(worker, "fake-model", {
  initProgressCallback: (report) => progress.push(report),
});
out.progress = progress.map((r) => [r.progress, typeof r.timeElapsed, r.text.length > 0]);
out.modelId = engine.modelId;

const whole = await engine.chat.completions.create({ messages, temperature: 0 });
out.whole = { object: whole.object, text: whole.choices[0].message.content, finish: whole.choices[0].finish_reason };
const scored = await engine.chat.completions.create({ messages, n: 2, logprobs: true, top_logprobs: 1, seed: 3 });
out.scored = [scored.choices.length, scored.choices[1].logprobs.content[0].top_logprobs.length];

let chunks = [];
const stream = await engine.chat.completions.create({
  messages, temperature: 0, stream: true, stream_options: { include_usage: true } });
for await (const chunk of stream) chunks.push(chunk);
out.stream = { text: text(chunks), finishes: finishes(chunks), lastChoices: chunks.at(-1).choices.length,
               usage: chunks.at(-1).usage, role: chunks[0].choices[0].delta.role };

try {
  await engine.chat.completions.create({ messages, temperature: 5 });
} catch (e) {
  out.error = { name: e.name, message: e.message, field: e.field, value: e.value, isError: e instanceof Error,
                isWebLLMError: e instanceof WebLLMError, isClass: e instanceof errorClass("InvalidRangeError") };
}
try {
  await (await engine.chat.completions.create({ messages, stream: true, top_p: 0 })).next();
} catch (e) { out.streamError = e.name; }

chunks = [];
for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) {
  chunks.push(chunk);
  if (chunks.length === 2) engine.interruptGenerate();
}
out.interrupted = { text: text(chunks), finishes: finishes(chunks) };
out.afterInterrupt = (await engine.chat.completions.create({ messages })).choices[0].message.content;

chunks = [];
for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) {
  chunks.push(chunk);
  if (chunks.length === 3) break;
}
out.broke = text(chunks);
out.afterBreak = (await engine.chat.completions.create({ messages })).choices[0].message.content;

out.message = await engine.getMessage();
out.stats = await engine.runtimeStatsText();
out.models = (await engine.getAppConfig()).model_list.map((r) => r.model_id);
out.completions = (await engine.completions.create({ prompt: "Once", max_tokens: 3 })).choices[0].text;
try { await engine.completions.create({ prompt: "Once", best_of: 2 }); } catch (e) { out.bestOf = [e.name, e.field]; }
try { await engine.getGPUVendor(); } catch (e) { out.vendor = e.name; }
try { await engine.reload("nope"); } catch (e) { out.reload = [e.name, engine.modelId]; }
await engine.reload("fake-model", { temperature: 0.25, presence_penalty: 1 });
await engine.chat.completions.create({ messages, max_tokens: 1 });
await engine.chat.completions.create({ messages, max_tokens: 1, presence_penalty: 0 });
try { await engine.reload("fake-model", { top_p: 0 }); } catch (e) { out.badOpts = [e.name, e.field]; }
await engine.resetChat();
out.reset = await engine.getMessage();
await engine.unload();
try { await engine.chat.completions.create({ messages }); } catch (e) { out.unloaded = [e.name, engine.modelId]; }
const pending = engine.getMessage();
engine.terminate();
try { await pending; } catch (e) { out.terminated = [e.name, worker.terminated]; }
process.stdout.write("RESULT " + JSON.stringify(out) + "\n");
process.exit(0);
"""


def js_module(folder: Path) -> Path:
    """web/webllm_py.js deployed in ``folder`` as build.py deploys it (next to boot.js and the prebuilt_models.mjs
    and helpers/ that ``build.write_site_files`` writes); returns its path."""
    sys.path.insert(0, str(ROOT))
    import build

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("webllm_py.js", "boot.js"):
        shutil.copyfile(ROOT / "web" / name, folder / name)
    build.write_site_files(folder, [])
    return folder / "webllm_py.js"


async def drive_node(driver: Path, handler_for: Any) -> tuple[dict, list[dict]]:
    """Run a Node driver that imports web/webllm_py.js (deployed next to it): what it posts ("MSG {json}" lines) goes
    to the handler ``handler_for(post)`` makes, whose replies go back on stdin; returns its "RESULT {json}" and what
    it posted."""
    node = await asyncio.create_subprocess_exec(
        "node", str(driver), str(js_module(driver.parent / "site")),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip

    def post(message: dict) -> None:
        node.stdin.write((json.dumps(message) + "\n").encode())

    handler = handler_for(post)
    sent: list[dict] = []
    try:
        while line := (await node.stdout.readline()).decode():
            if line.startswith("MSG "):
                sent.append(json.loads(line[4:]))
                await handler.on_message(sent[-1])
            elif line.startswith("RESULT "):
                return json.loads(line[7:]), sent
        raise AssertionError("node ended without a result: " + (await node.stderr.read()).decode())
    finally:
        if node.returncode is None:
            node.kill()
        await node.wait()


def drive_js_proxy(
    world, tmp_path, driver_source: str, handler_class=WorkerHandler
) -> tuple[dict, list[dict]]:
    """Run a Node driver (web/webllm_py.js over a stdio Worker) against a Python handler: returns the driver's
    RESULT object and every message it sent."""
    driver = tmp_path / "driver.mjs"
    driver.write_text(driver_source)

    async def go():
        return await drive_node(driver, lambda post: handler_class(MLCEngine(app_config=world.config), post))

    return run(go())


needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (apt-get install nodejs)")


@needs_node
def test_js_proxy_against_the_python_handler(world, tmp_path):
    world.knobs.script = ALPHABET
    out, sent = drive_js_proxy(world, tmp_path, NODE_DRIVER)
    alphabet = "".join(ALPHABET)
    assert out["progress"] == [[0.0, "number", True], [0.5, "number", True], [1.0, "number", True]]
    assert out["modelId"] == ["fake-model"]  # a list, as WebLLM's engine.modelId
    assert out["whole"] == {"object": "chat.completion", "text": alphabet, "finish": "stop"}
    assert out["scored"] == [2, 1]
    assert out["stream"]["text"] == alphabet and out["stream"]["finishes"] == ["stop"]
    assert out["stream"]["lastChoices"] == 0 and out["stream"]["usage"]["completion_tokens"] == 27
    assert out["stream"]["role"] == "assistant"
    assert out["error"] == {
        "name": "InvalidRangeError",
        "message": "`temperature` must be in [0, 2]; got 5.0",
        "field": "temperature",
        "value": 5,
        "isError": True,
        "isWebLLMError": True,
        "isClass": True,
    }
    assert out["streamError"] == "InvalidRangeError"
    assert out["interrupted"] == {"text": "ab", "finishes": ["abort"]} and out["afterInterrupt"] == alphabet
    assert out["broke"] == "abc" and out["afterBreak"] == alphabet
    interrupts = [m["content"] for m in sent if m["kind"] == "interruptGenerate"]
    assert interrupts[0] is None and set(interrupts[1]) == {"streamId"}  # engine-wide, then the broken stream
    assert out["message"] == alphabet and out["stats"].startswith("prefill: ")
    assert out["models"] == ["fake-model", "other-model"]
    assert out["completions"] == alphabet[:3] and out["bestOf"] == ["UnsupportedFieldError", "best_of"]
    assert out["vendor"] == "WebGPUNotAvailableError"
    assert out["reload"] == ["ModelNotFoundError", ["fake-model"]] and out["reset"] == ""
    # chatOpts: the model's defaults, which a request's own value overrides; a bad one throws naming it
    default, given = (g._params for g in world.loaded[-1].generations[-2:])
    assert (default.temperature, default.presence_penalty) == (0.25, 1.0)
    assert (given.temperature, given.presence_penalty) == (0.25, 0.0)
    assert out["badOpts"] == ["InvalidRangeError", "chatOpts.top_p"]
    reloads = [m["content"] for m in sent if m["kind"] == "reload"]
    assert reloads[-2] == {
        "modelId": ["fake-model"],
        "chatOpts": {"temperature": 0.25, "presence_penalty": 1},
    }
    assert out["unloaded"] == ["EngineNotLoadedError", None] and out["terminated"] == ["WorkerError", True]
    assert {m["kind"] for m in sent} <= messages_kinds()


def messages_kinds() -> frozenset[str]:
    from webllm_py.worker.messages import REQUEST_KINDS

    return REQUEST_KINDS
