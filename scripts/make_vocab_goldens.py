"""llama.cpp's token ids for tests/data/tokenizer_corpus.json on llama.cpp's own vocabulary-only GGUFs, into
tests/data/goldens/vocab_ids.json (committed; tests/e2e/test_vocab_goldens.py compares webllm_py's tokenizer).

Run by hand from the repo root (needs ``llama-cpp-python`` 0.3.36 and ``gguf``):

    python3 scripts/make_vocab_goldens.py

Vocabularies (the copies in tests/data/llama_vocab/, which tests/e2e/llama_vocab.py unpacks):

* ``qwen2`` (Qwen2.5 / Qwen3, byte-level BPE), ``llama-bpe`` (Llama 3.x), ``llama-spm`` (Llama-2 / Mistral
  SentencePiece, with the space prefix), ``phi-3`` (Phi-3 / 3.5 SentencePiece);
* ``spm-no-prefix``: llama-spm with ``tokenizer.ggml.add_space_prefix = false``, the way Gemma 2 / 3 GGUFs are
  written (no Gemma vocabulary ships with llama.cpp's tests);
* ``tekken``: llama-bpe with ``tokenizer.ggml.pre = tekken`` (Mistral Nemo / Small 3.x / Ministral's pre-tokenizer;
  no Tekken vocabulary ships with them either), so llama.cpp's tekken path runs on a real BPE vocabulary.

Each corpus string is tokenized as llama.cpp's ``llama_tokenize(add_special=True, parse_special=...)`` does, with
special-token parsing on and off, plus strings made of each vocabulary's own control tokens.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import gguf
import llama_cpp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from make_goldens import LLAMA_CPP_COMMITS, finish, vocab_only_writer  # noqa: E402

from tests.e2e.llama_vocab import VOCABS, vocab_path  # noqa: E402

OUT = REPO / "tests" / "data" / "goldens" / "vocab_ids.json"
CONTROL_TYPE = 3


def control_strings(path: Path) -> list[str]:
    """Texts around the vocabulary's first control tokens, so parse_special has something to find."""
    reader = gguf.GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    control = [t for t, ty in zip(tokens, types, strict=True) if ty == CONTROL_TYPE][:4]
    joined = "".join(control)
    return [
        joined,
        f"Hello{control[0]}world {control[-1]}\n{control[0]} x",
        f" {control[-1]}  {control[-1]}end",
        f"<{control[0][1:]}" if control[0].startswith("<") else f"[{control[0]}",
    ]


def main() -> int:
    corpus = json.loads((REPO / "tests" / "data" / "tokenizer_corpus.json").read_text())
    out = {
        "generator": "scripts/make_vocab_goldens.py",
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_commit": LLAMA_CPP_COMMITS.get(llama_cpp.__version__, "unknown"),
        "corpus_sha256": hashlib.sha256(
            (REPO / "tests" / "data" / "tokenizer_corpus.json").read_bytes()
        ).hexdigest(),
        "vocabs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = {v: vocab_path(v) for v in VOCABS}
        no_prefix = Path(tmp) / "spm-no-prefix.gguf"
        writer = vocab_only_writer(files["llama-spm"], no_prefix, keep_tokenizer=True)
        writer.add_bool("tokenizer.ggml.add_space_prefix", False)
        finish(writer)
        files["spm-no-prefix"] = no_prefix
        tekken = Path(tmp) / "tekken.gguf"
        finish(
            vocab_only_writer(
                files["llama-bpe"], tekken, keep_tokenizer=True, overrides={"tokenizer.ggml.pre": "tekken"}
            )
        )
        files["tekken"] = tekken
        for name, path in files.items():
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            extra = control_strings(path)
            cases = []
            for text in corpus + extra:
                data = text.encode("utf-8")
                cases.append(
                    {
                        "special": llm.tokenize(data, add_bos=True, special=True),
                        "plain": llm.tokenize(data, add_bos=True, special=False),
                    }
                )
            source = {"spm-no-prefix": "llama-spm", "tekken": "llama-bpe"}.get(name, name)
            out["vocabs"][name] = {
                "file": f"ggml-vocab-{source}.gguf",
                "add_space_prefix": None if name != "spm-no-prefix" else False,
                "pre": "tekken" if name == "tekken" else None,
                "extra_texts": extra,
                "cases": cases,
            }
            print(f"{name}: {len(cases)} strings")
            del llm
    OUT.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
