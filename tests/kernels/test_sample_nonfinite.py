"""The sampler (sample.wgsl) on logits that are not numbers, the rule in common.wgsl's finite_logit: NaN ranks below
every number, +-inf are the largest / lowest finite floats. Whatever the logits hold, greedy, top-k / top-p,
penalties, logit bias and logprobs return an id below the vocabulary and finite log-probabilities (a corrupt model
used to make the sampler return id == vocab, one past the end). Also the LM head's argmax partials with NaN."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from webllm_py.kernels import ops

from .conftest import download, zeros
from .reference_sampler import LOGPROB_FLOOR, reference_sample
from .test_sample import GPUSampler

MAX_F32 = float(np.finfo(np.float32).max)
VOCAB = 1001  # not a multiple of 4: the padded tail of the last vec4 must not be chosen either


def by_the_rule(logits: np.ndarray) -> np.ndarray:
    """What the kernel reads: NaN -> the lowest finite float, +-inf -> the largest / lowest."""
    return np.where(np.isnan(logits), -MAX_F32, np.clip(logits, -MAX_F32, MAX_F32)).astype(np.float64)


def corrupt_logits(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(VOCAB) * 3).astype(np.float32)
    logits[rng.choice(VOCAB, 200, replace=False)] = np.nan
    logits[rng.choice(VOCAB, 50, replace=False)] = -np.inf
    return logits


@pytest.fixture
def g(kern):
    return GPUSampler(kern, VOCAB)


def test_all_nan_logits_give_a_real_id_for_every_knob(g):
    logits = np.full(VOCAB, np.nan, np.float32)
    assert g.run(logits) == 0  # greedy: every logit ties at the lowest value, the lowest id wins
    drawn = {g.run(logits, temperature=1.0, seed=s) for s in range(24)}
    assert all(0 <= t < VOCAB for t in drawn) and len(drawn) > 12  # uniform over the vocabulary
    for knobs in (
        {"temperature": 0.7, "top_k": 5, "top_p": 0.5},
        {"temperature": 1e-30},  # 1 / T overflows: the kernel caps it
        {"presence_penalty": 2.0, "frequency_penalty": -2.0, "repetition_penalty": 1e30},
        {"logit_bias": [(5, 100.0), (VOCAB - 1, -100.0)]},
    ):
        counts = np.zeros(VOCAB, np.uint32)
        counts[[0, 5, 17]] = 3
        token = g.run(logits, counts=counts, logprobs=True, top_logprobs=5, **knobs)
        got, logprob, top = g.record(5)
        assert 0 <= token < VOCAB and got == token, knobs
        assert all(0 <= i < VOCAB for i, _ in top), (knobs, top)
        assert all(math.isfinite(v) and v >= LOGPROB_FLOOR for v in [logprob, *(lp for _, lp in top)]), knobs


def test_logits_far_below_zero_still_sample(g):
    """Every logit below -87: the padded lanes past the vocabulary (zeros) weigh exp(+huge) = inf; they were
    multiplied by a 0 mask (NaN), which broke sampling and logprobs for such logits even without NaN in them."""
    logits = np.full(VOCAB, -1e10, np.float32)
    drawn = {g.run(logits, temperature=1.0, seed=s) for s in range(24)}
    assert len(drawn) > 12 and max(drawn) < VOCAB
    g.run(logits, temperature=1.0, logprobs=True, top_logprobs=2)
    _, logprob, _ = g.record(2)
    assert logprob == pytest.approx(-math.log(VOCAB), abs=1e-4)


def test_nan_ranks_below_numbers_and_inf_above(g):
    logits = corrupt_logits(1)
    finite = np.where(np.isfinite(logits), logits, -np.inf)
    assert g.run(logits) == int(np.argmax(finite))  # greedy ignores NaN and -inf
    logits[[300, 600]] = np.inf
    assert g.run(logits) == 300  # +inf is the largest value; ties to the lowest id
    drawn = {g.run(logits, temperature=1.0, seed=s) for s in range(16)}
    assert drawn == {300, 600}  # all the mass is on the two +inf ids
    token = g.run(logits, logprobs=True, top_logprobs=3)
    _, logprob, top = g.record(3)
    assert token == 300 and [i for i, _ in top[:2]] == [300, 600]
    assert logprob == pytest.approx(-math.log(2), abs=1e-5)  # greedy logprobs: log-softmax at temperature 1


@pytest.mark.parametrize(
    "knobs",
    [
        {"temperature": 1.0},
        {"temperature": 0.8, "top_k": 20},
        {"temperature": 1.2, "top_p": 0.7},
        {"temperature": 1.0, "presence_penalty": 0.5, "frequency_penalty": 0.3, "repetition_penalty": 1.2},
    ],
    ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()),
)
def test_sampling_with_nan_and_inf_draws_what_the_reference_keeps(g, knobs):
    logits = corrupt_logits(2)
    counts = np.zeros(VOCAB, np.uint32)
    counts[np.flatnonzero(np.isnan(logits))[:10]] = 2  # penalties on NaN ids keep them at the bottom
    counts[np.flatnonzero(np.isfinite(logits))[:10]] = 1
    for seed in range(6):
        token = g.run(logits, counts=counts, seed=seed, logprobs=True, top_logprobs=4, **knobs)
        want = reference_sample(by_the_rule(logits), seed=seed, n_top=4, counts=counts, **knobs)
        assert 0 <= token < VOCAB and np.isfinite(logits[token]), (seed, token)
        assert want.kept[token], (seed, token)
        _, logprob, top = g.record(4)
        assert [i for i, _ in top] == [i for i, _ in want.top]
        assert all(math.isfinite(v) and v >= LOGPROB_FLOOR for v in [logprob, *(lp for _, lp in top)])


def test_lm_head_partials_with_nan_and_ids_out_of_range(kern):
    """Greedy from the LM head's (value, id) partials obeys the same rule (common.wgsl's beats)."""
    g = GPUSampler(kern, VOCAB)
    partials = zeros(kern, 8 * 8)
    g.s = ops.Sampler(kern, logits=g.logits, tokens=g.tokens, state=g.state, vocab=VOCAB, partials=partials)

    def greedy(pairs):
        data = b"".join(struct.pack("<fI", v, i) for v, i in pairs)
        kern.device.write_buffer(partials, 0, data)
        g.s.use_partials(len(pairs))
        return g.run(np.zeros(VOCAB, np.float32), configure=False)

    g.s.configure(temperature=0.0, top_p=1.0, seed=0)
    assert greedy([(math.nan, 3), (1.0, 7), (math.nan, 11)]) == 7
    assert greedy([(math.nan, 30), (-math.inf, 20), (math.nan, 11)]) == 11  # all at the bottom: the lowest id
    assert greedy([(2.0, 5), (math.inf, 9), (math.inf, 8)]) == 8
    assert greedy([(5.0, VOCAB), (math.nan, VOCAB + 7)]) == VOCAB - 1  # no real id at all: still a real id
    assert int(download(kern, g.s.counts, np.uint32, VOCAB)[VOCAB - 1]) >= 1
