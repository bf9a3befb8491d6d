"""llama.cpp's vocabulary-only GGUFs with its tokenizer test vectors (``models/ggml-vocab-NAME.gguf`` plus
``.gguf.inp`` strings and ``.gguf.out`` ids), from the llama-cpp-python sdist on PyPI.

The first call downloads the sdist (77 MB) with ``pip download`` and keeps only these files (15 MB) in
~/.cache/webllm_py/llama-vocab-0.3.36/; later calls find them there. ``python3 build.py test`` fetches them before
pytest starts, as it does the model.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from functools import cache
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist scripts/make_vocab_goldens.py ran llama.cpp from
VOCABS = ("qwen2", "llama-bpe", "llama-spm", "phi-3")
CACHE = Path.home() / ".cache" / "webllm_py" / f"llama-vocab-{LLAMA_CPP_PYTHON}"


def _names() -> list[str]:
    return [f"ggml-vocab-{v}.gguf{ext}" for v in VOCABS for ext in ("", ".inp", ".out")]


@cache
def vocab_dir() -> Path:
    if all((CACHE / n).exists() for n in _names()):
        return CACHE
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:", "-d", tmp,
             f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
            check=True,
        )  # fmt: skip
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        wanted = {f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/models/{n}": n for n in _names()}
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            for member in tar:
                name = wanted.get(member.name)
                if name is not None:
                    part = CACHE / (name + ".part")
                    part.write_bytes(tar.extractfile(member).read())
                    part.replace(CACHE / name)
    missing = [n for n in _names() if not (CACHE / n).exists()]
    if missing:
        raise FileNotFoundError(f"the llama-cpp-python {LLAMA_CPP_PYTHON} sdist has no {missing}")
    return CACHE


def vocab_path(name: str) -> Path:
    return vocab_dir() / f"ggml-vocab-{name}.gguf"


def llama_vectors(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's own vectors for a vocabulary: (text, ids without BOS, special tokens not parsed)."""
    texts = (
        (vocab_dir() / f"ggml-vocab-{name}.gguf.inp")
        .read_text(encoding="utf-8")
        .split("\n__ggml_vocab_test__\n")
    )
    ids = (vocab_dir() / f"ggml-vocab-{name}.gguf.out").read_text().split("\n")
    if texts and texts[-1].endswith("\n__ggml_vocab_test__"):
        texts[-1] = texts[-1][: -len("\n__ggml_vocab_test__")]
    return [(t, [int(x) for x in ids[i].split()]) for i, t in enumerate(texts)]
