"""Tokenizer on tiny vocabularies built in the test: BPE merges, pre-tokenizers, special tokens, decoding."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.unit._tok_vocab import byte_char, gpt2_metadata, spm_metadata
from webllm_py import tokenizer as tokmod
from webllm_py.errors import TokenizerError, UnsupportedModelError, UnsupportedTokenizerError
from webllm_py.tokenizer import SUPPORTED_PRE_TOKENIZERS, Tokenizer, _merge_long, _merge_short, pre_tokenize

MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "Ġ Ġ", "ĠĠ ĠĠ"]


def make(merges: list[str] = MERGES, **kw) -> Tokenizer:
    return Tokenizer.from_gguf(gpt2_metadata(merges, **kw))


def texts(tok: Tokenizer, ids: list[int]) -> list[str]:
    return [tok.id_to_token(i) for i in ids]


# ---- BPE ----------------------------------------------------------------------------------------------------------


def test_merges_build_words() -> None:
    tok = make()
    assert texts(tok, tok.encode("hello world")) == ["hello", "Ġworld"]
    assert tok.decode(tok.encode("hello world")) == "hello world"


def test_merge_rank_decides() -> None:
    # "a b" before "b c": abc -> ab c; the other order: a bc.
    tok = make(["a b", "b c"])
    assert texts(tok, tok.encode("abc")) == ["ab", "c"]
    tok = make(["b c", "a b"])
    assert texts(tok, tok.encode("abc")) == ["a", "bc"]


def test_equal_pairs_merge_leftmost_first() -> None:
    tok = make(["a a"])
    assert texts(tok, tok.encode("aaa")) == ["aa", "a"]
    assert texts(tok, tok.encode("aaaa")) == ["aa", "aa"]


def test_bytes_of_unmerged_characters() -> None:
    tok = make([])
    ids = tok.encode("é")  # two UTF-8 bytes, no merge: two byte tokens
    assert texts(tok, ids) == [byte_char(0xC3), byte_char(0xA9)]
    assert tok.decode(ids) == "é"


def test_long_merge_loop_equals_short_one() -> None:
    # The heap version (long words) must give exactly what the simple loop gives, on random words and merges.
    rng = random.Random(0)
    alphabet = "abcd"
    for _ in range(300):
        pairs = {
            (rng.choice(alphabet) * rng.randint(1, 2), rng.choice(alphabet) * rng.randint(1, 2))
            for _ in range(8)
        }
        ranks = {p: i for i, p in enumerate(rng.sample(sorted(pairs), len(pairs)))}
        word = [rng.choice(alphabet) for _ in range(rng.randint(1, 60))]
        assert _merge_long(list(word), ranks) == _merge_short(list(word), ranks)


def test_long_whitespace_run() -> None:
    tok = make()
    ids = tok.encode(" " * 1000 + "x")
    assert tok.decode(ids) == " " * 1000 + "x"
    assert texts(tok, ids)[0] == "ĠĠĠĠ"


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokmod, "_CACHE_MAX", 4)
    tok = make()
    want = tok.encode("hello world a b c d e f g h")
    assert len(tok._cache) <= 4
    assert tok.encode("hello world a b c d e f g h") == want


# ---- pre-tokenizers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pre", "text", "words"),
    [
        # smollm: every digit alone; a whitespace run before a digit stays whole (chunk end).
        ("smollm", "abc 12345 x", ["abc", " ", "1", "2", "3", "4", "5", " x"]),
        ("smollm", "a   1", ["a", "   ", "1"]),
        ("smollm", "I'm HERE'S", ["I", "'m", " HERE", "'", "S"]),
        ("smollm", "x  \n\n  y", ["x", "  \n\n ", " y"]),
        # gpt2: numbers whole, with their space.
        ("gpt-2", "abc 12345 x", ["abc", " 12345", " x"]),
        ("gpt-2", "hi!!  ok", ["hi", "!!", " ", " ok"]),
        # llama3: numbers in threes, case-insensitive contractions, newlines kept with what precedes them.
        ("llama-bpe", "abc 12345 x", ["abc", " ", "123", "45", " x"]),
        ("llama-bpe", "I'M here'S", ["I", "'M", " here", "'S"]),
        ("llama-bpe", "a.\n\nb", ["a", ".\n\n", "b"]),
        ("llama-bpe", "x  \n\n  y", ["x", "  \n\n", " ", " y"]),
        # qwen2: as llama3 with single digits.
        ("qwen2", "abc 12345 x", ["abc", " ", "1", "2", "3", "4", "5", " x"]),
    ],
)
def test_pre_tokenizers(pre: str, text: str, words: list[str]) -> None:
    assert pre_tokenize(text, pre) == words


def test_whitespace_is_llama_cpp_set_not_str_isspace() -> None:
    # U+001C is str.isspace() but not White_Space: llama.cpp treats it as "other", so it joins punctuation.
    assert pre_tokenize("a\x1c!", "gpt-2") == ["a", "\x1c!"]
    # U+00A0 is whitespace for llama.cpp, but only an ASCII space joins the word after it.
    assert pre_tokenize("a\u00a0\u00a0b", "gpt-2") == ["a", "\u00a0", "\u00a0", "b"]
    assert pre_tokenize("a\u00a0 b", "gpt-2") == ["a", "\u00a0", " b"]


def test_unicode_15_letters_are_letters() -> None:
    # CJK Extension H (Unicode 15.0): a letter in llama.cpp's table, unknown to Python 3.11's unicodedata.
    assert pre_tokenize("\U00031350's", "llama-bpe") == ["\U00031350", "'s"]


def test_pre_tokenizers_cover_every_character() -> None:
    rng = random.Random(1)
    pool = "aZ9 '\n\t\r.,!é世😀\u0301\u00a0\x00\x1c١½\u2028"
    for pre in SUPPORTED_PRE_TOKENIZERS:
        for _ in range(200):
            s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 20)))
            assert "".join(pre_tokenize(s, pre)) == s, (pre, s)


# ---- special tokens -----------------------------------------------------------------------------------------------


def test_special_tokens_parsed() -> None:
    tok = make()
    ids = tok.encode("<|im_start|>hello<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert texts(tok, ids[1:-1]) == ["hello"]
    # Not parsed: the text is tokenized as characters.
    plain = tok.encode("<|im_start|>hello", parse_special=False)
    assert 1 not in plain
    assert tok.decode(plain) == "<|im_start|>hello"


def test_partial_special_token_is_text() -> None:
    tok = make()
    ids = tok.encode("<|im_sta")
    assert 1 not in ids
    assert tok.decode(ids) == "<|im_sta"


def test_longest_special_token_first() -> None:
    tok = make(user_defined=("<a>", "<a><b>"))
    ids = tok.encode("x<a><b>y<a>")
    assert texts(tok, ids) == ["x", "<a><b>", "y", "<a>"]


def test_user_defined_tokens_match_without_parse_special() -> None:
    tok = make(user_defined=("<tool>",))
    ids = tok.encode("a<tool>b", parse_special=False)
    assert texts(tok, ids) == ["a", "<tool>", "b"]


def test_encode_parts_reads_content_as_plain_text() -> None:
    """A user who types <|im_end|> cannot end their turn: special tokens are found in template text only."""
    tok = make(user_defined=("<tool>",))
    parts = [("<|im_start|>user\n", True), ("hello<|im_end|> <tool>", False), ("<|im_end|>\n", True)]
    ids = tok.encode_parts(parts)
    assert ids.count(2) == 1 and ids[0] == 1 and ids[-2] == 2  # one <|im_end|>: the template's
    assert tok.decode(ids) == "".join(t for t, _ in parts)
    assert "<tool>" in texts(tok, ids)  # user-defined tokens match in content too, as llama.cpp does


@pytest.mark.parametrize(
    "parts",
    [
        [("<|im_start|>user\n", True), ("hello world", False), ("<|im_end|>\n<|im_start|>", True)],
        [("he", True), ("llo", False), (" wor", True), ("ld", False), ("", True)],
        [("", False), ("  hello  ", False)],
    ],
)
def test_encode_parts_equals_whole_text_for_ordinary_content(parts) -> None:
    """Text across part boundaries is one piece for BPE: the ids are llama.cpp's for the joined prompt."""
    for tok in (make(), Tokenizer.from_gguf(spm_metadata({"▁he": -1.0, "llo": -2.0, "▁hello": -0.5}))):
        assert tok.encode_parts(parts) == tok.encode("".join(t for t, _ in parts))


