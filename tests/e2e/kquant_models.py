"""K-quant model files that are not committed, remade by scripts/requantize.py and checked against llama.cpp's bytes.

llama.cpp made every one of these files (scripts/make_kquant_goldens.py, scripts/make_arch_fixtures.py, which
recorded their sha256), and CI cannot build llama.cpp. scripts/requantize.py reproduces llama.cpp's quantizer in
numpy byte for byte, so the first use remakes a file from its committed or cached source into
~/.cache/webllm_py/requantized/ and refuses it unless its sha256 is the recorded one: every golden made on
llama.cpp's file is then valid for it.

- SmolLM2-135M in Q4_K_M / Q5_K_M / Q6_K / Q8_0 (``kquant_path``): ~100 MB each, made from the cached Q4_1 model;
  recorded in tests/data/arch/smollm2_kquants.json.
- The tiny architecture fixtures in Q5_K_M / Q6_K / Q8_0 (``arch_fixture_path``): made from the committed Q4_K_M
  file of the same model; recorded in tests/data/arch/goldens.json (``requantized_from``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from functools import cache
from pathlib import Path

from .model_path import smollm2_path

REPO = Path(__file__).resolve().parents[2]
ARCH_DIR = REPO / "tests" / "data" / "arch"
RECORD = json.loads((ARCH_DIR / "smollm2_kquants.json").read_text())
FTYPES = tuple(RECORD["files"])


@cache
def _requantizer():
    """scripts/requantize.py, imported by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("requantize", REPO / "scripts" / "requantize.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def cache_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "webllm_py" / "requantized"


def requantized(src: Path, src_sha256: str, ftype: str, dst: Path, sha256: str) -> Path:
    """``dst``: ``src`` requantized into ``ftype`` by scripts/requantize.py (kept if already there with the right
    digest), which must be llama.cpp's file of digest ``sha256``; ``src`` must be the file llama.cpp started from."""
    requantize = _requantizer()
    if dst.exists() and requantize.file_sha256(dst) == sha256:
        return dst
    src_digest = requantize.file_sha256(src)
    if src_digest != src_sha256:
        raise AssertionError(
            f"{src}: sha256 {src_digest}, but llama.cpp made {dst.name} from a file with sha256 {src_sha256}"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = requantize.requantize(src, dst, ftype)
    if digest != sha256:
        dst.unlink()
        raise AssertionError(
            f"scripts/requantize.py made {dst.name} with sha256 {digest}, but llama.cpp's file has {sha256}: the "
            f"numpy requantizer no longer reproduces llama.cpp (run `python3 scripts/requantize.py {src} --ftype "
            f"{ftype} --out X --check LLAMA_CPP_FILE` where llama.cpp is built)"
        )
    return dst


@cache
def kquant_path(ftype: str) -> Path:
    """The requantized SmolLM2 file of ``ftype``, made once and verified against llama.cpp's sha256."""
    rec = RECORD["files"][ftype]
    src = Path(smollm2_path())
    return requantized(src, RECORD["source"]["sha256"], ftype, cache_dir() / rec["file"], rec["sha256"])


@cache
def arch_fixture_path(name: str) -> Path:
    """The architecture fixture ``name`` (e.g. ``qwen2.Q6_K.gguf``): committed, or requantized from the committed
    file it names in goldens.json."""
    goldens = json.loads((ARCH_DIR / "goldens.json").read_text())
    files = {n: e for m in goldens["models"].values() for n, e in m["files"].items()}
    entry = files[name]
    if "requantized_from" not in entry:
        return ARCH_DIR / name
    src = entry["requantized_from"]
    ftype = name.removesuffix(".gguf").split(".", 1)[1]
    return requantized(
        ARCH_DIR / src, files[src]["sha256"], ftype, cache_dir() / "arch" / name, entry["sha256"]
    )
