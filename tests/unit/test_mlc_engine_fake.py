"""MLCEngine / CreateMLCEngine / MLCEngineSync over a fake GPU engine: the public API end to end, one request at
a time, early exits releasing the engine, interrupt, reload/unload, and the package's import surface."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

import webllm_py
from tests.unit._fake_engine import FakeEngine, no_preflight
from webllm_py import errors
from webllm_py.config import AppConfig, ModelRecord
from webllm_py.engine import SamplingParams

ROOT = Path(__file__).resolve().parents[2]
USER = [{"role": "user", "content": "Hi"}]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def world(tmp_path, monkeypatch):
    """An app config with two local fake models and a fake load_engine that records what it was given."""
    import webllm_py.engine as engine_module

    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    config = AppConfig(
        model_list=[
            ModelRecord("fake-model", str(gguf), overrides={"temperature": 0.3}),
            ModelRecord("other-model", str(gguf)),
        ],
        cache_dir=str(tmp_path / "cache"),
    )
    loaded: list[FakeEngine] = []
    step_delay = {"s": 0.0}

    async def fake_load_engine(record, gguf_path, *, device=None, progress=None):
        progress(0.0, "Loading weights")
        await asyncio.sleep(0)
        progress(0.5, "Loading weights")
        engine = FakeEngine(
            record.model_id,
            context_window_size=record.context_window_size or 4096,
            step_delay=step_delay["s"],
        )
        engine.record, engine.gguf_path, engine.device = record, gguf_path, device
        engine.say(["Hello", " there", "!"])
        loaded.append(engine)
        return engine

    monkeypatch.setattr(engine_module, "load_engine", fake_load_engine)
    monkeypatch.setattr(engine_module, "preflight", no_preflight)  # fake files: no header to check
    return SimpleNamespace(config=config, loaded=loaded, gguf=str(gguf), step_delay=step_delay)


async def create(world, **kw) -> webllm_py.MLCEngine:
    return await webllm_py.CreateMLCEngine("fake-model", app_config=world.config, **kw)


# ---- loading ---------------------------------------------------------------------------------------------------


def test_create_reports_progress_and_passes_overrides(world):
    reports = []

    async def go():
        return await create(
            world, init_progress_callback=reports.append, chat_template="chatml", context_window_size=512
        )

    engine = run(go())
    assert engine.model_id == "fake-model"
    fake = world.loaded[0]
    assert fake.gguf_path == world.gguf
    assert fake.record.chat_template == "chatml" and fake.record.context_window_size == 512
    assert all(isinstance(r, webllm_py.InitProgressReport) for r in reports)
    assert [r.progress for r in reports] == [0.0, 0.5, 1.0]
    assert [r.timeElapsed for r in reports] == sorted(r.timeElapsed for r in reports)
    assert "Finish loading fake-model" in reports[-1].text
    assert reports[0]["text"] == "Loading weights" and reports[-1]["progress"] == 1.0
    assert reports[-1].to_dict().keys() == {"progress", "timeElapsed", "text"}


def test_unknown_model_id_keeps_current_model(world):
    async def go():
        engine = await create(world)
        with pytest.raises(errors.ModelNotFoundError, match="fake-model, other-model"):
            await engine.reload("nope")
        return engine

    engine = run(go())
    assert engine.model_id == "fake-model" and not world.loaded[0].unloaded


def test_reload_unloads_previous(world):
    async def go():
        engine = await create(world)
        await engine.reload("other-model")
        reply = await engine.chat.completions.create(messages=USER)
        return engine, reply

    engine, reply = run(go())
    assert world.loaded[0].unloaded and engine.model_id == "other-model" and reply.model == "other-model"


def test_requests_without_a_model(world):
    async def go():
        engine = webllm_py.MLCEngine(app_config=world.config)
        with pytest.raises(errors.EngineNotLoadedError, match="reload"):
            await engine.chat.completions.create(messages=USER)
        await engine.reload("fake-model")
        await engine.unload()
        with pytest.raises(errors.EngineNotLoadedError):
            await engine.chat.completions.create(messages=USER)

    run(go())
    assert world.loaded[0].unloaded


# ---- requests --------------------------------------------------------------------------------------------------


def test_non_streaming_completion(world):
    openai_chat = pytest.importorskip("openai.types.chat")

    async def go():
        engine = await create(world)
        messages = [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ]
        return engine, await engine.chat.completions.create(messages=messages, max_tokens=10, seed=3)

    engine, reply = run(go())
    fake = world.loaded[0]
    assert isinstance(reply, webllm_py.ChatCompletion)
    assert reply.choices[0].message.content == "Hello there!" and reply.choices[0].finish_reason == "stop"
    assert reply.model == "fake-model" and reply.id.startswith("chatcmpl-")
    # Text parts reach the template as parts (a template that loops over them gets them one by one).
    assert fake.chat_template.rendered == [
        [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ]
    ]
    prompt = fake.tokenizer.encoded[0]
    assert prompt == "system: Be nice.\nuser: Hi\nassistant: "
    # 3 tokens of text plus the end-of-turn id, which the engine counts as generated
    assert reply.usage.prompt_tokens == len(prompt) + 1 and reply.usage.completion_tokens == 4
    params = fake.generations[0]._params
    assert (params.temperature, params.top_p, params.seed, params.max_tokens) == (0.3, 1.0, 3, 10)
    assert fake.generations[0].aclose_calls >= 1 and not fake.busy
    openai_chat.ChatCompletion.model_validate(reply.to_dict())


def test_request_values_override_record_defaults(world):
    async def go():
        engine = await create(world)
        await engine.chat.completions.create(
            messages=USER, temperature=0, top_p=0.5, ignore_eos=True, max_completion_tokens=2
        )

    run(go())
    params = world.loaded[0].generations[0]._params
    assert (params.temperature, params.top_p, params.ignore_eos, params.max_tokens) == (0.0, 0.5, True, 2)
    assert isinstance(params, SamplingParams)


def test_chat_opts_set_the_models_sampling_defaults(world):
    """WebLLM's reload(modelId, chatOpts): the options become the model's defaults, which a request's own values
    override; the record's defaults the options leave alone stay."""

    async def go():
        engine = await create(
            world,
            chat_opts={
                "top_p": 0.7,
                "presence_penalty": 0.5,
                "frequency_penalty": -0.5,
                "repetition_penalty": 1.2,
            },
        )
        await engine.chat.completions.create(messages=USER, max_tokens=1)
        await engine.chat.completions.create(messages=USER, max_tokens=1, top_p=0.9, repetition_penalty=1.0)
        await engine.reload("fake-model", {"temperature": 0.0})  # a reload starts from the record again
        await engine.chat.completions.create(messages=USER, max_tokens=1)

    run(go())
    first, second = (g._params for g in world.loaded[0].generations)
    knobs = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
    assert [getattr(first, k) for k in knobs] == [0.3, 0.7, 0.5, -0.5, 1.2]  # temperature: the record's
    assert [getattr(second, k) for k in knobs] == [0.3, 0.9, 0.5, -0.5, 1.0]
    third = world.loaded[1].generations[0]._params
    assert [getattr(third, k) for k in knobs] == [0.0, 1.0, 0.0, 0.0, 1.0]


