"""SmolLM2-135M in Q4_K_M / Q5_K_M / Q6_K / Q8_0: remade from the Q4_1 file and checked against llama.cpp's bytes.

llama.cpp made these files (scripts/make_kquant_goldens.py, which recorded their sha256 in
tests/data/arch/smollm2_kquants.json); they are ~100 MB each, so they are not committed, and CI cannot build
llama.cpp. scripts/requantize.py reproduces llama.cpp's quantizer in numpy byte for byte, so the first use here
remakes each file from the cached Q4_1 model into ~/.cache/webllm_py/requantized/ and refuses it unless its
sha256 is the recorded one: every golden made on llama.cpp's file is then valid for it.
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
RECORD = json.loads((REPO / "tests" / "data" / "arch" / "smollm2_kquants.json").read_text())
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


@cache
def kquant_path(ftype: str) -> Path:
    """The requantized SmolLM2 file of ``ftype``, made once and verified against llama.cpp's sha256."""
    rec = RECORD["files"][ftype]
    requantize = _requantizer()
    sha256 = requantize.file_sha256
    dst = cache_dir() / rec["file"]
    if dst.exists() and sha256(dst) == rec["sha256"]:
        return dst
    src = Path(smollm2_path())
    src_digest = sha256(src)
    if src_digest != RECORD["source"]["sha256"]:
        raise AssertionError(
            f"{src}: sha256 {src_digest}, but the K-quant files were made from {RECORD['source']['file']} "
            f"with sha256 {RECORD['source']['sha256']}"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = requantize.requantize(src, dst, ftype)
    if digest != rec["sha256"]:
        dst.unlink()
        raise AssertionError(
            f"scripts/requantize.py made {rec['file']} with sha256 {digest}, but llama.cpp's file has "
            f"{rec['sha256']}: the numpy requantizer no longer reproduces llama.cpp (run `python3 "
            f"scripts/requantize.py SRC --ftype {ftype} --out X --check LLAMA_CPP_FILE` where llama.cpp is built)"
        )
    return dst
