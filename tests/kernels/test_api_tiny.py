"""The desktop API (MLCEngine) over the real engine on a tiny random Llama: seeded sampling reproducible, logprobs
and n choices, multi-round KV reuse giving the same tokens as a fresh prefill. Responses validated by openai-python.
"""

from __future__ import annotations

import asyncio

import pytest

import webllm_py
from webllm_py.config import AppConfig, ModelRecord
from webllm_py.engine import SamplingParams

from ..unit.openai_check import validate
from .tiny_llama import build_tiny_llama

USER = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=3, tied=False))


def with_engine(tiny_path, gpu_device, body):
    async def resolve(record, app_config, progress):
        return tiny_path

    async def go():
        config = AppConfig(model_list=[ModelRecord("tiny", tiny_path, context_window_size=256)])
        engine = webllm_py.MLCEngine(app_config=config, device=gpu_device, resolve_model=resolve)
        await engine.reload("tiny")
        try:
            return await body(engine)
        finally:
            await engine.unload()

    return asyncio.run(go())


def test_seeded_sampling_logprobs_and_n(tiny_path, gpu_device):
    async def body(engine):
        create = engine.chat.completions.create
        knobs = dict(messages=USER, temperature=1.5, top_p=0.95, max_tokens=8, ignore_eos=True)
        a = await create(**knobs, seed=11, logprobs=True, top_logprobs=3)
        b = await create(**knobs, seed=11)
        others = [await create(**knobs, seed=s) for s in (1, 2, 3)]
        n1 = await create(**knobs, seed=5, n=3, frequency_penalty=1.0, top_k=20)
        n2 = await create(**knobs, seed=5, n=3, frequency_penalty=1.0, top_k=20)
        stream = await create(**knobs, seed=11, stream=True, logprobs=True, top_logprobs=3)
        chunks = [c async for c in stream]
        return a, b, others, n1, n2, chunks

    a, b, others, n1, n2, chunks = with_engine(tiny_path, gpu_device, body)
    for r in (a, b, *others, n1, n2, *chunks):
        validate(r)
    text = a.choices[0].message.content
    assert text == b.choices[0].message.content and a.usage.completion_tokens == 8
    assert any(o.choices[0].message.content != text for o in others)
    entries = a.choices[0].logprobs.content
    assert len(entries) == 8 and all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries)
    assert [c.message.content for c in n1.choices] == [c.message.content for c in n2.choices]
    assert len({c.message.content for c in n1.choices}) > 1  # each choice draws its own random stream
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    streamed = [
        e.to_dict()
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert streamed == [e.to_dict() for e in entries]


def test_multi_round_reuses_the_kv_cache_and_matches_a_fresh_prefill(tiny_path, gpu_device):
    async def body(engine):
        create = engine.chat.completions.create
        greedy = dict(temperature=0, max_tokens=6, ignore_eos=True)
        first = await create(messages=USER, **greedy)
        slot = engine._slots["tiny"]
        conversation_ids = list(
            slot.conversation_ids
        )  # the first prompt's ids + the reply's ids as generated
        follow = [*USER, {"role": "assistant", "content": first.choices[0].message.content}]
        follow.append({"role": "user", "content": "And then?"})
        reused = await create(messages=follow, **greedy)
        # The same prompt ids, prefilled from scratch by the engine itself.
        text = slot.engine.chat_template.render(follow, add_generation_prompt=True)
        prompt_ids = conversation_ids + slot.engine.tokenizer.encode(
            text[len(render_upto_reply(slot.engine, first)) :], add_bos=False
        )
        gen = slot.engine.generate(
            prompt_ids, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), reuse_kv=False
        )
        fresh_ids = [t async for t in gen]
        return first, reused, conversation_ids, prompt_ids, slot.engine.tokenizer.decode(fresh_ids)

    first, reused, conversation_ids, prompt_ids, fresh_text = with_engine(tiny_path, gpu_device, body)
    assert reused.choices[0].message.content == fresh_text
    # Only the new turn was prefilled, plus the reply's last token (no decode step had consumed it).
    assert reused.usage.prompt_tokens == len(prompt_ids) - len(conversation_ids) + 1


def render_upto_reply(engine, first) -> str:
    return engine.chat_template.render(USER, add_generation_prompt=True) + first.choices[0].message.content


def test_text_completion_on_the_gpu(tiny_path, gpu_device):
    async def body(engine):
        a = await engine.completions.create(prompt="Once upon a time", max_tokens=5, seed=3, temperature=1.0)
        b = await engine.completions.create(prompt="Once upon a time", max_tokens=5, seed=3, temperature=1.0)
        echo = await engine.completions.create(
            prompt="Once upon a time", max_tokens=5, temperature=0, echo=True
        )
        return a, b, echo

    a, b, echo = with_engine(tiny_path, gpu_device, body)
    validate(a)
    assert a.choices[0].text == b.choices[0].text and a.usage.completion_tokens == 5
    assert echo.choices[0].text.startswith("Once upon a time")