def test_chat_opts_load_options_per_model_and_keywords_win(world):
    async def go():
        engine = webllm_py.MLCEngine(app_config=world.config)
        await engine.reload(
            ["fake-model", "other-model"],
            [{"context_window_size": 256, "temperature": 1.5}, {"chat_template": "chatml", "top_p": 0.5,
                                                                  "prefill_chunk_size": 64}],
        )  # fmt: skip
        await engine.reload("other-model", {"context_window_size": 256}, context_window_size=512)

    run(go())
    fake, other, again = (e.record for e in world.loaded)
    assert (fake.context_window_size, dict(fake.overrides)) == (256, {"temperature": 1.5})
    assert (other.chat_template, dict(other.overrides)) == ("chatml", {"top_p": 0.5})
    assert (fake.prefill_chunk_size, other.prefill_chunk_size) == (None, 64)
    assert again.context_window_size == 512


@pytest.mark.parametrize(
    "chat_opts, error, field",
    [
        ({"temperature": 5}, errors.InvalidRangeError, "chatOpts.temperature"),
        ({"top_p": 0}, errors.InvalidRangeError, "chatOpts.top_p"),
        ({"repetition_penalty": -1}, errors.InvalidRangeError, "chatOpts.repetition_penalty"),
        ({"presence_penalty": "high"}, errors.InvalidFieldTypeError, "chatOpts.presence_penalty"),
        ({"context_window_size": 0}, errors.InvalidRangeError, "chatOpts.context_window_size"),
        ({"prefill_chunk_size": 0}, errors.InvalidRangeError, "chatOpts.prefill_chunk_size"),
        ({"prefill_chunk_size": 1.5}, errors.InvalidRangeError, "chatOpts.prefill_chunk_size"),
        ({"sliding_window_size": 512}, errors.UnsupportedFieldError, "chatOpts.sliding_window_size"),
        ([{}, {}], errors.InvalidRangeError, "chatOpts"),
        ("hot", errors.InvalidFieldTypeError, "chatOpts"),
    ],
)
def test_bad_chat_opts_raise_before_anything_is_unloaded(world, chat_opts, error, field):
    async def go():
        engine = await create(world)
        with pytest.raises(error) as info:
            await engine.reload("other-model", chat_opts)
        return engine, info.value

    engine, exc = run(go())
    assert exc.field == field
    assert engine.model_id == "fake-model" and len(world.loaded) == 1


