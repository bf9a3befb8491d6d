"""Drive a loaded engine's graph step by step, reading the logits of every step (for golden comparisons)."""

from __future__ import annotations

import asyncio
import struct

import numpy as np

from webllm_py.kernels.params import pack_state


async def _run(
    engine, prompt_ids: list[int], n: int, forced: list[int] | None
) -> tuple[list[int], list[np.ndarray]]:
    g, dev = engine.graph, engine.device
    # This overwrites the KV cache behind the engine's back: a later generate() must not reuse what it remembers.
    engine.kv_ids = []
    g.sampler.configure(temperature=0.0, top_p=1.0, seed=0)
    ids = list(prompt_ids)
    for c0 in range(0, len(ids), g.chunk):
        chunk = ids[c0 : c0 + g.chunk]
        last = c0 + len(chunk) == len(ids)
        dev.write_buffer(g.tokens, 0, struct.pack(f"<{len(chunk)}I", *chunk))
        dev.write_buffer(g.state, 0, pack_state(c0, len(chunk), 0))
        dev.submit(g.forward(len(chunk), sample=last, pos=c0))
    tokens, logits = [], []
    for i in range(n):
        lg = np.frombuffer(
            await dev.read_storage(g.logits, 0, 4 * engine.config.vocab_size), dtype=np.float32
        )
        tokens.append(struct.unpack("<I", await dev.read_storage(g.tokens, 0, 4))[0])
        logits.append(lg.copy())
        if i + 1 < n:
            if forced is not None:  # teacher forcing: the next step reads the reference's token, not ours
                dev.write_buffer(g.tokens, 0, struct.pack("<I", forced[i]))
            dev.submit(g.decode_dispatches)
    return tokens, logits


def greedy_steps(engine, prompt_ids: list[int], n: int, forced: list[int] | None = None):
    """Our greedy token and full logits at each of ``n`` steps after the prompt. With ``forced``, step i + 1 is fed
    forced[i] instead of our own token i (so every step is compared in the reference's context)."""
    return asyncio.run(_run(engine, prompt_ids, n, forced))


def prompt_logits(engine, prompt_ids: list[int]) -> np.ndarray:
    return greedy_steps(engine, prompt_ids, 1)[1][0]


def check_against_reference(engine, ref, prompt_ids: list[int], n: int, rel: float, name: str) -> list[int]:
    """Greedy-decode ``n`` steps after the prompt and compare each step's logits with the numpy reference forward
    pass ``ref.logits(context)`` (normalized error <= rel) and its token with the reference's argmax (unless the top
    two are within 1e-3 relative: a near-tie). Returns our tokens."""
    tokens, logits = greedy_steps(engine, prompt_ids, n)
    context = list(prompt_ids)
    for step, (tok, lg) in enumerate(zip(tokens, logits, strict=True)):
        want = ref.logits(context)
        err = np.linalg.norm(lg - want) / np.linalg.norm(want)
        assert err <= rel, f"{name} step {step}: normalized error {err:.2e}"
        top2 = np.sort(want)[-2:]
        assert tok == int(np.argmax(want)) or top2[1] - top2[0] < 1e-3 * abs(top2[1]), f"{name} step {step}"
        context.append(tok)
    return tokens
