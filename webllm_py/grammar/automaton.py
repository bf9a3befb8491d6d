"""Byte automata: IR -> NFA (Thompson) -> DFA (subset construction) -> trimmed, minimal DFA; products.

A DFA here reads bytes through a **class map** (``classmap[byte] -> class``: bytes no state tells apart share a
class) and may carry **call edges** ``(rule name, return state)``: "run that rule's automaton here, then go on
from the return state". A DFA without call edges is a plain regular language; rules that recurse keep their
calls and are run with a stack by ``runtime.Configs``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import GrammarLimitError
from .ir import Alt, Chars, Embed, Lit, Loop, Node, Props, Ref, Rep, Seq, utf8_sequences

# Sizes above which a grammar is refused rather than built (minutes of CPU, hundreds of MB).
MAX_NFA_STATES = 400_000
MAX_DFA_STATES = 60_000


class DFA:
    """``trans[state][class] -> state | -1``; ``final[state]``; ``calls[state] = ((rule, return_state), ...)``.
    State 0 is the start."""

    __slots__ = ("classmap", "trans", "final", "calls")

    def __init__(
        self,
        classmap: list[int],
        trans: list[list[int]],
        final: list[bool],
        calls: list[tuple[tuple[str, int], ...]],
    ):
        self.classmap = classmap
        self.trans = trans
        self.final = final
        self.calls = calls

    @property
    def n_states(self) -> int:
        return len(self.trans)

    @property
    def n_classes(self) -> int:
        return len(self.trans[0]) if self.trans else 0

    def is_empty(self) -> bool:
        """True when the language is empty (only meaningful after ``trim``)."""
        return not self.final[0] and not self.calls[0] and all(t < 0 for t in self.trans[0])

    def has_calls(self) -> bool:
        return any(self.calls)

    def matches(self, data: bytes) -> bool:
        """Full match of a byte string (call-free DFAs only)."""
        s = 0
        for b in data:
            s = self.trans[s][self.classmap[b]]
            if s < 0:
                return False
        return self.final[s]


# ---- IR -> NFA --------------------------------------------------------------------------------------------------


class NFA:
    """Thompson NFA over bytes: ``edges[s] = [(lo, hi, target)]`` byte ranges, ``eps[s]``, ``calls[s] = [(rule,
    target)]``."""

    def __init__(self, limit: int | None = None):
        self.edges: list[list[tuple[int, int, int]]] = []
        self.eps: list[list[int]] = []
        self.calls: list[list[tuple[str, int]]] = []
        self.limit = MAX_NFA_STATES if limit is None else limit

    def state(self) -> int:
        if len(self.edges) >= self.limit:
            raise GrammarLimitError("automaton states", self.limit)
        self.edges.append([])
        self.eps.append([])
        self.calls.append([])
        return len(self.edges) - 1

    def build(self, node: Node, start: int) -> int:
        """Add ``node``'s language from ``start``; returns the state where it ends."""
        if isinstance(node, Lit):
            s = start
            for b in node.data:
                t = self.state()
                self.edges[s].append((b, b, t))
                s = t
            return s
        if isinstance(node, Chars):
            end = self.state()
            for ranges in utf8_sequences(node.ranges):
                s = start
                for i, (lo, hi) in enumerate(ranges):
                    t = end if i == len(ranges) - 1 else self.state()
                    self.edges[s].append((lo, hi, t))
                    s = t
            return end
        if isinstance(node, Seq):
            s = start
            for item in node.items:
                s = self.build(item, s)
            return s
        if isinstance(node, Alt):
            end = self.state()
            for item in node.items:
                f = self.state()
                self.eps[start].append(f)
                self.eps[self.build(item, f)].append(end)
            return end
        if isinstance(node, Rep):
            s = start
            for _ in range(node.lo):
                s = self.build(node.item, s)
            if node.hi is None:
                loop = self.state()
                self.eps[s].append(loop)
                f = self.state()
                self.eps[loop].append(f)
                self.eps[self.build(node.item, f)].append(loop)
                return loop
            end = self.state()
            self.eps[s].append(end)
            for _ in range(node.hi - node.lo):
                f = self.state()
                self.eps[s].append(f)
                s = self.build(node.item, f)
                self.eps[s].append(end)
            return end
        if isinstance(node, Ref | Loop):
            end = self.state()
            self.calls[start].append((node.name, end))
            if isinstance(node, Loop) and node.lo == 0:
                self.eps[start].append(end)
            return end
        if isinstance(node, Props):
            return self._props(node, start)
        if isinstance(node, Embed):
            return self._embed(node.dfa, start)
        raise TypeError(f"not a grammar node: {node!r}")

    def _props(self, node: Props, start: int) -> int:
        # Two states per position: nothing emitted yet (`none`) / something emitted (`some`); a member is
        # reached from `none` directly and from `some` through the separator, so each member is built once.
        none, some = start, self.state()
        for member, required in node.items:
            ready = self.state()
            self.eps[none].append(ready)
            self.eps[self.build(node.sep, some)].append(ready)
            done = self.build(member, ready)
            next_none = self.state()
            next_some = self.state()
            self.eps[done].append(next_some)
            if not required:
                self.eps[none].append(next_none)
                self.eps[some].append(next_some)
            none, some = next_none, next_some
        if node.extra is not None:
            ready = self.state()
            self.eps[none].append(ready)
            self.eps[self.build(node.sep, some)].append(ready)
            self.eps[self.build(node.extra, ready)].append(some)
        end = self.state()
        self.eps[none].append(end)
        self.eps[some].append(end)
        return end

    def _embed(self, dfa: DFA, start: int) -> int:
        ids = [self.state() for _ in range(dfa.n_states)]
        end = self.state()
        ranges = _class_ranges(dfa.classmap)
        for s, row in enumerate(dfa.trans):
            for k, t in enumerate(row):
                if t >= 0:
                    self.edges[ids[s]].extend((lo, hi, ids[t]) for lo, hi in ranges[k])
            for rule, t in dfa.calls[s]:
                self.calls[ids[s]].append((rule, ids[t]))
            if dfa.final[s]:
                self.eps[ids[s]].append(end)
        self.eps[start].append(ids[0])
        return end


