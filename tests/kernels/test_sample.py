"""The GPU sampler (sample.wgsl) against its numpy reference: greedy, temperature, top-k, top-p, logit bias,
presence / frequency / repetition penalties with the token counts the kernel keeps, log-probabilities, and the
random stream (the same seed and step give the same token on every tier, as on every host)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from webllm_py.gpu.device import BufferUsage
from webllm_py.kernels import ops
from webllm_py.kernels.registry import Kernels

from .conftest import STORAGE, TIERS, download, state_buffer, zeros
from .reference_sampler import LOGPROB_FLOOR, reference_sample

TINY = 1e-4  # draws closer than this (relative to the kept mass) to a walk boundary are float32 coin flips


class GPUSampler:
    """One Sampler on test buffers; ``run`` writes logits, configures, samples once and reads everything back."""

    def __init__(self, kern, vocab: int):
        self.kern = kern
        self.vocab = vocab
        self.logits = zeros(kern, ops.Sampler.logits_bytes(vocab))
        self.tokens = zeros(kern, 16)
        self.state = state_buffer(kern, 10, 3)
        self.s = ops.Sampler(kern, logits=self.logits, tokens=self.tokens, state=self.state, vocab=vocab)

    def run(self, logits, *, step=0, counts=None, configure=True, allowed=None, **kw):
        dev = self.kern.device
        dev.write_buffer(self.logits, 0, np.asarray(logits, dtype=np.float32).tobytes())
        dev.write_buffer(self.state, 0, struct.pack("<4I", 10, 3, step, 0))
        if configure:
            self.s.configure(**{"temperature": 0.0, "top_p": 1.0, "seed": 0, **kw})
        self.s.set_mask(None if allowed is None else bitmask(allowed))
        if counts is not None:
            dev.write_buffer(self.s.counts, 0, np.asarray(counts, dtype=np.uint32).tobytes())
        dev.submit([self.s.launch.dispatch(1)])
        return int(download(self.kern, self.tokens, np.uint32, 1)[0])

    def record(self, n_top: int):
        data = download(self.kern, self.s.record, np.uint8, ops.Sampler.RECORD_BYTES).tobytes()
        return ops.Sampler.parse_record(data, n_top)

    def counts(self):
        return download(self.kern, self.s.counts, np.uint32, self.vocab)

    def adjusted_logits(self):
        return download(self.kern, self.logits, np.float32, self.vocab)


def bitmask(allowed) -> bytes:
    """A bool per id -> the sampler's mask buffer (bit i % 32 of little-endian u32 word i // 32)."""
    bits = np.zeros(-(-len(allowed) // 32) * 32, dtype=bool)
    bits[: len(allowed)] = allowed
    return np.packbits(bits, bitorder="little").tobytes()


@pytest.fixture
def sampler(kern):
    return lambda vocab: GPUSampler(kern, vocab)


def test_greedy_argmax_and_state(kern):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(49152).astype(np.float32)
    logits[40000] = 9.0
    logits[41000] = 9.0  # a tie: the lower index wins, as in llama.cpp
    g = GPUSampler(kern, len(logits))
    assert g.run(logits) == 40000
    st = download(kern, g.state, np.uint32, 4)
    assert list(st[:3]) == [13, 1, 1]  # pos advanced by the tokens processed; next step has one token
    assert g.counts()[40000] == 1 and g.counts().sum() == 1  # the kernel counts what it samples


def test_temperature_sampling_matches_distribution(sampler):
    """Over many seeds the GPU sampler's frequencies follow softmax(logits / T) (loose 5-sigma bound)."""
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0] + [-30.0] * 250, dtype=np.float32)
    t = 0.8
    p = np.exp(logits / t - (logits / t).max())
    p /= p.sum()
    n = 400
    g = sampler(len(logits))
    counts = np.zeros(len(logits))
    for seed in range(n):
        counts[g.run(logits, temperature=t, seed=seed * 7919 + 1)] += 1
    sigma = np.sqrt(n * p * (1 - p)) + 1
    assert np.all(np.abs(counts - n * p) <= 5 * sigma), (counts[:6], (n * p)[:6])


CONFIGS = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.3, "top_k": 40},
    {"temperature": 1.0, "top_k": 200, "top_p": 0.5},
    {"temperature": 0.5, "top_k": 3},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_same_draw_as_the_reference(sampler, config):
    """Seed and step fix the token: the GPU picks what the float64 reference picks (this is what makes a seeded
    reply the same on every host and tier, up to the model's own float differences)."""
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal(3001) * 2.5).astype(np.float32)
    g = sampler(len(logits))
    compared, tokens = 0, set()
    for seed, step in [(7, 0), (7, 1), (7, 2), (123456789, 0), (2**32 - 1, 5), (0, 9), (99, 3), (5, 77)]:
        got = g.run(logits, seed=seed, step=step, **config)
        want = reference_sample(logits, seed=seed, step=step, **config)
        assert want.kept[got], f"seed {seed} step {step}: token {got} is outside the kept set"
        if want.margin > TINY:
            assert got == want.token, f"seed {seed} step {step}"
            compared += 1
        tokens.add(got)
    assert compared >= 6 and len(tokens) > 1


