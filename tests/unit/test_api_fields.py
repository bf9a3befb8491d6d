"""Every chat/text-completion request field end to end over the fake engine: what reaches the sampler, n,
logprobs, stop strings across chunks, usage, finish reasons, multi-round KV reuse, several models, text
completions. Every response and chunk is validated with openai-python's types (tests/unit/openai_check.py)."""

from __future__ import annotations

import asyncio

import pytest

import webllm_py
from webllm_py import errors

from .openai_check import validate
from .test_mlc_engine_fake import create, world  # noqa: F401 - the fixture

USER = [{"role": "user", "content": "Hi"}]


def run(coro):
    return asyncio.run(coro)


async def chunks_of(stream) -> list:
    out = [c async for c in stream]
    for c in out:
        validate(c)
    return out


def test_sampling_fields_reach_the_engine(world):  # noqa: F811
    async def go():
        engine = await create(world)
        await engine.chat.completions.create(
            messages=USER,
            temperature=0.7,
            top_p=0.9,
            frequency_penalty=0.5,
            presence_penalty=-0.5,
            repetition_penalty=1.2,
            logit_bias={"5": -100, 6: 3},
            seed=42,
            extra_body={"top_k": 40},
        )
        first = world.loaded[0].params
        await engine.chat.completions.create(messages=USER)
        return first, world.loaded[0].params

    p, defaults = run(go())
    assert (p.temperature, p.top_p, p.top_k, p.seed) == (0.7, 0.9, 40, 42)
    assert (p.frequency_penalty, p.presence_penalty, p.repetition_penalty) == (0.5, -0.5, 1.2)
    assert p.logit_bias == ((5, -100.0), (6, 3.0)) and not p.logprobs
    # Not given: the model record's override (temperature 0.3), else OpenAI's defaults.
    assert (defaults.temperature, defaults.top_p, defaults.frequency_penalty, defaults.seed) == (
        0.3,
        1.0,
        0.0,
        None,
    )


def test_logit_bias_id_outside_the_vocabulary_is_named(world):  # noqa: F811
    async def go():
        engine = await create(world)
        with pytest.raises(errors.InvalidRangeError) as info:
            await engine.chat.completions.create(messages=USER, logit_bias={"5000": 1})
        # Nothing was lost: the engine still answers.
        return info.value, await engine.chat.completions.create(messages=USER)

    err, reply = run(go())
    assert err.field == "logit_bias[5000]" and "[0, 1000)" in str(err)
    assert reply.choices[0].message.content == "Hello there!"


def test_n_choices(world):  # noqa: F811
    async def go():
        engine = await create(world)
        return await engine.chat.completions.create(messages=USER, n=3, seed=7), world.loaded[0]

    reply, fake = run(go())
    validate(reply)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content == "Hello there!" and c.finish_reason == "stop" for c in reply.choices)
    assert (
        reply.usage.completion_tokens == 3 * 4
        and reply.usage.prompt_tokens == fake.generations[0].stats.prompt_tokens
    )
    seeds = [g._params.seed for g in fake.generations]
    assert seeds[0] == 7 and len(set(seeds)) == 3  # each choice its own (reproducible) random stream
    # Choices 2 and 3 reuse the prompt's KV entries.
    assert [g.reused for g in fake.generations[1:]] == [fake.generations[0].stats.prompt_tokens - 1] * 2


