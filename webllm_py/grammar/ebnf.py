"""EBNF grammars as WebLLM / xgrammar and llama.cpp (GBNF) users write them -> grammar IR.

    root   ::= "{" ws pair ("," ws pair)* "}"      # comments run to the end of the line
    pair   ::= name ":" ws [0-9]+
    name   ::= [a-zA-Z_] [a-zA-Z0-9_-]{0,15}
    ws     ::= [ \\t\\n]?

* a rule is ``name ::= body``; names have letters, digits, ``_``, ``-``, ``.`` (not a leading digit); a body
  may span lines and ends where the next ``name ::=`` starts; each name is defined once; ``root`` (or the
  ``root=`` argument) is the entry point;
* strings ``"..."`` (or ``'...'``) and classes ``[a-z]``, ``[^...]`` with escapes ``\\n \\r \\t \\b \\f \\a \\v
  \\0 \\e``, ``\\xH..`` (any number of hex digits), ``\\uHHHH``, ``\\UHHHHHHHH`` and escaped punctuation;
  ``.`` is any character; ``( )`` groups (``()`` is the empty string), ``|`` alternatives (an empty alternative
  is allowed), postfix ``? * +``, ``{m}``, ``{m,}``, ``{m,n}``, ``{,n}``;
* ``Regex("...")`` (xgrammar's macro) is a regular expression (``regex.py``);
* direct left recursion (``expr ::= expr "+" term | term``) is supported; other left recursion is refused.

Refused with ``InvalidGrammarError`` (line and column): lookahead assertions ``(= ...)``, rule options
(``name[max_tokens=...]``), other macros (``TagDispatch``...), GBNF token references (``<[123]>``).
"""

from __future__ import annotations

from ..errors import InvalidGrammarError
from .ir import ANY_CHAR, EMPTY, Chars, Lit, Node, Ref, Rep, alt, negate, normalize, seq
from .regex import MAX_REPEAT, parse_regex

_NAME_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _NAME_START | set("0123456789-.")
_SIMPLE = {"n": 0x0A, "r": 0x0D, "t": 0x09, "b": 0x08, "f": 0x0C, "a": 0x07, "v": 0x0B, "0": 0x00, "e": 0x1B}
_LITERAL_ESCAPES = set("\"\\/'?^$.*+()[]{}|-")
_HEX = set("0123456789abcdefABCDEF")
_MACROS = ("Regex", "TagDispatch", "TokenTagDispatch")


def parse_ebnf(text: str, *, root: str = "root") -> dict[str, Node]:
    """Rules of an EBNF grammar; checks that ``root`` and every referenced rule are defined."""
    return _EbnfParser(text).parse(root)


class _Tok:
    __slots__ = ("kind", "value", "pos", "glued")

    def __init__(self, kind: str, value: object, pos: int, glued: bool):
        self.kind, self.value, self.pos, self.glued = kind, value, pos, glued


