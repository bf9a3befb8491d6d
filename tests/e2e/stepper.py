"""Drive a loaded engine's graph step by step, reading the logits of every step (for golden comparisons)."""

from __future__ import annotations

import asyncio
import struct

import numpy as np

from webllm_py.kernels.params import pack_state


async def _greedy(
    engine, prompt_ids: list[int], n: int, stop_ids: set[int]
) -> tuple[list[int], list[np.ndarray]]:
    g, dev = engine.graph, engine.device
    g.sampler.configure(temperature=0.0, top_p=1.0, seed=0)
    tokens, logits = [], []
    ids = list(prompt_ids)
    for c0 in range(0, len(ids), g.chunk):
        chunk = ids[c0 : c0 + g.chunk]
        last = c0 + len(chunk) == len(ids)
        dev.write_buffer(g.tokens, 0, struct.pack(f"<{len(chunk)}I", *chunk))
        dev.write_buffer(g.state, 0, pack_state(c0, len(chunk), 0))
        dev.submit(g.forward(len(chunk), sample=last))
    for _ in range(n):
        lg = np.frombuffer(
            await dev.read_storage(g.logits, 0, 4 * engine.config.vocab_size), dtype=np.float32
        )
        tok = struct.unpack("<I", await dev.read_storage(g.tokens, 0, 4))[0]
        tokens.append(tok)
        logits.append(lg.copy())
        if tok in stop_ids:
            break
        dev.submit(g.decode_dispatches)
    return tokens, logits


def greedy_with_logits(
    engine, prompt_ids: list[int], n: int, stop_ids: set[int]
) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens and each step's logits, without the engine's read-ahead (so the logits are still there)."""
    return asyncio.run(_greedy(engine, prompt_ids, n, stop_ids))


def prompt_logits(engine, prompt_ids: list[int]) -> np.ndarray:
    return greedy_with_logits(engine, prompt_ids, 1, set())[1][0]
