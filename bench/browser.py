#!/usr/bin/env python3
"""Browser benchmark: the engine in headless Chromium (Pyodide in a module worker, WebGPU). Prints JSON.

    python3 bench/browser.py [--prompt-tokens 32] [--decode-tokens 8] [--backend cache] [--chromium-arg ...]

Builds the demo site (``build.py demo``, into .cache/test-dist with the tests' handler), serves it on 127.0.0.1 and runs, in a fresh browser profile:

- boot: a new worker until Python runs (Pyodide start-up, micropip installs the wheels);
- cold load: ``MLCEngine.reload`` with an empty cache (download into ``--backend``, then onto the GPU);
- warm load: a second page, a new worker, the same reload served from the cache (the usual visit);
- a greedy generation over a fixed prompt: time to first token, prefill and decode tokens/s;
- constrained decoding (``grammar``): the same greedy decode under grammars that cannot end early (the split loop
  with no mask, inside a JSON string, a run of digits): decode tokens/s, the matcher's host seconds per token
  (``grammar_per_token_s``), the time to write each step's mask (``set_mask``: one ``writeBuffer`` of
  ceil(vocab/32) words), and ``grammar_init_s`` (the first one builds the vocabulary's token index in Pyodide);
- host time per decode step: the step's wall time less the wait for the GPU, and within it the engine's ``submit``
  (Python + one JavaScript call that encodes and submits the prepared plan) and the host part of ``read_buffer``
  (the call that starts ``mapAsync``, the copy out, the error check).
  The same step's submission is also timed with zero-workgroup dispatches (no GPU work, so no competition for the
  CPU), from the prepared plan and from a plain dispatch list converted on every call.

Without a GPU, Chromium's WebGPU runs on SwiftShader (a CPU rasterizer): the GPU times are not representative of a
real GPU, the host times are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED_TEXT = (
    "The history of computing is a story of people, ideas and machines. Early mechanical calculators gave way to "
    "electronic computers, which filled whole rooms. Transistors made them smaller, and integrated circuits put "
    "billions of transistors on one chip. Software grew alongside the hardware, from machine code to Python. "
)

# Python run in the worker (testkit handler): instrument the device, load, generate, report.
LOAD = """
import time
from webllm_testkit import demo_app_config
from webllm_py import MLCEngine
from webllm_py.host import browser_cache
record, config = await demo_app_config(BACKEND)
phases = {}
def on_progress(report):
    phase = "download" if report.text.startswith("Fetching") else "load"
    phases.setdefault(phase, [report.timeElapsed, report.timeElapsed])[1] = report.timeElapsed
engine = MLCEngine(app_config=config, resolve_model=browser_cache.resolve_model, init_progress_callback=on_progress)
t0 = time.perf_counter()
await engine.reload(record.model_id, context_window_size=CTX)
load_s = time.perf_counter() - t0
{"load_s": load_s, "download_s": (phases["download"][1] - phases["download"][0]) if "download" in phases else 0.0,
 "stats": engine._slots[engine.model_id].engine.load_stats}
"""

GENERATE = """
import struct, time
from webllm_py.engine import SamplingParams
eng = engine._slots[engine.model_id].engine
dev = eng.device
timing = {"submit": [], "encode": [], "submit_encoded": [], "read_host": [], "read_wait": []}
real = {name: getattr(dev, name) for name in ("submit", "encode", "submit_encoded")}
def timed(name):
    def call(*args):
        t = time.perf_counter()
        result = real[name](*args)
        timing[name].append(time.perf_counter() - t)
        return result
    return call
async def read_buffer(buffer, offset, size):
    t0 = time.perf_counter()
    promise = dev._read(buffer.handle, offset, size)
    t1 = time.perf_counter()
    data = await promise
    t2 = time.perf_counter()
    dev.raise_errors()
    out = data.to_bytes()
    t3 = time.perf_counter()
    timing["read_host"].append((t1 - t0) + (t3 - t2))
    timing["read_wait"].append(t2 - t1)
    return out
dev.submit, dev.encode, dev.submit_encoded = (timed(name) for name in real)
dev.read_buffer = read_buffer
words = []
while len(words) < PROMPT:
    words += eng.tokenizer.encode(SEED, add_bos=False)
ids = words[:PROMPT]
gen = eng.generate(ids, SamplingParams(temperature=0.0, max_tokens=DECODE, ignore_eos=True))
step_starts = []
async for _ in gen:
    step_starts.append(time.perf_counter())