class _EbnfParser:
    def __init__(self, text: str):
        self.src = text
        self.toks: list[_Tok] = []
        self.i = 0

    # ---- errors ----

    def fail(self, reason: str, pos: int) -> InvalidGrammarError:
        line = self.src.count("\n", 0, pos) + 1
        col = pos - (self.src.rfind("\n", 0, pos) + 1) + 1
        return InvalidGrammarError("ebnf", reason, line, col)

    # ---- lexer ----

    def lex(self) -> None:
        s = self.src
        i = 0
        n = len(s)
        glued = False
        while i < n:
            ch = s[i]
            if ch in " \t\r\n":
                i += 1
                glued = False
                continue
            if ch == "#":
                while i < n and s[i] != "\n":
                    i += 1
                glued = False
                continue
            start = i
            if s.startswith("::=", i):
                self.toks.append(_Tok("define", None, i, glued))
                i += 3
            elif ch in _NAME_START:
                while i < n and s[i] in _NAME_CHARS:
                    i += 1
                self.toks.append(_Tok("name", s[start:i], start, glued))
            elif ch in "\"'":
                value, i = self.string(i)
                self.toks.append(_Tok("string", value, start, glued))
            elif ch == "[":
                value, i = self.char_class(i)
                self.toks.append(_Tok("class", value, start, glued))
            elif ch == "{":
                end = s.find("}", i)
                if end < 0:
                    raise self.fail("missing '}'", i)
                self.toks.append(_Tok("count", self.count(s[i + 1 : end], i), start, glued))
                i = end + 1
            elif ch == "<":
                raise self.fail("token references (<...>) are not supported", i)
            elif s.startswith("(=", i):
                raise self.fail("lookahead assertions (= ...) are not supported", i)
            elif ch in "()|*+?.,":
                self.toks.append(_Tok(ch, None, i, glued))
                i += 1
            else:
                raise self.fail(f"unexpected character {ch!r}", i)
            glued = True
        self.toks.append(_Tok("eof", None, n, False))

    def count(self, body: str, pos: int) -> tuple[int, int | None]:
        parts = [p.strip() for p in body.split(",")]
        if len(parts) == 1:
            ok = parts[0].isdigit()
        else:
            ok = len(parts) == 2 and any(parts) and all(p == "" or p.isdigit() for p in parts)
        if not ok:
            raise self.fail(f"bad repetition count {{{body}}}", pos)
        lo = int(parts[0]) if parts[0] else 0
        hi = lo if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
        if hi is not None and hi < lo:
            raise self.fail(f"{{{body}}}: the maximum is below the minimum", pos)
        if max(lo, hi or 0) > MAX_REPEAT:
            raise self.fail(f"repetition counts above {MAX_REPEAT} are not supported", pos)
        return lo, hi

    def escape(self, i: int) -> tuple[int, int]:
        """The code point of the escape at ``s[i] == '\\'``, and the index after it."""
        s = self.src
        if i + 1 >= len(s):
            raise self.fail("a backslash at the end of the text", i)
        ch = s[i + 1]
        if ch in _SIMPLE:
            return _SIMPLE[ch], i + 2
        if ch in _LITERAL_ESCAPES:
            return ord(ch), i + 2
        if ch in "xuU":
            j = i + 2
            want = {"x": None, "u": 4, "U": 8}[ch]
            while j < len(s) and s[j] in _HEX and (want is None or j - i - 2 < want):
                j += 1
            digits = s[i + 2 : j]
            if not digits or (want is not None and len(digits) != want):
                raise self.fail(f"\\{ch} needs {want or 'some'} hex digits", i)
            cp = int(digits, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise self.fail(f"\\{ch}{digits} is not a Unicode scalar value", i)
            return cp, j
        if ch in "dwsDWS":
            raise self.fail(
                f"\\{ch} is not supported; write the class out ([0-9], [a-zA-Z0-9_], [ \\t\\n])", i
            )
        raise self.fail(f"unknown escape \\{ch}", i)

    def string(self, i: int) -> tuple[str, int]:
        s = self.src
        quote = s[i]
        j = i + 1
        out: list[str] = []
        while True:
            if j >= len(s) or s[j] == "\n":
                raise self.fail("unterminated string", i)
            ch = s[j]
            if ch == quote:
                return "".join(out), j + 1
            if ch == "\\":
                cp, j = self.escape(j)
                out.append(chr(cp))
            else:
                out.append(ch)
                j += 1

    def char_class(self, i: int) -> tuple[tuple[tuple[int, int], ...], int]:
        s = self.src
        j = i + 1
        negated = j < len(s) and s[j] == "^"
        if negated:
            j += 1
        ranges: list[tuple[int, int]] = []

        def one(k: int) -> tuple[int, int]:
            if k >= len(s) or s[k] == "\n":
                raise self.fail("unterminated character class", i)
            if s[k] == "\\":
                return self.escape(k)
            return ord(s[k]), k + 1

        while True:
            if j >= len(s) or s[j] == "\n":
                raise self.fail("unterminated character class", i)
            if s[j] == "]":
                j += 1
                break
            lo, j = one(j)
            if j + 1 < len(s) and s[j] == "-" and s[j + 1] != "]":
                hi, j = one(j + 1)
                if hi < lo:
                    raise self.fail("character range out of order", i)
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        result = normalize(ranges)
        return (negate(result) if negated else result), j

    # ---- parser ----

    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at_rule_start(self) -> bool:
        return self.peek().kind == "name" and self.peek(1).kind == "define"

    def parse(self, root: str) -> dict[str, Node]:
        self.lex()
        rules: dict[str, Node] = {}
        where: dict[str, int] = {}
        used: list[tuple[str, int]] = []
        while self.peek().kind != "eof":
            name_tok = self.take()
            if name_tok.kind != "name":
                raise self.fail("expected a rule name (name ::= ...)", name_tok.pos)
            if self.peek().kind == "class" and self.peek().glued:
                raise self.fail("rule options (name[...]) are not supported", self.peek().pos)
            if self.peek().kind != "define":
                raise self.fail(f"expected '::=' after {name_tok.value!r}", self.peek().pos)
            self.take()
            name = str(name_tok.value)
            if name in rules:
                raise self.fail(f"rule {name!r} is defined twice", name_tok.pos)
            start_i = self.i
            body = self.alternatives(top=True)
            rules[name] = body
            where[name] = name_tok.pos
            for t in self.toks[start_i : self.i]:
                if t.kind == "name":
                    used.append((str(t.value), t.pos))
        for name, pos in used:
            if name not in rules and name not in _MACROS:
                raise self.fail(f"rule {name!r} is not defined", pos)
        if root not in rules:
            raise InvalidGrammarError("ebnf", f"the grammar has no rule named {root!r} (the entry point)")
        return rules

    def alternatives(self, top: bool) -> Node:
        branches = [self.sequence(top)]
        while self.peek().kind == "|":
            self.take()
            branches.append(self.sequence(top))
        return alt(*branches)

    def sequence(self, top: bool) -> Node:
        items: list[Node] = []
        while True:
            t = self.peek()
            if t.kind in ("|", ")", "eof", ",") or (top and self.at_rule_start()):
                break
            items.append(self.postfix(self.primary()))
        return seq(*items) if items else EMPTY

    def primary(self) -> Node:
        t = self.take()
        if t.kind == "string":
            return Lit(str(t.value))
        if t.kind == "class":
            ranges = t.value
            return Chars(ranges)  # type: ignore[arg-type]
        if t.kind == ".":
            return Chars(ANY_CHAR)
        if t.kind == "(":
            if self.peek().kind == ")":
                self.take()
                return EMPTY
            inner = self.alternatives(top=False)
            if self.peek().kind != ")":
                raise self.fail("missing ')'", t.pos)
            self.take()
            return inner
        if t.kind == "name":
            if t.value in _MACROS and self.peek().kind == "(" and self.peek().glued:
                return self.macro(t)
            return Ref(str(t.value))
        if t.kind == "define":
            raise self.fail("'::=' inside a rule body (a rule name must start its line)", t.pos)
        if t.kind == "eof":
            raise self.fail("unexpected end of the grammar", t.pos)
        raise self.fail(f"unexpected {t.kind!r}", t.pos)

    def macro(self, name: _Tok) -> Node:
        if name.value != "Regex":
            raise self.fail(f"the macro {name.value}(...) is not supported", name.pos)
        self.take()  # (
        arg = self.take()
        if arg.kind != "string":
            raise self.fail('Regex(...) needs a string argument: Regex("[0-9]+")', arg.pos)
        if self.peek().kind != ")":
            raise self.fail("Regex(...) takes one argument", self.peek().pos)
        self.take()
        try:
            return parse_regex(str(arg.value))
        except InvalidGrammarError as e:
            raise self.fail(f"in Regex(...): {e.reason}", arg.pos) from None

    def postfix(self, node: Node) -> Node:
        t = self.peek()
        if t.kind in ("*", "+", "?"):
            self.take()
            node = Rep(node, *{"*": (0, None), "+": (1, None), "?": (0, 1)}[t.kind])
        elif t.kind == "count":
            self.take()
            lo, hi = t.value  # type: ignore[misc]
            node = Rep(node, lo, hi)
        else:
            return node
        if self.peek().kind in ("*", "+", "?", "count"):
            raise self.fail("two repetition operators in a row; group the first: (x+)*", self.peek().pos)
        return node
