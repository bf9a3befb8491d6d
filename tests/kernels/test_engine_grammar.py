"""Constrained decoding in the engine's split decode loop (forward and sample submissions, a mask per step) on a
tiny random Llama: greedy under a grammar equals the numpy reference's argmax over the allowed ids at every step,
the reply ends where the grammar is complete, lazy matchers run unmasked until their trigger, and the KV cache
holds what the submitted steps consumed (a follow-up request reusing it matches a fresh prefill)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from webllm_py.engine import SamplingParams, load_engine
from webllm_py.grammar import Grammar, Matcher
from webllm_py.kernels.registry import Tier

from . import test_engine_sampling as sampling_tests

tiny = sampling_tests.tiny  # the random tiny Llama and its numpy reference (a module-scoped fixture)
run = sampling_tests.run

PROMPT = [5, 17, 42, 99, 7, 3, 250, 11]
SCHEMA = {
    "type": "object",
    "properties": {
        "a": {"type": "integer"},
        "b": {"enum": ["x", "yz"]},
        "c": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["a", "b", "c"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(tiny, gpu_device):
    eng = asyncio.run(
        load_engine(
            "tiny", str(tiny[0]), device=gpu_device, tier=Tier(f16=False, subgroups=False),
            context_window_size=160, tune=False,
        )
    )  # fmt: skip
    yield eng
    asyncio.run(eng.unload())


def test_greedy_under_a_schema_is_the_reference_argmax_over_allowed_ids(engine, tiny):
    _, ref = tiny
    grammar = Grammar.json_schema(SCHEMA)
    matcher = Matcher(grammar, engine.token_index)
    out, gen = run(engine, PROMPT, SamplingParams(temperature=0.0, max_tokens=60), matcher=matcher)
    text = engine.tokenizer.decode(out)
    value = json.loads(text)
    assert set(value) == {"a", "b", "c"} and gen.finish_reason == "stop"
    # The same steps on the reference: at each one the argmax of the logits among the ids the grammar allowed.
    check = Matcher(grammar, engine.token_index)
    context = list(PROMPT)
    for tok in out:
        allowed = np.array([check.is_allowed(i) for i in range(engine.config.vocab_size)])
        logits = np.where(allowed, ref.logits(context), -np.inf)
        assert tok == int(np.argmax(logits)), (engine.tokenizer.decode(context[len(PROMPT) :]), tok)
        assert check.accept(tok)
        context.append(tok)
    assert check.is_done()  # the reply ended where nothing but a stop token could follow
    stats = gen.stats
    assert stats.grammar_init_s is not None and stats.grammar_s > 0 and stats.completion_tokens == len(out)
    # The cache holds what the submitted steps consumed; reusing it gives what a fresh prefill gives.
    assert engine.kv_ids == PROMPT + out[:-1]
    follow = PROMPT + out + [9]
    greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    again, g2 = run(engine, follow, greedy)
    assert g2.reused == len(PROMPT) + len(out) - 1
    assert again == run(engine, follow, greedy, reuse_kv=False)[0]


def test_sampling_under_a_schema_always_validates_and_is_seeded(engine):
    grammar = Grammar.json_schema(SCHEMA)
    texts = []
    for seed in range(6):
        params = SamplingParams(temperature=1.0, seed=seed, max_tokens=80)
        out, gen = run(engine, PROMPT, params, matcher=Matcher(grammar, engine.token_index))
        value = json.loads(engine.tokenizer.decode(out))
        assert isinstance(value["a"], int) and value["b"] in ("x", "yz") and len(value["c"]) <= 2
        texts.append(engine.tokenizer.decode(out))
    again, _ = run(
        engine, PROMPT, SamplingParams(temperature=1.0, seed=0, max_tokens=80),
        matcher=Matcher(grammar, engine.token_index),
    )  # fmt: skip
    assert engine.tokenizer.decode(again) == texts[0] and len(set(texts)) > 1


def test_lazy_matcher_runs_free_until_its_trigger(engine):
    """Unarmed, the sampler is unmasked (the reply equals the free one up to the trigger); from the trigger on the
    grammar holds: here the free reply's third token is made the trigger, and the grammar then forces digits."""
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    free, _ = run(engine, PROMPT, greedy)
    trigger = free[2]
    grammar = Grammar.regex("[0-9]{3}")
    m = Matcher(Grammar.regex("[0-9]{3}"), engine.token_index, trigger_ids=[trigger])
    out, gen = run(engine, PROMPT, greedy, matcher=m)
    assert out[:3] == free[:3]
    tail = engine.tokenizer.decode(out[3:])
    assert grammar.matches(tail) and gen.finish_reason == "stop"


# ---- through the API (MLCEngine) ------------------------------------------------------------------------------------

NESTED = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "item": {"$ref": "#/$defs/item"},
        "tags": {"type": "array", "items": {"enum": ["a", "bb"]}, "maxItems": 3},
        "extra": {"anyOf": [{"type": "null"}, {"type": "boolean"}, {"$ref": "#/$defs/item"}]},
    },
    "required": ["id", "item", "tags", "extra"],
    "$defs": {
        "item": {
            "type": "object",
            "properties": {"k": {"type": "string", "maxLength": 4}, "n": {"type": "number"}},
            "required": ["k"],
        }
    },
}
FORMATS = {
    "json_object": {"type": "json_object"},
    "json_schema": {"type": "json_schema", "json_schema": {"name": "nested", "schema": NESTED}},
    "webllm_schema": {"type": "json_object", "schema": json.dumps(NESTED)},
    "grammar": {"type": "grammar", "grammar": 'root ::= "(" num ("+" num)* ")"\nnum ::= [1-9] [0-9]{0,2}'},
}


def test_api_matrix_on_the_tiny_model(tiny, gpu_device):
    """Every response format, greedy and sampled, through MLCEngine: the replies parse and validate."""
    import jsonschema

    from webllm_py import AppConfig, MLCEngine, ModelRecord

    async def resolve(record, app_config, progress):
        return str(tiny[0])

    async def go():
        config = AppConfig(model_list=[ModelRecord("tiny", str(tiny[0]), context_window_size=320)])
        engine = MLCEngine(app_config=config, device=gpu_device, resolve_model=resolve)
        await engine.reload("tiny")
        out = []
        try:
            for name, rf in FORMATS.items():
                for knobs in ({"temperature": 0}, {"temperature": 1.0, "seed": 5}):
                    reply = await engine.chat.completions.create(
                        messages=[{"role": "user", "content": "go"}],
                        response_format=rf,
                        max_tokens=220,
                        **knobs,
                    )
                    out.append((name, knobs, reply))
            text = await engine.completions.create(
                prompt="x", response_format=FORMATS["grammar"], max_tokens=40, temperature=1.0, seed=2
            )
            out.append(("text_completion", {}, text))
        finally:
            await engine.unload()
        return out

    import re

    for name, knobs, reply in asyncio.run(go()):
        c = reply.choices[0]
        text = c.message.content if name != "text_completion" else c.text
        assert c.finish_reason == "stop", (name, knobs, text)
        if name in ("grammar", "text_completion"):
            assert re.fullmatch(r"\([1-9][0-9]{0,2}(\+[1-9][0-9]{0,2})*\)", text), text
        elif name == "json_object":
            assert isinstance(json.loads(text), dict)
        else:
            jsonschema.validate(json.loads(text), NESTED)
        assert reply.usage.extra["grammar_per_token_s"] > 0
