"""Every architecture in every K-quant file type made by llama.cpp: the engine against transformers fp32 on the same file.

Fixtures: tiny seeded random models (qwen2, qwen3, phi3, gemma2, gemma3, mistral, llama3 RoPE, and a "fallback"
model whose rows are not multiples of 256) converted by llama.cpp's convert_hf_to_gguf.py and quantized by llama.cpp
into Q4_K_M (committed, tests/data/arch/*.Q4_K_M.gguf), then requantized by llama.cpp into Q5_K_M, Q6_K and Q8_0:
those 24 files are not committed but remade on first use by scripts/requantize.py from the committed ones
(tests/e2e/kquant_models.py, into ~/.cache/webllm_py/requantized/arch/) and refused unless byte-identical to
llama.cpp's (sha256 in goldens.json). Goldens in goldens.json / goldens.npz. All made by
scripts/make_arch_fixtures.py (its docstring explains the models, the prompts and the traps).

For every file, both kernel tiers, every prompt (token ids; the file's n_ctx per prompt):

1. First-step logits against transformers fp32 on the weights of that file: normalized error
   ||ours - ref|| / ||ref|| at most TOL_F32 (f32 tier) or TOL_F16 (f16 tier), and the argmax equal unless the
   reference's own top-2 margin is below NEAR_TIE.
2. First-step logits against llama.cpp on the same file, within LLAMA_CPP_TOL. llama.cpp's CPU path quantizes the
   activations of every matrix product (Q8_K blocks for K-quant weights, Q8_0 for Q5_0/Q8_0) and computes GeGLU
   through an f16 table; on the F32 files, where only the table remains, llama.cpp and transformers agree to
   1e-6..1e-5 (gemma: with the table emulated; gemma3 2e-4), so the gap is llama.cpp's own rounding. It measured
   0.9-18 % on these 32 files (goldens.json ``llama_cpp_rel_err``; above 10 % only on phi3's 300-token prompt in
   Q4_K_M and Q6_K and gemma2.Q6_K's window prompt), more than on real models because the fixtures' attention is
   deliberately sharp (so that the context matters), which amplifies noise. This is a sanity check of the
   transformers reference (a mis-mapped weight or a wrong config costs far more), not of the engine's precision.
3. 32 greedy steps after each prompt, teacher-forced (step i + 1 is fed the reference's token i, so one difference
   does not hide the rest): our token equals the reference's at every step, except at a true near-tie: the
   reference's top-2 margin is below NEAR_TIE and so is ours between the two tokens. Every such step is printed
   with both margins (run with ``-s``); never silently allowed. goldens.json lists every step's reference margin
   (``top2_margin``): 0-8 of a prompt's 32 are below NEAR_TIE (most on gemma2, whose final softcap squeezes the top
   logits), and only those may differ.

Tolerances:
- TOL_F32 = 1e-4 in the f32 tier, for every format: the engine must compute the exact math of the file in f32,
  the bound test_logits_goldens.py holds against a float64 reference (transformers f32 itself is within 1e-6 of
  float64 here). K-quants are no exception: their block scales are exact in f32 (f16 d times a 6-bit integer),
  and the merged kernels keep them so (1.1e-5 at most, see Status). A layout that rounded the per-32 scale products
  (d * sc, dmin * m; Q6_K d * sc16) to f16 would move these fixtures' logits by 6e-4..2.8e-2 (simulated in
  transformers, goldens.json ``simulated_repack_rel_err``: the min term's rounding shifts every weight of a block
  alike) and flip greedy tokens with margins up to ~0.5; on the real SmolLM2 it would cost up to 6.5e-4.
- TOL_F16 = 1e-2 in the f16 tier (K/V cache in f16), the numpy-reference bound of test_logits_goldens.py; rounding
  k and v to f16 moves these fixtures' logits by 3e-4..5.2e-3 (``simulated_f16_kv_rel_err``).
- NEAR_TIE = 0.25 logits: what f16 K/V can move a top logit by here (5.2e-3 of logits whose RMS is ~16, a few
  times that at the top); in the f32 tier exact math moves them by ~1e-3 at most.

Status (main at dbb6cd1, architectures merged): all 32 files pass in both tiers. First-step logits vs
transformers: f32 tier 6.1e-7..2.3e-5 (every format alike), f16 tier 1.9e-4..6.5e-3 (largest: llama3.Q8_0 long);
greedy identical at all 32 steps of every prompt in the f32 tier; in the f16 tier 6 printed near-ties out of 3072
steps (phi3.Q4_K_M short step 26, gemma2.Q4_K_M long 19, mistral.Q5_K_M long 14, llama3.Q4_K_M long 13,
llama3.Q5_K_M short 11, llama3.Q8_0 long 6; reference margins 0.000-0.068, ours 0.005-0.043). CI cost: ~140 s of
CPU for the 64 (file, tier) runs and the 24 requantizations (5.7 minutes of wall time on a 2-core machine shared
with other work: load average 8).

Run: ``PYTHONPATH=$PWD python3 -m pytest -q tests/e2e/test_arch_goldens.py`` (``-k gemma2`` for one family,
``-s`` to see near-ties).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from .conftest import E2E_TIERS
from .golden_checks import check_argmax, check_greedy, rel_err
from .kquant_models import arch_fixture_path
from .stepper import greedy_steps

ARCH_DIR = Path(__file__).resolve().parents[1] / "data" / "arch"
GOLDENS = json.loads((ARCH_DIR / "goldens.json").read_text())
with np.load(ARCH_DIR / "goldens.npz") as _z:
    LOGITS = {k: _z[k] for k in _z.files}

TOL_F32 = 1e-4
TOL_F16 = 1e-2
LLAMA_CPP_TOL = 0.25
NEAR_TIE = 0.25  # logits

FILES = [(model, name, entry) for model, m in GOLDENS["models"].items() for name, entry in m["files"].items()]


_results: dict = {}


def prompts_by_context(entry: dict) -> dict[int, list[dict]]:
    """The file's prompts grouped by the context size each needs (phi3's prompts use two, for LongRoPE)."""
    return {
        n: [p for p in entry["prompts"] if p["n_ctx"] == n]
        for n in sorted({p["n_ctx"] for p in entry["prompts"]})
    }


@contextmanager
def fixture_engine(name: str, tier, n_ctx: int, gpu_device, tuning: dict | None = None):
    """An engine on fixture file ``name`` (kernel ``tuning`` forced when given), unloaded on leaving, whatever happened."""
    from webllm_py.engine import load_engine

    engine = asyncio.run(
        load_engine(
            name.removesuffix(".gguf"),
            str(arch_fixture_path(name)),
            device=gpu_device,
            tier=tier,
            context_window_size=n_ctx,
            tuning=tuning,
        )  # fmt: skip
    )
    try:
        yield engine
    finally:
        asyncio.run(engine.unload())


def run(name: str, entry: dict, tier, prompt: dict, gpu_device):
    """Our token and full logits at each of the 32 steps of ``prompt``, fed the reference's tokens. All prompts of a
    (file, tier) run on one engine per context size, which is unloaded before the next file loads; results are kept
    for the session."""
    key = (name, tier)
    if key not in _results:
        out = {}
        for n_ctx, prompts in prompts_by_context(entry).items():
            with fixture_engine(name, tier, n_ctx, gpu_device) as engine:
                for p in prompts:
                    out[p["name"]] = greedy_steps(
                        engine, p["ids"], len(p["greedy_ids"]), forced=p["greedy_ids"]
                    )
        _results[key] = out
    return _results[key][prompt["name"]]


CASES = [
    pytest.param(name, entry, tier, p, id=f"{name.removesuffix('.gguf')}-{tier.name}-{p['name']}")
    for _, name, entry in FILES
    for tier in E2E_TIERS
    for p in entry["prompts"]
]


def test_fixture_files_are_the_recorded_ones():
    """The committed GGUF files are those the goldens were made on (sha256 recorded by the generating script)."""
    import hashlib

    committed = [(name, entry) for _, name, entry in FILES if "requantized_from" not in entry]
    assert len(committed) == len(GOLDENS["models"]), "one committed file per architecture"
    for name, entry in committed:
        digest = hashlib.sha256((ARCH_DIR / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{name}: sha256 {digest}, goldens were made on {entry['sha256']}"


@pytest.mark.parametrize(
    "name",
    [name for _, name, entry in FILES if "requantized_from" in entry],
    ids=lambda n: n.removesuffix(".gguf"),
)
def test_requantized_file_is_llama_cpps(name):
    """scripts/requantize.py remakes llama.cpp's requantization of the committed file (arch_fixture_path raises
    with both digests otherwise)."""
    entry = next(e for _, n, e in FILES if n == name)
    assert arch_fixture_path(name).stat().st_size == entry["bytes"]


@pytest.mark.parametrize("name,entry,tier,prompt", CASES)
def test_first_step_logits_vs_transformers(name, entry, tier, prompt, gpu_device):
    tokens, logits = run(name, entry, tier, prompt, gpu_device)
    ref = LOGITS[f"{name.removesuffix('.gguf')}/{prompt['name']}/hf"]
    err = rel_err(logits[0], ref)
    tol = TOL_F16 if tier.f16 else TOL_F32
    print(f"first-step error vs transformers: {name} {tier.name} {prompt['name']} {err:.2e}")
    assert err <= tol, f"{name} {prompt['name']}: normalized error vs transformers {err:.2e} > {tol:.0e}"
    top = np.argsort(-ref)[:2]
    label = f"{name} {tier.name} {prompt['name']}"
    check_argmax(
        label,
        int(np.argmax(logits[0])),
        (int(top[0]), int(top[1])),
        float(ref[top[0]] - ref[top[1]]),
        NEAR_TIE,
    )


@pytest.mark.parametrize("name,entry,tier,prompt", CASES)
def test_first_step_logits_vs_llama_cpp(name, entry, tier, prompt, gpu_device):
    tokens, logits = run(name, entry, tier, prompt, gpu_device)
    ref = LOGITS[f"{name.removesuffix('.gguf')}/{prompt['name']}/llama_cpp"]
    err = rel_err(logits[0], ref)
    assert err <= LLAMA_CPP_TOL, f"{name} {prompt['name']}: normalized error vs llama.cpp {err:.3f}"


@pytest.mark.parametrize("name,entry,tier,prompt", CASES)
def test_greedy_vs_transformers(name, entry, tier, prompt, gpu_device):
    tokens, logits = run(name, entry, tier, prompt, gpu_device)
    check_greedy(f"{name} {tier.name} {prompt['name']}", tokens, logits, prompt, NEAR_TIE)


# The integer-activation decode kernel (GEMV_MRQ: x in three signed-byte planes, ops.quantize_x), forced for every
# decode product, in the f32 tier.
PLANES_TUNING = {"gemv_variant": "GEMV_MRQ", "gemv_wg": 64, "gemv_seg": 16, "gemv_rt": 2, "attention_wg": 64,
                 "attention_splits": 2, "sample_wg": 256, "gemm_wg": 64}  # fmt: skip
PLANES_TOL = 1e-4  # every step's logits against the f32 kernels' own: TOL_F32
# Q4_K_M: Q4_K with Q6_K v (segmented q/k/v), Q6_K ffn_down in half the layers and the LM head; Q6_K and Q8_0 files
# (Q8_0 reads its planes in element order)
PLANES_FILES = ("Q4_K_M", "Q6_K", "Q8_0")


@pytest.mark.parametrize(
    "name,entry",
    [
        pytest.param(n, e, id=n.removesuffix(".gguf"))
        for _, n, e in FILES
        if any(q in n for q in PLANES_FILES)
    ],
)
def test_greedy_integer_planes_equal_f32_kernels(name, entry, gpu_device):
    """Decode on x as three integer planes (every product: q/k/v of two formats, Q6_K and Q8_0 too) keeps the f32
    tier's numerics: at every teacher-forced step of every prompt the logits are within PLANES_TOL of the f32
    GEMV's and the greedy tokens are the reference's, with no near-tie allowance (the f32 tier has none on these
    files either)."""
    tier = E2E_TIERS[0]
    for n_ctx, prompts in prompts_by_context(entry).items():
        with fixture_engine(name, tier, n_ctx, gpu_device, PLANES_TUNING) as engine:
            roles = engine.graph.decode_roles
            products = {r for r in roles if r in ("qkv", "o", "ffn1", "ffn2", "lm_head")}
            on_floats = sorted(r for r in products if roles.count(f"xq_{r}") != roles.count(r))
            assert products and not on_floats, f"decode products not on integer planes: {on_floats}"
            for p in prompts:
                tokens, logits = greedy_steps(engine, p["ids"], len(p["greedy_ids"]), forced=p["greedy_ids"])
                _, f32_logits = run(name, entry, tier, p, gpu_device)
                errs = [rel_err(a, b) for a, b in zip(logits, f32_logits, strict=True)]
                print(f"integer planes vs f32 kernels: {name} {p['name']} largest step error {max(errs):.2e}")
                assert max(errs) <= PLANES_TOL, f"{name} {p['name']}: {max(errs):.2e} from the f32 kernels"
                assert tokens == p["greedy_ids"], f"{name} {p['name']}: greedy tokens differ"


# The f16 tier's prefill on GEMM_RT with f16 tiles and per-block f16 sums (RT_HALF, opt-in: Kernels.gemm_f16),
# forced for the Q4_K_M files: the first-step logits come from the prefill. Measured 1.4e-3..2.5e-2 from transformers
# (phi3's 300-token prompt the largest; the f16 tier's default kernels 2e-4..4.5e-3 on the same prompts): above the
# f16 tier's TOL_F16, hence opt-in, held to HALF_TOL here so a broken layout or an overflow still fails.
HALF_TOL = 5e-2
HALF_TUNING = {**PLANES_TUNING, "gemv_variant": "GEMV", "gemv_wg": 16, "gemm_variant": "GEMM_RT", "gemm_wg": 64,
               "gemm_rt_min_dim": 0, "gemm_f16": True}  # fmt: skip


@pytest.mark.parametrize(
    "name,entry", [pytest.param(n, e, id=n.removesuffix(".gguf")) for _, n, e in FILES if "Q4_K_M" in n]
)
def test_first_step_logits_f16_gemm_vs_transformers(name, entry, gpu_device):
    """Prefill on RT_HALF in the f16 tier: every prompt's first-step logits within HALF_TOL of transformers fp32,
    the argmax the reference's unless its own top-2 margin is a near-tie."""
    tier = E2E_TIERS[1]
    for n_ctx, prompts in prompts_by_context(entry).items():
        with fixture_engine(name, tier, n_ctx, gpu_device, HALF_TUNING) as engine:
            assert engine.kern.gemm_f16 and engine.kern.gemm_variant == "GEMM_RT"
            for p in prompts:
                _, logits = greedy_steps(engine, p["ids"], 1)
                ref = LOGITS[f"{name.removesuffix('.gguf')}/{p['name']}/hf"]
                err = rel_err(logits[0], ref)
                print(f"f16 GEMM first-step error vs transformers: {name} {p['name']} {err:.2e}")
                assert err <= HALF_TOL, f"{name} {p['name']}: {err:.2e} > {HALF_TOL:.0e}"
                top = np.argsort(-ref)[:2]
                check_argmax(f"{name} f16 GEMM {p['name']}", int(np.argmax(logits[0])), (int(top[0]), int(top[1])),
                             float(ref[top[0]] - ref[top[1]]), NEAR_TIE)  # fmt: skip
