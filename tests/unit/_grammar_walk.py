"""Helpers for the grammar tests: a small hand-made vocabulary, a brute-force mask, seeded random walks."""

from __future__ import annotations

import random
from collections import deque

from webllm_py.grammar import Matcher, TokenIndex

SPECIAL = [b"<|im_start|>", b"<|im_end|>", b"<s>"]  # ids 0, 1, 2: control tokens (1 = end of turn)
PIECES = [
    b'{"', b'": ', b'", "', b'"}', b'"]', b"}, ", b"], ", b", ", b"true", b"false", b"null", b"name", b"age",
    b"ab", b" the", b"\\n", b"\\u00", b'\\"', b"12", b"-1", b".5", b"e+", b"\xc3\xa9", b"\xe2\x82\xac",
    b"\xf0\x9f\x98\x80", b"\xf0\x9f", b"\x98\x80", b"\xe2\x82", b'":"', b"[{", b"}]", b'""', b"a\xc3",
    b'ab"', b'ab", "', b"x\\n", b'\xc3\xa9"}', b"ab\n", b"the\xe2\x82",
]  # fmt: skip


def small_vocab() -> tuple[list[bytes], list[int], list[int]]:
    """Token bytes (3 specials, 256 single bytes, multi-byte pieces incl. partial UTF-8), special ids, stops."""
    tokens = [*SPECIAL, *(bytes([b]) for b in range(256)), *PIECES, b"ab"]  # the last one duplicates "ab"
    return tokens, [0, 1, 2], [1]


def small_index() -> TokenIndex:
    tokens, special, stop = small_vocab()
    return TokenIndex(tokens, special_ids=special, stop_ids=stop, n_vocab=len(tokens) + 5)


def brute_mask(matcher: Matcher) -> int:
    """The mask by stepping every token through the configs one by one (no trie, no slice)."""
    index, configs = matcher.index, matcher.configs
    c = matcher._config
    m = 0
    for i, data in enumerate(index.token_bytes):
        if i in index.stop_ids:
            ok = configs.accepting[c]
        elif i in index.special_ids or not data:
            ok = False
        else:
            ok = configs.step(c, data) >= 0
        if ok:
            m |= 1 << i
    return m


def shortest_completion(matcher: Matcher, limit: int = 20_000) -> bytes | None:
    """The shortest bytes that take the matcher's config to an accepting one (breadth-first over configs)."""
    configs = matcher.configs
    start = matcher._config
    prev: dict[int, tuple[int, int]] = {start: (-1, -1)}
    todo = deque([start])
    while todo:
        c = todo.popleft()
        if configs.accepting[c]:
            out = bytearray()
            while prev[c][0] >= 0:
                c, b = prev[c]
                out.append(b)
            return bytes(reversed(out))
        row = configs.rows[c]
        for b in range(256):
            t = row[b]
            if t >= 0 and t not in prev:
                prev[t] = (c, b)
                todo.append(t)
        if len(prev) > limit:
            return None
    return None


def random_walk(matcher: Matcher, rng: random.Random, steps: int, check=None) -> bytes:
    """``steps`` tokens chosen uniformly among the allowed ones (stop tokens count as one choice), then the
    shortest completion fed as single-byte tokens. ``check(matcher)`` runs before every choice."""
    index = matcher.index
    single = {
        data[0]: i
        for i, data in enumerate(index.token_bytes)
        if len(data) == 1 and i not in index.special_ids
    }
    text = bytearray()
    for _ in range(steps):
        if check is not None:
            check(matcher)
        allowed = matcher.allowed_ids()
        assert allowed, f"no token allowed after {bytes(text)!r}"
        t = rng.choice(allowed)
        if t in index.stop_ids:
            assert matcher.accept(t)
            return bytes(text)
        assert matcher.accept(t)
        text += index.token_bytes[t]
    rest = shortest_completion(matcher)
    assert rest is not None, f"no completion after {bytes(text)!r}"
    for b in rest:
        if check is not None:
            check(matcher)
        assert matcher.accept(single[b]), (bytes(text), b)
        text.append(b)
    assert matcher.accepts_eos()
    return bytes(text)