def test_top_k_and_top_p_only_draw_kept_tokens(sampler):
    logits = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02] + [1e-4] * 57)).astype(np.float32)
    g = sampler(len(logits))
    seen_k = {g.run(logits, temperature=1.0, top_k=2, seed=s) for s in range(60)}
    assert seen_k == {0, 1}
    seen_p = {g.run(logits, temperature=1.0, top_p=0.79, seed=s) for s in range(60)}
    assert seen_p == {0, 1, 2}  # 0.4 + 0.25 + 0.15 reaches 0.79 of the mass: nothing else may be drawn
    seen_kp = {g.run(logits, temperature=1.0, top_k=4, top_p=0.5, seed=s) for s in range(60)}
    assert seen_kp == {0, 1}  # top-p renormalized within the top 4: 0.4 / 0.9 < 0.5 <= 0.65 / 0.9


def test_logit_bias_moves_the_argmax_and_bans(sampler):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal(5000).astype(np.float32)
    top = int(np.argmax(logits))
    g = sampler(len(logits))
    bias = [(17, 100.0), (top, -100.0), (4999, 3.5)]
    assert g.run(logits, logit_bias=bias) == 17
    want = reference_sample(logits, temperature=0.0, logit_bias=bias).logits
    np.testing.assert_allclose(g.adjusted_logits(), want, rtol=0, atol=1e-4)
    # a ban holds under sampling too: -100 makes the most likely token unreachable
    drawn = {g.run(logits * 3, temperature=1.0, seed=s, logit_bias=[(top, -100.0)]) for s in range(40)}
    assert top not in drawn
    # the next request without bias sees the logits as written
    assert g.run(logits) == top


@pytest.mark.parametrize(
    "penalties",
    [
        {"presence_penalty": 1.5},
        {"frequency_penalty": 0.7},
        {"repetition_penalty": 1.3},
        {"presence_penalty": -0.5, "frequency_penalty": 0.25, "repetition_penalty": 0.8},
    ],
    ids=lambda p: ",".join(f"{k.split('_')[0]}={v}" for k, v in p.items()),
)
def test_penalties_match_reference(sampler, penalties):
    rng = np.random.default_rng(4)
    vocab = 2000
    logits = (rng.standard_normal(vocab) * 3).astype(np.float32)
    counts = np.zeros(vocab, dtype=np.uint32)
    counts[rng.choice(vocab, 300, replace=False)] = rng.integers(1, 5, 300)
    counts[int(np.argmax(logits))] = 3  # the favourite has been said: penalties should move it
    g = sampler(vocab)
    got = g.run(logits, counts=counts, **penalties)
    ref = reference_sample(logits, temperature=0.0, counts=counts.astype(np.float64), **penalties)
    np.testing.assert_allclose(g.adjusted_logits(), ref.logits, rtol=1e-5, atol=1e-5)
    assert got == ref.token
    after = counts.copy()
    after[got] += 1
    np.testing.assert_array_equal(g.counts(), after)


def test_penalties_accumulate_over_steps_and_reset_per_request(sampler):
    """Greedy with a strong frequency penalty on a flat distribution: the kernel's own counts make it walk through
    the favourites instead of repeating one; configure() at the next request starts counting from zero."""
    logits = np.array([5.0, 4.9, 4.8, 4.7] + [0.0] * 60, dtype=np.float32)
    g = sampler(len(logits))
    g.s.configure(temperature=0.0, top_p=1.0, seed=0, frequency_penalty=1.0)
    picks = [g.run(logits, configure=False, step=s) for s in range(4)]
    assert picks == [0, 1, 2, 3]
    assert list(g.counts()[:5]) == [1, 1, 1, 1, 0]
    g.s.configure(temperature=0.0, top_p=1.0, seed=0, frequency_penalty=1.0)
    assert g.counts().sum() == 0
    assert g.run(logits, configure=False) == 0


