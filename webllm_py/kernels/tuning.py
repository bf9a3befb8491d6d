"""Load-time tuning: pick the decode matrix-vector kernel shape for each matrix of the model by measuring.

Which shape is fastest depends on the adapter (subgroup size, cores, cache) and on the matrix (rows, K, format).
The candidates are timed on the model's own buffers the way a decode step uses them: one role's launches for every
layer in turn (each layer's weights are new to the cache, as in a step; a GEMV_MRQ candidate with the quantize_x
launch it needs), the batch repeated until it lasts about a couple of milliseconds, the fastest of ROUNDS batches
counting, by the GPU's own timestamps where the host has them (native: a pass's start and end; the wall clock
around submit and read, which measured 90-150 us for launches of 11-25 us on the H200, made picks differ between
processes) and by the wall clock elsewhere. The GPU works WARMUP_S first (from idle it runs at a low clock), and
the shapes within FINALISTS of a role's fastest are timed again in interleaved rounds, so a drift during the sweep
does not decide between them. Shapes within TIE of the fastest count as equal and the first of them in CANDIDATES
wins, so noise between runs does not flip the choice between shapes that are equally good. The
winners are kept per role and, on the desktop, remembered per adapter and model shape so a second load skips the
measurement.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .ops import q8_fits
from .params import pack_state
from .registry import MR_VARIANTS, GemvConfig

if TYPE_CHECKING:
    from ..model.graph import Graph

ROLES = ("qkv", "o", "ffn1", "ffn2", "lm_head")
# In order of preference: on a tie (within TIE) the earlier shape wins. The GEMV_MR forms first (rows per invocation x
# lanes along K), then the older shapes, which an H200 still picked for some matrices (bench/results/README.md).
CANDIDATES: tuple[GemvConfig, ...] = (
    GemvConfig("GEMV_MR", 128, 32, 2),  # 8 rows a workgroup
    GemvConfig("GEMV_MR", 256, 32, 4),  # 32: 8 warps, 4 rows each (the stand-alone probe's fastest f32 form)
    GemvConfig("GEMV_MRB", 256, 32, 4),
    GemvConfig("GEMV_MRR", 256, 32, 2),
    GemvConfig("GEMV_MR", 128, 16, 4),  # 32
    GemvConfig("GEMV_MR", 128, 32, 4),  # 16
    GemvConfig("GEMV_MR", 64, 16, 2),  # 8: short rows, many workgroups
    GemvConfig("GEMV_MR", 128, 8, 2),  # 32
    GemvConfig("GEMV_MRR", 128, 32, 2),  # run-time trip count: fewer registers
    GemvConfig("GEMV_MRR", 128, 16, 4),
    GemvConfig("GEMV_MRR", 64, 8, 2),
    GemvConfig("GEMV_MRB", 128, 32, 4),  # whole-block lanes: 16-byte weight loads
    GemvConfig("GEMV_MRB", 64, 16, 4),
    GemvConfig("GEMV_MRB", 128, 8, 4),  # 64
    GemvConfig("GEMV_MRB", 64, 32, 2),  # 4
    GemvConfig("GEMV", 64),
    GemvConfig("GEMV", 128),
    GemvConfig("GEMV_SEG", 128, 8),
)
# Integer-activation shapes (GEMV_MRQ: three planes of x, or int8 with Kernels.q8_decode), timed with the
# quantize_x launch each needs, first (bench/gemv_probe.py's fastest dp4a forms on the H200).
Q8_CANDIDATES: tuple[GemvConfig, ...] = (
    GemvConfig("GEMV_MRQ", 256, 32, 2),
    GemvConfig("GEMV_MRQ", 256, 16, 2),
    GemvConfig("GEMV_MRQ", 256, 32, 4),
    GemvConfig("GEMV_MRQ", 128, 32, 2),
)
TIE = 0.03  # relative: shapes this close to the fastest are equally good
FINALISTS = 0.10  # relative: shapes this close to a role's fastest are timed again, interleaved
WARMUP_S = 0.2  # seconds of timed batches before the first measurement (the GPU clocks up from idle)
ROUNDS = 5  # timed batches per candidate; the fastest counts
TARGET_S = 2e-3  # a timed batch lasts about this long
MAX_REPS = 64  # repeats of a role's per-layer launches in one batch
CACHE_VERSION = 6  # part of the cache key: shapes measured by an older tuner are measured again


def tuning_key(graph: Graph) -> str:
    """What the result depends on: the adapter and driver, the kernel tier, the model's matrix shapes."""
    dev, cfg = graph.device, graph.cfg
    shapes = [
        cfg.hidden_size,
        cfg.q_size,
        cfg.kv_size,
        cfg.ffn_size,
        cfg.vocab_size,
        cfg.n_layers,
        graph.kern.attention_splits,
        graph.kern.split_min_keys,
    ]
    formats = [graph.layers[0].w.qkv.fmt, graph.layers[0].w.down.fmt, graph.lm_head.fmt]
    return "|".join(
        [
            f"v{CACHE_VERSION}",
            dev.info.summary(),
            dev.info.description,
            graph.kern.tier.name + ("+q8" if graph.kern.q8_decode else ""),
            *map(str, shapes),
            *formats,
        ]
    )


