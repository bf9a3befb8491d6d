"""Text <-> token ids for the vocabularies stored in GGUF files, in pure Python (stdlib only: it runs in Pyodide).

Two vocabulary kinds, chosen by ``tokenizer.ggml.model``:

* ``gpt2``: byte-level BPE. The text is split into pre-tokens by a regex chosen by ``tokenizer.ggml.pre``, each
  pre-token's UTF-8 bytes are mapped to printable characters (GPT-2's byte alphabet, space -> ``Ġ``), and the
  merges (``tokenizer.ggml.merges``, lower index = applied first) join neighbouring symbols.
* ``llama``: SentencePiece BPE. Spaces become ``▁``, a ``▁`` is put in front of the text, and the pair whose merged
  text has the highest vocabulary score is joined first; characters with no token fall back to ``<0xNN>`` bytes.

Everything follows llama.cpp's ``llama-vocab.cpp`` / ``unicode.cpp`` (not HF ``tokenizers``), because the goldens
come from llama.cpp and the models were converted for it:

* special tokens (CONTROL, USER_DEFINED, UNKNOWN) are cut out of the text first, longest first, every occurrence;
  with ``parse_special=False`` only USER_DEFINED ones are;
* llama.cpp's pre-tokenizers are hand-written loops over Unicode *flags* (letter, number, whitespace from its own
  table). Our regexes below reproduce those loops, not the HF regexes; they differ at the edges (``\\s`` is
  llama.cpp's whitespace set, chunk ends act like end of text);
* ``\\p{L}`` / ``\\p{N}`` do not exist in stdlib ``re``: we build the classes once from ``unicodedata``.

Speed: BPE results are cached per pre-token (a bounded dict), merges are a dict ``(left, right) -> rank``.
"""

from __future__ import annotations

import codecs
import heapq
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from .errors import TokenizerError, UnsupportedTokenizerError
from .model.gguf import GGUFMetadata

# GGUF token types (``tokenizer.ggml.token_type``), from llama.cpp's ``llama_token_type``.
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# Token texts that end generation (llama.cpp's EOG list, llama-vocab.cpp of the vendored 0c1e570). llama.cpp also
# forces each to CONTROL where the converter did not, so it is found only with special parsing on.
EOG_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "[e~[",
)
# Fill-in-the-middle tokens llama.cpp recognizes by text when the GGUF names none (forced to CONTROL as well); the
# pad, repo and file-separator ones also end generation. Metadata key (tokenizer.ggml.<key>_token_id) -> texts.
FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>", "\u2581<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>", "\u2581<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>", "\u2581<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}  # fmt: skip
_FIM_EOG = ("fim_pad", "fim_rep", "fim_sep")
# gpt-oss's channel tokens are always rendered (llama.cpp makes them USER_DEFINED).
_ALWAYS_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")
# Pre-tokenizers for which llama.cpp adds a BOS unless the GGUF says otherwise (``tokenizer.ggml.add_bos_token``).
_ADD_BOS_PRES = frozenset(
    ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano",
     "tekken", "chameleon")
)  # fmt: skip
# C isspace: what llama.cpp strips after a special token with the RSTRIP attribute.
_ASCII_SPACE = " \t\n\v\f\r"

# A pre-token cache larger than this is cleared: chat prompts repeat a few thousand distinct words at most.
_CACHE_MAX = 50_000
# Words up to this many symbols use the simple O(n^2) merge loop; longer ones (long runs of spaces, base64) a heap.
_SHORT_WORD = 24


# ---- Unicode classes ---------------------------------------------------------------------------------------------

# llama.cpp's whitespace set (unicode-data.cpp ``unicode_set_whitespace``): Unicode White_Space. It is NOT what
# ``str.isspace`` / ``re``'s ``\s`` accept (those add U+001C..U+001F), so we never use ``\s``.
_WHITESPACE = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B)] + [
    0x2028,
    0x2029,
    0x202F,
    0x205F,
    0x3000,
]