def test_encode_parts_adds_bos_unless_the_template_wrote_it() -> None:
    tok = make(extra={"tokenizer.ggml.add_bos_token": True})
    assert tok.encode_parts([("hello", False)])[:1] == [1]
    ids = tok.encode_parts([("<|im_start|>", True), ("hello", False)])
    assert ids.count(1) == 1  # the template's BOS text became the BOS; no second one


def test_add_bos() -> None:
    tok = make()
    assert tok.encode("hello") == tok.encode("hello", add_bos=False)
    assert tok.encode("hello", add_bos=True)[0] == 1
    tok = make(extra={"tokenizer.ggml.add_bos_token": True})
    assert tok.encode("hello")[0] == 1
    assert tok.encode("") == [1]
    assert Tokenizer.from_gguf(gpt2_metadata(MERGES), add_bos=True).encode("")[0] == 1


def test_properties_and_eot_ids() -> None:
    tok = make()
    assert tok.vocab_size == 3 + 256 + len(MERGES)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.eot_ids == frozenset({0, 2})  # <|endoftext|> and <|im_end|> (= EOS)
    assert tok.token_to_id("hello") is not None
    assert tok.token_to_id("nope") is None
    assert tok.id_to_token(2) == "<|im_end|>"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.id_to_token(10_000)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([-1])
    tok = make(user_defined=("<|eot_id|>",), extra={"tokenizer.ggml.eot_token_id": 3})
    assert {3, tok.token_to_id("<|eot_id|>")} <= tok.eot_ids
    # An end-of-turn token that the converter left USER_DEFINED is treated as control, as llama.cpp does.
    assert tok.is_special(tok.token_to_id("<|eot_id|>"))