def test_streaming_completion(world):
    openai_chat = pytest.importorskip("openai.types.chat")

    async def go():
        engine = await create(world)
        stream = await engine.chat.completions.create(
            messages=USER, stream=True, stream_options={"include_usage": True}
        )
        return [c async for c in stream]

    chunks = run(go())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        chunks[-2].choices[0].finish_reason == "stop"
        and chunks[-1].choices == []
        and chunks[-1].usage.total_tokens > 3
    )
    for c in chunks:
        openai_chat.ChatCompletionChunk.model_validate(c.to_dict())


def test_stop_strings_from_request_and_template(world):
    async def go():
        engine = await create(world)
        fake = world.loaded[0]
        fake.say(["one, ", "two", "<|im_end|>", " three"], end=False)
        a = await engine.chat.completions.create(messages=USER, stop=", t")
        b = await engine.chat.completions.create(messages=USER)
        # ignore_eos: the template's end-of-turn string no longer stops; the request's own stop still does
        c = await engine.chat.completions.create(messages=USER, ignore_eos=True)
        d = await engine.chat.completions.create(messages=USER, ignore_eos=True, stop=["thr"])
        return a, b, c, d

    a, b, c, d = run(go())
    assert a.choices[0].message.content == "one" and a.choices[0].finish_reason == "stop"
    assert b.choices[0].message.content == "one, two"
    assert c.choices[0].message.content == "one, two<|im_end|> three"
    assert d.choices[0].message.content == "one, two<|im_end|> "


def test_invalid_requests_raise_and_do_not_hold_the_engine(world):
    async def go():
        engine = await create(world)
        with pytest.raises(errors.UnsupportedFieldError, match="`functions`"):
            await engine.chat.completions.create(messages=USER, functions=[{"name": "f"}])
        with pytest.raises(errors.InvalidRangeError, match="`temperature`"):
            await engine.chat.completions.create(messages=USER, temperature=9)
        with pytest.raises(errors.SpecifiedModelNotFoundError, match="other-model"):
            await engine.chat.completions.create(messages=USER, model="other-model")
        with pytest.raises(errors.ContextWindowSizeExceededError):
            await engine.chat.completions.create(messages=USER, max_tokens=10_000)
        with pytest.raises(errors.ContextWindowSizeExceededError):
            await engine.chat.completions.create(messages=USER, max_tokens=10_000, stream=True)
        return await asyncio.wait_for(engine.chat.completions.create(messages=USER, model="fake-model"), 2)

    assert run(go()).choices[0].message.content == "Hello there!"


def test_chat_completion_raw_dict(world):
    async def go():
        engine = await create(world)
        return await engine.chatCompletion({"messages": USER, "max_tokens": 1})

    reply = run(go())
    assert reply.choices[0].message.content == "Hello" and reply.choices[0].finish_reason == "length"


# ---- one request at a time ----------------------------------------------------------------------------------


def test_concurrent_requests_are_served_one_at_a_time(world):
    world.step_delay["s"] = (
        0.001  # decode steps yield to other tasks, so without the lock they would interleave
    )

    async def go():
        engine = await create(world)

        async def stream_all():
            stream = await engine.chat.completions.create(messages=USER, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream])

        async def one():
            return (await engine.chat.completions.create(messages=USER)).choices[0].message.content

        return await asyncio.wait_for(asyncio.gather(one(), stream_all(), one(), stream_all()), 5)

    assert run(go()) == ["Hello there!"] * 4
    assert len(world.loaded[0].generations) == 4  # FakeEngine.generate raises if called while busy


