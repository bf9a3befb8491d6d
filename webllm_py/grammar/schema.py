"""JSON Schema -> grammar IR.

What is enforced (everything else raises ``UnsupportedSchemaError`` naming the keyword and where it is):

* ``type`` (one or a list), ``nullable: true`` (OpenAPI), ``enum``, ``const``, ``anyOf``, ``oneOf`` (when the
  branches provably exclude each other: different types, or disjoint ``const``/``enum`` values of a property
  required in both), ``allOf`` (merged: properties, required, bounds, patterns, ...), local ``$ref``
  (``#/$defs/x``, ``#/definitions/x``, any JSON pointer) including recursion;
* objects: ``properties`` (written in schema order), ``required``, ``additionalProperties`` (false, true or a
  schema; extra keys come after the listed ones and never repeat a listed key), ``minProperties`` /
  ``maxProperties`` when every output satisfies them anyway;
* arrays: ``items``, ``prefixItems`` (and the older list form of ``items`` with ``additionalItems``),
  ``minItems``, ``maxItems``, ``uniqueItems`` only when at most one item is possible;
* strings: ``minLength``, ``maxLength`` (code points), ``pattern`` (ECMAScript, unanchored as JSON Schema says),
  ``format`` in ``FORMATS`` (conservative patterns: every output is a valid instance, not every valid instance
  can be output);
* numbers: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum`` (numbers or the draft-4
  booleans), ``multipleOf: 1``;
* annotations are read and ignored: ``title``, ``description``, ``default``, ``examples``, ``$schema``, ``$id``,
  ``$comment``, ``deprecated``, ``readOnly``, ``writeOnly``, ``discriminator``, ``x-*``.

Defaults: ``strict=True`` (OpenAI's strict mode): an object with ``properties`` but no ``additionalProperties``
gets no extra keys. ``{"type": "object"}`` with no ``properties`` is any object and ``{"type": "array"}``
without ``items`` any array, in both modes. Output spelling: see ``JsonStyle``.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from ..errors import InvalidGrammarError, UnsupportedSchemaError
from .automaton import DFA, from_node, product, repeat
from .ir import (
    ANY_CHAR,
    EMPTY,
    Chars,
    Embed,
    Lit,
    Node,
    Props,
    Ref,
    Rep,
    alt,
    json_chars,
    opt,
    seq,
    star,
)
from .numbers import INTEGER, NUMBER, integer_bounds, integer_range, number_range
from .regex import parse_regex

ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "example", "$schema", "$id", "$comment", "deprecated"}
    | {"readOnly", "writeOnly", "discriminator", "$defs", "definitions", "$anchor"}
)
# Patterns merged from allOf members beyond the first (a private key: all of them must hold).
_PATTERNS = "\x00patterns"
_STRING_KEYS = frozenset({"minLength", "maxLength", "pattern", "format", _PATTERNS})
_NUMBER_KEYS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
_OBJECT_KEYS = frozenset({"properties", "required", "additionalProperties", "minProperties", "maxProperties"})
_ARRAY_KEYS = frozenset({"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems"})
_GENERAL_KEYS = frozenset({"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "nullable"})
KNOWN = ANNOTATIONS | _STRING_KEYS | _NUMBER_KEYS | _OBJECT_KEYS | _ARRAY_KEYS | _GENERAL_KEYS
REFUSED = {
    "patternProperties": "is not supported (list the properties)",
    "propertyNames": "is not supported",
    "unevaluatedProperties": "is not supported (use additionalProperties)",
    "unevaluatedItems": "is not supported",
    "dependentRequired": "is not supported",
    "dependentSchemas": "is not supported",
    "dependencies": "is not supported",
    "contains": "is not supported",
    "minContains": "is not supported",
    "maxContains": "is not supported",
    "not": "is not supported",
    "if": "is not supported (use anyOf)",
    "then": "is not supported (use anyOf)",
    "else": "is not supported (use anyOf)",
    "$dynamicRef": "is not supported",
    "$dynamicAnchor": "is not supported",
    "$recursiveRef": "is not supported (use $ref)",
    "$recursiveAnchor": "is not supported",
    "contentEncoding": "is not enforced",
    "contentMediaType": "is not enforced",
    "contentSchema": "is not enforced",
}
TYPES = ("null", "boolean", "object", "array", "string", "number", "integer")

# Conservative patterns per format: every text they allow is a valid instance.
_DATE = r"\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|02-(?:0[1-9]|1\d|2[0-8]))"
_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
FORMATS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": _DATE + "T" + _TIME,
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "ipv4": rf"{_OCTET}(?:\.{_OCTET}){{3}}",
    "ipv6": r"[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){7}",
    "hostname": rf"{_LABEL}(?:\.{_LABEL})*",
    "email": rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~-]+)*@{_LABEL}(?:\.{_LABEL})+",
    "uri": r"[a-zA-Z][a-zA-Z0-9+.-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+",
}

JSON_CHAR = json_chars(ANY_CHAR)
JSON_STRING = seq(Lit('"'), star(JSON_CHAR), Lit('"'))


class JsonStyle:
    """How JSON is spelled. ``whitespace=0`` (the default): the one compact form ``{"a": 1, "b": [1, 2]}``
    (``json.dumps`` separators, nothing else). ``whitespace=n``: ``,`` and ``:`` separators, and up to ``n``
    whitespace characters (space, tab, newline, CR) wherever JSON allows them inside the value."""

    def __init__(self, whitespace: int = 0):
        if not isinstance(whitespace, int) or whitespace < 0:
            raise UnsupportedSchemaError(
                "#", "whitespace", f"must be a non-negative integer; got {whitespace!r}"
            )
        self.whitespace = whitespace
        if whitespace:
            ws = Rep(Chars([(0x09, 0x0A), (0x0D, 0x0D), (0x20, 0x20)]), 0, whitespace)
            self.item_sep = seq(ws, Lit(","), ws)
            self.key_sep = seq(ws, Lit(":"), ws)
            self.open_obj, self.close_obj = seq(Lit("{"), ws), seq(ws, Lit("}"))
            self.open_arr, self.close_arr = seq(Lit("["), ws), seq(ws, Lit("]"))
        else:
            self.item_sep, self.key_sep = Lit(", "), Lit(": ")
            self.open_obj, self.close_obj = Lit("{"), Lit("}")
            self.open_arr, self.close_arr = Lit("["), Lit("]")
        self.separators = (", ", ": ")

    def dumps(self, value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=self.separators, allow_nan=False)


def _json_rules(style: JsonStyle) -> dict[str, Node]:
    """Generic JSON: ``json_value``, ``json_object``, ``json_array`` (recursive)."""
    member = seq(JSON_STRING, style.key_sep, Ref("json_value"))
    return {
        "json_value": alt(
            Ref("json_object"), Ref("json_array"), JSON_STRING, NUMBER, Lit("true"), Lit("false"), Lit("null")
        ),
        "json_object": seq(
            style.open_obj, opt(seq(member, star(seq(style.item_sep, member)))), style.close_obj
        ),
        "json_array": seq(
            style.open_arr,
            opt(seq(Ref("json_value"), star(seq(style.item_sep, Ref("json_value"))))),
            style.close_arr,
        ),
    }


def compile_json_object(style: JsonStyle) -> tuple[dict[str, Node], str]:
    """Any JSON object."""
    return _json_rules(style), "json_object"


def compile_schema(schema: Any, *, strict: bool, style: JsonStyle) -> tuple[dict[str, Node], str]:
    """Rules and root name for ``schema``."""
    c = _SchemaCompiler(schema, strict, style)
    root = c.compile(schema, "#")
    c.rules["root"] = root
    if c.need_any:
        c.rules.update(_json_rules(style))
    return c.rules, "root"


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "unknown"


def _fits(value: Any, types: set[str]) -> bool:
    t = _type_of(value)
    return t in types or (t == "integer" and "number" in types)


def _decimal(value: Any, where: str, keyword: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnsupportedSchemaError(where, keyword, f"must be a finite number; got {value!r}")
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


class _SchemaCompiler:
    def __init__(self, root: Any, strict: bool, style: JsonStyle):
        self.root = root
        self.strict = strict
        self.style = style
        self.rules: dict[str, Node] = {}
        self.need_any = False
        self._done: dict[str, Node] = {}
        self._active: set[str] = set()
        self._recursive: set[str] = set()
        self._flattening: frozenset[str] | set[str] = frozenset()  # $refs being merged into an allOf

    # ---- helpers ----

    def any_value(self) -> Node:
        self.need_any = True
        return Ref("json_value")

    def error(self, where: str, keyword: str, reason: str) -> UnsupportedSchemaError:
        return UnsupportedSchemaError(where, keyword, reason)

    def check_keys(self, schema: dict[str, Any], where: str) -> None:
        for key in schema:
            if key in KNOWN or (isinstance(key, str) and key.startswith("x-")):
                continue
            if key in REFUSED:
                raise self.error(where, key, REFUSED[key])
            raise self.error(
                where, str(key), "is not a JSON Schema keyword we know, so it cannot be enforced"
            )

    def resolve(self, ref: Any, where: str) -> tuple[Any, str]:
        """The schema a local ``$ref`` points to, and its pointer."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.error(where, "$ref", f"only local references (#/...) are supported; got {ref!r}")
        node: Any = self.root
        pointer = ref[1:]
        if pointer:
            if not pointer.startswith("/"):
                raise self.error(where, "$ref", f"{ref!r} is not a JSON pointer (anchors are not supported)")
            for raw in pointer[1:].split("/"):
                part = raw.replace("~1", "/").replace("~0", "~")
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    raise self.error(where, "$ref", f"{ref!r} points to nothing")
        return node, ref

    def deref(self, schema: Any, where: str) -> tuple[Any, str]:
        """Follow ``$ref`` chains of a schema that holds nothing else but annotations."""
        seen = set()
        while isinstance(schema, dict) and "$ref" in schema and not (set(schema) - ANNOTATIONS - {"$ref"}):
            if schema["$ref"] in seen:
                raise self.error(where, "$ref", f"{schema['$ref']!r} refers to itself")
            seen.add(schema["$ref"])
            schema, where = self.resolve(schema["$ref"], where)
        return schema, where

    # ---- compile ----

    def compile(self, schema: Any, where: str) -> Node:
        if schema is True:
            return self.any_value()
        if schema is False:
            raise self.error(where, "false", "matches no value")
        if not isinstance(schema, dict):
            raise self.error(where, "schema", f"must be an object or a boolean; got {type(schema).__name__}")
        self.check_keys(schema, where)
        if "$ref" in schema:
            siblings = {k: v for k, v in schema.items() if k != "$ref" and k not in ANNOTATIONS}
            if not siblings:
                return self.ref(schema["$ref"], where)
            target, target_where = self.resolve(schema["$ref"], where)
            return self.compile(self.merge(siblings, target, where), where)
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or not parts:
                raise self.error(where, "allOf", "must be a non-empty list of schemas")
            merged: Any = {k: v for k, v in schema.items() if k != "allOf"}
            for i, part in enumerate(parts):
                merged = self.merge(merged, part, f"{where}/allOf/{i}")
            return self.compile(merged, where)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.union(schema, key, where)
        if "enum" in schema or "const" in schema:
            return self.enum(schema, where)
        types = self.types(schema, where)
        if types is None:
            return self.any_value()
        return alt(*(self.typed(t, schema, where) for t in types))

    def ref(self, ref: str, where: str) -> Node:
        target, pointer = self.resolve(ref, where)
        if pointer in self._done:
            return self._done[pointer]
        name = "def:" + pointer
        if pointer in self._active:
            self._recursive.add(pointer)
            return Ref(name)
        self._active.add(pointer)
        try:
            node = self.compile(target, pointer)
        finally:
            self._active.discard(pointer)
        if pointer in self._recursive:
            self.rules[name] = node
            node = Ref(name)
        self._done[pointer] = node
        return node

    def types(self, schema: dict[str, Any], where: str) -> list[str] | None:
        """The types to generate, in a fixed order; None = any JSON value."""
        t = schema.get("type")
        if t is None:
            present = set(schema)
            inferred = [
                name
                for name, keys in (
                    ("object", _OBJECT_KEYS),
                    ("array", _ARRAY_KEYS),
                    ("string", _STRING_KEYS),
                    ("number", _NUMBER_KEYS),
                )
                if present & keys
            ]
            if not inferred:
                return None
            types = inferred
        else:
            types = [t] if isinstance(t, str) else t
            if not isinstance(types, list) or not types or any(x not in TYPES for x in types):
                raise self.error(
                    where, "type", f"must be one of {', '.join(TYPES)} or a list of them; got {t!r}"
                )
            if "number" in types and "integer" in types:
                types = [x for x in types if x != "integer"]
        if schema.get("nullable") is True and "null" not in types:
            types = [*types, "null"]
        return list(dict.fromkeys(types))

    def typed(self, t: str, schema: dict[str, Any], where: str) -> Node:
        if t == "null":
            return Lit("null")
        if t == "boolean":
            return alt(Lit("true"), Lit("false"))
        if t == "string":
            return self.string(schema, where)
        if t in ("number", "integer"):
            return self.number(schema, where, integer=t == "integer")
        if t == "object":
            return self.object(schema, where)
        return self.array(schema, where)

    # ---- strings ----

    def string_body(self, schema: dict[str, Any], where: str) -> Node:
        """The characters between the quotes."""
        lo = schema.get("minLength", 0)
        hi = schema.get("maxLength")
        for key, v in (("minLength", lo), ("maxLength", hi)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise self.error(where, key, f"must be a non-negative integer; got {v!r}")
        if hi is not None and hi < lo:
            raise self.error(where, "maxLength", f"({hi}) is below minLength ({lo})")
        patterns = list(schema.get(_PATTERNS, []))
        if "pattern" in schema:
            patterns.append(schema["pattern"])
        languages: list[DFA] = []
        for p in patterns:
            if not isinstance(p, str):
                raise self.error(where, "pattern", f"must be a string; got {p!r}")
            try:
                languages.append(from_node(parse_regex(p, char_node=json_chars, anchored=False)))
            except InvalidGrammarError as e:
                raise self.error(where, "pattern", f"{p!r}: {e.reason}") from None
        fmt = schema.get("format")
        if fmt is not None:
            if fmt not in FORMATS:
                raise self.error(
                    where, "format", f"{fmt!r} is not supported; supported: {', '.join(FORMATS)}"
                )
            languages.append(from_node(parse_regex(FORMATS[fmt], char_node=json_chars)))
        length = Rep(JSON_CHAR, lo, hi)
        if not languages:
            return length
        if lo or hi is not None:
            languages.append(repeat(from_node(JSON_CHAR), lo, hi))
        dfa = languages[0]
        for other in languages[1:]:
            dfa = product(dfa, other)
        if dfa.is_empty():
            raise self.error(
                where,
                "pattern" if patterns else "format",
                "no string satisfies it together with the length bounds",
            )
        return Embed(dfa)

    def string(self, schema: dict[str, Any], where: str) -> Node:
        return seq(Lit('"'), self.string_body(schema, where), Lit('"'))

    # ---- numbers ----

    def number(self, schema: dict[str, Any], where: str, *, integer: bool) -> Node:
        multiple = schema.get("multipleOf")
        if multiple is not None:
            if multiple != 1 or isinstance(multiple, bool):
                raise self.error(where, "multipleOf", f"is only supported as 1; got {multiple!r}")
            integer = True
        lo = hi = None
        lo_excl = hi_excl = False
        if "minimum" in schema:
            lo = _decimal(schema["minimum"], where, "minimum")
        if "maximum" in schema:
            hi = _decimal(schema["maximum"], where, "maximum")
        for key, is_low in (("exclusiveMinimum", True), ("exclusiveMaximum", False)):
            if key not in schema:
                continue
            v = schema[key]
            if isinstance(v, bool):  # draft 4: a flag on minimum / maximum
                if is_low:
                    lo_excl = v and lo is not None
                else:
                    hi_excl = v and hi is not None
                continue
            d = _decimal(v, where, key)
            if is_low and (lo is None or d >= lo):
                lo, lo_excl = d, True
            elif not is_low and (hi is None or d <= hi):
                hi, hi_excl = d, True
        if integer:
            if lo is None and hi is None:
                return INTEGER
            ilo, ihi = integer_bounds(lo, lo_excl, hi, hi_excl)
            if ilo is not None and ihi is not None and ilo > ihi:
                raise self.error(where, "minimum", "no integer lies within the bounds")
            return integer_range(ilo, ihi)
        if lo is None and hi is None:
            return NUMBER
        if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_excl or hi_excl))):
            raise self.error(where, "minimum", "no number lies within the bounds")
        return number_range(lo, lo_excl, hi, hi_excl)

    # ---- objects ----

    def object(self, schema: dict[str, Any], where: str) -> Node:
        style = self.style
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise self.error(where, "properties", "must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.error(where, "required", "must be a list of strings")
        addl = schema.get("additionalProperties")
        if addl is None:
            addl = (not self.strict) if props else True
        required_set = set(required)
        members: list[tuple[Node, bool]] = []
        count_possible = 0
        for name, sub in props.items():
            if sub is False:
                if name in required_set:
                    raise self.error(
                        f"{where}/properties/{name}", "false", "a required property cannot be false"
                    )
                continue
            value = self.compile(sub, f"{where}/properties/{_escape(name)}")
            members.append((seq(Lit(style.dumps(name)), style.key_sep, value), name in required_set))
            count_possible += 1
        for name in required:
            if name in props:
                continue
            if addl is False:
                raise self.error(
                    where, "required", f"lists {name!r}, which additionalProperties: false forbids"
                )
            value = self.any_value() if addl is True else self.compile(addl, f"{where}/additionalProperties")
            members.append((seq(Lit(style.dumps(name)), style.key_sep, value), True))
            count_possible += 1
        extra = None
        if addl is not False:
            value = self.any_value() if addl is True else self.compile(addl, f"{where}/additionalProperties")
            listed = [n for n in props] + [n for n in required if n not in props]
            key = JSON_STRING
            if listed:
                other = from_node(alt(*(Lit(style.dumps(n)) for n in listed)))
                key = Embed(product(from_node(JSON_STRING), other, difference=True))
            extra = seq(key, style.key_sep, value)
        n_required = len({n for n in required})
        min_p = schema.get("minProperties")
        if min_p is not None and min_p > n_required:
            raise self.error(
                where, "minProperties", f"({min_p}) above the number of required properties is not supported"
            )
        max_p = schema.get("maxProperties")
        if max_p is not None and (extra is not None or count_possible > max_p):
            raise self.error(
                where,
                "maxProperties",
                "is only supported when no more properties than it allows can be written",
            )
        return seq(style.open_obj, Props(members, style.item_sep, extra), style.close_obj)

    # ---- arrays ----

    def array(self, schema: dict[str, Any], where: str) -> Node:
        style = self.style
        items = schema.get("items")
        prefix = schema.get("prefixItems")
        rest: Any = items
        if isinstance(items, list):  # draft 4-2019 tuple form
            if prefix is not None:
                raise self.error(where, "items", "a list of schemas together with prefixItems")
            prefix, rest = items, schema.get("additionalItems", True)
        elif "additionalItems" in schema:
            raise self.error(where, "additionalItems", "only applies with a list in items")
        prefix = prefix or []
        if not isinstance(prefix, list):
            raise self.error(where, "prefixItems", "must be a list of schemas")
        if rest is None:
            rest = True
        lo = schema.get("minItems", 0)
        hi = schema.get("maxItems")
        for key, v in (("minItems", lo), ("maxItems", hi)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise self.error(where, key, f"must be a non-negative integer; got {v!r}")
        if rest is False:
            hi = len(prefix) if hi is None else min(hi, len(prefix))
        if hi is not None and hi < lo:
            raise self.error(where, "maxItems", f"({hi}) is below minItems ({lo}) or the items allowed")
        unique = schema.get("uniqueItems", False)
        if unique is True and (hi is None or hi > 1):
            raise self.error(where, "uniqueItems", "is only supported with maxItems <= 1")
        prefix_nodes = [self.compile(p, f"{where}/prefixItems/{i}") for i, p in enumerate(prefix)]
        n_prefix = len(prefix_nodes) if hi is None else min(len(prefix_nodes), hi)
        tail: Node = EMPTY
        if hi is None or hi > n_prefix:
            item = self.compile(rest, f"{where}/items")
            need = max(0, lo - n_prefix)
            more = None if hi is None else hi - n_prefix
            if n_prefix == 0:
                first = seq(
                    item, Rep(seq(style.item_sep, item), max(0, need - 1), None if more is None else more - 1)
                )
                tail = first if need > 0 else opt(first)
            else:
                tail = Rep(seq(style.item_sep, item), need, more)
        # Prefix items, each optional once minItems is reached: nested so the automaton stays linear.
        body = tail
        for i in range(n_prefix - 1, -1, -1):
            step = seq(style.item_sep if i > 0 else EMPTY, prefix_nodes[i], body)
            body = step if i < lo else opt(step)
        return seq(style.open_arr, body, style.close_arr)

    # ---- combinators ----

    def union(self, schema: dict[str, Any], key: str, where: str) -> Node:
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise self.error(where, key, "must be a non-empty list of schemas")
        other = "oneOf" if key == "anyOf" else "anyOf"
        siblings = {k: v for k, v in schema.items() if k != key and k not in ANNOTATIONS}
        if other in siblings:
            raise self.error(
                where, other, f"together with {key} in one schema is not supported (nest them in allOf)"
            )
        merged = [
            self.merge(siblings, b, f"{where}/{key}/{i}") if siblings else b for i, b in enumerate(branches)
        ]
        if key == "oneOf":
            self.check_exclusive(merged, where)
        return alt(*(self.compile(b, f"{where}/{key}/{i}") for i, b in enumerate(merged)))

    def check_exclusive(self, branches: list[Any], where: str) -> None:
        """``oneOf`` is only compiled as a union when no value can match two branches."""
        summaries = [self.summary(b, where) for b in branches]
        for i in range(len(branches)):
            for j in range(i + 1, len(branches)):
                if not _disjoint(summaries[i], summaries[j]):
                    raise self.error(
                        where,
                        "oneOf",
                        f"branches {i} and {j} may both match one value, which oneOf forbids; "
                        "use anyOf, or give each branch a distinct type or const tag",
                    )

    def summary(
        self, schema: Any, where: str
    ) -> tuple[set[str] | None, list[Any] | None, dict[str, list[Any]]]:
        """(possible types or None, possible values or None, required property -> possible values)."""
        schema, where = self.deref(schema, where)
        if not isinstance(schema, dict):
            return (None, None, {})
        values = None
        if "const" in schema:
            values = [schema["const"]]
        elif isinstance(schema.get("enum"), list):
            values = list(schema["enum"])
        types = self.types(schema, where) if "type" in schema or values is None else None
        tset = (
            set(types)
            if types is not None
            else ({_type_of(v) for v in values} if values is not None else None)
        )
        tags: dict[str, list[Any]] = {}
        props = schema.get("properties", {})
        if isinstance(props, dict):
            for name in schema.get("required", []):
                if name in props:
                    sub, _ = self.deref(props[name], where)
                    if isinstance(sub, dict) and "const" in sub:
                        tags[name] = [sub["const"]]
                    elif isinstance(sub, dict) and isinstance(sub.get("enum"), list):
                        tags[name] = list(sub["enum"])
        return (tset, values, tags)

    def enum(self, schema: dict[str, Any], where: str) -> Node:
        if "const" in schema:
            values = [schema["const"]]
            if "enum" in schema:
                values = [v for v in values if v in schema["enum"]]
        else:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.error(where, "enum", "must be a non-empty list")
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const") and k not in ANNOTATIONS}
        types = (
            set(self.types(rest, where) or TYPES) if ("type" in rest or "nullable" in rest) else set(TYPES)
        )
        checks = {k: v for k, v in rest.items() if k not in ("type", "nullable")}
        kept = []
        for v in values:
            if not _fits(v, types):
                continue
            family = {"string": _STRING_KEYS, "integer": _NUMBER_KEYS, "number": _NUMBER_KEYS}.get(
                _type_of(v)
            )
            applicable = {k: x for k, x in checks.items() if family is not None and k in family}
            if checks and isinstance(v, dict | list):
                raise self.error(
                    where,
                    "enum",
                    f"with {', '.join(sorted(checks))} on object or array values is not supported",
                )
            if applicable:
                node = self.typed("string" if isinstance(v, str) else "number", applicable, where)
                if not from_node(node).matches(self.style.dumps(v).encode()):
                    continue
            kept.append(v)
        if not kept:
            raise self.error(
                where, "enum" if "enum" in schema else "const", "no value satisfies the other keywords"
            )
        try:
            return alt(*(Lit(self.style.dumps(v)) for v in kept))
        except ValueError as e:
            raise self.error(where, "enum", f"holds a value JSON cannot write: {e}") from None

    # ---- allOf / $ref siblings ----

    def merge(self, a: Any, b: Any, where: str) -> Any:
        """One schema equivalent to both (for what we enforce), or an error naming the keyword that clashes."""
        a, _ = self.deref(a, where)
        b, bwhere = self.deref(b, where)
        if a is True or a == {}:
            return b
        if b is True or b == {}:
            return a
        if a is False or b is False:
            raise self.error(where, "allOf", "includes false: no value matches")
        if not isinstance(a, dict) or not isinstance(b, dict):
            raise self.error(where, "allOf", "members must be schemas")
        if "$ref" in b or "allOf" in b:
            b = self._flatten(b, bwhere)
        if "$ref" in a or "allOf" in a:
            a = self._flatten(a, where)
        self.check_keys(b, bwhere)
        out = dict(a)
        for key, bv in b.items():
            if key in ANNOTATIONS:
                continue
            if key not in out:
                out[key] = bv
                continue
            av = out[key]
            if av == bv:
                continue
            if key == "pattern":  # both must hold: the second joins the list intersected in string_body
                out[_PATTERNS] = [*out.get(_PATTERNS, []), bv]
                continue
            out[key] = self._merge_key(key, av, bv, a, b, where)
        return out

    def _flatten(self, schema: dict[str, Any], where: str) -> Any:
        """Resolve a schema's own ``$ref`` and ``allOf`` into one dict (for merging)."""
        rest = {k: v for k, v in schema.items() if k not in ("$ref", "allOf")}
        if "$ref" in schema:
            if schema["$ref"] in self._flattening:
                raise self.error(where, "$ref", "a recursive reference inside allOf is not supported")
            self._flattening = self._flattening | {schema["$ref"]}
            try:
                target, twhere = self.resolve(schema["$ref"], where)
                rest = self.merge(rest, target, twhere)
            finally:
                self._flattening = self._flattening - {schema["$ref"]}
        for i, part in enumerate(schema.get("allOf", [])):
            rest = self.merge(rest, part, f"{where}/allOf/{i}")
        return rest

    def _merge_key(self, key: str, av: Any, bv: Any, a: dict, b: dict, where: str) -> Any:
        if key == "type":
            at = {av} if isinstance(av, str) else set(av)
            bt = {bv} if isinstance(bv, str) else set(bv)
            both = (at & bt) | (
                {"integer"}
                if ("integer" in at and "number" in bt) or ("number" in at and "integer" in bt)
                else set()
            )
            if not both:
                raise self.error(where, "type", f"{av!r} and {bv!r} have no type in common")
            return [t for t in TYPES if t in both]
        if key == "properties":
            merged = dict(av)
            for name, sub in bv.items():
                merged[name] = (
                    self.merge(merged[name], sub, f"{where}/properties/{name}") if name in merged else sub
                )
            for side, other in ((a, bv), (b, av)):
                if side.get("additionalProperties") is False and set(other) - set(side.get("properties", {})):
                    raise self.error(
                        where,
                        "additionalProperties",
                        "false on one allOf member forbids properties another one adds",
                    )
            return merged
        if key == "required":
            return list(dict.fromkeys([*av, *bv]))
        if key in ("minLength", "minItems", "minProperties", "minimum"):
            return max(av, bv)
        if key in ("maxLength", "maxItems", "maxProperties", "maximum"):
            return min(av, bv)
        if key == "exclusiveMinimum" and not isinstance(av, bool) and not isinstance(bv, bool):
            return max(av, bv)
        if key == "exclusiveMaximum" and not isinstance(av, bool) and not isinstance(bv, bool):
            return min(av, bv)
        if key == _PATTERNS:
            return [*av, *bv]
        if key == "enum":
            both = [v for v in av if v in bv]
            if not both:
                raise self.error(where, "enum", "the allOf members share no value")
            return both
        if key == "const":
            raise self.error(where, "const", f"{av!r} and {bv!r} differ")
        if (
            key in ("items", "additionalProperties")
            and isinstance(av, dict | bool)
            and isinstance(bv, dict | bool)
        ):
            if av is False or bv is False:
                return False
            return self.merge(av, bv, f"{where}/{key}")
        raise self.error(where, key, f"cannot be merged in allOf ({av!r} and {bv!r})")


def _disjoint(x: tuple, y: tuple) -> bool:
    tx, vx, gx = x
    ty, vy, gy = y
    if tx is not None and ty is not None:
        wx = tx | ({"integer"} if "number" in tx else set())
        wy = ty | ({"integer"} if "number" in ty else set())
        if (
            not (wx & wy)
            and not ("number" in tx and "integer" in ty)
            and not ("integer" in tx and "number" in ty)
        ):
            return True
    if vx is not None and vy is not None and not any(v in vy for v in vx):
        return True
    for name in gx.keys() & gy.keys():
        if not any(v in gy[name] for v in gx[name]):
            return True
    return False


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")
