"""Load-time GEMV tuning: every candidate shape is a correct kernel (so whichever wins, the answer is the same),
the winners are cached per adapter and model shape, and a second load takes them from the cache."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from webllm_py.engine import SamplingParams, load_engine
from webllm_py.kernels import tuning
from webllm_py.kernels.registry import GemvConfig, Tier
from webllm_py.model.quant import GGMLType

from .tiny_llama import build_tiny_llama


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tune") / "tiny.gguf", seed=7)


def _greedy(engine, prompt) -> list[int]:
    async def run():
        gen = engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
        return [t async for t in gen]

    return asyncio.run(run())


@pytest.mark.parametrize(
    "tier", [Tier(f16=False, subgroups=True), Tier(f16=True, subgroups=False)], ids=lambda t: t.name
)
def test_tuning_is_cached_and_keeps_the_answer(tiny_path, tmp_path, gpu_device, tier, monkeypatch):
    # Few candidates keep the measurement short on lavapipe; GEMV_SEG ones drop out where subgroups are off.
    monkeypatch.setattr(tuning, "MAX_REPS", 2)
    monkeypatch.setattr(tuning, "ROUNDS", 1)
    monkeypatch.setattr(
        tuning,
        "CANDIDATES",
        (GemvConfig("GEMV", 16), GemvConfig("GEMV_SEG", 32, 8), GemvConfig("GEMV_MR", 32, 8, 2)),
    )
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, 200, 40)]
    plain = asyncio.run(load_engine("tiny", str(tiny_path), device=gpu_device, tier=tier, tune=False))
    want = _greedy(plain, prompt)
    asyncio.run(plain.unload())

    cache = tmp_path / "tuning.json"
    msgs: list[str] = []
    tuned = asyncio.run(
        load_engine(
            "tiny",
            str(tiny_path),
            device=gpu_device,
            tier=tier,
            tune=True,
            tuning_cache=str(cache),
            progress=lambda p, text: msgs.append(text),
        )
    )
    assert set(tuned.kern.gemv_roles) == set(tuning.ROLES)
    if not tier.subgroups:
        assert all(c.variant != "GEMV_SEG" for c in tuned.kern.gemv_roles.values())
    assert set(tuned.load_stats["gemv_tuning"]["us_per_launch"]) == set(tuning.ROLES)
    assert any("measured" in m for m in msgs)
    assert _greedy(tuned, prompt) == want
    chosen = dict(tuned.kern.gemv_roles)
    asyncio.run(tuned.unload())

    saved = json.loads(cache.read_text())
    assert len(saved) == 1 and set(next(iter(saved.values()))) == set(tuning.ROLES)

    def no_measure(*a, **k):
        raise AssertionError("the second load measured again instead of reading the cache")

    monkeypatch.setattr(tuning, "measure", no_measure)
    msgs.clear()
    again = asyncio.run(
        load_engine(
            "tiny",
            str(tiny_path),
            device=gpu_device,
            tier=tier,
            tune=True,
            tuning_cache=str(cache),
            progress=lambda p, text: msgs.append(text),
        )
    )
    assert again.kern.gemv_roles == chosen
    assert any("(cached)" in m for m in msgs)
    assert _greedy(again, prompt) == want
    asyncio.run(again.unload())


def test_every_role_with_a_different_shape(tiny_path, gpu_device):
    """Mixed per-role shapes (as tuning may pick) give the same greedy tokens as one shape everywhere."""
    tier = Tier(f16=False, subgroups=True)
    prompt = [int(t) for t in np.random.default_rng(4).integers(3, 200, 30)]
    engine = asyncio.run(load_engine("tiny", str(tiny_path), device=gpu_device, tier=tier, tune=False))
    want = _greedy(engine, prompt)
    shapes = [
        GemvConfig("GEMV_MR", 32, 8, 2),
        GemvConfig("GEMV_SEG", 32, 8),
        GemvConfig("GEMV_MR", 64, 16, 4),
        GemvConfig("GEMV_SEG", 64, 4),
        GemvConfig("GEMV_MR", 128, 32, 4),
    ]
    engine.kern.gemv_roles = dict(zip(tuning.ROLES, shapes, strict=True))
    engine.graph.rebuild_decode()
    assert _greedy(engine, prompt) == want
    asyncio.run(engine.unload())


def test_pick_prefers_the_first_of_near_ties():
    """Shapes within TIE of the fastest are equal: the earliest in the preference order wins, so run-to-run noise
    does not flip the choice; a clearly faster shape still wins."""
    a, b, c = GemvConfig("GEMV_MR", 128, 32, 4), GemvConfig("GEMV_MR", 256, 32, 4), GemvConfig("GEMV", 64)
    order = (a, b, c)
    assert tuning.pick({a: 1.02, b: 1.0, c: 1.5}, order) == a
    assert tuning.pick({a: 1.2, b: 1.0, c: 1.01}, order) == b
    assert tuning.pick({b: 1.0, c: 0.5}, order) == c


def _q4_engine(tmp_path, gpu_device):
    """A tiny Q4_0 model loaded untuned in the f32-subgroups tier, for measure() with a fake GPU timer."""
    path = build_tiny_llama(tmp_path / "q4.gguf", seed=3, weight_type=GGMLType.Q4_0)
    return asyncio.run(load_engine("tiny", str(path), device=gpu_device, tier=Tier(False, True), tune=False))


def test_timing_by_gpu_timestamps_counts_products_not_dispatches(tmp_path, gpu_device, monkeypatch):
    """Tuning times each candidate by the host's GPU timestamps (pass_seconds) when it has them, per product: a
    GEMV_MRQ candidate is two launches a layer (quantize_x, then the product), so a timer that charges every launch
    alike makes it twice a GEMV_MR's time, and GEMV_MR wins. Without timestamps (the browser) the clock decides."""
    engine = _q4_engine(tmp_path, gpu_device)
    mr, mrq = GemvConfig("GEMV_MR", 32, 8, 2), GemvConfig("GEMV_MRQ", 32, 8, 2)
    monkeypatch.setattr(tuning, "MAX_REPS", 2)
    monkeypatch.setattr(tuning, "ROUNDS", 1)
    passes: list[int] = []

    def pass_seconds(dispatches):
        passes.append(len(dispatches))
        return 1e-6 * len(dispatches)

    monkeypatch.setattr(engine.device, "pass_seconds", pass_seconds, raising=False)
    chosen, report = asyncio.run(tuning.measure(engine.graph, (mrq, mr)))
    assert passes, "the GPU timer was not used"
    assert all(c == mr for c in chosen.values())
    for role in ("qkv", "o", "ffn1", "ffn2"):  # 1 us a launch: GEMV_MR one launch a product, GEMV_MRQ two
        assert report[role][mr.label()] == pytest.approx(1.0) and report[role][mrq.label()] == pytest.approx(
            2.0
        )
    monkeypatch.setattr(engine.device, "pass_seconds", lambda dispatches: None, raising=False)
    passes.clear()
    chosen, report = asyncio.run(tuning.measure(engine.graph, (mrq, mr)))
    assert not passes and set(chosen) == set(tuning.ROLES)
    asyncio.run(engine.unload())


