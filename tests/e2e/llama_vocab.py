"""llama.cpp's vocabulary-only GGUFs with its tokenizer test vectors, kept in tests/data/llama_vocab/ (xz-compressed
copies from the llama-cpp-python sdist; its README says which). Decompressed once per test process (~1 s)."""

from __future__ import annotations

import hashlib
import lzma
import tempfile
from functools import cache
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "llama_vocab"
VOCABS = ("qwen2", "llama-bpe", "llama-spm", "phi-3")


@cache
def _unpacked() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="llama-vocab-"))
    for name in VOCABS:
        (folder / f"ggml-vocab-{name}.gguf").write_bytes(
            lzma.decompress((DATA / f"ggml-vocab-{name}.gguf.xz").read_bytes())
        )
    return folder


def vocab_path(name: str) -> Path:
    path = _unpacked() / f"ggml-vocab-{name}.gguf"
    readme = (DATA / "README.md").read_text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in readme, (
        f"{path.name} is not the file the README names"
    )
    return path


def llama_vectors(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's own vectors for a vocabulary: (text, ids without BOS, special tokens not parsed)."""
    sep = "\n__ggml_vocab_test__\n"
    texts = (DATA / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split(sep)
    ids = (DATA / f"ggml-vocab-{name}.gguf.out").read_text().split("\n")
    if texts and texts[-1].endswith(sep.rstrip("\n")):
        texts[-1] = texts[-1][: -len(sep.rstrip("\n"))]
    return [(t, [int(x) for x in ids[i].split()]) for i, t in enumerate(texts)]