@pytest.mark.parametrize(
    "config",
    [
        {"temperature": 0.0},
        {"temperature": 0.8},
        {"temperature": 1.2, "top_k": 5},
        {"temperature": 1.0, "top_p": 0.6, "presence_penalty": 0.5},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_logprobs_are_of_the_sampled_distribution(sampler, config):
    rng = np.random.default_rng(8)
    logits = (rng.standard_normal(1000) * 2).astype(np.float32)
    counts = np.zeros(1000, dtype=np.uint32)
    counts[:50] = 1
    g = sampler(len(logits))
    n_top = 20
    got = g.run(logits, seed=3, step=4, logprobs=True, top_logprobs=n_top, counts=counts, **config)
    ref = reference_sample(logits, seed=3, step=4, n_top=n_top, counts=counts.astype(np.float64), **config)
    token, logprob, top = g.record(n_top)
    assert token == got
    if ref.margin > TINY:
        assert got == ref.token
    assert logprob == pytest.approx(ref.logprob if got == ref.token else dict(ref.top)[got], abs=2e-4)
    assert [i for i, _ in top] == [i for i, _ in ref.top]
    np.testing.assert_allclose([lp for _, lp in top], [lp for _, lp in ref.top], atol=2e-4)
    kept = [lp for _, lp in top if lp != LOGPROB_FLOOR]
    assert kept and all(lp <= 0 for lp in kept)
    if config.get("top_k"):
        assert len(kept) == config["top_k"]  # the rest of the top 20 were cut: reported at the floor
        assert sum(np.exp(kept)) == pytest.approx(1.0, abs=1e-4)  # renormalized over what top-k kept


def test_no_logprobs_record_unless_asked(sampler):
    logits = np.arange(100, dtype=np.float32)
    g = sampler(100)
    g.kern.device.write_buffer(g.s.record, 0, bytes(ops.Sampler.RECORD_BYTES))
    g.run(logits)
    assert g.record(2) == (0, 0.0, [(0, 0.0), (0, 0.0)])
    g.run(logits, logprobs=True, top_logprobs=0)
    token, logprob, _ = g.record(0)
    assert token == 99 and logprob == pytest.approx(-np.log(np.exp(np.arange(100) - 99.0).sum()), abs=1e-5)


def test_configure_checks_its_inputs(kern):
    g = GPUSampler(kern, 50)
    with pytest.raises(ValueError, match="distinct"):
        g.s.configure(temperature=0, top_p=1, seed=0, logit_bias=[(3, 1.0), (3, 2.0)])
    with pytest.raises(ValueError, match="distinct"):
        g.s.configure(temperature=0, top_p=1, seed=0, logit_bias=[(50, 1.0)])
    with pytest.raises(ValueError, match="top_logprobs"):
        g.s.configure(temperature=0, top_p=1, seed=0, logprobs=True, top_logprobs=21)


def test_state_buffer_is_uniform_and_storage(kern):
    # The state is read as a uniform by every kernel and written as storage by the sampler.
    buf = state_buffer(kern, 0, 1)
    assert buf.usage & BufferUsage.UNIFORM and buf.usage & STORAGE == STORAGE


def test_greedy_reads_lm_head_partials_only_when_nothing_adjusts_the_logits(kern):
    """With partials in use, plain greedy takes the argmax of the (value, id) partials (ties to the lowest id);
    logit bias, penalties, logprobs and temperature need every logit, so they read the logits. The partials here
    disagree with the logits on purpose, to show which one each request reads."""
    vocab = 1000
    logits = np.zeros(vocab, dtype=np.float32)
    logits[700] = 5.0  # the logits' argmax
    pairs = [(1.0, 3), (4.0, 250), (4.0, 120), (-2.0, 999), (4.0, vocab)]  # (value, id); id == vocab: none
    partials = zeros(kern, 8 * 8)
    data = b"".join(struct.pack("<fI", v, i) for v, i in pairs)
    kern.device.write_buffer(partials, 0, data)
    g = GPUSampler(kern, vocab)
    g.s = ops.Sampler(kern, logits=g.logits, tokens=g.tokens, state=g.state, vocab=vocab, partials=partials)
    assert g.run(logits) == 700  # no partials announced yet: the logits
    g.s.use_partials(len(pairs))
    assert g.run(logits) == 120  # the best partial, lowest id of the tie; the id-less entry is skipped
    assert g.run(logits, configure=False) == 120  # use_partials needs no configure
    assert g.run(logits, logit_bias=((5, 1.0),)) == 700
    assert g.run(logits, presence_penalty=0.5) == 700
    assert g.run(logits, logprobs=True, top_logprobs=1) == 700
    assert g.run(logits, temperature=1e-3, seed=1) == 700
    g.s.use_partials(3)  # only the first three entries
    assert g.run(logits) == 120
    g.s.use_partials(1)
    assert g.run(logits) == 3
    g.s.use_partials(0)
    assert g.run(logits) == 700
    with pytest.raises(ValueError, match="9 argmax partials; the buffer holds 8"):
        g.s.use_partials(9)


@pytest.fixture(params=[t for t in TIERS if not t.f16], ids=lambda t: t.name)
def f32_sampler(request, gpu_device):
    """The sampler reads f32 logits in every tier: the mask tests run on the two reductions (subgroups or not)."""
    kern = Kernels(gpu_device, request.param)
    return lambda vocab: GPUSampler(kern, vocab)


MASKED_CONFIGS = [
    {"temperature": 0.0},
    {"temperature": 1.0},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.3, "top_k": 40},
    {"temperature": 1.0, "top_k": 200, "top_p": 0.5, "repetition_penalty": 1.3},
    {"temperature": 0.0, "presence_penalty": 1.5, "logit_bias": "masked"},
]


@pytest.mark.parametrize("config", MASKED_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_mask_holds_on_every_path(f32_sampler, config):
    """A grammar's mask removes ids before greedy, top-k/top-p, penalties and bias can bring them back: the GPU
    draws what the reference draws among the allowed ids only, and reports masked ids at LOGPROB_FLOOR. The
    vocabulary is not a multiple of 32 (the last mask word is partial) and the masks mix whole masked words, a
    few allowed ids, and nearly everything allowed."""
    rng = np.random.default_rng(21)
    vocab = 3001
    logits = (rng.standard_normal(vocab) * 2.5).astype(np.float32)
    counts = np.zeros(vocab, dtype=np.uint32)
    counts[rng.choice(vocab, 400, replace=False)] = 2
    favourites = np.argsort(-logits)[:50]
    masks = {
        "sparse": rng.random(vocab) < 0.1,
        "three": np.isin(np.arange(vocab), [5, 2999, 3000]),
        "nearly_all": ~np.isin(np.arange(vocab), favourites),
    }
    config = dict(config)
    if config.get("logit_bias") == "masked":  # +100 on masked favourites: still masked
        config["logit_bias"] = [(int(i), 100.0) for i in favourites[:5]]
    g = f32_sampler(vocab)
    compared = 0
    for name, allowed in masks.items():
        for seed, step in [(7, 0), (7, 1), (99, 3), (2**32 - 1, 5)]:
            got = g.run(
                logits, seed=seed, step=step, counts=counts, allowed=allowed, logprobs=True, top_logprobs=5,
                **config,
            )  # fmt: skip
            ref = reference_sample(
                logits,
                seed=seed,
                step=step,
                counts=counts.astype(np.float64),
                allowed=allowed,
                n_top=5,
                **config,
            )
            assert allowed[got], f"{name}: masked token {got} was sampled"
            token, logprob, top = g.record(5)
            assert token == got
            if ref.margin > TINY:
                assert got == ref.token, f"{name} seed {seed} step {step}"
                assert logprob == pytest.approx(ref.logprob, abs=2e-4)
                compared += 1
            for (i, lp), (ri, rlp) in zip(top, ref.top, strict=True):
                if rlp == LOGPROB_FLOOR:
                    assert lp == LOGPROB_FLOOR and (not allowed[i] or not ref.kept[i])
                else:
                    assert i == ri and lp == pytest.approx(rlp, abs=2e-4)
    assert compared >= 8
    if config.get("temperature") == 0.0:
        # the "three" mask leaves fewer ids than the top 5: two entries are masked ones, at the floor
        g.run(logits, allowed=masks["three"], logprobs=True, top_logprobs=5, **config)
        assert sum(lp == LOGPROB_FLOOR for _, lp in g.record(5)[2]) == 2


def test_mask_off_again_and_partials_ignored_while_masked(kern):
    """Greedy under a mask cannot use the LM head's argmax partials (computed before the mask): it reads the logits.
    set_mask(None) restores plain greedy, partials included."""
    vocab = 1000
    logits = np.zeros(vocab, dtype=np.float32)
    logits[700], logits[120], logits[33] = 5.0, 4.0, 3.0
    partials = zeros(kern, 8 * 2)
    kern.device.write_buffer(partials, 0, struct.pack("<fIfI", 5.0, 700, 4.0, 120))
    g = GPUSampler(kern, vocab)
    g.s = ops.Sampler(kern, logits=g.logits, tokens=g.tokens, state=g.state, vocab=vocab, partials=partials)
    g.s.use_partials(2)
    allowed = np.ones(vocab, dtype=bool)
    allowed[[700, 120]] = False
    assert g.run(logits, allowed=allowed) == 33
    assert g.run(logits) == 700
    g.s.set_mask(bitmask(allowed))
    assert g.run(logits, configure=False, allowed=allowed) == 33  # configure keeps the mask state
    with pytest.raises(ValueError, match="token mask of 3 bytes"):
        g.s.set_mask(b"abc")