# Letters (L) and numbers (N) of Unicode 15.0/15.1, the version of llama.cpp's table (unicode-data.cpp), that are
# unassigned in Python 3.11's unicodedata (Unicode 14.0): without them a CJK Extension H/I character would be "other"
# here and a letter there. Python >= 3.13 knows them already; the union is harmless.
_UNICODE_15_ADDITIONS = (
    (0x1123F, 0x11240, "L"),
    (0x11F02, 0x11F02, "L"),
    (0x11F04, 0x11F10, "L"),
    (0x11F12, 0x11F33, "L"),
    (0x11F50, 0x11F59, "N"),
    (0x1342F, 0x1342F, "L"),
    (0x13441, 0x13446, "L"),
    (0x1B132, 0x1B132, "L"),
    (0x1B155, 0x1B155, "L"),
    (0x1D2C0, 0x1D2D3, "N"),
    (0x1DF25, 0x1DF2A, "L"),
    (0x1E030, 0x1E06D, "L"),
    (0x1E4D0, 0x1E4EB, "L"),
    (0x1E4F0, 0x1E4F9, "N"),
    (0x2B739, 0x2B739, "L"),
    (0x2EBF0, 0x2EE5D, "L"),
    (0x31350, 0x323AF, "L"),
)

# Code points past these ranges are unassigned (Cn), tags (Cf) or private use (Co) in every Unicode version Python
# ships, so none of them is a letter or a number; skipping them makes the one-time scan ~4x faster.
_SCAN_LIMITS = ((0, 0x40000), (0xE0000, 0xE0200))


def _class_body(codepoints: Iterable[int]) -> str:
    """Sorted code points -> the inside of a ``re`` character class, as ``\\uXXXX`` ranges (no raw characters)."""

    def esc(cp: int) -> str:
        return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"

    parts: list[str] = []
    start = prev = None
    for cp in codepoints:
        if prev is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            parts.append(esc(start) if start == prev else f"{esc(start)}-{esc(prev)}")
        start = prev = cp
    if start is not None:
        parts.append(esc(start) if start == prev else f"{esc(start)}-{esc(prev)}")
    return "".join(parts)


@cache
def _unicode_classes() -> dict[str, str]:
    """Class bodies for letters (L), numbers (N) and whitespace (W), built once per process (~0.1 s)."""
    letters: list[int] = []
    numbers: list[int] = []
    category = unicodedata.category
    for lo, hi in _SCAN_LIMITS:
        for cp in range(lo, hi):
            c = category(chr(cp))[0]
            if c == "L":
                letters.append(cp)
            elif c == "N":
                numbers.append(cp)
    for lo, hi, kind in _UNICODE_15_ADDITIONS:
        (letters if kind == "L" else numbers).extend(range(lo, hi + 1))
    return {
        "L": _class_body(sorted(set(letters))),
        "N": _class_body(sorted(set(numbers))),
        "W": _class_body(sorted(_WHITESPACE)),
    }


# ---- pre-tokenizers ----------------------------------------------------------------------------------------------
# Each is ONE regex used with findall. Every character belongs to exactly one of letter (L), number (N),
# whitespace (W) or other (O = none of them), and every alternative set covers all four, so findall never skips
# text. The comments give llama.cpp's regex; the pattern reproduces its hand-written loop in unicode.cpp.

# gpt2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
_GPT2 = r"'(?:[stmd]|re|ve|ll)| ?[{L}]+| ?[{N}]+| ?[^{W}{L}{N}]+|[{W}]+(?![^{W}])|[{W}]+"

# smollm / starcoder: two passes, "\p{N}" (every number char alone), then gpt2 inside each remaining chunk. A chunk
# ends at a digit, so a whitespace run right before a digit is taken whole (the gpt2 loop treats chunk end as end
# of text): that is the first whitespace alternative. Spaces never join a digit (" 1" -> " ", "1").
_SMOLLM = r"[{N}]|'(?:[stmd]|re|ve|ll)| ?[{L}]+| ?[^{W}{L}{N}]+|[{W}]+(?=[{N}]|\Z)|[{W}]+(?![^{W}])|[{W}]+"

# llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+
#         |\s+(?!\S)|\s+
_LLAMA3 = (
    r"'(?:[sStTmMdD]|[rR][eE]|[vV][eE]|[lL][lL])|[^\r\n{L}{N}]?[{L}]+|[{N}]{{1,3}}| ?[^{W}{L}{N}]+[\r\n]*"
    r"|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+"
)

# qwen2: as llama3 but every number char alone (\p{N} instead of \p{N}{1,3}).
_QWEN2 = (
    r"'(?:[sStTmMdD]|[rR][eE]|[vV][eE]|[lL][lL])|[^\r\n{L}{N}]?[{L}]+|[{N}]| ?[^{W}{L}{N}]+[\r\n]*"
    r"|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+"
)

