"""The engine's decode loop with the GPU sampler on a tiny random Llama: seeds, logprobs, logit bias, penalties and
KV-cache reuse across requests, against the numpy reference forward pass."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from webllm_py import errors
from webllm_py.engine import SamplingParams, load_engine
from webllm_py.model.gguf import GGUFFile

from ..e2e.reference import ReferenceModel
from .tiny_llama import build_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=3, tied=False)
    with GGUFFile.open(path) as g:
        yield path, ReferenceModel(g)


@pytest.fixture
def engine(tiny, kern):
    path, _ = tiny
    eng = asyncio.run(
        load_engine(
            "tiny", str(path), device=kern.device, tier=kern.tier, context_window_size=128, tune=False
        )
    )
    yield eng
    asyncio.run(eng.unload())


def run(engine, prompt, params, **kw):
    gen = engine.generate(prompt, params, **kw)

    async def go():
        return [t async for t in gen]

    return asyncio.run(go()), gen


PROMPT = [5, 17, 42, 99, 7, 3, 250, 11]


def test_seed_reproducible_and_logprobs_are_the_sampled_distribution(engine, tiny, kern):
    _, ref = tiny
    params = SamplingParams(
        temperature=1.3, top_p=1.0, seed=1234, max_tokens=6, ignore_eos=True, logprobs=True, top_logprobs=5
    )
    a, gen_a = run(engine, PROMPT, params)
    b, _ = run(engine, PROMPT, params, reuse_kv=False)
    assert a == b and len(a) == 6
    other = [run(engine, PROMPT, SamplingParams(**{**params.__dict__, "seed": s}))[0] for s in (1, 2, 3)]
    assert any(o != a for o in other), "the seed does not change the random stream"
    # Logprobs: log-softmax of the reference logits at temperature 1.3 (no top-k/top-p: the full distribution).
    rel = 2e-2 if kern.tier.f16 else 1e-3
    context = list(PROMPT)
    for tok, (rec_tok, logprob, top) in zip(a, gen_a.logprobs, strict=True):
        z = ref.logits(context) / 1.3
        want = z - z.max() - np.log(np.exp(z - z.max()).sum())
        assert rec_tok == tok
        assert abs(logprob - want[tok]) <= rel * max(1.0, abs(want[tok]))
        assert [i for i, _ in top] == [int(i) for i in np.argsort(-want, kind="stable")[:5]] or np.allclose(
            [lp for _, lp in top], np.sort(want)[::-1][:5], atol=rel
        )
        assert len(top) == 5 and all(top[j][1] >= top[j + 1][1] for j in range(4))
        context.append(tok)


def test_logprobs_off_reads_nothing_extra(engine):
    toks, gen = run(engine, PROMPT, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    assert gen.logprobs == [] and len(toks) == 3
    # The feature costs no dispatch: embed + 4 per layer (QKV fused into attention) + LM head + sampler.
    per_layer = 4 if engine.graph.fuses_attention else 5
    assert engine.dispatches_per_decode_step == per_layer * engine.config.n_layers + 3


def test_logit_bias_forces_a_token(engine):
    toks, _ = run(
        engine,
        PROMPT,
        SamplingParams(temperature=1.0, seed=5, max_tokens=5, ignore_eos=True, logit_bias=((77, 100.0),)),
    )
    assert toks == [77] * 5


def test_presence_penalty_changes_greedy_repetition(engine):
    plain, _ = run(
        engine,
        PROMPT,
        SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logit_bias=((77, 30.0),)),
    )
    assert plain == [77] * 8  # the bias alone makes greedy repeat 77
    pen, _ = run(
        engine,
        PROMPT,
        SamplingParams(
            temperature=0.0,
            max_tokens=8,
            ignore_eos=True,
            logit_bias=((77, 30.0),),
            presence_penalty=2.0,
            frequency_penalty=2.0,
            repetition_penalty=100.0,
        ),
    )
    assert pen[0] == 77 and pen[1] != 77  # counted from this request's own tokens only


def test_kv_reuse_prefills_only_the_new_part(engine):
    greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    first, gen1 = run(engine, PROMPT, greedy)
    assert gen1.reused == 0 and gen1.stats.prompt_tokens == len(PROMPT)
    # The cache now holds the prompt and the generated ids the steps consumed (all but the last).
    assert engine.kv_ids == PROMPT + first[:-1]
    follow = PROMPT + first + [9, 8, 7]
    again, gen2 = run(engine, follow, greedy)
    assert gen2.reused == len(PROMPT) + 3 and gen2.stats.prompt_tokens == 4
    fresh, gen3 = run(engine, follow, greedy, reuse_kv=False)
    assert gen3.reused == 0 and again == fresh
    # A changed earlier token: only the common prefix is kept.
    changed = [5, 18] + follow[2:]
    _, gen4 = run(engine, changed, greedy)
    assert gen4.reused == 1
    # The same prompt again: everything but its last token is reused.
    _, gen5 = run(engine, changed, greedy)
    assert gen5.reused == len(changed) - 1 and gen5.stats.prompt_tokens == 1


def test_engine_errors_name_the_field(engine):
    with pytest.raises(errors.InvalidRangeError) as info:
        engine.generate([], SamplingParams())
    assert info.value.field == "prompt"
    with pytest.raises(errors.InvalidRangeError) as info:
        engine.generate([1, engine.config.vocab_size], SamplingParams())
    assert info.value.field == "prompt[1]" and f"[0, {engine.config.vocab_size})" in str(info.value)
    gen = engine.generate(PROMPT, SamplingParams(max_tokens=2))
    with pytest.raises(errors.EngineBusyError):
        engine.generate(PROMPT, SamplingParams())
    asyncio.run(gen.aclose())
    # Nothing was lost: the engine still generates.
    assert len(run(engine, PROMPT, SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))[0]) == 2


def test_stop_token_drops_the_step_encoded_ahead(engine):
    """The decode loop encodes step i + 2 before it waits for token i; a stop token leaves that step unsubmitted:
    the reply ends at the stop token, the cache's ids are what submitted steps consumed, and the next request
    reusing them matches a fresh run."""
    greedy = SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True)
    free, _ = run(engine, PROMPT, greedy, reuse_kv=False)
    stop_at = free[2]
    stopped, gen = run(
        engine, PROMPT, SamplingParams(temperature=0.0, max_tokens=7, stop_token_ids=frozenset({stop_at}))
    )
    assert stopped == free[: free.index(stop_at) + 1] and gen.finish_reason == "stop"
    assert engine.kv_ids == PROMPT + stopped
    follow = PROMPT + stopped + [9, 8]
    again, gen2 = run(engine, follow, greedy)
    assert gen2.reused == len(PROMPT) + len(stopped)
    assert again == run(engine, follow, greedy, reuse_kv=False)[0]


def test_an_encoded_step_is_submitted_once(engine):
    dev, graph = engine.device, engine.graph
    encoded = dev.encode(graph.decode_dispatches, [(graph.tokens, 0, engine.ring[0], 0, 4)])
    dev.submit_encoded(encoded)
    with pytest.raises(RuntimeError, match="already submitted"):
        dev.submit_encoded(encoded)
    asyncio.run(dev.read_buffer(engine.ring[0], 0, 4))  # the one submission landed
    # Nothing was lost: the engine still generates.
    assert len(run(engine, PROMPT, SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))[0]) == 2