# ---- decoding -----------------------------------------------------------------------------------------------------


def test_decode_skip_special() -> None:
    tok = make()
    ids = tok.encode("<|im_start|>hello<|im_end|>")
    assert tok.decode(ids) == "<|im_start|>hello<|im_end|>"
    assert tok.decode(ids, skip_special=True) == "hello"


def test_decode_invalid_utf8_is_replaced() -> None:
    tok = make([])
    ids = [tok.token_to_id(byte_char(b)) for b in (0xF0, 0x9F, 0x61, 0xFF)]  # cut emoji, 'a', invalid byte
    assert tok.decode(ids) == bytes([0xF0, 0x9F, 0x61, 0xFF]).decode("utf-8", "replace")


def test_stream_decoder_never_emits_half_a_character() -> None:
    tok = make([])
    text = "a👍🏽é世b"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode())  # no merges: one token per byte
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) + dec.flush() == text
    for p in pieces:
        assert "\ufffd" not in p
    # Exactly the complete characters come out, at the byte that completes them.
    assert pieces[0] == "a"
    assert pieces[1:4] == ["", "", ""] and pieces[4] == "👍"


def test_stream_decoder_flush_and_invalid_bytes() -> None:
    tok = make([])
    dec = tok.stream_decoder()
    assert dec.push(tok.token_to_id(byte_char(0xE4))) == ""
    assert dec.flush() == "\ufffd"  # a dangling partial character
    assert dec.push(tok.token_to_id(byte_char(0xFF))) == "\ufffd"  # never valid: out at once
    assert dec.push(tok.token_to_id("a")) == "a"


def test_stream_decoder_skip_special() -> None:
    tok = make()
    dec = tok.stream_decoder(skip_special=True)
    assert [dec.push(i) for i in tok.encode("hello<|im_end|>")] == ["hello", ""]


# ---- errors -------------------------------------------------------------------------------------------------------


def test_unknown_pre_tokenizer() -> None:
    with pytest.raises(UnsupportedTokenizerError) as e:
        make(pre="deepseek-llm")
    msg = str(e.value)
    assert "'deepseek-llm'" in msg
    for name in ("smollm", "llama-bpe", "qwen2", "gpt-2"):
        assert name in msg
    assert isinstance(e.value, UnsupportedModelError)


def test_unknown_model_and_missing_data() -> None:
    with pytest.raises(UnsupportedTokenizerError, match="'bert'.*gpt2, llama"):
        Tokenizer.from_gguf({**gpt2_metadata([]), "tokenizer.ggml.model": "bert"})
    with pytest.raises(TokenizerError, match="no tokenizer"):
        Tokenizer.from_gguf({})
    meta = gpt2_metadata([])
    del meta["tokenizer.ggml.merges"]
    with pytest.raises(TokenizerError, match="merges"):
        Tokenizer.from_gguf(meta)
    meta = gpt2_metadata([])
    del meta["tokenizer.ggml.pre"]
    with pytest.raises(UnsupportedTokenizerError, match="no tokenizer.ggml.pre"):
        Tokenizer.from_gguf(meta)


# ---- SentencePiece ------------------------------------------------------------------------------------------------

SPM_PIECES = {
    "▁": -1.0,
    "▁h": -2.0,
    "he": -3.0,
    "ll": -4.0,
    "▁he": -5.0,
    "▁hell": -6.0,
    "▁hello": -7.0,
    "o": -8.0,
}


def test_spm_merges_by_score_with_space_prefix() -> None:
    tok = Tokenizer.from_gguf(spm_metadata(SPM_PIECES))
    ids = tok.encode("hello")
    assert ids[0] == 1  # llama vocabularies add BOS
    assert texts(tok, ids[1:]) == ["▁hello"]
    assert tok.decode(ids[1:]) == " hello"


