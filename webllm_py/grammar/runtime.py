"""Run a ``Program`` byte by byte: a lazily built DFA whose states ("configs") are sets of parser stacks.

A **config** is everything the parser can be in after some input: a set of ``(state, stack)`` pairs, where
``state`` is a global Program state that can still read a byte and ``stack`` an interned linked list of return
states (0 = empty), plus whether the input so far is a complete sentence (``accepting``). Configs are interned
to small ints, and each config's successor on every byte is computed once, on first use, into ``rows[config]``
(a tuple of 256 ints, -1 = the byte is not allowed). So matching and the token-trie walk are the same table lookups as
for a plain DFA; for a grammar without recursion every config has one pair with an empty stack.

Calls are expanded eagerly (a config never holds a state whose next move is a call), returns too. A call whose
return state can only return (``Program.ret_only``) pushes nothing, so right recursion (``list ::= item list?``)
runs in constant stack depth.
"""

from __future__ import annotations

import operator

from ..errors import GrammarLimitError
from .program import Program

# The most (state, stack) pairs one closure may expand to before the grammar is called too ambiguous.
MAX_CLOSURE = 20_000

# Safe-character successor of a config (see ``safe_next``): no safe character is allowed / they disagree.
SAFE_DEAD = -1
SAFE_MIXED = -2

# The UTF-8 automaton of "one code point that a JSON string may hold raw" (U+0020 and up, except '"' and '\\'):
# per state, (first byte, last byte, next state); state 0 = between characters, -1 = a character completed.
_SAFE_UTF8: tuple[tuple[tuple[int, int, int], ...], ...] = (
    (
        (0x20, 0x21, -1),
        (0x23, 0x5B, -1),
        (0x5D, 0x7F, -1),
        (0xC2, 0xDF, 1),
        (0xE0, 0xE0, 3),
        (0xE1, 0xEC, 2),
        (0xED, 0xED, 4),
        (0xEE, 0xEF, 2),
        (0xF0, 0xF0, 6),
        (0xF1, 0xF3, 5),
        (0xF4, 0xF4, 7),
    ),  # fmt: skip
    ((0x80, 0xBF, -1),),  # 1: one continuation byte left
    ((0x80, 0xBF, 1),),  # 2: two left
    ((0xA0, 0xBF, 1),),  # 3: after E0 (no overlong forms)
    ((0x80, 0x9F, 1),),  # 4: after ED (no surrogates)
    ((0x80, 0xBF, 2),),  # 5: three left
    ((0x90, 0xBF, 2),),  # 6: after F0
    ((0x80, 0x8F, 2),),  # 7: after F4 (up to U+10FFFF)
)


class _Rows(dict):
    """``rows[config] -> list of 256 successor configs``, computed on first access."""

    def __init__(self, configs: Configs):
        super().__init__()
        self._configs = configs

    def __missing__(self, config: int) -> tuple[int, ...]:
        row = self._configs._compute_row(config)
        self[config] = row
        return row