def test_break_after_two_chunks_then_second_request(world):
    async def go():
        engine = await create(world)
        world.loaded[0].say(list("abcdefgh"))
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        seen = []
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
            if len(seen) == 2:
                break
        # `stream` is still referenced, and the request comes from another task: only leaving the loop can have
        # freed the engine.
        second = asyncio.create_task(engine.chat.completions.create(messages=USER))
        return seen, await asyncio.wait_for(second, 2), stream

    seen, reply, stream = run(go())
    first = world.loaded[0].generations[0]
    assert seen == ["a", "b"] and stream.closed
    assert first.finish_reason == "abort" and first.aclose_calls >= 1
    assert reply.choices[0].message.content == "abcdefgh"


def test_unfinished_stream_read_by_hand_is_closed_by_its_tasks_next_request(world):
    async def go():
        engine = await create(world)
        world.loaded[0].say(list("abcdefgh"))
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        await stream.__anext__()
        async with asyncio.timeout(2):  # same task, no new one: without the owner rule each create would hang
            unread = await engine.chat.completions.create(messages=USER, stream=True)  # never read at all
            reply = await engine.chat.completions.create(messages=USER)
        return stream, unread, reply

    stream, unread, reply = run(go())
    assert stream.closed and unread.closed and reply.choices[0].message.content == "abcdefgh"
    assert [g.finish_reason for g in world.loaded[0].generations] == ["abort", "abort", "stop"]


def test_break_in_another_task_then_dropped_stream_releases(world):
    async def go():
        engine = await create(world)
        world.loaded[0].say(list("abcdefgh"))

        async def consumer():
            stream = await engine.chat.completions.create(messages=USER, stream=True)
            async for _ in stream:
                break  # the stream goes out of scope when this task ends

        await asyncio.create_task(consumer())
        gc.collect()
        return await asyncio.wait_for(engine.chat.completions.create(messages=USER), 2)

    assert run(go()).choices[0].message.content == "abcdefgh"
    assert world.loaded[0].generations[0].finish_reason == "abort"


def test_aclose_and_async_with_release(world):
    async def go():
        engine = await create(world)
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        await stream.aclose()  # never iterated
        await stream.aclose()  # twice is fine
        async with await engine.chat.completions.create(messages=USER, stream=True) as s2:
            await s2.__anext__()
        held = [c async for c in stream]  # a closed stream is simply empty
        other = asyncio.create_task(engine.chat.completions.create(messages=USER))
        return held, await asyncio.wait_for(other, 2)

    held, reply = run(go())
    gens = world.loaded[0].generations
    assert held == [] and reply.choices[0].message.content == "Hello there!"
    assert (
        gens[0].finish_reason == "abort"
        and gens[1].finish_reason == "abort"
        and gens[2].finish_reason == "stop"
    )


def test_engine_is_free_once_the_final_chunk_is_read(world):
    """Another task's request need not wait for this consumer to pull StopAsyncIteration."""

    async def go():
        engine = await create(world)
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                break
        return stream, await asyncio.wait_for(
            asyncio.create_task(engine.chat.completions.create(messages=USER)), 2
        )

    stream, reply = run(go())
    assert reply.choices[0].message.content == "Hello there!"


def test_other_task_waits_for_an_open_stream(world):
    async def go():
        engine = await create(world)
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        waiting = asyncio.create_task(engine.chat.completions.create(messages=USER))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # FIFO: it waits for the stream, it does not cancel it
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        return text, await asyncio.wait_for(waiting, 2)

    text, reply = run(go())
    assert text == "Hello there!" and reply.choices[0].message.content == "Hello there!"


# ---- interrupt, stats, messages, unload ------------------------------------------------------------------------


def test_interrupt_generate_aborts_non_streaming(world):
    world.step_delay["s"] = 0.01

    async def go():
        engine = await create(world)
        world.loaded[0].say(list("abcdefghijklmnopqrstuvwxyz"))
        task = asyncio.create_task(engine.chat.completions.create(messages=USER))
        await asyncio.sleep(0.05)
        partial = await engine.getMessage()
        engine.interruptGenerate()
        reply = await asyncio.wait_for(task, 2)
        return partial, reply, await engine.getMessage()

    partial, reply, message = run(go())
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "abort"
    assert 0 < len(partial) <= len(text) < 26 and text.startswith(partial) and message == text


def test_interrupt_before_a_request_is_forgotten(world):
    async def go():
        engine = await create(world)
        engine.interruptGenerate()  # nothing running: WebLLM clears the flag when the next generation starts
        return await engine.chat.completions.create(messages=USER)

    assert run(go()).choices[0].finish_reason == "stop"


