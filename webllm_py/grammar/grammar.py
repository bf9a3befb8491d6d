"""``Grammar``: a constraint compiled once (schema, JSON object, EBNF, regex), independent of any tokenizer."""

from __future__ import annotations

import json
import time
import weakref
from collections import OrderedDict
from typing import Any

from ..errors import InvalidGrammarError, UnsupportedSchemaError
from .ebnf import parse_ebnf
from .ir import Chars, Lit, Node, Ref, Rep, alt, rename, seq, star
from .matcher import Masker
from .program import link
from .regex import parse_regex
from .runtime import Configs
from .schema import JsonStyle, compile_json_object, compile_schema
from .tokens import TokenIndex


class Grammar:
    """A compiled constraint. Build with ``json_schema``, ``json_object``, ``ebnf`` or ``regex``; match with
    ``Matcher(grammar, token_index)``. ``key`` identifies it (cache key); ``compile_s`` is its compile time.

    JSON output is compact and canonical: ``{"a": 1, "b": [1, "x"]}`` (``json.dumps`` separators ``", "`` and
    ``": "``, no other whitespace unless ``whitespace=n`` allows up to ``n`` whitespace characters at each
    place JSON permits), keys in schema order, strings spelled as ``json.dumps(ensure_ascii=False)`` does.
    """

    def __init__(self, rules: dict[str, Node], root: str, *, key: str, error: Any):
        t0 = time.perf_counter()
        self.key = key
        self.rules, self.root = rules, root  # the IR, for grammars built out of this one (union, calls)
        self.program = link(rules, root, error)
        self.configs = Configs(self.program)
        self._maskers: weakref.WeakKeyDictionary[TokenIndex, Masker] = weakref.WeakKeyDictionary()
        self.compile_s = time.perf_counter() - t0

    # ---- sources ----

    @classmethod
    def json_schema(
        cls, schema: dict[str, Any] | str | bool, *, strict: bool = True, whitespace: int = 0
    ) -> Grammar:
        """JSON text valid against ``schema`` (a dict, or its JSON text).

        ``strict=True`` (OpenAI's strict mode): an object without ``additionalProperties`` gets no extra keys;
        ``strict=False`` follows JSON Schema's default (extra keys of any value, after the listed ones).
        Either way every output validates. A keyword that is not enforced raises ``UnsupportedSchemaError``.
        """
        t0 = time.perf_counter()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise UnsupportedSchemaError("#", "schema", f"is not valid JSON: {e}") from None
        style = JsonStyle(whitespace)
        rules, root = compile_schema(schema, strict=strict, style=style)
        key = "json_schema:" + json.dumps([schema, strict, whitespace], ensure_ascii=False)
        g = cls(rules, root, key=key, error=lambda msg: UnsupportedSchemaError("#", "schema", msg))
        g.compile_s = time.perf_counter() - t0
        return g

    @classmethod
    def json_object(cls, *, whitespace: int = 0) -> Grammar:
        """Any JSON object (``response_format: {type: "json_object"}`` without a schema)."""
        rules, root = compile_json_object(JsonStyle(whitespace))
        return cls(
            rules,
            root,
            key=f"json_object:{whitespace}",
            error=lambda msg: UnsupportedSchemaError("#", "schema", msg),
        )

    @classmethod
    def ebnf(cls, text: str, *, root: str = "root") -> Grammar:
        """A grammar in the EBNF dialect of xgrammar / llama.cpp's GBNF (see ``ebnf.py``)."""
        rules = parse_ebnf(text, root=root)
        return cls(rules, root, key=f"ebnf:{root}:{text}", error=lambda msg: InvalidGrammarError("ebnf", msg))

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        """Text that matches ``pattern`` as a whole (ECMAScript syntax, see ``regex.py``)."""
        node = parse_regex(pattern, anchored=True)
        return cls(
            {"root": node},
            "root",
            key=f"regex:{pattern}",
            error=lambda msg: InvalidGrammarError("regex", msg),
        )

    @classmethod
    def calls(
        cls,
        functions: Any,
        *,
        open: str = "",
        close: str = "",
        args_key: str = "arguments",
        id_chars: int = 0,
        first: str = "",
        sep: str = "",
        last: str = "",
        max_calls: int | None = None,
        strict: bool = True,
    ) -> Grammar:
        """Function calls in JSON: ``first CALL (sep CALL)* last``, at most ``max_calls`` of them, each
        ``open {"name": "<f>", "<args_key>": <args>} close`` for one of ``functions`` ((name, parameters schema)
        pairs: the arguments are valid against that function's schema), with ``, "id": "<id_chars alphanumerics>"``
        after the arguments when ``id_chars`` > 0 (Mistral's call ids). JSON spelled as ``json_schema`` spells it.
        """
        rules: dict[str, Node] = {}
        alternatives = []
        id_part: Node = Lit("")
        if id_chars:
            alnum = Chars([(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)])
            id_part = seq(Lit(', "id": "'), Rep(alnum, id_chars, id_chars), Lit('"'))
        for i, (name, schema) in enumerate(functions):
            if isinstance(schema, str):
                schema = json.loads(schema)
            try:
                sub, root = compile_schema(schema, strict=strict, style=JsonStyle(0))
            except UnsupportedSchemaError as e:
                raise UnsupportedSchemaError(f"{name}.parameters{e.field[1:]}", e.keyword, e.reason) from None
            prefix = f"f{i}:"
            rules.update({prefix + k: rename(v, lambda n, p=prefix: p + n) for k, v in sub.items()})
            head = open + '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "' + args_key + '": '
            alternatives.append(seq(Lit(head), Ref(prefix + root), id_part, Lit("}" + close)))
        if not alternatives:
            raise UnsupportedSchemaError("#", "tools", "no function to call")
        rules["call"] = alt(*alternatives)
        more = seq(Lit(sep), Ref("call"))
        repeat = star(more) if max_calls is None else Rep(more, 0, max_calls - 1)
        rules["calls"] = seq(Lit(first), Ref("call"), repeat, Lit(last))
        key = cls.calls_key(functions, open, close, args_key, id_chars, first, sep, last, max_calls, strict)
        return cls(rules, "calls", key=key, error=lambda msg: UnsupportedSchemaError("#", "tools", msg))

    @staticmethod
    def calls_key(functions: Any, *options: Any) -> str:
        """The ``key`` of ``calls(functions, ...)`` (its options in signature order), known without compiling."""
        return "calls:" + json.dumps([[list(f) for f in functions], *options], ensure_ascii=False)

    @classmethod
    def union(cls, *grammars: Grammar) -> Grammar:
        """Text that is a sentence of any of ``grammars`` (tool calls or a JSON answer)."""
        rules: dict[str, Node] = {}
        roots = []
        for i, g in enumerate(grammars):
            prefix = f"u{i}:"
            rules.update({prefix + k: rename(v, lambda n, p=prefix: p + n) for k, v in g.rules.items()})
            roots.append(Ref(prefix + g.root))
        rules["union"] = alt(*roots)
        key = "union:" + json.dumps([g.key for g in grammars], ensure_ascii=False)
        return cls(rules, "union", key=key, error=lambda msg: InvalidGrammarError("union", msg))

    # ---- use ----

    def matches(self, text: bytes | str) -> bool:
        """True when the whole text is a sentence of the grammar."""
        data = text.encode() if isinstance(text, str) else text
        c = self.configs.step(self.configs.start, data)
        return c >= 0 and self.configs.accepting[c]

    def masker(self, index: TokenIndex) -> Masker:
        """This grammar's mask cache for one tokenizer (made on first use)."""
        m = self._maskers.get(index)
        if m is None:
            m = self._maskers[index] = Masker(self.configs, index)
        return m

    @property
    def regular(self) -> bool:
        """True when no stack is needed (no recursion): one DFA."""
        return self.program.regular


class GrammarCache:
    """Compiled grammars by key, least recently used dropped first (an engine keeps one, so a repeated schema
    reuses its automaton and its mask cache)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._items: OrderedDict[str, Grammar] = OrderedDict()

    def get(self, key: str) -> Grammar | None:
        g = self._items.get(key)
        if g is not None:
            self._items.move_to_end(key)
        return g

    def put(self, grammar: Grammar) -> Grammar:
        self._items[grammar.key] = grammar
        self._items.move_to_end(grammar.key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return grammar
