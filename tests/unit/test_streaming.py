"""streaming.py with a fake engine and tokenizer: stop strings (also split across tokens), multi-byte characters
split across tokens, finish reasons, usage, and that the generation is always closed."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.unit._fake_engine import FakeEngine, make_params
from webllm_py.streaming import (
    StopStringFilter,
    StreamState,
    chat_completion_chunks,
    collect_chat_completion,
    logprob_entries,
    text_deltas,
)


def run(coro):
    return asyncio.run(coro)


def start(engine: FakeEngine, pieces, *, end=True, **params):
    engine.say(pieces, end=end)
    return engine.generate([0, 5, 6], make_params(**params))


async def deltas(engine, pieces, stops=(), *, end=True, **params):
    generation = start(engine, pieces, end=end, **params)
    state = StreamState()
    decoder, end_ids = engine.tokenizer.stream_decoder(), engine.tokenizer.eot_ids
    out = [t async for t in text_deltas(generation, decoder, stops, end_ids=end_ids, state=state)]
    return out, state, generation


# ---- StopStringFilter ------------------------------------------------------------------------------------------


def test_filter_passes_text_without_stops():
    f = StopStringFilter([])
    assert f.push("abc") == "abc" and not f.stopped


def test_filter_holds_possible_prefix_then_releases():
    f = StopStringFilter(["</end>"])
    assert f.push("hello <") == "hello "
    assert f.push("/e") == ""
    assert f.push("x") == "</ex"  # not a stop after all: everything held comes out
    assert f.push(" </en") == " "
    assert f.flush() == "</en"  # generation ended: the held tail was real text
    assert not f.stopped


def test_filter_cuts_before_stop_and_swallows_the_rest():
    f = StopStringFilter(["STOP"])
    assert f.push("abcST") == "abc"
    assert f.push("OPxyz") == ""
    assert f.stopped
    assert f.push("more") == "" and f.flush() == ""


def test_filter_earliest_of_several_stops_wins():
    f = StopStringFilter(["world", "lo w"])
    assert f.push("hello world") == "hel"


def test_filter_overlapping_prefixes():
    # "aab" inside "aaab": a naive "reset on mismatch" matcher misses it.
    f = StopStringFilter(["aab"])
    out = "".join(f.push(c) for c in "xaaab!")
    assert out == "xa" and f.stopped


@pytest.mark.parametrize("seed", range(30))
def test_filter_matches_reference_for_random_splits(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice("ab<>/") for _ in range(40))
    stops = ["".join(rng.choice("ab<>/") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
    cuts = sorted(rng.sample(range(1, len(text)), 8))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    f = StopStringFilter(stops)
    emitted = []
    for p in pieces:
        out = f.push(p)
        emitted.append(out)
        if f.stopped:
            break
    if not f.stopped:
        emitted.append(f.flush())
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[: min(hits)] if hits else text
    assert "".join(emitted) == expected
    assert f.stopped == bool(hits)


# ---- text_deltas -------------------------------------------------------------------------------------------------


def test_plain_reply_finishes_with_engine_stop():
    engine = FakeEngine()
    out, state, generation = run(deltas(engine, ["Hel", "lo", "!"]))
    assert out == ["Hel", "lo", "!"] and state.text == "Hello!"
    assert state.finish_reason == "stop" and generation.aclose_calls >= 1


def test_stop_string_split_across_tokens_truncates_and_closes_generation():
    engine = FakeEngine()
    out, state, generation = run(deltas(engine, ["Sure", ". EN", "D and more", " text"], ["END"], end=False))
    assert "".join(out) == "Sure. " and state.text == "Sure. "
    assert state.finish_reason == "stop"  # our stop; the engine itself would have said "abort"
    assert generation.finish_reason == "abort" and generation.aclose_calls >= 1
    assert len(generation.yielded) == 3  # no token pulled after the stop string completed


def test_text_that_only_looked_like_a_stop_is_released_in_order():
    engine = FakeEngine()
    out, state, _ = run(deltas(engine, ["a <", "|im", "_x", "|> b"], ["<|im_end|>"]))
    assert out == ["a ", "<|im_x", "|> b"] and state.finish_reason == "stop"


def test_held_tail_is_released_at_the_end():
    engine = FakeEngine()
    out, state, _ = run(deltas(engine, ["answer <|im"], ["<|im_end|>"]))
    assert out == ["answer ", "<|im"] and state.text == "answer <|im"


def test_multibyte_characters_split_across_tokens():
    engine = FakeEngine()
    smile = "😀".encode()  # 4 bytes
    e_acute = "é".encode()  # 2 bytes
    pieces = [b"caf", e_acute[:1], e_acute[1:] + b" ", smile[:1], smile[1:3], smile[3:], b"!"]
    out, state, _ = run(deltas(engine, pieces))
    assert state.text == "café 😀!"
    assert all("\ufffd" not in t for t in out)
    assert out == ["caf", "é ", "😀", "!"]  # tokens completing no character produce no delta


def test_stop_string_made_of_multibyte_characters():
    engine = FakeEngine()
    stop = "→→"
    arrow = "→".encode()
    out, state, _ = run(
        deltas(engine, [b"x", arrow[:2], arrow[2:] + arrow[:1], arrow[1:], b"y"], [stop], end=False)
    )
    assert state.text == "x" and state.finish_reason == "stop"


def test_max_tokens_gives_length():
    engine = FakeEngine()
    out, state, generation = run(deltas(engine, ["a", "b", "c", "d"], max_tokens=2))
    assert "".join(out) == "ab" and state.finish_reason == "length" and generation.aclose_calls >= 1


def test_incomplete_character_at_the_end_is_flushed():
    engine = FakeEngine()
    out, state, _ = run(deltas(engine, [b"ok", "😀".encode()[:2]], max_tokens=2))
    assert state.text == "ok\ufffd" and state.finish_reason == "length"


def test_engine_interrupt_gives_abort():
    engine = FakeEngine()
    generation = start(engine, ["a", "b", "c", "d"])
    state = StreamState()

    async def go():
        seen = []
        async for t in text_deltas(generation, engine.tokenizer.stream_decoder(), (), state=state):
            seen.append(t)
            if len(seen) == 2:
                generation.interrupt()
        return seen

    assert run(go()) == ["a", "b"]
    assert state.finish_reason == "abort" and generation.finish_reason == "abort"


def test_end_ids_are_not_rendered():
    """The engine yields the id it stops on; its text must not reach the reply even when no stop string names it
    (a model ending with <|endoftext|> under a ChatML template, whose stop string is <|im_end|>)."""
    engine = FakeEngine()
    endoftext = engine.tokenizer.ids(["<|endoftext|>"])[0]
    engine.tokenizer.eot_ids = frozenset({1, endoftext})
    engine.script = engine.tokenizer.ids(["Hi", "!"]) + [endoftext]

    async def go(end_ids):
        generation = engine.generate([0], make_params())
        state = StreamState()
        decoder = engine.tokenizer.stream_decoder()
        out = [
            t async for t in text_deltas(generation, decoder, ["<|im_end|>"], end_ids=end_ids, state=state)
        ]
        return "".join(out), state.finish_reason, generation

    text, finish, generation = run(go(engine.tokenizer.eot_ids))
    assert text == "Hi!" and finish == "stop" and generation.yielded[-1] == endoftext
    text, _, _ = run(go(frozenset()))
    assert text == "Hi!<|endoftext|>"  # what happens without end_ids: the reason they exist


def test_early_consumer_exit_closes_generation():
    engine = FakeEngine()
    generation = start(engine, ["a", "b", "c", "d"])

    async def go():
        stream = text_deltas(generation, engine.tokenizer.stream_decoder(), ())
        async for _ in stream:
            break
        await stream.aclose()

    run(go())
    assert generation.aclose_calls == 1 and generation.finish_reason == "abort"
    assert not engine.busy


def test_engine_error_propagates_and_closes_generation():
    class Boom(Exception):
        pass

    class FailingGeneration:
        finish_reason = None
        aclose_calls = 0

        def __aiter__(self):
            return self

        async def __anext__(self):
            raise Boom

        async def aclose(self):
            self.aclose_calls += 1

    generation = FailingGeneration()

    async def go():
        return [t async for t in text_deltas(generation, FakeEngine().tokenizer.stream_decoder(), ())]

    with pytest.raises(Boom):
        run(go())
    assert generation.aclose_calls == 1


# ---- chunks ------------------------------------------------------------------------------------------------------


async def chunks_of(engine, pieces, stops=(), *, include_usage=False, end=True, **params):
    generation = start(engine, pieces, end=end, **params)
    out = [
        c
        async for c in chat_completion_chunks(
            generation,
            engine.tokenizer.stream_decoder(),
            model="fake",
            stop_strings=stops,
            end_ids=engine.tokenizer.eot_ids,
            include_usage=include_usage,
        )
    ]
    return out, generation


async def logprob_chunks(pieces, stops, *, end=True) -> list[list[str]]:
    """The tokens whose logprobs entries each chunk carries (logprobs=True), chunk by chunk, and the stream's
    collected reply."""
    engine = FakeEngine()
    generation = start(engine, pieces, end=end, logprobs=True)
    chunks = chat_completion_chunks(
        generation,
        engine.tokenizer.stream_decoder(),
        model="fake",
        stop_strings=stops,
        end_ids=engine.tokenizer.eot_ids,
        logprob_entry=logprob_entries(engine.tokenizer.token_bytes),
    )
    out = [c async for c in chunks]
    return [[e.token for e in c.choices[0].logprobs.content] for c in out], out


def _texts(chunks) -> list[str | None]:
    return [c.choices[0].delta.content for c in chunks]


def test_tokens_cut_by_a_stop_string_have_no_logprobs_entry():
    # " wor" shows its space, so it keeps its entry; "ld!" completes "world", none of its text is in the reply
    per_chunk, chunks = run(logprob_chunks(["Hello", " wor", "ld!", " more"], ["world"]))
    assert _texts(chunks) == ["Hello", " ", None] and chunks[-1].choices[0].finish_reason == "stop"
    assert per_chunk == [["Hello"], [" wor"], []]
    per_chunk, _ = run(logprob_chunks(["Hi", "!"], ["!"]))
    assert per_chunk == [["Hi"], []]


def test_a_held_tokens_entry_goes_with_the_chunk_that_shows_its_text():
    per_chunk, chunks = run(logprob_chunks(["a", "wo", "x"], ["world"]))
    assert _texts(chunks) == ["a", "wox", None] and per_chunk == [["a"], ["wo", "x"], []]
    # held to the end, then let out by the flush: its entry comes with that text
    per_chunk, chunks = run(logprob_chunks(["a", "wo"], ["world"], end=False))
    assert _texts(chunks) == ["a", "wo", None] and per_chunk == [["a"], ["wo"], []]


def test_an_entry_is_not_sent_before_its_text_is_known_to_be_in_the_reply():
    # "Z" is held as the start of "ZW" while the "X" before it is let out; "W" then completes "ZW": "Z" had no
    # text in the reply, so its entry must not have gone out with the "X" chunk.
    per_chunk, chunks = run(logprob_chunks(["X", "Z", "W"], ["XY", "ZW"]))
    assert _texts(chunks) == ["X", None] and per_chunk == [["X"], []]


def test_collected_reply_drops_the_same_entries():
    async def go():
        engine = FakeEngine()
        generation = start(engine, ["Hello", " wor", "ld!"], logprobs=True)
        chunks = chat_completion_chunks(
            generation,
            engine.tokenizer.stream_decoder(),
            model="fake",
            stop_strings=["world"],
            end_ids=engine.tokenizer.eot_ids,
            logprob_entry=logprob_entries(engine.tokenizer.token_bytes),
        )
        return await collect_chat_completion(chunks)

    reply = run(go())
    assert reply.choices[0].message.content == "Hello "
    assert [e.token for e in reply.choices[0].logprobs.content] == ["Hello", " wor"]


def test_chunk_sequence_role_first_final_then_usage():
    engine = FakeEngine()
    chunks, generation = run(chunks_of(engine, ["Hi", " there"], include_usage=True))
    assert [c.choices[0].delta.content for c in chunks[:2]] == ["Hi", " there"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].delta.role is None
    final = chunks[2]
    assert final.choices[0].delta.to_dict() == {} and final.choices[0].finish_reason == "stop"
    usage_chunk = chunks[3]
    assert usage_chunk.choices == [] and len(chunks) == 4
    # the end-of-turn id counts as generated, as the engine counts it
    assert usage_chunk.usage.prompt_tokens == 3 and usage_chunk.usage.completion_tokens == 3
    assert usage_chunk.usage.total_tokens == 6
    assert set(usage_chunk.usage.extra) == {
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "time_to_first_token_s",
        "time_per_output_token_s",
        "e2e_latency_s",
    }
    assert usage_chunk.usage.extra["prefill_tokens_per_s"] == 6.0  # 3 tokens / 0.5 s in the fake
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1 and all(c.model == "fake" for c in chunks)
    assert all(c.usage is None for c in chunks[:3])


def test_chunks_validate_with_openai():
    openai_chat = pytest.importorskip("openai.types.chat")
    engine = FakeEngine()
    chunks, _ = run(chunks_of(engine, ["a", "b", "c"], include_usage=True, max_tokens=2))
    assert chunks[-2].choices[0].finish_reason == "length"
    for c in chunks:
        openai_chat.ChatCompletionChunk.model_validate(c.to_dict())


def test_no_text_at_all_still_names_the_role():
    engine = FakeEngine()
    chunks, _ = run(chunks_of(engine, []))
    assert len(chunks) == 1
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].finish_reason == "stop"


def test_no_usage_chunk_unless_asked():
    engine = FakeEngine()
    chunks, _ = run(chunks_of(engine, ["x"]))
    assert all(c.choices for c in chunks)


def test_consumer_break_closes_generation():
    engine = FakeEngine()
    generation = start(engine, ["a", "b", "c", "d", "e"])

    async def go():
        stream = chat_completion_chunks(generation, engine.tokenizer.stream_decoder(), model="m")
        got = 0
        async for _ in stream:
            got += 1
            if got == 2:
                break
        await stream.aclose()

    run(go())
    assert generation.aclose_calls == 1 and generation.finish_reason == "abort" and not engine.busy


def test_non_streaming_is_the_collected_stream():
    openai_chat = pytest.importorskip("openai.types.chat")
    engine = FakeEngine()

    async def go():
        generation = start(engine, ["Hel", "lo", " wor", "ld<|im", "_end|>junk"], end=False)
        chunks = chat_completion_chunks(
            generation,
            engine.tokenizer.stream_decoder(),
            model="m",
            stop_strings=["<|im_end|>"],
            include_usage=True,
        )
        return await collect_chat_completion(chunks)

    completion = run(go())
    assert completion.choices[0].message.content == "Hello world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 5 and completion.usage.prompt_tokens == 3
    assert completion.id.startswith("chatcmpl-") and completion.model == "m"
    openai_chat.ChatCompletion.model_validate(completion.to_dict())