# tekken (Mistral Nemo, Small 3.x, Ministral). llama.cpp has no hand-written loop for it: it runs the regex with
# std::regex over a "collapsed" copy of the text, one byte per character: ASCII as it is, other whitespace -> \v,
# letters -> \xD2, numbers -> \xD1, anything else -> \xD0 (its punctuation, mark and symbol bytes act alike here).
# So upper and lower case differ in ASCII only, and combining marks are not letters. The pattern is that regex
# over collapsed text (_CollapsedSplitter), with std::regex's \s (C isspace) and the classes written out.
_TEKKEN = (
    r"[^\r\n\xD2A-Za-z\xD10-9]?(?:(?=[\xD2A-Za-z])[^a-z])*(?:(?=[\xD2A-Za-z])[^A-Z])+"
    r"|[^\r\n\xD2A-Za-z\xD10-9]?(?:(?=[\xD2A-Za-z])[^a-z])+(?:(?=[\xD2A-Za-z])[^A-Z])*"
    r"|[\xD10-9]| ?[^\t\n\v\f\r \xD2A-Za-z\xD10-9]+[\r\n/]*|[\t\n\v\f\r ]*[\r\n]+"
    r"|[\t\n\v\f\r ]+(?![^\t\n\v\f\r ])|[\t\n\v\f\r ]+"
)
_COLLAPSED = frozenset({"tekken"})

# tokenizer.ggml.pre -> (pattern, ignore_merges). Names are llama.cpp's; each group shares one regex there.
# ignore_merges: a pre-token that is itself a vocabulary entry is emitted whole (llama.cpp does it for llama3).
_PRE_TOKENIZERS: dict[str, tuple[str, bool]] = {
    "smollm": (_SMOLLM, False),
    "starcoder": (_SMOLLM, False),
    "refact": (_SMOLLM, False),
    "codeshell": (_SMOLLM, False),
    "llama-bpe": (_LLAMA3, True),
    "llama3": (_LLAMA3, True),
    "llama-v3": (_LLAMA3, True),
    "falcon3": (_LLAMA3, True),
    "pixtral": (_LLAMA3, True),
    "qwen2": (_QWEN2, False),
    "deepseek-r1-qwen": (_QWEN2, False),
    "stablelm2": (_QWEN2, False),
    "gpt-2": (_GPT2, False),
    "gpt2": (_GPT2, False),
    "phi-2": (_GPT2, False),
    "mpt": (_GPT2, False),
    "olmo": (_GPT2, False),
    "tekken": (_TEKKEN, True),
}

SUPPORTED_PRE_TOKENIZERS = tuple(sorted(_PRE_TOKENIZERS))
SUPPORTED_MODELS = ("gpt2", "llama")


@cache
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern.format(**_unicode_classes()))


class _CollapsedSplitter:
    """llama.cpp's general regex path (unicode.cpp ``unicode_regex_split``): the regex runs over the collapsed text
    and its match spans cut the original; text between matches is a piece of its own."""

    def __init__(self, pattern: str):
        self._regex = re.compile(pattern)
        classes = _unicode_classes()
        self._white = re.compile(f"[{classes['W']}]")
        self._letter = re.compile(f"[{classes['L']}]")
        self._number = re.compile(f"[{classes['N']}]")
        self._byte: dict[str, str] = {}

    def _collapse_char(self, c: str) -> str:
        b = self._byte.get(c)
        if b is None:
            if self._white.match(c):
                b = "\v"
            elif self._letter.match(c):
                b = "\xd2"
            elif self._number.match(c):
                b = "\xd1"
            else:
                b = "\xd0"
            self._byte[c] = b
        return b

    def findall(self, text: str) -> list[str]:
        collapsed = (
            text if text.isascii() else "".join(c if c < "\x80" else self._collapse_char(c) for c in text)
        )
        words: list[str] = []
        at = 0
        for m in self._regex.finditer(collapsed):
            if m.start() > at:
                words.append(text[at : m.start()])
            if m.end() > m.start():
                words.append(text[m.start() : m.end()])
            at = m.end()
        if at < len(text):
            words.append(text[at:])
        return words


@cache
def _splitter(pre: str) -> re.Pattern[str] | _CollapsedSplitter:
    pattern = _PRE_TOKENIZERS[pre][0]
    return _CollapsedSplitter(pattern) if pre in _COLLAPSED else _compile(pattern)


