"""The grammar IR: what JSON Schema, EBNF and regex sources compile to, before any automaton exists.

A grammar is a dict ``rule name -> Node``. Nodes describe a language of **byte strings** built from:

* ``Lit(b"...")``: exactly these bytes;
* ``Chars(ranges)``: one Unicode code point from a set of inclusive code-point ranges, written as its UTF-8
  encoding (surrogates D800-DFFF never belong to a set, so every string of a grammar is valid UTF-8 by
  construction: a token that would end inside a character can be accepted, but the grammar only accepts
  once the character is complete);
* ``Seq``, ``Alt``, ``Rep(item, lo, hi)`` (``hi=None``: unbounded), ``Ref(name)`` (another rule);
* ``Props``: a JSON object's members in schema order, optional ones skippable, one separator between present
  members (a linear-size construction that ``Seq``/``Alt`` would need quadratic size for);
* ``Embed(dfa)``: a regular language already determinized (an intersection of a ``pattern`` and a length,
  a number range), spliced in as it is.

Code-point sets are tuples of sorted, disjoint, non-adjacent inclusive ranges ``((lo, hi), ...)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .automaton import DFA

MAX_CP = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)

Ranges = tuple[tuple[int, int], ...]


class Node:
    __slots__ = ()


class Lit(Node):
    __slots__ = ("data",)

    def __init__(self, data: bytes | str):
        self.data = data.encode() if isinstance(data, str) else bytes(data)

    def __repr__(self) -> str:
        return f"Lit({self.data!r})"


class Chars(Node):
    __slots__ = ("ranges",)

    def __init__(self, ranges: Iterable[tuple[int, int]]):
        self.ranges = normalize(ranges)

    def __repr__(self) -> str:
        return f"Chars({self.ranges!r})"


class Seq(Node):
    __slots__ = ("items",)

    def __init__(self, items: Sequence[Node]):
        self.items = tuple(items)

    def __repr__(self) -> str:
        return f"Seq({list(self.items)!r})"


class Alt(Node):
    __slots__ = ("items",)

    def __init__(self, items: Sequence[Node]):
        self.items = tuple(items)

    def __repr__(self) -> str:
        return f"Alt({list(self.items)!r})"


class Rep(Node):
    __slots__ = ("item", "lo", "hi")

    def __init__(self, item: Node, lo: int, hi: int | None):
        self.item, self.lo, self.hi = item, lo, hi

    def __repr__(self) -> str:
        return f"Rep({self.item!r}, {self.lo}, {self.hi})"


class Ref(Node):
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Ref({self.name!r})"


class Props(Node):
    """JSON object members in order: ``items`` are ``(member, required)`` where a member already includes its
    key and key separator; ``sep`` goes between two present members; ``extra`` (or None) is one additional
    member, repeatable, after the listed ones."""

    __slots__ = ("items", "sep", "extra")

    def __init__(self, items: Sequence[tuple[Node, bool]], sep: Node, extra: Node | None):
        self.items, self.sep, self.extra = tuple(items), sep, extra


class Loop(Node):
    """``lo..hi`` repetitions of rule ``name``, counted at run time (a stack frame holds the count) instead of
    ``hi`` copies in the automaton: what ``maxLength: 1000`` compiles to. Made by ``program.link``."""

    __slots__ = ("name", "lo", "hi")

    def __init__(self, name: str, lo: int, hi: int | None):
        self.name, self.lo, self.hi = name, lo, hi


class Embed(Node):
    __slots__ = ("dfa",)

    def __init__(self, dfa: DFA):
        self.dfa = dfa


EMPTY = Seq(())
NOTHING = Alt(())


def seq(*items: Node) -> Node:
    flat: list[Node] = []
    for it in items:
        if isinstance(it, Seq):
            flat.extend(it.items)
        else:
            flat.append(it)
    return flat[0] if len(flat) == 1 else Seq(flat)


def alt(*items: Node) -> Node:
    flat: list[Node] = []
    for it in items:
        if isinstance(it, Alt):
            flat.extend(it.items)
        else:
            flat.append(it)
    return flat[0] if len(flat) == 1 else Alt(flat)


def opt(item: Node) -> Node:
    return Rep(item, 0, 1)


def star(item: Node) -> Node:
    return Rep(item, 0, None)


def refs(node: Node) -> set[str]:
    """The rule names a node refers to."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Ref | Loop):
            out.add(n.name)
        elif isinstance(n, Seq | Alt):
            stack.extend(n.items)
        elif isinstance(n, Rep):
            stack.append(n.item)
        elif isinstance(n, Props):
            stack.extend(m for m, _ in n.items)
            stack.append(n.sep)
            if n.extra is not None:
                stack.append(n.extra)
    return out