del dev.submit, dev.encode, dev.submit_encoded, dev.read_buffer
s = gen.stats
# Decode steps: the first is submitted after the prefill chunks, the others are encoded a step ahead and submitted
# when the token before arrives (engine.py); reads after the first (which waits for the prefill).
n_prefill = -(-PROMPT // eng.graph.chunk)
decode_submits = timing["submit"][n_prefill:] + [
    a + b for a, b in zip(timing["encode"], timing["submit_encoded"])
]
steps = [b - a for a, b in zip(step_starts, step_starts[1:])]
def ms(xs):
    return round(1000 * sum(xs) / len(xs), 3) if xs else None

# Host cost of submitting a decode step, prepared plan against a plain dispatch list converted on every call. The
# steps here dispatch zero workgroups (same 153 setPipeline/setBindGroup/dispatch calls, no GPU work), so the CPU
# rasterizer does not compete with the host for the machine's cores while it is timed. Medians of 20.
import statistics
empty = [(p, bg, 0, 0, 0) for p, bg, *_ in eng.graph.forward(1, sample=True)]
plan = dev.prepare(empty)
ring = eng.ring[0]
cmp = {}
for name, what in (("prepared", plan), ("list", empty)):
    ts = []
    for _ in range(20):
        t = time.perf_counter()
        dev.submit(what, [(eng.graph.tokens, 0, ring, 0, 4)])
        ts.append(time.perf_counter() - t)
        await dev.read_buffer(ring, 0, 4)
    cmp[name] = round(1000 * statistics.median(ts), 3)
{
  "prompt_tokens": s.prompt_tokens, "decode_tokens": s.completion_tokens,
  "time_to_first_token_s": round(s.time_to_first_token_s, 3),
  "prefill_tokens_per_s": round(s.prefill_tokens_per_s, 2),
  "decode_tokens_per_s": round(s.decode_tokens_per_s, 3),
  "dispatches_per_decode_step": len(eng.graph.decode_dispatches),
  "decode_step_ms": ms(steps),
  # A decode step is host work plus the wait for the GPU; the rest of the host work (the loop in Python, the
  # consumer) is what is left. performance.now() is coarsened to 0.1 ms in a worker that is not cross-origin
  # isolated: these are means over the steps.
  "host_ms_per_decode_step": {
    "total": round(ms(steps) - ms(timing["read_wait"][1:]), 3) if steps else None,
    "submit": ms(decode_submits),
    "read_host": ms(timing["read_host"][1:]),
  },
  "gpu_wait_ms_per_decode_step": ms(timing["read_wait"][1:]),
  "submit_host_ms_no_gpu_work": cmp,
}
"""

GRAMMAR = """
import time
from webllm_py.engine import SamplingParams
from webllm_py.grammar import Grammar, Matcher
eng = engine._slots[engine.model_id].engine
sampler = eng.graph.sampler
words = []
while len(words) < PROMPT:
    words += eng.tokenizer.encode(SEED, add_bos=False)
ids = words[:PROMPT]
cases = {
    "split_unmasked": (Grammar.regex("x"), {"trigger_ids": [eng.tokenizer.vocab_size - 1]}),
    "string": (Grammar.json_schema({"type": "string", "minLength": 8 * DECODE}), {}),
    "digits": (Grammar.regex("[0-9]{%d}" % (8 * DECODE)), {}),
}
real_set_mask = sampler.set_mask
writes = []
def set_mask(bitmask):
    t = time.perf_counter()
    real_set_mask(bitmask)
    writes.append(time.perf_counter() - t)
sampler.set_mask = set_mask
out = {}
for name, (g, lazy) in cases.items():
    writes.clear()
    gen = eng.generate(ids, SamplingParams(temperature=0.0, max_tokens=DECODE, ignore_eos=True),
                       matcher=Matcher(g, eng.token_index, **lazy))
    async for _ in gen:
        pass
    s = gen.stats
    out[name] = {
        "decode_tokens_per_s": round(s.decode_tokens_per_s, 3),
        "grammar_per_token_s": round(s.grammar_per_token_s, 6),
        "grammar_init_s": round(s.grammar_init_s, 4),
        "set_mask_ms": round(1000 * sum(writes) / max(1, len(writes)), 3),
    }
del sampler.set_mask
out
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument("--backend", default="cache", choices=["cache", "indexeddb", "opfs"])
    ap.add_argument("--context", type=int, default=512, help="context_window_size (KV cache positions)")
    ap.add_argument("--chromium-arg", action="append", default=[], help="extra Chromium flag (repeatable)")
    args = ap.parse_args()

    import tempfile

    from playwright.sync_api import sync_playwright

    import build
    from tests.browser.conftest import (
        TEST_DIST,
        TEST_PAGE,
        Server,
        WorkerSession,
        _route_test_page,
        prepare_test_dist,
    )

    dist = prepare_test_dist(build.build_demo(TEST_DIST))
    server = Server(dist)
    result: dict = {"backend": args.backend}
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            from tests.browser.conftest import launch

            ctx = launch(p, Path(profile), extra_args=args.chromium_arg)
            result["chromium"] = ctx.browser.version if ctx.browser else "chromium"

            def new_worker() -> tuple[WorkerSession, float]:
                page = ctx.new_page()
                _route_test_page(page)
                page.goto(server.url + TEST_PAGE)
                t = time.perf_counter()
                w = WorkerSession(page, "?config=test-boot.json")
                assert w.call({"kind": "echo"}, 300)["kind"] == "echo"
                return w, time.perf_counter() - t

            def sub(code: str) -> str:
                return (
                    code.replace("BACKEND", repr(args.backend))
                    .replace("CTX", str(args.context))
                    .replace("PROMPT", str(args.prompt_tokens))
                    .replace("DECODE", str(args.decode_tokens))
                    .replace("SEED", repr(SEED_TEXT))
                )

            w, boot_s = new_worker()
            w.run(
                sub(
                    LOAD.split("phases = {}")[0] + "await browser_cache.delete_model_in_cache(record, config)"
                )
            )
            cold = w.run(sub(LOAD), timeout_s=600)
            w.page.close()
            w, warm_boot_s = new_worker()
            warm = w.run(sub(LOAD), timeout_s=600)
            gen = w.run(sub(GENERATE), timeout_s=600)
            grammar = w.run(sub(GRAMMAR), timeout_s=900)
            adapter = w.run("engine._slots[engine.model_id].engine.device.info.summary()")
            ctx.close()
        result.update(
            {
                "adapter": adapter,
                "tier": warm["stats"]["tier"],
                "worker_boot_s": {"cold": round(boot_s, 2), "warm": round(warm_boot_s, 2)},
                "cold_load_s": round(cold["load_s"], 2),
                "cold_download_s": round(cold["download_s"], 2),
                "warm_load_s": round(warm["load_s"], 2),
                "weight_bytes": warm["stats"]["weight_bytes"],
                "pipelines": warm["stats"]["pipelines"],
                **gen,
                "grammar": grammar,
            }
        )
    finally:
        server.close()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
