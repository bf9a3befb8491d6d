"""Load-time tuning: pick the decode matrix-vector kernel shape for each matrix of the model by measuring.

Which shape is fastest depends on the adapter (subgroup size, cores, cache) and on the matrix (rows, K, format):
on an H100 the LM head is fastest with short subgroup segments per row pair, the 576-wide projections with a small
split-K workgroup. A few candidates are timed on the model's own buffers (layer 0 and the LM head), each dispatched
REPS times back to back; the winners are kept per role and, on the desktop, remembered per adapter and model
shape so a second load skips the measurement.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

from .params import pack_state
from .registry import GemvConfig

if TYPE_CHECKING:
    from ..model.graph import Graph

ROLES = ("qkv", "o", "ffn1", "ffn2", "lm_head")
CANDIDATES: tuple[GemvConfig, ...] = (
    GemvConfig("GEMV", 32),
    GemvConfig("GEMV", 64),
    GemvConfig("GEMV", 128),
    GemvConfig("GEMV_SEG", 32, 16),
    GemvConfig("GEMV_SEG", 64, 16),
    GemvConfig("GEMV_SEG", 64, 32),
    GemvConfig("GEMV_SEG", 128, 32),
    # Short segments: many rows per workgroup, for matrices with few input features and many rows (the LM head).
    GemvConfig("GEMV_SEG", 128, 8),
    GemvConfig("GEMV_SEG", 256, 8),
    GemvConfig("GEMV_SEG", 256, 4),
)
REPS = 32  # dispatches per timing
ROUNDS = 3  # timings per candidate; the fastest counts


def tuning_key(graph: Graph) -> str:
    """What the result depends on: the adapter and driver, the kernel tier, the model's matrix shapes."""
    dev, cfg = graph.device, graph.cfg
    shapes = [
        cfg.hidden_size,
        cfg.q_size,
        cfg.kv_size,
        cfg.ffn_size,
        cfg.vocab_size,
        graph.kern.attention_splits,
        graph.kern.split_min_keys,
    ]
    formats = [graph.layers[0].w.qkv.fmt, graph.layers[0].w.down.fmt, graph.lm_head.fmt]
    return "|".join(
        [dev.info.summary(), dev.info.description, graph.kern.tier.name, *map(str, shapes), *formats]
    )


async def measure(graph: Graph, candidates: tuple[GemvConfig, ...] = CANDIDATES) -> dict[str, GemvConfig]:
    """Time every usable candidate for every role; return the fastest per role."""
    dev, kern = graph.device, graph.kern
    # Decode-shaped state: one token at position 0 (the tuning writes garbage into KV slot 0; prefill rewrites it).
    dev.write_buffer(graph.state, 0, pack_state(0, 1, 0))
    max_wg = dev.caps.max_compute_invocations_per_workgroup
    usable = [
        c
        for c in candidates
        if c.wg <= max_wg and (c.variant != "GEMV_SEG" or (kern.tier.subgroups and c.seg <= kern.gemv_seg))
    ]

    async def seconds(dispatch) -> float:
        dev.submit([dispatch])  # compile and warm up
        await dev.read_storage(graph.state, 0, 4)
        best = float("inf")
        for _ in range(ROUNDS):
            t = time.perf_counter()
            dev.submit([dispatch] * REPS)
            await dev.read_storage(graph.state, 0, 4)
            best = min(best, time.perf_counter() - t)
        return best

    chosen: dict[str, GemvConfig] = {}
    for role in ROLES:
        layer = None if role == "lm_head" else 0
        timings = {}
        for cand in usable:
            timings[cand] = await seconds(graph.matmul_launch(role, layer, gemm=False, gemv=cand).dispatch(1))
        chosen[role] = min(timings, key=timings.__getitem__)
    return chosen


async def tune_gemv(graph: Graph, cache_path: str | None = None) -> tuple[dict[str, GemvConfig], bool]:
    """The per-role GEMV shapes for ``graph``: from ``cache_path`` (JSON) when it has them, else measured (and
    saved there). Returns (shapes, whether they came from the cache)."""
    key = tuning_key(graph)
    cache: dict[str, dict[str, list]] = {}
    if cache_path and os.path.exists(cache_path):
        try:
            with open(cache_path, encoding="utf-8") as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}  # a damaged cache is measured again and rewritten
    entry = cache.get(key)
    if entry and set(entry) == set(ROLES):
        return {role: GemvConfig(*entry[role]) for role in ROLES}, True
    chosen = await measure(graph)
    if cache_path:
        cache[key] = {role: [c.variant, c.wg, c.seg] for role, c in chosen.items()}
        os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
        tmp = f"{cache_path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(cache, f, indent=1)
        os.replace(tmp, cache_path)
    return chosen, False
