"""A numpy reference of sample.wgsl: the same steps in float64, and the same random stream bit for bit.

``reference_sample`` returns the token, the log-probabilities record and the adjusted logits, plus ``margin``: how
close the random number fell to a boundary of the walk, relative to the kept mass. The GPU sums in float32, in
another order, so a draw closer to a boundary than float32 rounding may legitimately go the other way; tests skip
those (they are rare, and counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOGPROB_FLOOR = -9999.0
M32 = 0xFFFFFFFF


def pcg(v: int) -> int:
    s = (v * 747796405 + 2891336453) & M32
    w = (((s >> ((s >> 28) + 4)) ^ s) * 277803737) & M32
    return ((w >> 22) ^ w) & M32


def uniform(seed: int, step: int) -> float:
    """The kernel's random number for this request seed and step, in [0, 1)."""
    r = pcg((seed & M32) ^ pcg((step + 0x9E3779B9) & M32))
    return (r >> 8) / 16777216.0


@dataclass
class Sampled:
    token: int
    logprob: float  # of the token, in the distribution it was drawn from
    top: list[tuple[int, float]]  # (id, logprob), most likely first
    logits: np.ndarray  # after bias and penalties (float64)
    kept: np.ndarray  # bool mask of the ids top-k / top-p kept
    margin: float  # distance of the random draw to the nearest walk boundary, relative to the kept mass


def adjust(
    logits,
    *,
    logit_bias=(),
    counts=None,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    repetition_penalty=1.0,
) -> np.ndarray:
    """Logit bias, then the penalties over ``counts`` (times each id was sampled), as the kernel applies them."""
    lg = np.asarray(logits, dtype=np.float64).copy()
    for i, b in logit_bias:
        lg[i] += b
    if counts is not None and (
        presence_penalty != 0.0 or frequency_penalty != 0.0 or repetition_penalty != 1.0
    ):
        seen = counts > 0
        pen = lg[seen] - (presence_penalty + counts[seen] * frequency_penalty)
        lg[seen] = np.where(pen < 0, pen * repetition_penalty, pen / repetition_penalty)
    return lg


def reference_sample(
    logits,
    *,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    step: int = 0,
    n_top: int = 0,
    allowed=None,
    **adjust_kw,
) -> Sampled:
    """``allowed``: a grammar's token mask (bool per id; None: every id), applied after bias and penalties."""
    lg = adjust(logits, **adjust_kw)
    n = len(lg)
    if allowed is not None:
        lg = np.where(allowed, lg, -np.inf)
    order = sorted(range(n), key=lambda i: (-lg[i], i))  # likeliest first, ties to the lower id
    greedy = temperature <= 0
    inv_t = 1.0 if greedy else 1.0 / temperature
    w = np.exp((lg - lg.max()) * inv_t)
    kept = np.ones(n, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool).copy()
    margin = float("inf")
    token = order[0]
    if not greedy:
        if 0 < top_k < n:
            kept &= w >= w[order[top_k - 1]]
        if top_p < 1.0:
            goal = top_p * w[kept].sum()
            cum = 0.0
            for i in order:
                if not kept[i]:
                    continue
                cum += w[i]
                if cum >= goal:
                    kept &= w >= w[i]
                    break
        mass = w[kept].sum()
        u = uniform(seed, step) * mass
        cum = np.cumsum(np.where(kept, w, 0.0))
        token = int(np.searchsorted(cum, u, side="right"))
        margin = float(np.min(np.abs(cum[kept] - u)) / mass)
    log_mass = np.log(w[kept].sum())
    with np.errstate(invalid="ignore"):
        logprob = np.where(kept, (lg - lg.max()) * inv_t - log_mass, LOGPROB_FLOOR)
    top = [(i, float(logprob[i])) for i in order[:n_top]]
    return Sampled(token, float(logprob[token]), top, lg, kept, margin)