def usable(graph: Graph, role: str, cand: GemvConfig) -> bool:
    """Whether ``cand`` can run ``role`` here and is worth timing (no lanes or rows beyond the matrix)."""
    kern = graph.kern
    if cand.wg > graph.device.caps.max_compute_invocations_per_workgroup:
        return False
    if cand.variant == "GEMV_SEG":
        return kern.tier.subgroups and cand.seg <= kern.subgroup_min
    if cand.variant in MR_VARIANTS:
        # the first row part (all but the last are as large; a split product's parts share the tuning)
        w = (graph.lm_head if role == "lm_head" else graph.role_weight(role, 0)).parts[0]
        if cand.variant == "GEMV_MRQ" and not q8_fits(kern, w, cand):
            return False
        return cand.seg <= 4 * w.k_blocks and cand.rows_per_workgroup <= max(4, w.n_rows)
    return True


def pick(timings: dict[GemvConfig, float], order: tuple[GemvConfig, ...] = CANDIDATES) -> GemvConfig:
    """The first shape in ``order`` whose time is within TIE of the fastest."""
    fastest = min(timings.values())
    return next(c for c in order if c in timings and timings[c] <= fastest * (1 + TIE))


async def measure(
    graph: Graph, candidates: tuple[GemvConfig, ...] = CANDIDATES
) -> tuple[dict[str, GemvConfig], dict[str, dict[str, float]]]:
    """Time every usable candidate for every role; return the pick per role and every timing (us per product: a
    layer's launches of the role)."""
    dev = graph.device
    # Decode-shaped state: one token at position 0 (the tuning writes garbage into KV slot 0; prefill rewrites it).
    dev.write_buffer(graph.state, 0, pack_state(0, 1, 0))

    timer = getattr(dev, "pass_seconds", None)

    async def batch_timer(dispatches: list, products: int) -> Callable[[], Awaitable[float]]:
        """A timer of ``dispatches`` (``products`` products: a role's launches for every layer, each its row parts,
        after its quantize_x launch on GEMV_MRQ) repeated into a batch of about TARGET_S: each call times one batch,
        in seconds per product, by the GPU's own timestamps where the host has them (pass_seconds), else by the wall
        clock around submit and read."""
        dev.submit(dispatches)  # compile and warm up
        await dev.read_storage(graph.state, 0, 4)
        once = timer(dispatches) if timer is not None else None
        if once is not None:
            reps = max(1, min(MAX_REPS, int(TARGET_S / max(once, 1e-7))))
            batch = list(dispatches) * reps

            async def gpu_time() -> float:
                return timer(batch) / (reps * products)

            return gpu_time
        t = time.perf_counter()
        dev.submit(dispatches)
        await dev.read_storage(graph.state, 0, 4)
        reps = max(1, min(MAX_REPS, int(TARGET_S / max(time.perf_counter() - t, 1e-6))))
        prepared = dev.prepare(list(dispatches) * reps)

        async def wall_time() -> float:
            t = time.perf_counter()
            dev.submit(prepared)
            await dev.read_storage(graph.state, 0, 4)
            return (time.perf_counter() - t) / (reps * products)

        return wall_time

    def launches(role: str, layer: int | None, cand: GemvConfig) -> list:
        if role == "lm_head":  # every row part of a split LM head
            return [launch.dispatch(1) for launch in graph.lm_head_parts(cand)[0]]
        return [launch.dispatch(1) for launch in graph.matmul_launch(role, layer, gemm=False, gemv=cand)]

    chosen: dict[str, GemvConfig] = {}
    report: dict[str, dict[str, float]] = {}
    warm = False
    for role in ROLES:
        layers = [None] if role == "lm_head" else range(len(graph.layers))
        timers: dict[GemvConfig, Callable[[], Awaitable[float]]] = {}
        timings: dict[GemvConfig, float] = {}
        for cand in candidates:
            if not usable(graph, role, cand):
                continue
            timers[cand] = await batch_timer(
                [d for i in layers for d in launches(role, i, cand)], len(layers)
            )
            # The GPU idles at a low clock: work until it is up, so the first shapes timed are not slowed.
            if not warm:
                t_end = time.perf_counter() + WARMUP_S
                while time.perf_counter() < t_end:
                    await timers[cand]()
                warm = True
            timings[cand] = min([await timers[cand]() for _ in range(ROUNDS)])
        # The shapes near the fastest again, in interleaved rounds: a clock or cache that drifted during the first
        # pass weighs on all of them alike, so the pick between near-equals does not depend on when each was timed.
        fastest = min(timings.values())
        finalists = [c for c in timings if timings[c] <= fastest * (1 + FINALISTS)]
        if len(finalists) > 1:
            again = dict.fromkeys(finalists, float("inf"))
            for _ in range(ROUNDS):
                for cand in finalists:
                    again[cand] = min(again[cand], await timers[cand]())
            timings.update(again)
            chosen[role] = pick(again, candidates)
        else:
            chosen[role] = finalists[0]
        report[role] = {c.label(): round(s * 1e6, 2) for c, s in timings.items()}
    return chosen, report


async def tune_gemv(
    graph: Graph, cache_path: str | None = None
) -> tuple[dict[str, GemvConfig], bool, dict[str, dict[str, float]]]:
    """The per-role GEMV shapes for ``graph``: from ``cache_path`` (JSON) when it has them, else measured (and
    saved there). Returns (shapes, whether they came from the cache, the timings measured: empty from the cache)."""
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
        return {role: GemvConfig(*entry[role]) for role in ROLES}, True, {}
    chosen, report = await measure(graph, Q8_CANDIDATES + CANDIDATES)
    if cache_path:
        cache[key] = {role: [c.variant, c.wg, c.seg, c.rt] for role, c in chosen.items()}
        os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
        tmp = f"{cache_path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(cache, f, indent=1)
        os.replace(tmp, cache_path)
    return chosen, False, report
