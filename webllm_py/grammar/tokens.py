"""The model's vocabulary as the matcher needs it: token bytes in flattened tries, plus the "safe slice".

Built once per tokenizer (lazily, on the first mask) and shared by every grammar and matcher:

* **candidates**: the tokens a grammar may ever allow inside constrained text: every token with non-empty
  bytes that is neither special (control/unknown: ``<|im_start|>``...) nor a stop token. Special tokens are
  never allowed; stop tokens only where the grammar accepts (``stop_mask``).
* **trie** of all candidates, flattened in depth-first order: for node ``i``, ``byte[i]`` is the byte on its
  edge, ``depth[i]`` its depth (1 = first byte), ``skip[i]`` the index after its subtree, ``token[i]`` the id
  ending there or -1. Walking it with a config's rows visits only prefixes the grammar allows, and skips a
  whole subtree at the first refused byte.
* **safe slice**: candidates whose bytes are whole UTF-8 characters, all "safe" (what a JSON string holds raw:
  U+0020 and up except ``"`` and ``\\``), possibly ending inside one more safe character (a token that cuts a
  character in two). ``safe_upto[k]`` is the big-int bitmask of those that need at most ``k`` characters. Inside a string most of the vocabulary is such tokens; ``Configs.safe_next`` proves when all of
  them are allowed at once (48,464 of SmolLM2's 49,152 tokens).
* **tails**: every other candidate is a run of ``p`` safe characters, then a tail that starts with something
  else (``abc"`` is 3 characters and ``"``; ``\n`` is 0 and itself). ``tails[p]`` is a trie of the tails of
  the tokens with ``p`` safe leading characters. Where ``p`` safe characters lead to one config ``C_p``, those
  tokens are allowed exactly when their tail is allowed from ``C_p``: a walk over tails, not whole tokens.

Masks are Python ints (bit ``i`` = token ``i``); ``to_bitmask`` gives the sampler's buffer: ``ceil(n_vocab /
32)`` little-endian u32 words, bit ``i % 32`` of word ``i // 32`` = token ``i``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import InvalidRequestError

_SAFE_ASCII = frozenset(range(0x20, 0x80)) - {0x22, 0x5C}


class Trie:
    """A flattened token trie (see the module doc). ``dups[id]``: other ids with the same bytes."""

    __slots__ = ("byte", "depth", "skip", "token", "dups", "max_depth")

    def __init__(self, items: Iterable[tuple[bytes, int]]):
        byte: list[int] = []
        depth: list[int] = []
        token: list[int] = []
        dups: dict[int, list[int]] = {}
        path: list[int] = []  # node index at each depth of the previous token
        prev = b""
        last_id = -1
        for data, tid in sorted(items):
            if data == prev and last_id >= 0:
                dups.setdefault(last_id, []).append(tid)
                continue
            common = 0
            limit = min(len(prev), len(data))
            while common < limit and prev[common] == data[common]:
                common += 1
            del path[common:]
            for d in range(common, len(data)):
                path.append(len(byte))
                byte.append(data[d])
                depth.append(d + 1)
                token.append(-1)
            token[path[-1]] = tid
            prev, last_id = data, tid
        n = len(byte)
        skip = [n] * n
        open_nodes: list[int] = []
        for i in range(n):
            while open_nodes and depth[open_nodes[-1]] >= depth[i]:
                skip[open_nodes.pop()] = i
            open_nodes.append(i)
        # Tuples of ints: the cyclic GC stops scanning them after its first pass (lists it would scan on every
        # full collection: milliseconds for a 152k vocabulary, in the middle of a decode step).
        self.byte, self.depth, self.skip, self.token = tuple(byte), tuple(depth), tuple(skip), tuple(token)
        self.dups = dups
        self.max_depth = max(depth, default=0)

    def __len__(self) -> int:
        return len(self.byte)

    def walk(self, rows: Any, start: int) -> list[int]:
        """Ids of the tokens whose every byte is allowed from config ``start`` (``rows[c][byte] -> c | -1``)."""
        byte, depth, skip, token = self.byte, self.depth, self.skip, self.token
        n = len(byte)
        states = [start] * (self.max_depth + 1)
        out: list[int] = []
        append = out.append
        i = 0
        while i < n:
            d = depth[i]
            c = rows[states[d - 1]][byte[i]]
            if c < 0:
                i = skip[i]
                continue
            states[d] = c
            t = token[i]
            if t >= 0:
                append(t)
            i += 1
        if self.dups:
            for t in [t for t in out if t in self.dups]:
                out.extend(self.dups[t])
        return out


# Second-byte ranges of a UTF-8 lead byte (no overlong forms, no surrogates, nothing above U+10FFFF).
_SECOND = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def _char_size(lead: int) -> int:
    return 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0


def _partial_char(rest: bytes) -> bool:
    """True when ``rest`` is a proper prefix of the UTF-8 encoding of one (safe, non-ASCII) character."""
    size = _char_size(rest[0])
    if not size or len(rest) >= size:
        return False
    for j, b in enumerate(rest[1:], 1):
        lo, hi = _SECOND.get(rest[0], (0x80, 0xBF)) if j == 1 else (0x80, 0xBF)
        if not lo <= b <= hi:
            return False
    return True


def _safe_prefix(data: bytes) -> tuple[int, int]:
    """(characters a run of safe text needs for this token, byte length of the part such a run covers): whole
    safe characters, plus one more when the token then ends inside a safe character (``é`` cut after its first
    byte). The rest, if any, is the token's tail."""
    chars = 0
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            if b not in _SAFE_ASCII:
                break
            i += 1
        else:
            size = _char_size(b)
            if not size:
                break
            if i + size > n:
                return (chars + 1, n) if _partial_char(data[i:]) else (chars, i)
            try:
                data[i : i + size].decode("utf-8")
            except UnicodeDecodeError:
                break
            i += size
        chars += 1
    return chars, i


