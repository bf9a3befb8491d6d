#!/usr/bin/env python3
"""Desktop benchmark: our engine (wgpu-native) against llama.cpp on the same GGUF and the same prompts. Prints JSON.

    python3 bench/decode.py [--prompt-tokens 128 512] [--decode-tokens 128] [--threads N] [--model PATH]

Measures, for each prompt length: prefill tokens/s and time to first token (prompt -> first sampled id on the
host), then decode tokens/s over --decode-tokens greedy tokens (EOS ignored). Also: load time, dispatches per decode
step, GPU memory allocated (peak), the adapter and kernel tier. When ``llama_cpp`` imports, llama.cpp runs the same
token ids on the CPU with --threads threads, and the ratios ours / llama.cpp are printed.

``--grammar`` adds constrained decoding at the first prompt length (``grammar_runs``): the same number of greedy
tokens under grammars that cannot end early, each reported with its decode tokens/s and the host seconds per token
spent in the matcher (``grammar_per_token_s``, WebLLM's number):

  split_unmasked  a lazy matcher that never arms: the split decode loop (forward, then sample, one submission
                  each, the host in the loop every step) with no mask at all: what the split alone costs;
  string          inside a long JSON string (``{"type": "string", "minLength": ...}``): the mask is the safe
                  slice plus a small walk, the common state of JSON answers;
  digits          a long run of digits: a restrictive mask (10 of the vocabulary's tokens and their runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

from bench.knobs import add_kernel_args, device_options, kernel_tuning  # noqa: E402

SEED_TEXT = (
    "The history of computing is a story of people, ideas and machines. Early mechanical calculators gave way to "
    "electronic computers, which filled whole rooms. Transistors made them smaller, and integrated circuits put "
    "billions of transistors on one chip. Software grew alongside the hardware, from machine code to Python. "
)


def prompt_ids(tokenizer, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(SEED_TEXT, add_bos=False)
    return ids[:n]


async def bench_ours(
    model: str,
    lengths: list[int],
    n_decode: int,
    tier_name: str | None,
    knobs: argparse.Namespace,
    bandwidth_gbs: float | None = None,
    greedy_partials: bool = True,
    grammar: bool = False,
) -> dict:
    from webllm_py.engine import SamplingParams, load_engine
    from webllm_py.host.native import open_device
    from webllm_py.kernels.registry import Tier

    device = await open_device(**device_options(knobs))
    tuning, tune = kernel_tuning(knobs, device)
    tier = None
    if tier_name:
        tier = Tier(f16=tier_name.startswith("f16"), subgroups=tier_name.endswith("subgroups"))
    t0 = time.perf_counter()
    engine = await load_engine(
        "bench",
        model,
        device=device,
        tier=tier,
        tuning=tuning,
        tune=tune,
        context_window_size=max(lengths) + n_decode + 8,
        prefill_chunk_size=knobs.prefill_chunk,
    )
    load_s = time.perf_counter() - t0
    if not greedy_partials:
        engine.graph.sampler.use_partials(0)
    out = {
        "engine": "webllm_py",
        "adapter": device.info.summary(),
        "tier": engine.tier.name,
        "tuning": {
            "gemv_by_role": engine.load_stats.get("gemv"),
            "gemv_tuning": engine.load_stats.get("gemv_tuning"),
            "gemm": f"{engine.kern.gemm_variant}/{engine.kern.gemm_wg}",
            "attention_wg": engine.kern.attention_wg,
            "attention_splits": engine.kern.attention_splits,
            "prefill_chunk": engine.graph.chunk,
        },
        "load_time_s": round(load_s, 3),
        "dispatches_per_decode_step": engine.dispatches_per_decode_step,
        "greedy_partials": engine.graph.sampler.n_best,
        "gpu_weight_bytes": engine.graph.weight_bytes,
        "gpu_kv_cache_bytes": engine.graph.kv_bytes,
        "gpu_peak_allocated_bytes": device.peak_allocated_bytes,
        "runs": [],
    }
    # Warm-up: compiles nothing new but lets the driver settle.
    gen = engine.generate(
        prompt_ids(engine.tokenizer, 8), SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    )
    async for _ in gen:
        pass
    # Host time spent encoding and submitting decode steps (the CPU side of each step; the GPU runs the previous
    # one meanwhile, so a step costs about max(this, its GPU time)). The engine encodes a step ahead (encode) and
    # submits it later (submit_encoded); the first decode step goes through submit.
    real = {name: getattr(device, name) for name in ("submit", "encode", "submit_encoded")}
    decode_host = {"s": 0.0, "steps": 0}

    def timed(name):
        def call(*args, **kwargs):
            t = time.perf_counter()
            result = real[name](*args, **kwargs)
            if name == "submit_encoded" or args[0] is engine.graph.decode_dispatches:
                decode_host["s"] += time.perf_counter() - t
                decode_host["steps"] += name != "encode"
            return result

        return call

    for name in real:
        setattr(device, name, timed(name))
    for n in lengths:
        ids = prompt_ids(engine.tokenizer, n)
        for _ in range(2):  # the first pass warms this prompt length up; the second is measured
            params = SamplingParams(temperature=0, max_tokens=n_decode, ignore_eos=True)
            decode_host.update(s=0.0, steps=0)
            gen = engine.generate(ids, params, reuse_kv=False)  # the whole prompt prefilled each time
            async for _ in gen:
                pass
        s = gen.stats
        out["runs"].append(
            {
                "prompt_tokens": n,
                "decode_tokens": s.completion_tokens,
                "prefill_tokens_per_s": round(s.prefill_tokens_per_s, 2),
                "time_to_first_token_s": round(s.time_to_first_token_s, 4),
                "decode_tokens_per_s": round(s.decode_tokens_per_s, 2),
                "host_ms_encode_submit_per_decode_step": round(
                    decode_host["s"] / max(1, decode_host["steps"]) * 1e3, 3
                ),
            }
        )
        if bandwidth_gbs:
            out["runs"][-1]["roofline"] = roofline(engine, n + n_decode / 2, bandwidth_gbs)
    for name, method in real.items():
        setattr(device, name, method)
    if grammar:
        out["grammar_runs"] = await bench_grammar(engine, lengths[0], n_decode, out["runs"][0])
    await engine.unload()
    return out


async def bench_grammar(engine, n_prompt: int, n_decode: int, free: dict) -> list[dict]:
    from webllm_py.engine import SamplingParams
    from webllm_py.grammar import Grammar, Matcher

    cases = {
        "split_unmasked": (Grammar.regex("x"), {"trigger_ids": [engine.tokenizer.vocab_size - 1]}),
        "string": (Grammar.json_schema({"type": "string", "minLength": 8 * n_decode}), {}),
        "digits": (Grammar.regex(f"[0-9]{{{8 * n_decode}}}"), {}),
    }
    ids = prompt_ids(engine.tokenizer, n_prompt)
    runs = [{"case": "free", "decode_tokens_per_s": free["decode_tokens_per_s"]}]
    for name, (g, lazy) in cases.items():
        for _ in range(
            2
        ):  # the first pass fills the grammar's mask cache and warms up; the second is measured
            matcher = Matcher(g, engine.token_index, **lazy)
            params = SamplingParams(temperature=0, max_tokens=n_decode, ignore_eos=True)
            gen = engine.generate(ids, params, reuse_kv=False, matcher=matcher)
            async for _ in gen:
                pass
        s = gen.stats
        runs.append(
            {
                "case": name,
                "decode_tokens": s.completion_tokens,
                "decode_tokens_per_s": round(s.decode_tokens_per_s, 2),
                "grammar_per_token_s": round(s.grammar_per_token_s, 6),
                "grammar_init_s": round(s.grammar_init_s or 0.0, 4),
            }
        )
    return runs


def roofline(engine, mean_context: float, bandwidth_gbs: float) -> dict:
    """The decode speed memory bandwidth alone would allow: every weight byte (the tied embedding is the LM head)
    and the KV cache up to the mean context read once per token, nothing else."""
    kv_per_position = engine.graph.kv_bytes / engine.graph.max_ctx
    per_token = engine.graph.weight_bytes + kv_per_position * mean_context
    return {
        "bandwidth_gbs": bandwidth_gbs,
        "bytes_read_per_token": int(per_token),
        "max_decode_tokens_per_s": round(bandwidth_gbs * 1e9 / per_token, 1),
    }


def last_argmax(llama_cpp, llm, np) -> int:
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))))


def bench_llama_cpp(model: str, lengths: list[int], n_decode: int, threads: int, tokenizer) -> dict | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    import numpy as np

    n_gpu = int(os.environ.get("BENCH_LLAMA_GPU_LAYERS", "0"))
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=model,
        n_ctx=max(lengths) + n_decode + 8,
        n_threads=threads,
        n_batch=512,
        n_gpu_layers=n_gpu,
        verbose=False,
    )
    out = {
        "engine": "llama.cpp",
        "version": llama_cpp.__version__,
        "threads": threads,
        "n_gpu_layers": n_gpu,
        "load_time_s": round(time.perf_counter() - t0, 3),
        "runs": [],
    }
    for n in lengths:
        ids = prompt_ids(tokenizer, n)
        for _ in range(2):  # as for ours: the first pass warms this prompt length up, the second is measured
            llm.reset()
            t = time.perf_counter()
            llm.eval(ids)
            tok = last_argmax(llama_cpp, llm, np)
            ttft = time.perf_counter() - t
            t1 = time.perf_counter()
            for _ in range(n_decode - 1):
                llm.eval([tok])
                tok = last_argmax(llama_cpp, llm, np)
            dec = time.perf_counter() - t1
        out["runs"].append(
            {
                "prompt_tokens": n,
                "decode_tokens": n_decode,
                "prefill_tokens_per_s": round(n / ttft, 2),
                "time_to_first_token_s": round(ttft, 4),
                "decode_tokens_per_s": round((n_decode - 1) / dec, 2),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="GGUF path (default: the embedded SmolLM2-135M-Instruct Q4_1)"
    )
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--tier", default=None, help="f32, f32-subgroups, f16 or f16-subgroups (default: best)")
    ap.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    ap.add_argument("--only-peer", action="store_true", help="llama.cpp alone (ours skipped)")
    ap.add_argument(
        "--bandwidth-gbs",
        type=float,
        default=None,
        help="the GPU's peak memory bandwidth (GB/s; H200 4800, H100 SXM 3350): adds the decode roofline",
    )
    add_kernel_args(ap)
    ap.add_argument(
        "--greedy-partials",
        choices=["on", "off"],
        default="on",
        help="off: greedy sampling reads every logit instead of the LM head's per-workgroup argmax partials",
    )
    ap.add_argument("--grammar", action="store_true", help="also decode under grammars (see above)")
    args = ap.parse_args()
    model = args.model
    if model is None:
        from tests.e2e.model_path import smollm2_path

        model = str(smollm2_path())
    result: dict = {"model": os.path.basename(model)}
    ours = None
    if not args.only_peer:
        ours = asyncio.run(
            bench_ours(
                model,
                args.prompt_tokens,
                args.decode_tokens,
                args.tier,
                args,
                args.bandwidth_gbs,
                args.greedy_partials == "on",
                args.grammar,
            )
        )
        result["ours"] = ours
    if not args.no_peer:
        from webllm_py.model.gguf import GGUFFile
        from webllm_py.tokenizer import Tokenizer

        with GGUFFile.open(model) as g:
            tok = Tokenizer.from_gguf(g.metadata)
        peer = bench_llama_cpp(model, args.prompt_tokens, args.decode_tokens, args.threads, tok)
        if peer is not None:
            result["llama_cpp"] = peer
        if peer is not None and ours is not None:
            result["ratio_ours_over_llama_cpp"] = [
                {
                    "prompt_tokens": a["prompt_tokens"],
                    "prefill": round(a["prefill_tokens_per_s"] / b["prefill_tokens_per_s"], 3),
                    "decode": round(a["decode_tokens_per_s"] / b["decode_tokens_per_s"], 3),
                }
                for a, b in zip(ours["runs"], peer["runs"], strict=True)
            ]
        elif peer is None:
            result["llama_cpp"] = "not installed (pip install llama-cpp-python to compare)"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