def test_logprobs_whole_and_streamed(world):  # noqa: F811
    async def go():
        engine = await create(world)
        alone = await engine.chat.completions.create(messages=USER, logprobs=True)
        top = await engine.chat.completions.create(messages=USER, logprobs=True, top_logprobs=2)
        stream = await engine.chat.completions.create(
            messages=USER, logprobs=True, top_logprobs=2, stream=True
        )
        return alone, top, await chunks_of(stream)

    alone, top, chunks = run(go())
    content = validate(alone).choices[0].logprobs.content
    # logprobs alone: the chosen tokens (end-of-turn excluded), no alternatives (WebLLM returns an empty list).
    assert [e.token for e in content] == ["Hello", " there", "!"]
    assert [e.logprob for e in content] == [-0.25, -0.5, -0.75] and all(e.top_logprobs == [] for e in content)
    assert content[0].bytes == list(b"Hello")
    content = validate(top).choices[0].logprobs.content
    assert [[t.logprob for t in e.top_logprobs] for e in content] == [
        [-0.25, -1.25],
        [-0.5, -1.5],
        [-0.75, -1.75],
    ]
    streamed = [e for c in chunks for ch in c.choices if ch.logprobs for e in ch.logprobs.content]
    assert [e.to_dict() for e in streamed] == [e.to_dict() for e in top.choices[0].logprobs.content]
    assert alone.to_dict()["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []
    plain = run(_plain(world))
    assert plain.choices[0].logprobs is None and plain.to_dict()["choices"][0]["logprobs"] is None


async def _plain(world):  # noqa: F811
    engine = await create(world)
    return await engine.chat.completions.create(messages=USER)


def test_stop_strings_across_chunks_and_usage_chunk(world):  # noqa: F811
    async def go():
        engine = await create(world)
        world.loaded[0].say(["Hel", "lo", " wo", "rld", " again"])
        stream = await engine.chat.completions.create(
            messages=USER, stop=["o wor", "zzz"], stream=True, stream_options={"include_usage": True}
        )
        chunks = await chunks_of(stream)
        whole = await engine.chat.completions.create(messages=USER, stop="rld")
        return chunks, whole

    chunks, whole = run(go())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hell"  # the stop string spans three tokens; nothing of it leaks out
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4  # "rld" completed the stop
    assert (
        validate(whole).choices[0].message.content == "Hello wo" and whole.choices[0].finish_reason == "stop"
    )


def test_ignore_eos_and_length(world):  # noqa: F811
    async def go():
        engine = await create(world)
        world.loaded[0].say(["a", "b"], end=True)
        world.loaded[0].script += world.loaded[0].tokenizer.ids(["c", "d"])
        stopped = await engine.chat.completions.create(messages=USER)
        ignored = await engine.chat.completions.create(messages=USER, ignore_eos=True, max_tokens=4)
        short = await engine.chat.completions.create(messages=USER, max_tokens=1)
        return stopped, ignored, short

    stopped, ignored, short = run(go())
    for r in (stopped, ignored, short):
        validate(r)
    assert stopped.choices[0].message.content == "ab" and stopped.choices[0].finish_reason == "stop"
    assert (
        ignored.choices[0].message.content == "ab<|im_end|>c" and ignored.choices[0].finish_reason == "length"
    )
    assert short.choices[0].message.content == "a" and short.choices[0].finish_reason == "length"


def test_abort_is_kept_and_conforms(world):  # noqa: F811
    world.step_delay["s"] = 0.01

    async def go():
        engine = await create(world)
        stream = await engine.chat.completions.create(messages=USER, stream=True)
        first = await stream.__anext__()
        engine.interruptGenerate()
        rest = [c async for c in stream]
        return [first, *rest]

    chunks = run(go())
    assert chunks[-1].choices[0].finish_reason == "abort"
    for c in chunks:
        validate(c)  # strict with "abort" read as "stop"; openai-python's lenient parse keeps "abort"


def test_latency_breakdown(world):  # noqa: F811
    async def go():
        engine = await create(world)
        return await engine.chat.completions.create(
            messages=USER, extra_body={"enable_latency_breakdown": True}
        )

    reply = run(go())
    assert "totalTime" in validate(reply).usage.model_extra["extra"]["latencyBreakdown"]


# ---- multi-round chat -----------------------------------------------------------------------------------------


def test_multi_round_prefills_only_the_new_turn(world):  # noqa: F811
    async def go():
        engine = await create(world)
        first = await engine.chat.completions.create(messages=USER)
        history = [*USER, {"role": "assistant", "content": first.choices[0].message.content}]
        second = await engine.chat.completions.create(
            messages=[*history, {"role": "user", "content": "More"}]
        )
        changed = [{"role": "user", "content": "Ho"}, *history[1:], {"role": "user", "content": "More"}]
        third = await engine.chat.completions.create(messages=changed)
        with_system = [{"role": "system", "content": "Be brief."}, *changed]
        fourth = await engine.chat.completions.create(messages=with_system)
        await engine.resetChat()
        after_reset = await engine.chat.completions.create(messages=with_system)
        return first, second, third, fourth, after_reset, world.loaded[0].generations

    first, second, third, fourth, after_reset, gens = run(go())
    # The fake renders "role: content\n" and encodes one token per character after BOS.
    turn1 = "user: Hi\nassistant: "
    turn2 = turn1 + "Hello there!\nuser: More\nassistant: "
    assert first.usage.prompt_tokens == len(turn1) + 1
    # The conversation's ids are the first prompt's plus the reply's as generated (3 tokens, end-of-turn not
    # included): only the new turn's text is tokenized and prefilled.
    new_turn = "\nuser: More\nassistant: "
    assert gens[1].reused == len(turn1) + 1 + 3 and second.usage.prompt_tokens == len(new_turn)
    # An earlier turn changed: the conversation is not extended, so everything is prefilled again.
    assert gens[2].reused == 0 and third.usage.prompt_tokens == len(turn2) + 1
    assert gens[3].reused == 0 and fourth.usage.prompt_tokens == len("system: Be brief.\n" + turn2) + 1
    assert gens[4].reused == 0  # resetChat forgets the conversation


# ---- several models ---------------------------------------------------------------------------------------------


def test_several_models_routing_and_errors(world):  # noqa: F811
    async def go():
        engine = await create(world)
        await engine.reload(["fake-model", "other-model"])
        assert engine.model_ids == ["fake-model", "other-model"]
        with pytest.raises(errors.UnclearModelToUseError, match="fake-model, other-model"):
            await engine.chat.completions.create(messages=USER)
        with pytest.raises(errors.SpecifiedModelNotFoundError, match="'nope'") as info:
            await engine.chat.completions.create(messages=USER, model="nope")
        assert info.value.field == "model"
        with pytest.raises(errors.ReloadModelIdNotUniqueError):
            await engine.reload(["fake-model", "fake-model"])
        a, b = await asyncio.gather(
            engine.chat.completions.create(messages=USER, model="fake-model"),
            engine.chat.completions.create(messages=USER, model="other-model"),
        )
        # A stream left early on one model never blocks a later request to it.
        stream = await engine.chat.completions.create(messages=USER, model="other-model", stream=True)
        async for _ in stream:
            break
        later = await asyncio.wait_for(engine.chat.completions.create(messages=USER, model="other-model"), 5)
        stats = await engine.runtimeStatsText("other-model")
        await engine.unload()
        with pytest.raises(errors.EngineNotLoadedError):
            await engine.chat.completions.create(messages=USER, model="fake-model")
        return a, b, later, stats

    a, b, later, stats = run(go())
    assert (a.model, b.model, later.model) == ("fake-model", "other-model", "other-model")
    assert later.choices[0].message.content == "Hello there!" and stats.startswith("prefill: ")


def test_requests_to_one_model_are_served_in_arrival_order(world):  # noqa: F811
    world.step_delay["s"] = 0.001

    async def go():
        engine = await create(world)
        replies = await asyncio.gather(
            *(
                engine.chat.completions.create(messages=[{"role": "user", "content": f"q{i}"}])
                for i in range(4)
            )
        )
        return replies, world.loaded[0].chat_template.rendered

    replies, rendered = run(go())
    assert [m[-1]["content"] for m in rendered] == ["q0", "q1", "q2", "q3"]
    assert all(r.choices[0].message.content == "Hello there!" for r in replies)


# ---- text completions -------------------------------------------------------------------------------------------


def test_text_completions(world):  # noqa: F811
    async def go():
        engine = await create(world)
        whole = await engine.completions.create(prompt="Once", echo=True, n=2)
        scored = await engine.completions.create(prompt="Once", logprobs=2)
        with pytest.raises(errors.UnsupportedFieldError, match="echo"):
            await engine.completions.create(prompt="Once", echo=True, logprobs=1)
        stream = await engine.completions.create(
            prompt="Once", stream=True, stream_options={"include_usage": True}
        )
        chunks = await chunks_of(stream)
        refused = {}
        for field, value in (("suffix", "x"), ("best_of", 3), ("user", "u")):
            with pytest.raises(errors.UnsupportedFieldError) as info:
                await engine.completions.create(prompt="Once", **{field: value})
            refused[field] = info.value
        return whole, scored, chunks, refused, world.loaded[0]

    whole, scored, chunks, refused, fake = run(go())
    validate(whole)
    validate(scored)
    assert [c.text for c in whole.choices] == ["OnceHello there!"] * 2 and whole.object == "text_completion"
    lp = scored.choices[0].logprobs
    assert lp.tokens == ["Hello", " there", "!"] and lp.text_offset == [0, 5, 11]
    assert lp.top_logprobs[0] == {
        fake.tokenizer.pieces[2].decode(): -0.25,
        fake.tokenizer.pieces[3].decode(): -1.25,
    }
    assert fake.chat_template.rendered == []  # no chat template for a raw prompt
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello there!"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len("Once") + 1
    for field, err in refused.items():
        assert err.field == field and f"`{field}`" in str(err)


def test_per_request_interrupt_only_ends_that_request(world):  # noqa: F811
    world.step_delay["s"] = 0.001

    async def go():
        engine = await create(world)
        await engine.reload(["fake-model", "other-model"])
        world.loaded[-2].say(list("abcdefghijklmnop"))
        world.loaded[-1].say(list("abcdefghijklmnop"))
        mine = await engine.chat.completions.create(messages=USER, model="fake-model", stream=True)
        other = asyncio.create_task(engine.chat.completions.create(messages=USER, model="other-model"))
        first = await mine.__anext__()
        mine.interrupt()
        rest = [c async for c in mine]
        engine.interruptGenerate("nope")  # a model with nothing running: no-op
        return [first, *rest], await other

    chunks, other = run(go())
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "abort"
    assert other.choices[0].message.content == "abcdefghijklmnop" and other.choices[0].finish_reason == "stop"


def test_sync_engine_has_the_same_endpoints(world):  # noqa: F811
    with webllm_py.MLCEngineSync("fake-model", app_config=world.config) as engine:
        text = engine.completions.create(prompt="Once", max_tokens=2)
        chunks = list(engine.completions.create(prompt="Once", stream=True))
        chat = engine.chat.completions.create(messages=USER, n=2, logprobs=True)
        engine.interruptGenerate("fake-model")
    assert validate(text).choices[0].text == "Hello there"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello there!"
    assert len(validate(chat).choices) == 2