def test_near_equal_shapes_are_timed_again_interleaved(tmp_path, gpu_device, monkeypatch):
    """A drift during the sweep (here: the first shape timed while the clock was still 8 % slow) does not decide
    between near-equal shapes: those within FINALISTS of the fastest are timed again in interleaved rounds, where two
    equally fast shapes tie and the first in the preference order wins. Without the second rounds the later shape
    would win by the drift alone (8 % > TIE)."""
    engine = _q4_engine(tmp_path, gpu_device)
    a, b = GemvConfig("GEMV_MR", 32, 8, 2), GemvConfig("GEMV_MR", 64, 8, 2)
    monkeypatch.setattr(tuning, "MAX_REPS", 1)
    monkeypatch.setattr(tuning, "ROUNDS", 2)
    monkeypatch.setattr(tuning, "WARMUP_S", 0.0)
    calls: list[int] = []

    def pass_seconds(dispatches):
        calls.append(len(dispatches))
        slow = 1.08 if len(calls) <= 3 else 1.0  # a's first timing and its two rounds, before the clock is up
        return 1e-6 * len(dispatches) * slow

    monkeypatch.setattr(engine.device, "pass_seconds", pass_seconds, raising=False)
    chosen, report = asyncio.run(tuning.measure(engine.graph, (a, b)))
    assert all(c == a for c in chosen.values()), chosen
    assert report["qkv"][a.label()] == pytest.approx(report["qkv"][b.label()])
    # the same drift without the second rounds: b wins the first pass by 8 %
    first_pass = {a: 1.08, b: 1.0}
    assert tuning.pick(first_pass, (a, b)) == b
    asyncio.run(engine.unload())