def test_runtime_stats_get_message_reset_chat(world):
    async def go():
        engine = await create(world)
        before = await engine.runtimeStatsText()
        await engine.chat.completions.create(messages=USER)
        after = await engine.runtimeStatsText()
        message = await engine.getMessage()
        await engine.resetChat(keep_stats=True)
        kept = await engine.runtimeStatsText()
        await engine.resetChat()
        return before, after, message, kept, await engine.runtimeStatsText(), await engine.getMessage()

    before, after, message, kept, reset, empty = run(go())
    stats = world.loaded[0].generations[0].stats
    assert before == "prefill: 0.0000 tokens/sec, decoding: 0.0000 tokens/sec"
    assert (
        after
        == f"prefill: {stats.prefill_tokens_per_s:.4f} tokens/sec, decoding: {stats.decode_tokens_per_s:.4f} tokens/sec"
    )
    assert stats.decode_tokens_per_s > 0 and message == "Hello there!"
    assert kept == after and reset == before and empty == ""


def test_unload_closes_an_open_stream(world):
    async def go():
        engine = await create(world)
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        await stream.__anext__()
        await asyncio.wait_for(engine.unload(), 2)
        return engine, [c async for c in stream]

    engine, rest = run(go())
    assert rest == [] and engine.model_id is None
    assert world.loaded[0].unloaded and world.loaded[0].generations[0].finish_reason == "abort"


def test_forward_tokens_and_sample(world):
    """WebLLM's low-level loop (the logit-processor example): each call prefills only its new ids after what was
    forwarded before, samples one token with the model's defaults; resetChat starts over."""

    async def go():
        engine = await create(world)
        fake = world.loaded[0]
        first = await engine.forwardTokensAndSample([42], True)
        second = await engine.forwardTokensAndSample([first], False)
        prompts = [(g.prompt_ids, g.reused) for g in fake.generations]
        stats = await engine.runtimeStatsText()
        await engine.resetChat()
        again = await engine.forwardTokensAndSample([42], True)
        with pytest.raises(errors.InvalidRangeError, match="inputIds"):
            await engine.forwardTokensAndSample([10**9], False)
        with pytest.raises(errors.InvalidFieldTypeError, match="inputIds"):
            await engine.forwardTokensAndSample([], False)
        return fake, first, second, prompts, stats, again

    fake, first, second, prompts, stats, again = run(go())
    script = fake.script
    assert (first, second, again) == (script[0], script[0], script[0])
    assert prompts == [([42], 0), ([42, first], 1)]  # the second call prefills one new id
    assert fake.generations[2].prompt_ids == [42]  # after resetChat
    assert all(
        g.params.max_tokens == 1 and g.params.temperature == 0.3 for g in fake.generations
    )  # record default
    assert stats.startswith("prefill: ") and "decoding: " in stats


def slow_resolver(started: asyncio.Event, cancelled: list[str]):
    """A model resolver that blocks (a long download) until it is cancelled."""

    async def resolve(record, app_config, progress):
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(record.model_id)
            raise
        return record.model_url

    return resolve


@pytest.mark.parametrize("aborter", ["unload", "reload"])
def test_unload_or_reload_aborts_a_reload_in_progress(world, aborter, caplog):
    """WebLLM's abort-reload: the download stops, the aborted reload() resolves (a warning says so)."""

    async def go():
        started, cancelled = asyncio.Event(), []
        engine = webllm_py.MLCEngine(app_config=world.config, resolve_model=slow_resolver(started, cancelled))
        first = asyncio.ensure_future(engine.reload("fake-model"))
        await started.wait()
        if aborter == "unload":
            await asyncio.wait_for(engine.unload(), 2)
        else:
            engine._resolve_model = lambda record, config, progress: asyncio.sleep(0, record.model_url)
            await asyncio.wait_for(engine.reload("other-model"), 2)
        assert await asyncio.wait_for(first, 2) is None  # resolved, not raised
        return engine, cancelled

    with caplog.at_level("WARNING", logger="webllm_py"):
        engine, cancelled = run(go())
    assert cancelled == ["fake-model"] and "reload(fake-model) was aborted" in caplog.text
    assert engine.model_ids == ([] if aborter == "unload" else ["other-model"])
    assert [e.model_id for e in world.loaded] == ([] if aborter == "unload" else ["other-model"])


