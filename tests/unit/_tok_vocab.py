"""Tiny GGUF-style vocabularies built in code, so tokenizer tests need no model file."""

from __future__ import annotations

from typing import Any

from webllm_py.tokenizer import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_USER_DEFINED, _byte_alphabet

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_char(b: int) -> str:
    return _byte_alphabet()[0][b]


def gpt2_metadata(
    merges: list[str],
    *,
    pre: str = "smollm",
    user_defined: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Specials (ids 0..2, CONTROL), then the 256 byte characters, then every merge's product, then the
    user-defined tokens. Merges are in GPT-2 alphabet ("Ġ" is a space)."""
    tokens = list(SPECIALS)
    types = [TOKEN_CONTROL] * len(SPECIALS)
    for b in range(256):
        tokens.append(byte_char(b))
        types.append(TOKEN_NORMAL)
    for m in merges:
        left, right = m.split(" ")
        if left + right not in tokens:
            tokens.append(left + right)
            types.append(TOKEN_NORMAL)
    for t in user_defined:
        tokens.append(t)
        types.append(TOKEN_USER_DEFINED)
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
    }
    meta.update(extra or {})
    return meta


def spm_metadata(pieces: dict[str, float]) -> dict[str, Any]:
    """A SentencePiece vocabulary: <unk>, <s>, </s>, the 256 <0xNN> byte tokens, then ``pieces`` with scores."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, TOKEN_CONTROL, TOKEN_CONTROL]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(TOKEN_BYTE)
        scores.append(0.0)
    for text, score in pieces.items():
        tokens.append(text)
        types.append(TOKEN_NORMAL)
        scores.append(score)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
    }
