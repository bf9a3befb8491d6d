"""Rules (IR) -> one linked ``Program``: every rule a minimal DFA, all numbered into one table.

Steps, in order:

1. direct left recursion is rewritten (``a ::= a x | y`` -> ``a ::= y x*``); any other left recursion is refused;
2. rules that are not part of a reference cycle are inlined into their users, so a grammar without recursion
   becomes a single DFA (the fast path: no stack at run time);
3. each remaining rule (the root plus the recursive ones) becomes a minimal DFA with call edges;
4. rules that can derive no finite string are dropped (a grammar whose root is one of them is refused);
5. the DFAs are linked into global tables over one global byte-class map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .automaton import DFA, NFA, determinize, trim
from .ir import Alt, Loop, Node, Props, Ref, Rep, Seq, alt, refs, seq, star

# A repetition whose count bound is above this is counted at run time (``ir.Loop``) instead of unrolled.
LOOP_MIN = 24


class Program:
    """Linked automaton. Per global state: ``rows[s][class] -> state | -1``, ``final[s]``, ``has_bytes[s]``,
    ``calls[s] = ((callee_start, return_state, loop), ...)`` (``loop`` -1 for a plain call, else an index into
    ``loops``: ``(lo, hi)`` repetitions of the callee, ``lo >= 1``, ``hi`` None = unbounded), ``ret_only[s]``
    (final with no way on: a call that returns there needs no stack frame). ``classmap[byte] -> class`` is
    shared by every state."""

    __slots__ = ("classmap", "rows", "final", "has_bytes", "calls", "loops", "ret_only", "start", "n_rules")

    def __init__(self, classmap, rows, final, calls, loops, start, n_rules):
        self.classmap: list[int] = classmap
        self.rows: list[list[int]] = rows
        self.final: list[bool] = final
        self.calls: list[tuple[tuple[int, int, int], ...]] = calls
        self.loops: list[tuple[int, int | None]] = loops
        self.has_bytes = [any(t >= 0 for t in row) for row in rows]
        self.ret_only = [final[s] and not self.has_bytes[s] and not calls[s] for s in range(len(rows))]
        self.start = start
        self.n_rules = n_rules

    @property
    def n_states(self) -> int:
        return len(self.rows)

    @property
    def regular(self) -> bool:
        """No stack at run time: one rule, no counted loops."""
        return self.n_rules == 1


def link(
    rules: Mapping[str, Node],
    root: str,
    error: Callable[[str], Exception],
) -> Program:
    """Compile rules to a Program. ``error(message)`` builds the exception raised for a grammar that cannot
    work (left recursion, a root that matches nothing), so each source reports in its own terms."""
    rules = {name: _unleft(name, body, error) for name, body in rules.items()}
    graph = {name: refs(body) & rules.keys() for name, body in rules.items()}
    recursive = _cyclic(graph)
    memo: dict[str, Node] = {}
    loops: dict[str, tuple[int, int | None]] = {}
    loop_bodies: dict[str, Node] = {}

    def expand(node: Node) -> Node:
        """Inline non-recursive rules; turn repetitions with large counts into counted loops."""
        if isinstance(node, Ref):
            if node.name in recursive:
                return node
            got = memo.get(node.name)
            if got is None:
                got = memo[node.name] = expand(rules[node.name])
            return got
        if isinstance(node, Seq):
            return Seq([expand(i) for i in node.items])
        if isinstance(node, Alt):
            return Alt([expand(i) for i in node.items])
        if isinstance(node, Rep):
            item = expand(node.item)
            if (node.lo if node.hi is None else node.hi) > LOOP_MIN:
                name = f"#loop{len(loops)}"
                loops[name] = (max(node.lo, 1), node.hi)
                loop_bodies[name] = item
                return Loop(name, node.lo, node.hi)
            return Rep(item, node.lo, node.hi)
        if isinstance(node, Props):
            return Props(
                [(expand(m), r) for m, r in node.items],
                expand(node.sep),
                None if node.extra is None else expand(node.extra),
            )
        return node

    def build(node: Node) -> DFA:
        nfa = NFA()
        start = nfa.state()
        end = nfa.build(node, start)
        return determinize(nfa, start, end)

    dfas: dict[str, DFA] = {}
    for name in [root] + sorted(recursive - {root}):
        dfas[name] = build(expand(rules[name]))
    for name, body in loop_bodies.items():  # filled while expanding
        dfas[name] = build(body)
    # Rules reachable from the root only.
    reachable = {root}
    todo = [root]
    while todo:
        for calls in dfas[todo.pop()].calls:
            for r, _ in calls:
                if r not in reachable:
                    reachable.add(r)
                    todo.append(r)
    dfas = {n: d for n, d in dfas.items() if n in reachable}

    # Productive rules: a fixpoint, each round trimming calls into rules not (yet) known to be productive.
    productive: set[str] = set()
    while True:
        dead = frozenset(dfas.keys() - productive)
        grown = {n for n in dfas if n not in productive and not trim(dfas[n], dead).is_empty()}
        if not grown:
            break
        productive |= grown
    if root not in productive:
        raise error("the grammar matches no string at all")
    dead = frozenset(dfas.keys() - productive)
    dfas = {n: trim(d, dead) for n, d in dfas.items() if n in productive}
    _check_left_recursion(dfas, error)

    names = [root] + sorted(n for n in dfas if n != root)
    offset: dict[str, int] = {}
    total = 0
    for n in names:
        offset[n] = total
        total += dfas[n].n_states
    # Global byte classes: bytes every rule's class map puts together.
    keys: dict[tuple[int, ...], int] = {}
    classmap = [keys.setdefault(tuple(dfas[n].classmap[b] for n in names), len(keys)) for b in range(256)]
    reps = [0] * len(keys)
    for b in range(255, -1, -1):
        reps[classmap[b]] = b
    rows: list[list[int]] = []
    final: list[bool] = []
    calls: list[tuple[tuple[int, int, int], ...]] = []
    loop_ids = {n: i for i, n in enumerate(n for n in names if n in loops)}
    for n in names:
        d, base = dfas[n], offset[n]
        local = [d.classmap[b] for b in reps]
        for s in range(d.n_states):
            row = d.trans[s]
            rows.append([row[k] + base if row[k] >= 0 else -1 for k in local])
            final.append(d.final[s])
            calls.append(tuple((offset[r], t + base, loop_ids.get(r, -1)) for r, t in d.calls[s]))
    loop_bounds = [loops[n] for n in loop_ids]
    return Program(classmap, rows, final, calls, loop_bounds, 0, len(names))


def _unleft(name: str, body: Node, error: Callable[[str], Exception]) -> Node:
    """``a ::= a x | a y | z`` -> ``a ::= z (x | y)*`` (direct left recursion at the top alternatives)."""
    branches = body.items if isinstance(body, Alt) else (body,)
    tails, bases = [], []
    for b in branches:
        items = b.items if isinstance(b, Seq) else (b,)
        if items and isinstance(items[0], Ref) and items[0].name == name:
            if len(items) > 1:
                tails.append(seq(*items[1:]))
        else:
            bases.append(b)
    if not tails:
        return body
    if not bases:
        raise error(f"rule {name!r} is left-recursive with no alternative to start from")
    return seq(alt(*bases), star(alt(*tails)))


def _cyclic(graph: Mapping[str, set[str]]) -> set[str]:
    """Nodes on a cycle (Tarjan's strongly connected components, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: set[str] = set()
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in graph[v]:
                    out.update(comp)
    return out


def _check_left_recursion(dfas: Mapping[str, DFA], error: Callable[[str], Exception]) -> None:
    """Refuse a rule that can call itself again before reading a byte: a stack machine would loop forever."""
    nullable: set[str] = set()
    changed = True
    while changed:
        changed = False
        for n, d in dfas.items():
            if n not in nullable and _reach_without_bytes(d, nullable)[0]:
                nullable.add(n)
                changed = True
    first = {n: _reach_without_bytes(d, nullable)[1] for n, d in dfas.items()}
    for n in dfas:
        seen: set[str] = set()
        todo = list(first[n])
        while todo:
            r = todo.pop()
            if r == n:
                raise error(f"rule {n!r} is left-recursive (it can reach itself before reading any text)")
            if r not in seen:
                seen.add(r)
                todo.extend(first.get(r, ()))


def _reach_without_bytes(d: DFA, nullable: set[str]) -> tuple[bool, set[str]]:
    """From the start, through calls of nullable rules only: (can end, rules called)."""
    seen = {0}
    todo = [0]
    called: set[str] = set()
    ends = False
    while todo:
        s = todo.pop()
        ends = ends or d.final[s]
        for r, t in d.calls[s]:
            called.add(r)
            if r in nullable and t not in seen:
                seen.add(t)
                todo.append(t)
    return ends, called