# ---- code-point sets ---------------------------------------------------------------------------------------------


def normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sorted, merged ranges with the surrogates removed."""
    items = sorted((max(lo, 0), min(hi, MAX_CP)) for lo, hi in ranges if lo <= hi)
    out: list[tuple[int, int]] = []
    for lo, hi in items:
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return _cut(tuple(out), SURROGATES[0], SURROGATES[1])


def _cut(ranges: Ranges, lo: int, hi: int) -> Ranges:
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if b < lo or a > hi:
            out.append((a, b))
            continue
        if a < lo:
            out.append((a, lo - 1))
        if b > hi:
            out.append((hi + 1, b))
    return tuple(out)


def negate(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CP:
        out.append((nxt, MAX_CP))
    return normalize(out)


def subtract(ranges: Ranges, minus: Ranges) -> Ranges:
    for lo, hi in minus:
        ranges = _cut(ranges, lo, hi)
    return ranges


def intersect(a: Ranges, b: Ranges) -> Ranges:
    return subtract(a, negate(b))


ANY_CHAR: Ranges = normalize([(0, MAX_CP)])


# ---- UTF-8 ------------------------------------------------------------------------------------------------------

_LENGTH_SPLITS = ((0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, MAX_CP))


def utf8_sequences(ranges: Ranges) -> list[list[tuple[int, int]]]:
    """The UTF-8 encodings of a code-point set as byte-range sequences: ``[[(0xC3, 0xC3), (0xA0, 0xBF)], ...]``
    (each sequence matches a set of whole encoded characters; together exactly the set's encodings)."""
    out: list[list[tuple[int, int]]] = []
    for lo, hi in ranges:
        for a, b in _LENGTH_SPLITS:
            x, y = max(lo, a), min(hi, b)
            if x <= y:
                out.extend(_byte_ranges(chr(x).encode(), chr(y).encode()))
    return out


def _byte_ranges(a: bytes, b: bytes) -> list[list[tuple[int, int]]]:
    """All encodings between ``a`` and ``b`` (equal length, ``a <= b``) as byte-range sequences."""
    if len(a) == 1:
        return [[(a[0], b[0])]]
    if a[0] == b[0]:
        return [[(a[0], a[0]), *rest] for rest in _byte_ranges(a[1:], b[1:])]
    n = len(a) - 1
    low_tail, high_tail = bytes([0x80] * n), bytes([0xBF] * n)
    out: list[list[tuple[int, int]]] = []
    first = a[0]
    if a[1:] != low_tail:
        out.extend([(a[0], a[0]), *rest] for rest in _byte_ranges(a[1:], high_tail))
        first += 1
    last = b[0] if b[1:] == high_tail else b[0] - 1
    if first <= last:
        out.append([(first, last)] + [(0x80, 0xBF)] * n)
    if b[1:] != high_tail:
        out.extend([(b[0], b[0]), *rest] for rest in _byte_ranges(low_tail, b[1:]))
    return out


# ---- JSON strings -------------------------------------------------------------------------------------------------
# One spelling per character, as ``json.dumps(ensure_ascii=False)`` writes it: raw UTF-8 except '"', '\\' and the
# controls below 0x20, which get the short escapes or \\u00XX (lowercase hex). A model can then not pick between
# spellings, and a generated string is a fixed point of json.loads + json.dumps.

JSON_RAW: Ranges = subtract(ANY_CHAR, ((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)))
_SHORT_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def json_escape(cp: int) -> str:
    """The spelling of one code point inside a JSON string."""
    if cp in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[cp]
    if cp < 0x20:
        return f"\\u{cp:04x}"
    return chr(cp)


def literals(strings: Iterable[bytes]) -> Node:
    """Any one of the byte strings, as a prefix-sharing tree (enums, escapes: small automata, fast builds)."""
    items = sorted(set(strings))
    if not items:
        return NOTHING
    if len(items) == 1:
        return Lit(items[0])
    branches: list[Node] = []
    ends_here = items[0] == b""
    groups: dict[int, list[bytes]] = {}
    for s in items:
        if s:
            groups.setdefault(s[0], []).append(s[1:])
    for first, rests in groups.items():
        branches.append(seq(Lit(bytes([first])), literals(rests)))
    if ends_here:
        branches.append(EMPTY)
    return alt(*branches)


def json_chars(ranges: Ranges) -> Node:
    """One character of a code-point set, spelled inside a JSON string."""
    raw = intersect(ranges, JSON_RAW)
    escaped = subtract(ranges, JSON_RAW)
    spelled = [json_escape(cp).encode() for lo, hi in escaped for cp in range(lo, hi + 1)]
    items: list[Node] = [Chars(raw)] if raw else []
    if spelled:
        items.append(literals(spelled))
    return alt(*items) if items else NOTHING