def pre_tokenize(text: str, pre: str) -> list[str]:
    """Split ``text`` (no special tokens in it) the way llama.cpp's pre-tokenizer ``pre`` does."""
    if pre not in _PRE_TOKENIZERS:
        raise UnsupportedTokenizerError(_unknown_pre_message(pre))
    return _splitter(pre).findall(text)


def _unknown_pre_message(pre: object) -> str:
    return (
        f"tokenizer.ggml.pre = {pre!r} is not a pre-tokenizer we support; supported: "
        f"{', '.join(SUPPORTED_PRE_TOKENIZERS)}"
    )


# ---- GPT-2 byte alphabet -----------------------------------------------------------------------------------------


@cache
def _byte_alphabet() -> tuple[str, dict[str, int]]:
    """GPT-2's byte <-> printable character map: printable Latin-1 bytes map to themselves, the 68 others to
    U+0100.. in byte order. Returns (256-char translation table indexed by byte, char -> byte)."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * 256
    n = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return "".join(table), {c: b for b, c in enumerate(table)}


# ---- the tokenizer -----------------------------------------------------------------------------------------------


class Tokenizer:
    """A GGUF vocabulary: ``encode`` text to ids, ``decode`` ids to text, ``stream_decoder`` for generation."""

    def __init__(
        self,
        *,
        model: str,
        tokens: Sequence[str],
        token_types: Sequence[int] | None = None,
        merges: Sequence[str] | None = None,
        scores: Sequence[float] | None = None,
        pre: str | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        eot_id: int | None = None,
        eom_id: int | None = None,
        add_bos: bool = False,
        add_space_prefix: bool = True,
        fim_ids: Mapping[str, int | None] | None = None,
        model_name: str = "",
    ):
        if model not in SUPPORTED_MODELS:
            raise UnsupportedTokenizerError(
                f"tokenizer.ggml.model = {model!r} is not a tokenizer we support; supported: "
                f"{', '.join(SUPPORTED_MODELS)}"
            )
        self.model = model
        self._tokens: list[str] = list(tokens)
        n = len(self._tokens)
        types = list(token_types) if token_types is not None else [TOKEN_NORMAL] * n
        if len(types) < n:
            raise TokenizerError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        # Later duplicates win, as in llama.cpp's token_to_id map.
        self._vocab: dict[str, int] = {t: i for i, t in enumerate(self._tokens)}

        def check_id(name: str, i: int | None) -> int | None:
            if i is None:
                return None
            if not 0 <= i < n:
                raise TokenizerError(f"{name} = {i} is outside the vocabulary (0..{n - 1})")
            return i

        self._bos_id = check_id("tokenizer.ggml.bos_token_id", bos_id)
        self._eos_id = check_id("tokenizer.ggml.eos_token_id", eos_id)
        self.add_bos = add_bos

        # llama.cpp's rules for special tokens by text (llama-vocab.cpp, "auto-detect special tokens by text").
        def force_control(i: int) -> None:
            if types[i] in (TOKEN_NORMAL, TOKEN_USER_DEFINED, TOKEN_UNUSED):
                types[i] = TOKEN_CONTROL

        fim = dict(fim_ids or {})
        for key, texts in FIM_TEXTS.items():
            if fim.get(key) is None:
                found = next((self._vocab[t] for t in texts if t in self._vocab), None)
                if found is not None:
                    force_control(found)
                    fim[key] = found
        eog = {self._vocab[t] for t in EOG_TEXTS if t in self._vocab}
        for i in eog:
            force_control(i)
        for i in (
            self._eos_id,
            check_id("tokenizer.ggml.eot_token_id", eot_id),
            check_id("tokenizer.ggml.eom_token_id", eom_id),
            *(fim.get(k) for k in _FIM_EOG),
        ):
            if i is not None:
                eog.add(i)
        eog_texts = {self._tokens[i] for i in eog}
        end = self._vocab.get("<|end|>")
        if end in eog and eog_texts & {"<|call|>", "<|calls|>"} and eog_texts & {"<|return|>", "<|flush|>"}:
            eog.discard(end)  # o200k_harmony / solar-open: <|end|> ends a message, not the reply
            types[end] = TOKEN_USER_DEFINED
        close_s = self._vocab.get("</s>")
        if close_s in eog and eog_texts & {"<|tool_response>", "<|plamo:eos|>"}:
            eog.discard(close_s)  # gemma4, plamo: </s> is an ordinary token there
            types[close_s] = TOKEN_NORMAL
        for t in _ALWAYS_USER_DEFINED:
            if t in self._vocab:
                types[self._vocab[t]] = TOKEN_USER_DEFINED
        self._types = types
        self._eot_ids = frozenset(eog)

        # Special tokens, longest text first (llama.cpp's cache_special_tokens order; ties by id for determinism).
        special = [i for i, t in enumerate(types) if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN)]
        special.sort(key=lambda i: (-len(self._tokens[i].encode()), i))
        self._special_all = [(self._tokens[i], i) for i in special if self._tokens[i]]
        self._special_user = [(t, i) for t, i in self._special_all if types[i] == TOKEN_USER_DEFINED]
        # Phi-3 (llama.cpp decides by the model's general.name): whitespace after a special token is dropped, as the
        # Hugging Face tokenizer's rstrip=True on its added tokens does; not after <unk>, <s>, <|endoftext|>.
        self._rstrip: frozenset[int] = frozenset()
        if any(key in model_name.lower() for key in ("phi-3", "phi3")):
            rstrip = set(special) | ({self._vocab["</s>"]} if "</s>" in self._vocab else set())
            rstrip -= {self._vocab[t] for t in ("<unk>", "<s>", "<|endoftext|>") if t in self._vocab}
            self._rstrip = frozenset(rstrip)

        self._cache: dict[str, tuple[int, ...]] = {}
        self._piece_cache: dict[int, bytes] = {}
        if model == "gpt2":
            if pre is None:
                raise UnsupportedTokenizerError(
                    "the GGUF has no tokenizer.ggml.pre (pre-tokenizer name); supported: "
                    + ", ".join(SUPPORTED_PRE_TOKENIZERS)
                )
            if pre not in _PRE_TOKENIZERS:
                raise UnsupportedTokenizerError(_unknown_pre_message(pre))
            if merges is None:
                raise TokenizerError("a gpt2 (BPE) tokenizer needs tokenizer.ggml.merges")
            self.pre: str | None = pre
            self._ignore_merges = _PRE_TOKENIZERS[pre][1]
            self._splitter = _splitter(pre)
            self._ranks: dict[tuple[str, str], int] = {}
            for rank, merge in enumerate(merges):
                # llama.cpp splits at the first space after the first character (a merge never starts with one).
                cut = merge.find(" ", 1)
                pair = (merge[:cut], merge[cut + 1 :]) if cut >= 0 else ("", "")
                self._ranks.setdefault(pair, rank)
            self._byte_table, self._byte_of_char = _byte_alphabet()
        else:
            self.pre = None
            self._add_space_prefix = add_space_prefix
            self._scores = list(scores) if scores is not None else [0.0] * n
            self._byte_tokens = [self._vocab.get(f"<0x{b:02X}>") for b in range(256)]

    # ---- construction ----

    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any], *, add_bos: bool | None = None) -> Tokenizer:
        """Build from a GGUF metadata dict (``GGUFFile.metadata``). ``add_bos`` overrides the file's choice.

        Every key is read through the typed getters (``GGUFMetadata``): a token that is not a string, a score that
        is NaN, a token_type list shorter than the vocabulary, a flag that is a list raise ``GGUFMetadataError``
        naming the key."""
        meta = GGUFMetadata.of(metadata)
        if "tokenizer.ggml.model" not in meta or "tokenizer.ggml.tokens" not in meta:
            raise TokenizerError(
                "the GGUF has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens missing)"
            )
        model = meta.get_str("tokenizer.ggml.model")
        tokens = meta.get_array("tokenizer.ggml.tokens", str, min_length=1)
        n = len(tokens)
        if model == "llama":
            # llama.cpp's SPM defaults: BOS 1, EOS 2, add BOS, add a space prefix.
            default_bos, default_eos, default_add_bos = 1, 2, True
        else:
            default_bos, default_eos = 11, 11
            default_add_bos = meta.get_str("tokenizer.ggml.pre", None) in _ADD_BOS_PRES

        def in_range(key: str, default: int | None = None) -> int | None:
            # llama.cpp ignores an out-of-range special id (with a warning) rather than refusing the model.
            i = meta.get_int(key, default, min=-(2**63), max=2**64) if key in meta else default
            return i if isinstance(i, int) and 0 <= i < n else None

        if add_bos is None:
            add_bos = meta.get_bool("tokenizer.ggml.add_bos_token", default_add_bos)
        return cls(
            model=model,
            tokens=tokens,
            token_types=meta.get_array("tokenizer.ggml.token_type", int, None, length=n),
            merges=meta.get_array("tokenizer.ggml.merges", str, None),
            scores=meta.get_array("tokenizer.ggml.scores", float, None, length=n),
            pre=meta.get_str("tokenizer.ggml.pre", None),
            bos_id=in_range("tokenizer.ggml.bos_token_id", default_bos),
            eos_id=in_range("tokenizer.ggml.eos_token_id", default_eos),
            eot_id=in_range("tokenizer.ggml.eot_token_id"),
            eom_id=in_range("tokenizer.ggml.eom_token_id"),
            add_bos=add_bos,
            add_space_prefix=meta.get_bool("tokenizer.ggml.add_space_prefix", True),
            fim_ids={k: in_range(f"tokenizer.ggml.{k}_token_id") for k in FIM_TEXTS},
            model_name=meta.get_str("general.name", ""),
        )

    # ---- vocabulary ----

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def eot_ids(self) -> frozenset[int]:
        """Ids that end generation: EOS plus end-of-turn tokens (``<|im_end|>``, ``<|eot_id|>``, ...)."""
        return self._eot_ids

    def token_to_id(self, text: str) -> int | None:
        """The id of the token whose vocabulary text is ``text`` (GPT-2 alphabet for gpt2: ``"Ġthe"``), or None."""
        return self._vocab.get(text)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary text of ``token_id`` (as stored: ``"Ġthe"``, ``"▁the"``, ``"<|im_end|>"``)."""
        if not 0 <= token_id < len(self._tokens):
            raise TokenizerError(
                f"token id {token_id} is outside the vocabulary (0..{len(self._tokens) - 1})"
            )
        return self._tokens[token_id]

    @property
    def control_texts(self) -> tuple[str, ...]:
        """Texts of the CONTROL and UNKNOWN tokens: the ones only ``parse_special=True`` turns into their ids, which
        message content must never produce (USER_DEFINED tokens match in any text, as in llama.cpp)."""
        return tuple(t for t, i in self._special_all if self._types[i] != TOKEN_USER_DEFINED)

    def is_special(self, token_id: int) -> bool:
        """True for CONTROL and UNKNOWN tokens: the ones ``decode(skip_special=True)`` leaves out."""
        return self._types[token_id] in (TOKEN_CONTROL, TOKEN_UNKNOWN)

    # ---- encode ----

    def encode(self, text: str, *, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Text -> ids, as llama.cpp's ``llama_tokenize(text, add_special=add_bos, parse_special)``.

        ``parse_special``: control tokens written in the text (``<|im_start|>``) become their ids; when False they
        are tokenized as plain text (user-defined tokens are still matched, as in llama.cpp).
        """
        if add_bos is None:
            add_bos = self.add_bos
        fragments = self._split_special(text, parse_special) if text else []
        return self._encode_fragments(self._strip_after_special(fragments), add_bos)

    def encode_parts(self, parts: Sequence[tuple[str, bool]], *, add_bos: bool | None = None) -> list[int]:
        """A chat prompt's ids from a template's ``render_parts``: special tokens are found in template text only
        (``is_template``), never in message content, so content cannot forge a turn boundary. Text on both sides of
        a part boundary is tokenized as one piece, so for content without special-token text the ids equal
        ``encode("".join(texts))`` (llama.cpp's). A BOS is added when ``add_bos`` (default: the vocabulary's
        choice) and the template did not write it."""
        fragments: list[str | int] = []
        for text, is_template in parts:
            for frag in self._split_special(text, is_template):
                if frag == "":
                    continue
                if isinstance(frag, str) and fragments and isinstance(fragments[-1], str):
                    fragments[-1] += frag
                else:
                    fragments.append(frag)
        if add_bos is None:
            add_bos = self.add_bos
        add_bos = add_bos and not (fragments and fragments[0] == self._bos_id)
        return self._encode_fragments(self._strip_after_special(fragments), add_bos)

    def _strip_after_special(self, fragments: list[str | int]) -> list[str | int]:
        """Drop the ASCII whitespace that follows a special token with llama.cpp's RSTRIP attribute (Phi-3)."""
        if not self._rstrip:
            return fragments
        out: list[str | int] = []
        strip = False
        for frag in fragments:
            if isinstance(frag, int):
                strip = frag in self._rstrip
            elif strip:
                frag = frag.lstrip(_ASCII_SPACE)
                strip = not frag  # all whitespace: keep stripping into the next text fragment
                if not frag:
                    continue
            out.append(frag)
        return out

    def _encode_fragments(self, fragments: Sequence[str | int], add_bos: bool) -> list[int]:
        out: list[int] = []
        if add_bos:
            if self._bos_id is None:
                raise TokenizerError("add_bos=True but this vocabulary has no BOS token")
            out.append(self._bos_id)
        if self.model == "gpt2":
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    self._encode_bpe(frag, out)
        else:
            prev_special = True
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                else:
                    if self._add_space_prefix and prev_special:
                        frag = " " + frag
                    self._encode_spm(frag.replace(" ", "\u2581"), out)
                    prev_special = False
        return out

    def _split_special(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special-token texts out of ``text``: for each special token, longest first, every occurrence in
        every remaining text fragment (llama.cpp's tokenizer_st_partition)."""
        specials = self._special_all if parse_special else self._special_user
        fragments: list[str | int] = [text]
        for stext, sid in specials:
            if stext not in text:  # cheap C-level test; most special tokens never occur
                continue
            new: list[str | int] = []
            for frag in fragments:
                if isinstance(frag, int) or stext not in frag:
                    new.append(frag)
                    continue
                pieces = frag.split(stext)
                for k, piece in enumerate(pieces):
                    if k:
                        new.append(sid)
                    if piece:
                        new.append(piece)
            fragments = new
        return fragments

    def _encode_bpe(self, text: str, out: list[int]) -> None:
        cache = self._cache
        for word in self._splitter.findall(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word(word)
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        """One pre-token -> ids: byte-encode, merge by rank (leftmost first on ties), look the pieces up."""
        encoded = word.encode("utf-8").decode("latin-1").translate(self._byte_table)
        vocab = self._vocab
        if self._ignore_merges and encoded in vocab:
            return (vocab[encoded],)
        if len(encoded) <= _SHORT_WORD:
            symbols = _merge_short(list(encoded), self._ranks)
        else:
            symbols = _merge_long(list(encoded), self._ranks)
        ids: list[int] = []
        for sym in symbols:
            i = vocab.get(sym)
            if i is not None:
                ids.append(i)
            else:
                # A merge product missing from the vocabulary: emit its bytes one by one (llama.cpp does too).
                ids.extend(vocab[c] for c in sym if c in vocab)
        return tuple(ids)

    def _encode_spm(self, text: str, out: list[int]) -> None:
        """SentencePiece BPE on one fragment (spaces already ``▁``): llama.cpp's llm_tokenizer_spm_session."""
        vocab, scores = self._vocab, self._scores
        syms: list[str] = list(text)
        n = len(syms)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int]] = []
        # rev_merge: text -> (left, right) of the last bigram pushed with that text, to re-split unknown symbols.
        rev: dict[str, tuple[int, int]] = {}

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            merged = syms[left] + syms[right]
            tid = vocab.get(merged)
            if tid is None:
                return
            # Highest score first, then leftmost; size detects a stale entry.
            heapq.heappush(heap, (-scores[tid], left, right, len(merged.encode())))
            rev[merged] = (left, right)

        for i in range(n - 1):
            push(i, i + 1)
        sizes = [len(s.encode()) for s in syms]
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if sizes[left] == 0 or sizes[right] == 0 or sizes[left] + sizes[right] != size:
                continue
            syms[left] += syms[right]
            sizes[left] += sizes[right]
            sizes[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])

        byte_tokens = self._byte_tokens

        def resegment(i: int) -> None:
            tid = vocab.get(syms[i])
            if tid is not None:
                out.append(tid)
                return
            pair = rev.get(syms[i])
            if pair is None:
                for b in syms[i].encode():
                    bt = byte_tokens[b]
                    if bt is not None:
                        out.append(bt)
                return
            resegment(pair[0])
            resegment(pair[1])

        i = 0 if n else -1
        while i != -1:
            resegment(i)
            i = nxt[i]

    # ---- decode ----

    def token_bytes(self, token_id: int, *, skip_special: bool = False) -> bytes:
        """The bytes one token stands for (llama.cpp's ``token_to_piece``, no space stripping).

        CONTROL / UNKNOWN tokens give their text, or nothing with ``skip_special``; USER_DEFINED tokens always
        give their text; UNUSED tokens give nothing. A piece may be part of a UTF-8 character.
        """
        if not 0 <= token_id < len(self._tokens):
            raise TokenizerError(
                f"token id {token_id} is outside the vocabulary (0..{len(self._tokens) - 1})"
            )
        ttype = self._types[token_id]
        if ttype in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            return b"" if skip_special else self._tokens[token_id].encode()
        piece = self._piece_cache.get(token_id)
        if piece is None:
            piece = self._piece(token_id, ttype)
            self._piece_cache[token_id] = piece
        return piece

    def _piece(self, token_id: int, ttype: int) -> bytes:
        text = self._tokens[token_id]
        if ttype == TOKEN_USER_DEFINED:
            return text.encode()
        if ttype == TOKEN_BYTE:
            return bytes([int(text[3:5], 16)]) if len(text) == 6 and text.startswith("<0x") else b""
        if ttype != TOKEN_NORMAL:
            return b""
        if self.model == "llama":
            return text.replace("\u2581", " ").encode()
        byte_of = self._byte_of_char
        # A character outside the byte alphabet cannot come from byte-level BPE; keep it as UTF-8 rather than fail.
        return b"".join(bytes([byte_of[c]]) if c in byte_of else c.encode() for c in text)

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 become U+FFFD, as llama.cpp's detokenizer output does when
        read with ``errors="replace"``."""
        return b"".join(self.token_bytes(i, skip_special=skip_special) for i in ids).decode(
            "utf-8", "replace"
        )

    def stream_decoder(self, *, skip_special: bool = False) -> StreamDecoder:
        """A decoder for tokens arriving one at a time that never emits half a character."""
        return StreamDecoder(self, skip_special=skip_special)


class StreamDecoder:
    """Turns token ids into text as they are generated, holding the bytes of an unfinished UTF-8 character.

    A token can end inside a character (emoji and CJK are often split over 2-4 byte tokens), so ``push`` returns
    only complete characters; ``flush`` returns what is left (a dangling partial character becomes U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        # The stdlib incremental UTF-8 decoder holds incomplete sequences and replaces invalid bytes exactly as a
        # one-shot decode(errors="replace") of the whole byte string would.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._tokenizer.token_bytes(token_id, skip_special=self._skip_special))

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


# ---- BPE merge loops ---------------------------------------------------------------------------------------------


def _merge_short(syms: list[str], ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Repeatedly join the adjacent pair with the lowest rank, leftmost first. Fast for short words."""
    get = ranks.get
    while len(syms) > 1:
        best_rank = None
        best = -1
        for i in range(len(syms) - 1):
            r = get((syms[i], syms[i + 1]))
            if r is not None and (best_rank is None or r < best_rank):
                best_rank = r
                best = i
        if best < 0:
            break
        syms[best : best + 2] = [syms[best] + syms[best + 1]]
    return syms


def _merge_long(syms: list[str], ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Same result as ``_merge_short`` in O(n log n): llama.cpp's priority queue of (rank, left) with a linked list;
    a popped pair whose symbols changed since it was pushed is stale and skipped."""
    n = len(syms)
    nxt = list(range(1, n)) + [-1]
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap: list[tuple[int, int, int, str, str]] = []
    get = ranks.get
    for i in range(n - 1):
        r = get((syms[i], syms[i + 1]))
        if r is not None:
            heap.append((r, i, i + 1, syms[i], syms[i + 1]))
    heapq.heapify(heap)
    while heap:
        _, left, right, ltext, rtext = heapq.heappop(heap)
        if not alive[left] or not alive[right] or syms[left] != ltext or syms[right] != rtext:
            continue
        syms[left] = ltext + rtext
        alive[right] = False
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        p, q = prv[left], nxt[left]
        if p >= 0:
            r = get((syms[p], syms[left]))
            if r is not None:
                heapq.heappush(heap, (r, p, left, syms[p], syms[left]))
        if q >= 0:
            r = get((syms[left], syms[q]))
            if r is not None:
                heapq.heappush(heap, (r, left, q, syms[left], syms[q]))
    return [s for s, a in zip(syms, alive, strict=True) if a]