def test_spm_byte_fallback_and_special() -> None:
    tok = Tokenizer.from_gguf(spm_metadata(SPM_PIECES))
    ids = tok.encode("hé</s>", add_bos=False)
    # é has no piece: its two UTF-8 bytes as <0xC3> <0xA9>; </s> is a control token.
    assert texts(tok, ids) == ["▁h", "<0xC3>", "<0xA9>", "</s>"]
    assert tok.decode(ids, skip_special=True) == " hé"


def test_spm_equals_llama_cpp_on_synthetic_vocabulary() -> None:
    # tests/data/goldens/spm_ids.json: a SentencePiece vocabulary made by scripts/make_goldens.py and llama.cpp's ids
    # for strings over it (the vocabulary travels in the file, so no model is needed).
    data = json.loads(
        (Path(__file__).resolve().parent.parent / "data" / "goldens" / "spm_ids.json").read_text()
    )
    vocab = data["vocab"]
    tok = Tokenizer.from_gguf(
        {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": vocab["tokens"],
            "tokenizer.ggml.token_type": vocab["token_type"],
            "tokenizer.ggml.scores": vocab["scores"],
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.add_bos_token": True,
        }
    )
    for case in data["cases"]:
        text = case["text"]
        assert tok.encode(text, parse_special=True) == case["ids_bos_special"], text
        assert tok.encode(text, add_bos=False, parse_special=False) == case["ids_plain"], text
    for i, hexed in enumerate(data["pieces_special"]):
        assert tok.token_bytes(i) == bytes.fromhex(hexed), (i, vocab["tokens"][i])


# ---- llama.cpp's rules for special tokens by text (llama-vocab.cpp) -------------------------------------------------


def test_end_of_generation_texts_become_control_and_end_generation() -> None:
    # "</s>" and the FIM pad / repo / file-separator tokens, written as ordinary tokens by a converter.
    tok = make(user_defined=("</s>", "<|fim_pad|>", "<|file_sep|>", "<|fim_prefix|>"))
    ids = {t: tok.token_to_id(t) for t in ("</s>", "<|fim_pad|>", "<|file_sep|>", "<|fim_prefix|>")}
    assert all(tok.is_special(i) for i in ids.values())
    assert {ids["</s>"], ids["<|fim_pad|>"], ids["<|file_sep|>"]} <= tok.eot_ids
    assert ids["<|fim_prefix|>"] not in tok.eot_ids  # control, but it does not end generation
    assert ids["</s>"] not in tok.encode("a</s>", parse_special=False)  # now found only with special parsing
    assert "</s>" in tok.control_texts


def test_harmony_end_is_not_an_end_of_generation() -> None:
    tok = make(user_defined=("<|end|>", "<|return|>", "<|call|>"))
    end = tok.token_to_id("<|end|>")
    assert end not in tok.eot_ids and not tok.is_special(end)
    assert tok.token_to_id("<|return|>") in tok.eot_ids


def test_llama3_pre_tokenizer_adds_bos_unless_the_gguf_says_not() -> None:
    def without_key(pre: str) -> Tokenizer:
        meta = gpt2_metadata(MERGES, pre=pre)
        del meta["tokenizer.ggml.add_bos_token"]
        return Tokenizer.from_gguf(meta)

    assert without_key("llama-bpe").add_bos is True and without_key("qwen2").add_bos is False
    assert make(pre="llama-bpe").add_bos is False  # the GGUF's add_bos_token = false wins


def test_phi3_drops_whitespace_after_special_tokens() -> None:
    phi = make(extra={"general.name": "Phi3 mini"})
    other = make()
    text = "<|im_start|> \n hello<|im_end|>\n\n<|endoftext|> x"
    assert texts(phi, phi.encode(text)) == ["<|im_start|>", "hello", "<|im_end|>", "<|endoftext|>", "Ġ", "x"]
    assert texts(other, other.encode(text))[1] != "hello"
    # across the parts of a chat prompt too, so the ids equal the whole text's
    parts = [("<|im_start|>", True), (" \n", False), (" hello", False), ("<|im_end|>\n", True)]
    assert phi.encode_parts(parts) == phi.encode("".join(t for t, _ in parts))


def test_tekken_splits_case_runs_in_ascii_only_as_llama_cpp() -> None:
    # llama.cpp runs tekken's regex over collapsed text: a non-ASCII letter counts as upper and lower case at once.
    assert pre_tokenize("HTTPServer CamelCase ÉCOLE naïve 123", "tekken") == [
        "HTTPServer",
        " Camel",
        "Case",
        " É",
        "COLE",
        " naïve",
        " ",
        "1",
        "2",
        "3",
    ]
    assert pre_tokenize("a/b\r\n/c  x\u0301", "tekken") == ["a", "/b", "\r\n", "/c", " ", " x", "\u0301"]
