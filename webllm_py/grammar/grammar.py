"""``Grammar``: a constraint compiled once (schema, JSON object, EBNF, regex), independent of any tokenizer."""

from __future__ import annotations

import json
import time
import weakref
from collections import OrderedDict
from typing import Any

from ..errors import InvalidGrammarError, UnsupportedSchemaError
from .ebnf import parse_ebnf
from .ir import Node
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
