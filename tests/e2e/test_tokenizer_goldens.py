"""Our tokenizer and chat template against llama.cpp's goldens (scripts/make_goldens.py), on the real SmolLM2 GGUF.

Every comparison is exact. A failure names the string and the first differing position.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from tests.e2e.model_path import smollm2_path
from webllm_py.conversation import get_chat_template
from webllm_py.model.gguf import GGUFFile
from webllm_py.tokenizer import Tokenizer, _byte_alphabet

pytestmark = pytest.mark.model

GOLDENS = Path(__file__).resolve().parent.parent / "data" / "goldens"


@cache
def metadata() -> dict:
    with GGUFFile.open(smollm2_path()) as f:
        return dict(f.metadata)


@cache
def tokenizer(pre: str | None = None) -> Tokenizer:
    meta = metadata() if pre is None else {**metadata(), "tokenizer.ggml.pre": pre}
    return Tokenizer.from_gguf(meta)


@cache
def golden(name: str) -> dict:
    return json.loads((GOLDENS / name).read_text())


def first_diff(ours: list, theirs: list) -> int:
    return next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
    )


def assert_same_ids(ours: list[int], theirs: list[int], what: str) -> None:
    if ours != theirs:
        i = first_diff(ours, theirs)
        pytest.fail(
            f"{what}: ids differ at position {i} (ours {len(ours)} ids, llama.cpp {len(theirs)})\n"
            f"  ours:      {ours[max(0, i - 3) : i + 5]}\n  llama.cpp: {theirs[max(0, i - 3) : i + 5]}"
        )


@pytest.mark.parametrize("parse_special", [True, False])
def test_corpus_ids_equal_llama_cpp(parse_special: bool) -> None:
    tok = tokenizer()
    key = "ids_special" if parse_special else "ids_plain"
    failures = []
    for entry in golden("tokenizer_ids.json")["corpus"]:
        ours = tok.encode(entry["text"], parse_special=parse_special)
        if ours != entry[key]:
            i = first_diff(ours, entry[key])
            failures.append(
                f"{entry['text']!r}: first difference at id position {i}: {ours[i : i + 4]} vs {entry[key][i : i + 4]}"
            )
    assert not failures, (
        f"{len(failures)} corpus strings differ (parse_special={parse_special}):\n" + "\n".join(failures)
    )


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt-2"])
def test_other_pre_tokenizers_equal_llama_cpp(pre: str) -> None:
    # Same vocabulary, tokenizer.ggml.pre changed: llama.cpp's ids came from a vocab-only copy of the GGUF.
    tok = tokenizer(pre)
    data = golden("tokenizer_ids.json")
    failures = []
    for entry, want in zip(data["corpus"], data["by_pre"][pre], strict=True):
        for key, special in (("ids_special", True), ("ids_plain", False)):
            ours = tok.encode(entry["text"], parse_special=special)
            if ours != want[key]:
                i = first_diff(ours, want[key])
                failures.append(f"{entry['text']!r} ({key}): first difference at id position {i}")
    assert not failures, f"{pre}: {len(failures)} strings differ:\n" + "\n".join(failures)


def test_decode_round_trip() -> None:
    tok = tokenizer()
    # SmolLM2's vocabulary has no token for a few bytes (0x1D, ...): llama.cpp drops them when tokenizing, and so do
    # we, so those bytes cannot come back. Everything else must.
    alphabet = _byte_alphabet()[0]
    missing = {b for b in range(256) if tok.token_to_id(alphabet[b]) is None}
    for entry in golden("tokenizer_ids.json")["corpus"]:
        text = entry["text"]
        want = bytes(b for b in text.encode() if b not in missing).decode("utf-8", "replace")
        assert tok.decode(tok.encode(text)) == want, f"round trip of {text!r}"
        assert tok.decode(entry["ids_plain"]) == want, f"decode of llama.cpp's ids for {text!r}"


def test_token_bytes_equal_llama_cpp_pieces() -> None:
    tok = tokenizer()
    for entry in golden("tokenizer_ids.json")["detokenize"]:
        ids = entry["ids"]
        for key, skip in (("bytes_special", False), ("bytes_plain", True)):
            ours = b"".join(tok.token_bytes(i, skip_special=skip) for i in ids)
            theirs = bytes.fromhex(entry[key])
            assert ours == theirs, f"ids {ids} ({key}): differ at byte {first_diff(list(ours), list(theirs))}"
            assert tok.decode(ids, skip_special=skip) == theirs.decode("utf-8", "replace")


def test_stream_decoder_equals_decode_on_goldens() -> None:
    tok = tokenizer()
    for chat in golden("chat_greedy.json")["chats"]:
        ids = chat["generated_ids"]
        dec = tok.stream_decoder(skip_special=True)
        pieces = [dec.push(i) for i in ids]
        assert "".join(pieces) + dec.flush() == tok.decode(ids, skip_special=True) == chat["text"]


def test_special_tokens_of_smollm2() -> None:
    tok = tokenizer()
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.token_to_id("<|im_end|>") in tok.eot_ids
    assert tok.token_to_id("<|endoftext|>") in tok.eot_ids
    assert tok.vocab_size == 49152
    assert tok.add_bos is False


@pytest.mark.parametrize("index", range(len(json.loads((GOLDENS / "chat_greedy.json").read_text())["chats"])))
def test_chat_prompt_text_and_ids(index: int) -> None:
    chat = golden("chat_greedy.json")["chats"][index]
    template = get_chat_template(metadata()["tokenizer.chat_template"])
    prompt = template.render(chat["messages"])
    if prompt != chat["prompt"]:
        i = first_diff(list(prompt), list(chat["prompt"]))
        pytest.fail(
            f"{chat['name']}: prompt text differs at char {i}: {prompt[i : i + 30]!r} vs {chat['prompt'][i : i + 30]!r}"
        )
    assert_same_ids(tokenizer().encode(prompt), chat["prompt_ids"], f"{chat['name']} prompt ids")


def test_first_logits_prompt_ids() -> None:
    tok = tokenizer()
    for p in golden("first_logits.json")["prompts"]:
        assert_same_ids(tok.encode(p["prompt"]), p["ids"], f"raw prompt {p['name']!r}")