def test_a_cancelled_reload_is_not_an_abort(world):
    """Cancelling the task that called reload() propagates (it is not turned into a warning)."""

    async def go():
        started, cancelled = asyncio.Event(), []
        engine = webllm_py.MLCEngine(app_config=world.config, resolve_model=slow_resolver(started, cancelled))
        task = asyncio.ensure_future(engine.reload("fake-model"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return engine, cancelled

    engine, cancelled = run(go())
    assert cancelled == ["fake-model"] and engine.model_ids == []


@pytest.mark.parametrize(
    "record, words",
    [
        (ModelRecord("emb", "https://h/e.gguf", model_type=1), "embedding model"),
        (ModelRecord("vlm", "https://h/v.gguf", model_type=2), "VLM model"),
        (ModelRecord("split", "https://h/m-00001-of-00002.gguf"), "split into 2 files"),
        (
            ModelRecord("mlc", "https://huggingface.co/mlc-ai/Llama-3.2-1B-Instruct-q4f16_1-MLC"),
            "not a .gguf",
        ),
    ],
)
def test_records_that_cannot_load_fail_before_downloading(world, record, words):
    async def go():
        fetched = []

        async def resolve(record, config, progress):
            fetched.append(record.model_id)
            return record.model_url

        engine = webllm_py.MLCEngine(app_config=AppConfig(model_list=[record]), resolve_model=resolve)
        with pytest.raises(errors.UnsupportedModelError, match=words):
            await engine.reload(record.model_id)
        return fetched

    assert run(go()) == []


# ---- MLCEngineSync -------------------------------------------------------------------------------------------


def test_sync_engine(world):
    reports = []
    with webllm_py.MLCEngineSync(
        "fake-model", app_config=world.config, init_progress_callback=reports.append
    ) as engine:
        assert engine.model_id == "fake-model" and reports[-1].progress == 1.0
        reply = engine.chat.completions.create(messages=USER)
        assert (
            isinstance(reply, webllm_py.ChatCompletion) and reply.choices[0].message.content == "Hello there!"
        )

        chunks = list(
            engine.chat.completions.create(messages=USER, stream=True, stream_options={"include_usage": True})
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there!"
        assert chunks[-1].usage is not None

        world.loaded[0].say(list("abcdef"))
        stream = engine.chat.completions.create(messages=USER, stream=True)
        for n, _ in enumerate(stream, 1):
            if n == 2:
                break
        # same thread, stream still referenced: the next request must not deadlock
        assert engine.chat.completions.create(messages=USER).choices[0].message.content == "abcdef"
        assert world.loaded[0].generations[-2].finish_reason == "abort"

        def read_one_by_hand_then_ask_again():
            # next() on the stream object itself, not a `for`: only the same-thread owner rule can free it
            stream = engine.chat.completions.create(messages=USER, stream=True)
            next(stream)
            return stream, engine.chat.completions.create(messages=USER)

        # In a daemon thread, so that a regression fails here instead of hanging the test run.
        result = []
        worker = threading.Thread(
            target=lambda: result.extend(read_one_by_hand_then_ask_again()), daemon=True
        )
        worker.start()
        worker.join(timeout=5)
        assert result, "a second request from the thread that left a stream unfinished hung"
        by_hand, again = result
        assert again.choices[0].message.content == "abcdef" and by_hand._stream.closed

        with engine.chat.completions.create(messages=USER, stream=True) as s:
            next(s)
        assert engine.getMessage() == "a"
        assert engine.runtimeStatsText().startswith("prefill: ")
        with pytest.raises(errors.UnsupportedFieldError):
            engine.chat.completions.create(messages=USER, response_format={"type": "structural_tag"})
    assert world.loaded[0].unloaded
    engine.close()  # twice is fine


def test_sync_engine_bad_model_cleans_up(world):
    with pytest.raises(errors.ModelNotFoundError):
        webllm_py.MLCEngineSync("nope", app_config=world.config)


# ---- the package's public surface ------------------------------------------------------------------------------


def test_import_does_not_pull_gpu_or_numpy():
    code = "import sys, webllm_py; bad = [m for m in sys.modules if m.split('.')[0] in ('wgpu', 'numpy', 'js', 'pyodide')]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_matches_pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        assert webllm_py.__version__ == tomllib.load(f)["project"]["version"]


def test_every_error_class_is_exported():
    classes = {
        n
        for n, v in vars(errors).items()
        if isinstance(v, type) and issubclass(v, errors.WebLLMError) and not n.startswith("_")
    }
    assert classes <= set(webllm_py.__all__), sorted(classes - set(webllm_py.__all__))
    for name in webllm_py.__all__:
        assert hasattr(webllm_py, name)