class Configs:
    """The lazily determinized configs of one Program (tokenizer-independent; shared by every matcher of the
    grammar). ``start`` is the initial config; ``rows[c]``; ``accepting[c]``; ``pairs[c]`` (empty: nothing may
    follow)."""

    def __init__(self, program: Program):
        self.program = program
        # Stack nodes: a return state, a loop (-1: a plain call frame) with the number of the repetition
        # being run (1-based), the node below. Node 0 = the empty stack.
        self._stack_index: dict[tuple[int, int, int, int], int] = {}
        self._stack_ret: list[int] = [-1]
        self._stack_loop: list[int] = [-1]
        self._stack_count: list[int] = [0]
        self._stack_parent: list[int] = [-1]
        self._loop_start = [0] * len(program.loops)
        for calls in program.calls:
            for callee, _, loop in calls:
                if loop >= 0:
                    self._loop_start[loop] = callee
        self._config_index: dict[tuple[frozenset[tuple[int, int]], bool], int] = {}
        self.pairs: list[frozenset[tuple[int, int]]] = []
        self.accepting: list[bool] = []
        self._closures: dict[tuple[int, int], int] = {}
        self._safe: dict[int, int] = {}
        self._safe_edges: list[list[tuple[list[int], int]]] | None = None
        self.rows = _Rows(self)
        self._expand = operator.itemgetter(*program.classmap)  # per-class list -> 256-tuple
        self.start = self._single(program.start, 0)

    def n_configs(self) -> int:
        return len(self.pairs)

    # ---- building ----

    def _push(self, ret: int, parent: int, loop: int = -1, count: int = 0) -> int:
        key = (ret, loop, count, parent)
        node = self._stack_index.get(key)
        if node is None:
            node = self._stack_index[key] = len(self._stack_ret)
            self._stack_ret.append(ret)
            self._stack_loop.append(loop)
            self._stack_count.append(count)
            self._stack_parent.append(parent)
        return node

    def _intern(self, pairs: frozenset[tuple[int, int]], accepting: bool) -> int:
        if not pairs and not accepting:
            return -1
        key = (pairs, accepting)
        c = self._config_index.get(key)
        if c is None:
            c = self._config_index[key] = len(self.pairs)
            self.pairs.append(pairs)
            self.accepting.append(accepting)
        return c

    def _closure(self, state: int, stack: int, out: set[tuple[int, int]]) -> bool:
        """Add to ``out`` every byte-reading pair reachable from ``(state, stack)`` by calls and returns;
        returns whether the whole input can end here (a final state with an empty stack is reached)."""
        prog = self.program
        has_bytes, calls, final, ret_only = prog.has_bytes, prog.calls, prog.final, prog.ret_only
        accepting = False
        seen = {(state, stack)}
        todo = [(state, stack)]
        loops = prog.loops
        while todo:
            s, st = todo.pop()
            if has_bytes[s]:
                out.add((s, st))
            nexts = []
            for callee, ret, loop in calls[s]:
                if loop < 0:
                    nexts.append((callee, st if ret_only[ret] else self._push(ret, st)))
                else:
                    nexts.append((callee, self._push(ret, st, loop, 1)))
            if final[s]:
                if st == 0:
                    accepting = True
                elif self._stack_loop[st] < 0:
                    nexts.append((self._stack_ret[st], self._stack_parent[st]))
                else:
                    # One repetition of a counted loop ended: run another one and/or leave the loop.
                    loop, done = self._stack_loop[st], self._stack_count[st]
                    lo, hi = loops[loop]
                    ret, parent = self._stack_ret[st], self._stack_parent[st]
                    if hi is None or done < hi:
                        # Past lo an unbounded loop's count no longer matters: cap it, so this terminates.
                        count = min(done + 1, lo) if hi is None else done + 1
                        nexts.append((self._loop_start[loop], self._push(ret, parent, loop, count)))
                    if done >= lo:
                        nexts.append((ret, parent))
            for nxt in nexts:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
            if len(seen) > MAX_CLOSURE:
                raise GrammarLimitError("parser stacks in one step", MAX_CLOSURE)
        return accepting

    def _single(self, state: int, stack: int) -> int:
        key = (state, stack)
        c = self._closures.get(key)
        if c is None:
            prog = self.program
            if prog.final[state] or prog.calls[state]:
                out: set[tuple[int, int]] = set()
                accepting = self._closure(state, stack, out)
                c = self._intern(frozenset(out), accepting)
            else:  # inside a rule: nothing to expand
                c = self._intern(frozenset((key,)), False)
            self._closures[key] = c
        return c

    def _pair_row(self, s: int, st: int) -> list[int]:
        """Per byte class, the config one pair leads to (-1: refused)."""
        single = self._single
        memo: dict[int, int] = {-1: -1}
        out = []
        for t in self.program.rows[s]:
            c = memo.get(t)
            if c is None:
                c = memo[t] = single(t, st)
            out.append(c)
        return out

    def _compute_row(self, config: int) -> tuple[int, ...]:
        pairs = self.pairs[config]
        if not pairs:  # the input is complete and nothing may follow
            return (-1,) * 256
        if len(pairs) == 1:
            ((s, st),) = pairs
            by_class = self._pair_row(s, st)
        else:
            # Each pair on its own, then the union per class (most classes keep one pair alive).
            rows = [self._pair_row(s, st) for s, st in pairs]
            by_class = []
            unions: dict[tuple[int, ...], int] = {}
            for targets in zip(*rows, strict=True):
                live = tuple(sorted({c for c in targets if c >= 0}))
                if len(live) <= 1:
                    by_class.append(live[0] if live else -1)
                    continue
                c = unions.get(live)
                if c is None:
                    merged = frozenset().union(*(self.pairs[x] for x in live))
                    c = unions[live] = self._intern(merged, any(self.accepting[x] for x in live))
                by_class.append(c)
        return self._expand(by_class)

    # ---- use ----

    def step(self, config: int, data: bytes) -> int:
        """The config after ``data``, or -1 if some byte is not allowed."""
        rows = self.rows
        for b in data:
            config = rows[config][b]
            if config < 0:
                return -1
        return config

    def safe_next(self, config: int) -> int:
        """The one config every "safe" code point (raw JSON string text: U+0020 and up except '"' and '\\')
        leads to from ``config``; ``SAFE_DEAD`` if none is allowed, ``SAFE_MIXED`` if they differ or only some
        are allowed. Exact: it runs the product with the UTF-8 automaton of the safe set, on (state, stack)
        pairs directly (per byte class), so the configs inside a multi-byte character are never built."""
        got = self._safe.get(config)
        if got is not None:
            return got
        prog = self.program
        rows, final, calls = prog.rows, prog.final, prog.calls
        edges = self._safe_edges
        if edges is None:
            cm = prog.classmap
            edges = self._safe_edges = [
                [(sorted({cm[b] for b in range(lo, hi + 1)}), nu) for lo, hi, nu in state]
                for state in _SAFE_UTF8
            ]
        results: set[int] = set()
        dead = False
        start = (self.pairs[config], 0)
        seen = {start}
        todo = [start]
        while todo and not (dead and results) and len(results) < 2:
            pairs, u = todo.pop()
            for classes, nu in edges[u]:
                for k in classes:
                    nxt: set[tuple[int, int]] = set()
                    accepting = False
                    for s, st in pairs:
                        t = rows[s][k]
                        if t < 0:
                            continue
                        if not final[t] and not calls[t]:
                            nxt.add((t, st))
                        else:
                            c = self._single(t, st)
                            if c >= 0:
                                nxt.update(self.pairs[c])
                                accepting = accepting or self.accepting[c]
                    if not nxt and not accepting:
                        dead = True
                    elif nu < 0:
                        results.add(self._intern(frozenset(nxt), accepting))
                    else:
                        key = (frozenset(nxt), nu)
                        if key not in seen:
                            seen.add(key)
                            todo.append(key)
        if len(results) == 1 and not dead:
            (got,) = results
        elif not results and dead and len(seen) == 1:
            got = SAFE_DEAD
        else:
            got = SAFE_MIXED
        self._safe[config] = got
        return got
