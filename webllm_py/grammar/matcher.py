"""Token masks and the per-request matcher.

``Masker`` (one per grammar x tokenizer, shared by that grammar's matchers and kept across requests) turns a
config into the set of allowed tokens, as a big int, cached per config. ``Matcher`` follows one generation:
``mask()`` before sampling, ``accept(token)`` after it.

How a mask is computed for config ``c`` (structured.md §2.3):

1. follow ``Configs.safe_next`` from ``c``: if every safe character leads to one config ``c_1``, and again from
   there to ``c_2``..., for as many characters as the longest safe token has (or until the chain loops or every
   safe character is refused after ``k``), then the safe tokens of at most ``k`` characters are exactly the
   allowed ones among them (``safe_upto[k]``), and every other token with ``p <= k`` safe leading characters is
   allowed exactly when its tail is allowed from ``c_p`` (a walk over ``tails[p]``);
2. otherwise walk the whole trie (prunes at the first refused byte: cheap outside strings);
3. add the stop tokens when ``c`` accepts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .runtime import SAFE_DEAD, SAFE_MIXED, Configs
from .tokens import TokenIndex

if TYPE_CHECKING:
    from .grammar import Grammar

# Mask cache budget per Masker, in bytes of mask ints (~6 KB each at 49k tokens, ~19 KB at 152k).
MASK_CACHE_BYTES = 32 << 20


class Masker:
    """Allowed-token masks of one grammar's configs over one tokenizer (``mask(config) -> int``)."""

    def __init__(self, configs: Configs, index: TokenIndex):
        self.configs = configs
        self.index = index.ensure_built()
        self._cache: dict[int, int] = {}
        self._cache_max = max(64, MASK_CACHE_BYTES // max(1, index.n_vocab // 8))

    def mask(self, config: int) -> int:
        m = self._cache.get(config)
        if m is None:
            m = self._compute(config)
            if len(self._cache) >= self._cache_max:
                self._cache.clear()
            self._cache[config] = m
        return m

    def _compute(self, config: int) -> int:
        configs, index = self.configs, self.index
        rows = configs.rows
        m = index.stop_mask if configs.accepting[config] else 0
        if not configs.pairs[config]:
            return m
        chain = self._safe_chain(config)
        if chain is None:
            return m | index.ids_to_mask(index.trie.walk(rows, config))
        chars, configs_along = chain
        ids: list[int] = []
        for p, trie in enumerate(index.tails[: chars + 1]):
            if len(trie):
                ids += trie.walk(rows, configs_along[p])
        return m | index.ids_to_mask(ids) | index.safe_upto[min(chars, index.max_safe_chars)]

    def _safe_chain(self, config: int) -> tuple[int, list[int]] | None:
        """``(k, [c_0, c_1, ...])``: ``k`` safe characters in a row are all allowed from ``config`` (capped at
        the longest safe token), and ``c_p`` is where ``p`` of them lead, for every ``p`` a tail trie needs.
        None when some safe characters are allowed and some not (then the slice cannot be used)."""
        configs = self.configs
        need = len(self.index.tails)
        limit = max(self.index.max_safe_chars, need - 1)
        along = [config]
        position = {config: 0}
        c = config
        while len(along) - 1 < limit:
            nxt = configs.safe_next(c)
            if nxt == SAFE_MIXED:
                return None
            if nxt == SAFE_DEAD:
                return len(along) - 1, along
            if nxt in position:  # a cycle: every longer run is allowed too; extend the list periodically
                start = position[nxt]
                period = len(along) - start
                while len(along) < need:
                    along.append(along[start + (len(along) - start) % period])
                return limit, along
            position[nxt] = len(along)
            along.append(nxt)
            c = nxt
        return limit, along


class Matcher:
    """Follows one generation through a grammar.

    ``mask()`` -> the sampler's bitmask (``ceil(n_vocab / 32)`` little-endian u32 words; bit ``i % 32`` of word
    ``i // 32`` set = token ``i`` allowed); ``accept(token_id)`` after sampling (False, and no change, when the
    token is not allowed); ``accepts_eos()``: the text so far is complete; ``is_done()``: only a stop token can
    follow; ``rollback(n)``, ``reset()``.

    Lazy mode (tool calls): with ``triggers`` (byte strings) or ``trigger_ids``, the matcher starts **unarmed**:
    every token is allowed and accepted tokens are only scanned. When a trigger id is accepted, the grammar
    starts after it; when a trigger string appears in the text, the grammar is fed the text from the trigger on
    (so the grammar must begin with the trigger text). ``arm(prefix)`` arms it by hand.
    ``grammar_s``: seconds spent in ``mask`` and ``accept`` so far (``usage.extra.grammar_per_token_s``).
    """

    def __init__(
        self,
        grammar: Grammar,
        index: TokenIndex,
        *,
        triggers: Iterable[bytes] = (),
        trigger_ids: Iterable[int] = (),
    ):
        t0 = time.perf_counter()
        self.grammar = grammar
        self.index = index
        self.masker = grammar.masker(index)
        self.configs = grammar.configs
        self.triggers = tuple(triggers)
        self.trigger_ids = frozenset(trigger_ids)
        self._lazy = bool(self.triggers or self.trigger_ids)
        self._keep = max((len(t) for t in self.triggers), default=1)
        self.reset()
        self.init_s = time.perf_counter() - t0  # index build (first time only) + matcher setup
        self.grammar_s = 0.0

    # ---- state ----

    def reset(self) -> None:
        """Back to the start (armed again only if not lazy)."""
        self._config = self.configs.start
        self._armed = not self._lazy
        self._text = b""  # unarmed: the tail of the text, for trigger search
        self._stopped = False
        self._history: list[tuple[int, bool, bytes, bool]] = []

    @property
    def armed(self) -> bool:
        return self._armed

    def accepts_eos(self) -> bool:
        """True when a stop token is allowed now (the grammar accepts the text so far), or unarmed."""
        return not self._armed or self.configs.accepting[self._config]

    def is_done(self) -> bool:
        """True when nothing but a stop token can follow (or a stop token was accepted)."""
        return self._stopped or (self._armed and not self.configs.pairs[self._config])

    # ---- per token ----

    def mask_int(self) -> int:
        """The allowed tokens as a Python int (bit ``i`` = token ``i``)."""
        if not self._armed:
            return self.index.all_mask
        if self._stopped:
            return 0
        t0 = time.perf_counter()
        m = self.masker.mask(self._config)
        self.grammar_s += time.perf_counter() - t0
        return m

    def mask(self) -> bytes:
        """The allowed tokens as the sampler's buffer (see the class doc)."""
        m = self.mask_int()
        t0 = time.perf_counter()
        out = self.index.to_bitmask(m)
        self.grammar_s += time.perf_counter() - t0
        return out

    def is_allowed(self, token_id: int) -> bool:
        return bool(self.mask_int() >> token_id & 1)

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False (state unchanged) when the grammar does not allow it."""
        t0 = time.perf_counter()
        ok = self._accept(token_id)
        self.grammar_s += time.perf_counter() - t0
        return ok

    def _accept(self, token_id: int) -> bool:
        index = self.index
        if not 0 <= token_id < index.n_vocab or self._stopped:
            return False
        saved = (self._config, self._armed, self._text, self._stopped)
        if not self._armed:
            data = index.token_bytes[token_id] if token_id < len(index.token_bytes) else b""
            self._history.append(saved)
            if token_id in self.trigger_ids:
                self._armed = True
                return True
            text = self._text + data
            for trig in self.triggers:
                at = text.find(trig)
                if at >= 0:
                    self._armed = True
                    if not self._feed(text[at:]):
                        self._config, self._armed, self._text, self._stopped = saved
                        self._history.pop()
                        raise ValueError(f"the grammar does not accept its own trigger text {text[at:]!r}")
                    return True
            self._text = text[-(self._keep - 1) :] if self._keep > 1 else b""
            return True
        if token_id in index.stop_ids:
            if not self.configs.accepting[self._config]:
                return False
            self._history.append(saved)
            self._stopped = True
            return True
        if token_id in index.special_ids or token_id >= len(index.token_bytes):
            return False
        data = index.token_bytes[token_id]
        if not data:
            return False
        c = self.configs.step(self._config, data)
        if c < 0:
            return False
        self._history.append(saved)
        self._config = c
        return True

    def arm(self, prefix: bytes = b"") -> None:
        """Start constraining now (lazy mode), after feeding ``prefix`` to the grammar."""
        self._history.append((self._config, self._armed, self._text, self._stopped))
        self._armed = True
        if not self._feed(prefix):
            self._config, self._armed, self._text, self._stopped = self._history.pop()
            raise ValueError(f"the grammar does not accept {prefix!r}")

    def accept_bytes(self, data: bytes) -> bool:
        """Advance by raw bytes (armed only): for text forced into the reply, not sampled."""
        if not self._armed or self._stopped:
            return False
        c = self.configs.step(self._config, data)
        if c < 0:
            return False
        self._history.append((self._config, self._armed, self._text, self._stopped))
        self._config = c
        return True

    def _feed(self, data: bytes) -> bool:
        c = self.configs.step(self._config, data)
        if c < 0:
            return False
        self._config = c
        return True

    def rollback(self, n: int = 1) -> None:
        """Undo the last ``n`` accepted tokens (and ``accept_bytes``/``arm`` calls)."""
        if not 0 <= n <= len(self._history):
            raise ValueError(f"cannot roll back {n} steps; {len(self._history)} accepted")
        for _ in range(n):
            self._config, self._armed, self._text, self._stopped = self._history.pop()

    def allowed_ids(self) -> list[int]:
        """The allowed token ids (tests and debugging)."""
        m = self.mask_int()
        return [i for i in range(self.index.n_vocab) if m >> i & 1]