def _class_ranges(classmap: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Per class, the byte ranges that map to it."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(max(classmap) + 1)]
    lo = 0
    for b in range(1, 257):
        if b == 256 or classmap[b] != classmap[lo]:
            out[classmap[lo]].append((lo, b - 1))
            lo = b
    return out


# ---- NFA -> DFA -------------------------------------------------------------------------------------------------


def determinize(nfa: NFA, start: int, end: int) -> DFA:
    """Subset construction, then trim and minimize."""
    limit = MAX_DFA_STATES
    cuts = {0, 256}
    for edges in nfa.edges:
        for lo, hi, _ in edges:
            cuts.add(lo)
            cuts.add(hi + 1)
    bounds = sorted(cuts)
    classmap = [0] * 256
    for k in range(len(bounds) - 1):
        for b in range(bounds[k], bounds[k + 1]):
            classmap[b] = k
    n_classes = len(bounds) - 1
    kedges = [[(classmap[lo], classmap[hi], t) for lo, hi, t in edges] for edges in nfa.edges]
    eps = nfa.eps

    def closure(states: set[int]) -> frozenset[int]:
        return frozenset(_reach(states, eps))

    first = closure({start})
    index: dict[frozenset[int], int] = {first: 0}
    sets = [first]
    trans: list[list[int]] = []
    final: list[bool] = []
    calls: list[tuple[tuple[str, int], ...]] = []

    def state_of(nfa_states: set[int]) -> int:
        """The DFA state of the closure of ``nfa_states`` (new ones are queued)."""
        target = closure(nfa_states)
        j = index.get(target)
        if j is None:
            if len(sets) >= limit:
                raise GrammarLimitError("automaton states", limit)
            j = index[target] = len(sets)
            sets.append(target)
        return j

    i = 0
    while i < len(sets):
        cur = sets[i]
        i += 1
        buckets: list[set[int] | None] = [None] * n_classes
        by_rule: dict[str, set[int]] = {}
        for q in cur:
            for klo, khi, t in kedges[q]:
                for k in range(klo, khi + 1):
                    bucket = buckets[k]
                    if bucket is None:
                        buckets[k] = {t}
                    else:
                        bucket.add(t)
            for rule, t in nfa.calls[q]:
                by_rule.setdefault(rule, set()).add(t)
        row = [-1] * n_classes
        memo: dict[frozenset[int], int] = {}
        for k, bucket in enumerate(buckets):
            if bucket is None:
                continue
            key = frozenset(bucket)
            j = memo.get(key)
            if j is None:
                j = memo[key] = state_of(bucket)
            row[k] = j
        state_calls = [(rule, state_of(by_rule[rule])) for rule in sorted(by_rule)]
        trans.append(row)
        final.append(end in cur)
        calls.append(tuple(state_calls))
    return minimize(trim(DFA(classmap, trans, final, calls)))


def _reach(starts: Iterable[int], succ: Sequence[Iterable[int]]) -> set[int]:
    """Every node reachable from ``starts`` along ``succ[node]``."""
    seen = set(starts)
    stack = list(seen)
    while stack:
        for t in succ[stack.pop()]:
            if t not in seen:
                seen.add(t)
                stack.append(t)
    return seen


def trim(dfa: DFA, dead_rules: frozenset[str] = frozenset()) -> DFA:
    """Drop states that are unreachable or cannot reach a final state (calls into ``dead_rules`` removed)."""
    n = dfa.n_states
    calls = [tuple(c for c in cs if c[0] not in dead_rules) for cs in dfa.calls]
    succ = [{t for t in row if t >= 0} | {t for _, t in calls[s]} for s, row in enumerate(dfa.trans)]
    reach = _reach([0], succ)
    pred: list[list[int]] = [[] for _ in range(n)]
    for s in reach:
        for t in succ[s]:
            pred[t].append(s)
    live = _reach([s for s in reach if dfa.final[s]], pred)
    if 0 not in live:
        return DFA([0] * 256, [[-1]], [False], [()])
    order = sorted(live)
    new = {s: i for i, s in enumerate(order)}
    trans = [[new.get(t, -1) if t >= 0 else -1 for t in dfa.trans[s]] for s in order]
    final = [dfa.final[s] for s in order]
    new_calls = [tuple((r, new[t]) for r, t in calls[s] if t in new) for s in order]
    return DFA(dfa.classmap, trans, final, new_calls)


def minimize(dfa: DFA) -> DFA:
    """Hopcroft's partition refinement (call edges count as symbols), then merge byte classes no state tells
    apart. O(symbols * n log n): a 10,000-state counting chain (``maxLength``) takes well under a second."""
    n = dfa.n_states
    n_classes = dfa.n_classes
    rules = sorted({r for cs in dfa.calls for r, _ in cs})
    dead = n  # the completion's sink state
    # inverse[symbol][target] = states that go to target on symbol
    inverse: list[dict[int, list[int]]] = [{} for _ in range(n_classes + len(rules))]
    for s in range(n):
        row = dfa.trans[s]
        for k in range(n_classes):
            t = row[k]
            inverse[k].setdefault(dead if t < 0 else t, []).append(s)
        targets = dict(dfa.calls[s])
        for j, r in enumerate(rules):
            inverse[n_classes + j].setdefault(targets.get(r, dead), []).append(s)
    for inv in inverse:
        inv.setdefault(dead, []).append(dead)
    finals = {s for s in range(n) if dfa.final[s]}
    blocks = [b for b in (finals, set(range(n + 1)) - finals) if b]
    block_of = [0] * (n + 1)
    for i, b in enumerate(blocks):
        for s in b:
            block_of[s] = i
    work = list(range(len(blocks)))
    in_work = set(work)
    while work:
        a = work.pop()
        in_work.discard(a)
        splitter = list(blocks[a])
        for inv in inverse:
            hit: dict[int, list[int]] = {}
            for t in splitter:
                for s in inv.get(t, ()):
                    hit.setdefault(block_of[s], []).append(s)
            for b, members in hit.items():
                if len(members) == len(blocks[b]):
                    continue
                part = set(members)
                blocks[b] -= part
                nb = len(blocks)
                blocks.append(part)
                for s in part:
                    block_of[s] = nb
                if b in in_work or len(part) <= len(blocks[b]):
                    work.append(nb)
                    in_work.add(nb)
                else:
                    work.append(b)
                    in_work.add(b)
    # Renumber: the start's block first, then in order of first state; the dead block disappears.
    order: dict[int, int] = {}
    for s in range(n):
        if block_of[s] != block_of[dead]:
            order.setdefault(block_of[s], len(order))
    rep: dict[int, int] = {}
    for s in range(n):
        if block_of[s] in order:
            rep.setdefault(order[block_of[s]], s)

    def new(t: int) -> int:
        return order.get(block_of[t], -1) if t >= 0 else -1

    m = len(order)
    trans = [[new(t) for t in dfa.trans[rep[i]]] for i in range(m)]
    final = [dfa.final[rep[i]] for i in range(m)]
    calls = [tuple((r, new(t)) for r, t in dfa.calls[rep[i]] if new(t) >= 0) for i in range(m)]
    if not m:  # everything was dead: the empty language
        return DFA([0] * 256, [[-1]], [False], [()])
    return _merge_classes(DFA(dfa.classmap, trans, final, calls))


def _merge_classes(dfa: DFA) -> DFA:
    columns: dict[tuple[int, ...], int] = {}
    remap = []
    for k in range(dfa.n_classes):
        col = tuple(row[k] for row in dfa.trans)
        remap.append(columns.setdefault(col, len(columns)))
    keep = {}
    for k, c in enumerate(remap):
        keep.setdefault(c, k)
    trans = [[row[keep[c]] for c in range(len(columns))] for row in dfa.trans]
    classmap = [remap[k] for k in dfa.classmap]
    return DFA(classmap, trans, dfa.final, dfa.calls)


def from_node(node: Node) -> DFA:
    """The minimal DFA of a call-free IR node."""
    nfa = NFA()
    start = nfa.state()
    end = nfa.build(node, start)
    return determinize(nfa, start, end)


def repeat(x: DFA, lo: int, hi: int | None) -> DFA:
    """``x{lo,hi}`` built directly (no subset construction) for a call-free, prefix-free ``x`` (no final state
    reads on; its start is not final): one copy of ``x``'s non-final states per count of completed items."""
    if x.final[0] or any(
        x.final[s] and (any(t >= 0 for t in x.trans[s]) or x.calls[s]) for s in range(x.n_states)
    ):
        raise ValueError("repeat() needs a prefix-free automaton")
    inner = [s for s in range(x.n_states) if not x.final[s]]
    pos = {s: j for j, s in enumerate(inner)}
    m = len(inner)
    top = lo if hi is None else hi  # counts 0..top; unbounded: count `lo` loops onto itself
    if len(inner) * (top + 1) > MAX_DFA_STATES:
        raise GrammarLimitError("automaton states", MAX_DFA_STATES)
    trans: list[list[int]] = []
    final: list[bool] = []
    for count in range(top + 1):
        done = count if hi is not None or count < lo else lo
        for q in inner:
            if count == hi and q != 0:
                trans.append([-1] * x.n_classes)  # unreachable: nothing follows the last item
                final.append(False)
                continue
            row = []
            for t in x.trans[q]:
                if t < 0 or (count == hi):
                    row.append(-1)
                elif x.final[t]:
                    nxt = min(done + 1, top) if hi is None else done + 1
                    row.append(nxt * m)  # the next count's copy of the start
                else:
                    row.append(count * m + pos[t])
            trans.append(row)
            final.append(q == 0 and count >= lo)
    return minimize(trim(DFA(x.classmap, trans, final, [()] * len(trans))))


def product(a: DFA, b: DFA, *, difference: bool = False) -> DFA:
    """Intersection of two call-free DFAs, or ``a`` minus ``b`` with ``difference=True``."""
    pairs: dict[tuple[int, int], int] = {}
    classmap = [pairs.setdefault((a.classmap[x], b.classmap[x]), len(pairs)) for x in range(256)]
    class_pairs = sorted(pairs, key=pairs.__getitem__)
    index = {(0, 0): 0}
    todo = [(0, 0)]
    trans: list[list[int]] = []
    final: list[bool] = []
    i = 0
    while i < len(todo):
        p, q = todo[i]
        i += 1
        row = []
        for ka, kb in class_pairs:
            tp = a.trans[p][ka]
            tq = b.trans[q][kb] if q >= 0 else -1
            if tp < 0 or (tq < 0 and not difference):
                row.append(-1)
                continue
            key = (tp, tq)
            j = index.get(key)
            if j is None:
                if len(todo) >= MAX_DFA_STATES:
                    raise GrammarLimitError("automaton states", MAX_DFA_STATES)
                j = index[key] = len(todo)
                todo.append(key)
            row.append(j)
        trans.append(row)
        bq = q >= 0 and b.final[q]
        final.append(a.final[p] and (not bq if difference else bq))
    return minimize(trim(DFA(classmap, trans, final, [()] * len(trans))))
