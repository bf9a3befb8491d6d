"""Regular expressions (the ECMAScript syntax JSON Schema's ``pattern`` uses) -> grammar IR.

Supported: literals, ``.``, classes ``[a-z]`` / ``[^...]``, ``\\d \\w \\s`` and their negations, escapes
(``\\n \\t \\r \\f \\v \\0 \\xHH \\uHHHH \\u{H...}``, escaped metacharacters), groups ``(...)``, ``(?:...)``,
``(?<name>...)``, alternation, quantifiers ``* + ? {n} {n,} {n,m}`` (a lazy ``?`` suffix changes nothing: a
constraint is a set of strings, not a search), ``^`` at the start and ``$`` at the end of a top-level
alternative. Refused with ``InvalidGrammarError`` (never approximated): lookarounds, backreferences, word
boundaries, anchors elsewhere, possessive quantifiers, flags.

``char_node`` turns a code-point set into IR, so the same parser serves raw text (``Chars``) and JSON string
contents (``ir.json_chars``: each character in its one JSON spelling).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidGrammarError
from .ir import (
    ANY_CHAR,
    EMPTY,
    Chars,
    Node,
    Ranges,
    Rep,
    alt,
    negate,
    normalize,
    seq,
    star,
)

DIGIT: Ranges = ((0x30, 0x39),)
WORD: Ranges = normalize([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
SPACE: Ranges = normalize(
    [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x2028, 0x2029)]
    + [(0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)]
)
LINE_END: Ranges = normalize([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)])
DOT: Ranges = negate(LINE_END)

_SIMPLE_ESCAPES = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "0": 0x00}
_CLASS_ESCAPES = {"d": DIGIT, "w": WORD, "s": SPACE}
# Upper bound on one {n,m} count: larger ones are almost certainly a mistake and would build huge automata.
MAX_REPEAT = 10_000


def parse_regex(
    pattern: str,
    *,
    char_node: Callable[[Ranges], Node] = Chars,
    anchored: bool = True,
) -> Node:
    """The IR of ``pattern``. ``anchored=True``: the whole text must match (``Grammar.regex``, tool wrappers);
    ``False``: JSON Schema semantics, the text must *contain* a match unless ``^``/``$`` anchor it."""
    return _RegexParser(pattern, char_node).parse(anchored)


class _RegexParser:
    def __init__(self, pattern: str, char_node: Callable[[Ranges], Node]):
        self.src = pattern
        self.pos = 0
        self.char_node = char_node

    def fail(self, reason: str, pos: int | None = None) -> InvalidGrammarError:
        p = self.pos if pos is None else pos
        return InvalidGrammarError("regex", f"{reason} in /{self.src}/", 1, p + 1)

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def parse(self, anchored: bool) -> Node:
        branches = []
        while True:
            start_anchor = self.peek() == "^"
            if start_anchor:
                self.pos += 1
            items, end_anchor = self.sequence(top=True)
            body = seq(*items) if items else EMPTY
            if not anchored:
                anything = star(self.char_node(ANY_CHAR))
                body = seq(*(() if start_anchor else (anything,)), body, *(() if end_anchor else (anything,)))
            branches.append(body)
            if self.peek() == "|":
                self.pos += 1
                continue
            if self.pos < len(self.src):
                raise self.fail(f"unbalanced {self.peek()!r}")
            return alt(*branches)

    def alternation(self) -> Node:
        branches = []
        while True:
            items, _ = self.sequence(top=False)
            branches.append(seq(*items) if items else EMPTY)
            if self.peek() != "|":
                return alt(*branches)
            self.pos += 1

    def sequence(self, top: bool) -> tuple[list[Node], bool]:
        items: list[Node] = []
        while self.pos < len(self.src):
            ch = self.peek()
            if ch in ("|", ")"):
                break
            if ch == "$":
                at = self.pos
                self.pos += 1
                if top and (self.pos == len(self.src) or self.peek() == "|"):
                    return items, True
                raise self.fail("'$' is only supported at the end of the pattern", at)
            if ch == "^":
                raise self.fail("'^' is only supported at the start of the pattern")
            atom = self.atom()
            items.append(self.quantified(atom))
        return items, False

    def quantified(self, atom: Node) -> Node:
        while True:
            ch = self.peek()
            at = self.pos
            if ch in ("*", "+", "?"):
                self.pos += 1
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
            elif ch == "{" and self._count_ahead():
                lo, hi = self.count()
            else:
                return atom
            if self.peek() == "?":
                self.pos += 1  # lazy: the same set of strings
            elif self.peek() == "+":
                raise self.fail("possessive quantifiers are not supported")
            if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self._count_ahead()):
                raise self.fail("a quantifier cannot follow a quantifier", self.pos)
            if hi is not None and hi < lo:
                raise self.fail(f"{{{lo},{hi}}}: the maximum is below the minimum", at)
            atom = Rep(atom, lo, hi)

    def _count_ahead(self) -> bool:
        j = self.src.find("}", self.pos)
        if j < 0:
            return False
        body = self.src[self.pos + 1 : j]
        parts = body.split(",")
        return (
            1 <= len(parts) <= 2
            and parts[0].isdigit()
            and (len(parts) == 1 or parts[1] in ("",) or parts[1].isdigit())
        )

    def count(self) -> tuple[int, int | None]:
        j = self.src.index("}", self.pos)
        parts = self.src[self.pos + 1 : j].split(",")
        at = self.pos
        self.pos = j + 1
        lo = int(parts[0])
        hi: int | None = lo if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
        if max(lo, hi or 0) > MAX_REPEAT:
            raise self.fail(f"repetition counts above {MAX_REPEAT} are not supported", at)
        return lo, hi

    def atom(self) -> Node:
        ch = self.peek()
        at = self.pos
        if ch == "(":
            self.pos += 1
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.src.startswith("?<", self.pos) and not self.src.startswith(("?<=", "?<!"), self.pos):
                end = self.src.find(">", self.pos)
                if end < 0:
                    raise self.fail("unterminated group name")
                self.pos = end + 1
            elif self.peek() == "?":
                raise self.fail("lookarounds and inline flags ((?=, (?!, (?<=, (?<!, (?i)) are not supported")
            inner = self.alternation()
            if self.peek() != ")":
                raise self.fail("missing ')'", at)
            self.pos += 1
            return inner
        if ch == "[":
            return self.char_node(self.char_class())
        if ch == ".":
            self.pos += 1
            return self.char_node(DOT)
        if ch == "\\":
            ranges = self.escape(in_class=False)
            return self.char_node(ranges)
        if ch in ("*", "+", "?"):
            raise self.fail(f"nothing to repeat before {ch!r}")
        if ch == "{" and self._count_ahead():
            raise self.fail("nothing to repeat before '{'")
        self.pos += 1
        return self.char_node(((ord(ch), ord(ch)),))

    def escape(self, in_class: bool) -> Ranges:
        at = self.pos
        self.pos += 1
        if self.pos >= len(self.src):
            raise self.fail("a pattern cannot end with '\\'", at)
        ch = self.src[self.pos]
        self.pos += 1
        if ch.lower() in _CLASS_ESCAPES:
            ranges = _CLASS_ESCAPES[ch.lower()]
            return negate(ranges) if ch.isupper() else ranges
        if ch in _SIMPLE_ESCAPES:
            if ch == "0" and self.peek().isdigit():
                raise self.fail("octal escapes are not supported", at)
            return ((_SIMPLE_ESCAPES[ch],) * 2,)
        if ch == "b" and in_class:
            return ((0x08, 0x08),)
        if ch in "bB":
            raise self.fail("word boundaries (\\b, \\B) are not supported", at)
        if ch.isdigit():
            raise self.fail("backreferences are not supported", at)
        if ch == "x":
            return self._hex(2, at)
        if ch == "u":
            if self.peek() == "{":
                end = self.src.find("}", self.pos)
                digits = self.src[self.pos + 1 : end] if end > 0 else ""
                if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits):
                    raise self.fail("bad \\u{...} escape", at)
                self.pos = end + 1
                cp = int(digits, 16)
                if cp > 0x10FFFF:
                    raise self.fail("code point above U+10FFFF", at)
                return ((cp, cp),)
            return self._hex(4, at)
        if ch in ("c", "p", "P", "k"):
            raise self.fail(f"\\{ch} escapes are not supported", at)
        if ch.isalnum():
            raise self.fail(f"unknown escape \\{ch}", at)
        return ((ord(ch), ord(ch)),)

    def _hex(self, n: int, at: int) -> Ranges:
        digits = self.src[self.pos : self.pos + n]
        if len(digits) != n or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise self.fail(f"expected {n} hex digits", at)
        self.pos += n
        cp = int(digits, 16)
        return ((cp, cp),)

    def char_class(self) -> Ranges:
        at = self.pos
        self.pos += 1
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            if self.pos >= len(self.src):
                raise self.fail("missing ']'", at)
            ch = self.peek()
            if ch == "]" and not first:
                self.pos += 1
                break
            if ch == "]" and first:
                # ECMAScript: [] matches nothing, [^] anything.
                self.pos += 1
                return ANY_CHAR if negated else ()
            first = False
            lo = self._class_atom()
            if self.peek() == "-" and self.pos + 1 < len(self.src) and self.src[self.pos + 1] != "]":
                dash = self.pos
                self.pos += 1
                hi = self._class_atom()
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] != lo[0][1] or hi[0][0] != hi[0][1]:
                    raise self.fail("a range needs single characters at both ends", dash)
                if hi[0][0] < lo[0][0]:
                    raise self.fail("range out of order", dash)
                ranges.append((lo[0][0], hi[0][0]))
            else:
                ranges.extend(lo)
        result = normalize(ranges)
        return negate(result) if negated else result

    def _class_atom(self) -> Ranges:
        ch = self.peek()
        if ch == "\\":
            return self.escape(in_class=True)
        self.pos += 1
        return ((ord(ch), ord(ch)),)