class TokenIndex:
    """One tokenizer's token bytes, indexed for masks.

    ``token_bytes[i]``: the bytes token ``i`` stands for (``Tokenizer.token_bytes``). ``special_ids``: tokens
    never allowed in constrained text (control tokens). ``stop_ids``: tokens that end generation (EOS,
    end-of-turn), allowed exactly where the grammar accepts. ``n_vocab``: the logits width (at least the number
    of tokens; ids past the vocabulary are never allowed). The tries are built on first use (``build_s``).
    """

    def __init__(
        self,
        token_bytes: Sequence[bytes],
        *,
        special_ids: Iterable[int] = (),
        stop_ids: Iterable[int] = (),
        n_vocab: int | None = None,
    ):
        self.token_bytes = tuple(token_bytes)
        self.n_vocab = len(self.token_bytes) if n_vocab is None else n_vocab
        if self.n_vocab < len(self.token_bytes):
            raise InvalidRequestError(
                f"n_vocab ({self.n_vocab}) is smaller than the number of tokens ({len(self.token_bytes)})"
            )
        self.special_ids = frozenset(special_ids)
        self.stop_ids = frozenset(stop_ids)
        for name, ids in (("special_ids", self.special_ids), ("stop_ids", self.stop_ids)):
            bad = [i for i in ids if not 0 <= i < self.n_vocab]
            if bad:
                raise InvalidRequestError(f"{name} has ids outside 0..{self.n_vocab - 1}: {bad[:5]}")
        self.words = (self.n_vocab + 31) // 32  # u32 words per bitmask
        self.stop_mask = sum(1 << i for i in self.stop_ids)
        self.all_mask = (1 << self.n_vocab) - 1
        self.build_s: float | None = None
        self._built = False

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, n_vocab: int | None = None) -> TokenIndex:
        """From a ``webllm_py.tokenizer.Tokenizer``: its token bytes, its special tokens (``is_special``) and
        its end-of-generation ids (``eot_ids``)."""
        n = tokenizer.vocab_size
        return cls(
            [tokenizer.token_bytes(i) for i in range(n)],
            special_ids=[i for i in range(n) if tokenizer.is_special(i)],
            stop_ids=tokenizer.eot_ids,
            n_vocab=n_vocab,
        )

    def _build(self) -> None:
        t0 = time.perf_counter()
        candidates: list[tuple[bytes, int]] = []
        tails: dict[int, list[tuple[bytes, int]]] = {}
        by_chars: dict[int, list[int]] = {}
        excluded = self.special_ids | self.stop_ids
        for i, data in enumerate(self.token_bytes):
            if not data or i in excluded:
                continue
            candidates.append((data, i))
            chars, cut = _safe_prefix(data)
            if cut == len(data):
                by_chars.setdefault(chars, []).append(i)
            else:
                tails.setdefault(chars, []).append((data[cut:], i))
        self.trie = Trie(candidates)
        self.tails = [Trie(tails.get(p, ())) for p in range(max(tails, default=-1) + 1)]
        self.max_safe_chars = max(by_chars, default=0)
        # safe_upto[k]: safe tokens with at most k characters, as one big int.
        nbytes = (self.n_vocab + 7) // 8
        upto: list[int] = [0]
        acc = bytearray(nbytes)
        for k in range(1, self.max_safe_chars + 1):
            for i in by_chars.get(k, ()):
                acc[i >> 3] |= 1 << (i & 7)
            upto.append(int.from_bytes(acc, "little"))
        self.safe_upto = upto
        self.n_safe = sum(len(v) for v in by_chars.values())
        self.build_s = time.perf_counter() - t0
        self._built = True

    def ensure_built(self) -> TokenIndex:
        if not self._built:
            self._build()
        return self

    def ids_to_mask(self, ids: Iterable[int]) -> int:
        acc = bytearray((self.n_vocab + 7) // 8)
        for i in ids:
            acc[i >> 3] |= 1 << (i & 7)
        return int.from_bytes(acc, "little")

    def to_bitmask(self, mask: int) -> bytes:
        """A mask int as the sampler's buffer: ``ceil(n_vocab / 32)`` little-endian u32 words."""
        return mask.to_bytes(self.words * 4, "little")
