#!/usr/bin/env python3
"""Grammar engine cost per token on real vocabularies (desktop CPython; the same code runs in Pyodide).

    python3 bench/grammar.py [--vocab PATH.gguf ...] [--walks 3] [--steps 60]

For each vocabulary (default: SmolLM2's 49,152 tokens, and llama.cpp's ggml-vocab-qwen2.gguf, 151,936, when
the llama-cpp-python sdist is in /work/cache): the token index build (token bytes from the tokenizer, tries,
safe slice), then per case (a JSON schema, any JSON object, an EBNF grammar, a counted string) the compile
time and the mask time per token, in ms (mean, median, max), for

  target  the tokens of a fixed answer, cold: a new grammar and an empty mask cache (the first request);
  again   the same answer with the same compiled grammar (its mask cache warm: a repeated request);
  walk    uniform random walks through the allowed tokens (seeded), cold: states a real model reaches less
          often (long strings, numbers), each walk on a freshly compiled grammar.

``mask`` includes the conversion to the sampler's bytes (``Matcher.mask``); ``accept`` is separate. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webllm_py.grammar import Grammar, Matcher, TokenIndex  # noqa: E402
from webllm_py.model.gguf import GGUFFile  # noqa: E402
from webllm_py.tokenizer import Tokenizer  # noqa: E402

QWEN_VOCAB = Path("/work/cache/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf")

PROFILE = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["zip"],
            "additionalProperties": False,
        },
        "kind": {"enum": ["alpha", "beta", "gamma"]},
    },
    "required": ["name", "age", "tags", "address", "kind"],
    "additionalProperties": False,
}
PROFILE_ANSWER = {
    "name": "Robert Smith the third",
    "age": 42,
    "tags": ["engineer", "hiker", "cook"],
    "address": {"zip": "12345"},
    "kind": "beta",
}
ARITH = (
    'root ::= expr ("=" expr)*\nexpr ::= term ([-+*/] term)*\nterm ::= num | "(" expr ")"\nnum ::= [0-9]+\n'
)
CASES = {
    "schema_profile": (lambda: Grammar.json_schema(PROFILE), json.dumps(PROFILE_ANSWER)),
    "json_object": (
        lambda: Grammar.json_object(),
        json.dumps({"answer": PROFILE_ANSWER, "ok": True, "n": [1, 2.5]}),
    ),
    "string_maxlength_200": (
        lambda: Grammar.json_schema({"type": "string", "maxLength": 200}),
        json.dumps("The quick brown fox jumps over the lazy dog, then rests under a tree for a while."),
    ),
    "ebnf_arith": (lambda: Grammar.ebnf(ARITH), "(12+3)*45-6=7/8"),
}


def stats(ms: list[float]) -> dict[str, float]:
    return {
        "mean_ms": round(statistics.mean(ms), 4),
        "median_ms": round(statistics.median(ms), 4),
        "max_ms": round(max(ms), 3),
        "n": len(ms),
    }


def drive(matcher: Matcher, ids: list[int]) -> tuple[list[float], list[float]]:
    masks, accepts = [], []
    for t in ids:
        t0 = time.perf_counter()
        mask = matcher.mask()
        t1 = time.perf_counter()
        assert mask[t >> 3] >> (t & 7) & 1, t
        ok = matcher.accept(t)
        t2 = time.perf_counter()
        assert ok
        masks.append(1e3 * (t1 - t0))
        accepts.append(1e3 * (t2 - t1))
    return masks, accepts


def walk(matcher: Matcher, rng: random.Random, steps: int) -> list[float]:
    index = matcher.index
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        mask = matcher.mask()
        out.append(1e3 * (time.perf_counter() - t0))
        m = int.from_bytes(mask, "little") & ~index.stop_mask
        if not m:
            break
        for _ in range(64):
            t = rng.randrange(index.n_vocab)
            if m >> t & 1:
                break
        else:
            t = rng.choice([i for i in range(index.n_vocab) if m >> i & 1])
        matcher.accept(t)
    return out


def bench_vocab(path: Path, walks: int, steps: int) -> dict:
    t0 = time.perf_counter()
    with GGUFFile.open(path) as f:
        tok = Tokenizer.from_gguf(f.metadata)
    t1 = time.perf_counter()
    index = TokenIndex.from_tokenizer(tok)
    t2 = time.perf_counter()
    index.ensure_built()
    t3 = time.perf_counter()
    result: dict = {
        "vocab": path.name,
        "n_vocab": index.n_vocab,
        "tokenizer_load_s": round(t1 - t0, 3),
        "token_bytes_s": round(t2 - t1, 3),
        "index_build_s": round(t3 - t2, 3),
        "trie_nodes": len(index.trie),
        "safe_tokens": index.n_safe,
        "tail_trie_nodes": sum(len(t) for t in index.tails),
        "bitmask_bytes": index.words * 4,
        "cases": {},
    }
    for name, (make, text) in CASES.items():
        ids = tok.encode(text)
        t0 = time.perf_counter()
        grammar = make()
        compile_s = time.perf_counter() - t0
        cold, accepts = drive(Matcher(grammar, index), ids)
        again, _ = drive(Matcher(grammar, index), ids)
        walked: list[float] = []
        for seed in range(walks):
            walked += walk(Matcher(make(), index), random.Random(seed), steps)
        result["cases"][name] = {
            "compile_ms": round(1e3 * compile_s, 2),
            "tokens": len(ids),
            "target": stats(cold),
            "again": stats(again),
            "walk": stats(walked),
            "accept": stats(accepts),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", action="append", type=Path, help="GGUF files (default: SmolLM2, qwen2 vocab)")
    ap.add_argument("--walks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    paths = args.vocab
    if not paths:
        from tests.e2e.model_path import smollm2_path

        paths = [smollm2_path()] + ([QWEN_VOCAB] if QWEN_VOCAB.exists() else [])
    out = {"python": sys.version.split()[0], "platform": sys.platform, "results": []}
    for p in paths:
        out["results"].append(bench_vocab(Path(p), args.walks, args.steps))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
