"""Comparisons shared by the golden tests: normalized logit error, argmax and teacher-forced greedy with near-ties."""

from __future__ import annotations

import numpy as np


def rel_err(ours, ref) -> float:
    """||ours - ref|| / ||ref|| in float64."""
    a, b = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check_argmax(label: str, ours_argmax: int, ref_top2: tuple[int, int], ref_margin: float, near_tie: float):
    """Our argmax is the reference's, or, at a reference margin below ``near_tie``, its runner-up (printed)."""
    if ours_argmax == ref_top2[0]:
        return
    assert ref_margin < near_tie and ours_argmax == ref_top2[1], (
        f"{label}: argmax {ours_argmax} != the reference's {ref_top2[0]} (reference margin {ref_margin:.3f})"
    )
    print(f"near-tie: {label} first step, reference margin {ref_margin:.3f}")


def check_greedy(
    label: str, ours: list[int], logits: list[np.ndarray], golden: dict, near_tie: float
) -> None:
    """Teacher-forced greedy steps against ``golden`` (greedy_ids, top2_margin, second_ids): every step equal, or a
    true near-tie (the reference's margin and ours between the two tokens both below ``near_tie``), printed."""
    for i, (a, b) in enumerate(zip(ours, golden["greedy_ids"], strict=True)):
        if a == b:
            continue
        ref_margin = golden["top2_margin"][i]
        our_margin = float(logits[i][a] - logits[i][b])
        line = (
            f"{label} step {i}: ours {a}, reference {b} (runner-up {golden['second_ids'][i]}); "
            f"reference margin {ref_margin:.3f}, ours {our_margin:.3f}"
        )
        assert ref_margin < near_tie and our_margin < near_tie, "not a near-tie: " + line
        print("near-tie:", line)
