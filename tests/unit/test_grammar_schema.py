"""JSON Schema and JSON-object grammars: which texts they accept, that constrained random walks always give
JSON that parses and validates (``jsonschema``), the canonical compact spelling, refused keywords."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit._grammar_walk import random_walk, small_index
from webllm_py.errors import InvalidRequestError, UnsupportedSchemaError
from webllm_py.grammar import Grammar, Matcher

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}, "maxItems": 4},
        "zip": {"type": ["string", "null"], "pattern": "^[0-9]{5}$"},
        "kind": {"enum": ["admin", "user", 7, None, True]},
        "score": {"type": "number", "exclusiveMinimum": -2.5, "maximum": 99.25},
    },
    "required": ["name", "age", "kind"],
    "additionalProperties": False,
}

TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 3},
            },
            "required": ["value", "children"],
        }
    },
    "$ref": "#/$defs/node",
}

SCHEMAS = {
    "person": PERSON,
    "tree": TREE,
    "union": {
        "type": "object",
        "properties": {
            "shape": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"kind": {"const": "circle"}, "r": {"type": "number", "minimum": 0}},
                        "required": ["kind", "r"],
                    },
                    {
                        "type": "object",
                        "properties": {
                            "kind": {"const": "rect"},
                            "w": {"type": "integer"},
                            "h": {"type": "integer"},
                        },
                        "required": ["kind", "w", "h"],
                    },
                ]
            },
            "note": {"anyOf": [{"type": "string", "maxLength": 8}, {"type": "null"}]},
        },
        "required": ["shape", "note"],
    },
    "tuple": {
        "type": "array",
        "prefixItems": [{"type": "boolean"}, {"type": "string", "format": "date"}],
        "items": {"type": "integer", "minimum": -3, "maximum": 3},
        "minItems": 1,
        "maxItems": 5,
    },
    "allof": {
        "allOf": [
            {"$ref": "#/$defs/base"},
            {"properties": {"extra": {"type": "boolean"}}, "required": ["extra"]},
        ],
        "$defs": {
            "base": {
                "type": "object",
                "properties": {"id": {"type": "string", "format": "uuid"}},
                "required": ["id"],
            }
        },
    },
    "extras": {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "additionalProperties": {"type": "string", "maxLength": 3},
    },
    "free": {"type": "object", "properties": {"meta": {"type": "object"}, "list": {"type": "array"}}},
    "any": {},
}

EXAMPLES = {
    "person": (
        [
            {"name": "Ann", "age": 30, "kind": "admin"},
            {
                "name": "Bob é",
                "age": 0,
                "email": "bob@example.org",
                "tags": ["x", "yz"],
                "zip": None,
                "kind": None,
            },
            {"name": 'q"\\\n', "age": 150, "zip": "12345", "kind": 7, "score": 99.25},
            {"name": "x", "age": 1, "kind": True, "score": -2.4},
        ],
        [
            {"name": "", "age": 30, "kind": "admin"},
            {"name": "Ann", "age": 151, "kind": "admin"},
            {"name": "Ann", "age": 3, "kind": "root"},
            {"name": "Ann", "age": 3, "kind": "user", "score": -2.5},
            {"name": "Ann", "age": 3, "kind": "user", "other": 1},
            {"age": 3, "name": "Ann", "kind": "user"},  # schema order
            {"name": "Ann", "age": 3, "kind": "user", "tags": ["A"]},
        ],
    ),
    "tree": (
        [{"value": 1, "children": [{"value": -2, "children": []}, {"value": 3, "children": []}]}],
        [{"value": 1}],
    ),
    "extras": ([{"a": 1, "b": "xyz"}, {"zz": ""}, {}], [{"b": "xyzw"}, {"b": 1}, {"b": "x", "a": 1}]),
    "free": ([{"meta": {"k": [1, {"z": None}]}, "list": [1, "a", []]}], []),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_accepted_and_rejected(name):
    g = Grammar.json_schema(SCHEMAS[name])
    good, bad = EXAMPLES[name]
    for value in good:
        jsonschema.validate(value, SCHEMAS[name])
        assert g.matches(json.dumps(value, ensure_ascii=False)), value
    for value in bad:
        assert not g.matches(json.dumps(value, ensure_ascii=False)), value


def test_canonical_compact_spelling_only():
    g = Grammar.json_schema(PERSON)
    text = '{"name": "Ann", "age": 30, "kind": "admin"}'
    assert g.matches(text)
    for variant in (
        '{"name":"Ann","age":30,"kind":"admin"}',
        '{ "name": "Ann", "age": 30, "kind": "admin"}',
        '{"name": "Ann", "age": 30, "kind": "admin"}\n',
        '{"name": "\\u0041nn", "age": 30, "kind": "admin"}',  # \u0041 is "A": one spelling per character
        '{"name": "Ann", "age": 030, "kind": "admin"}',
    ):
        assert not g.matches(variant), variant
    assert g.matches(
        '{"name": "\\u0001\\t", "age": 30, "kind": "admin"}'
    )  # controls escaped as json.dumps does


def test_bounded_whitespace_option():
    g = Grammar.json_schema(PERSON, whitespace=2)
    assert g.matches('{"name":"Ann","age":30,"kind":"admin"}')
    assert g.matches('{\n "name" : "Ann",\n "age": 30, "kind": "admin"\n}')
    assert not g.matches('{\n   "name": "Ann", "age": 30, "kind": "admin"}')  # 3 > 2
    with pytest.raises(UnsupportedSchemaError):
        Grammar.json_schema(PERSON, whitespace=-1)


def test_strict_default_and_json_schema_default_for_extra_keys():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert not Grammar.json_schema(schema).matches('{"a": 1, "b": 2}')
    lax = Grammar.json_schema(schema, strict=False)
    assert lax.matches('{"a": 1, "b": [2, {"c": null}]}') and lax.matches('{"b": 2}')
    assert not lax.matches('{"a": 1, "a": 2}')  # an extra key never repeats a listed one


def test_json_object_without_schema():
    g = Grammar.json_object()
    assert g.matches("{}") and g.matches('{"a": {"b": [1, -2.5e+3, "x", true, null]}}')
    for text in ("[]", '"x"', "{} ", '{"a": 1,}', "{'a': 1}", '{"a" : 1}', '{"a": NaN}'):
        assert not g.matches(text), text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


JSON_OBJECT = Grammar.json_object()


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5))
def test_json_object_accepts_every_json_dumps_object(value):
    assert JSON_OBJECT.matches(json.dumps(value, ensure_ascii=False))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.integers(-(10**6), 10**6), st.integers(-1000, 1000), st.integers(0, 2000))
def test_integer_ranges(x, lo, width):
    hi = lo + width
    g = Grammar.json_schema({"type": "integer", "minimum": lo, "maximum": hi})
    assert g.matches(str(x)) == (lo <= x <= hi)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    st.decimals(-500, 500, places=3, allow_nan=False),
    st.decimals(-100, 100, places=2, allow_nan=False),
    st.decimals(0, 100, places=1, allow_nan=False),
    st.booleans(),
    st.booleans(),
)
def test_number_ranges(x, lo, width, lo_excl, hi_excl):
    hi = lo + width
    schema = {"type": "number"}
    schema["exclusiveMinimum" if lo_excl else "minimum"] = float(lo)
    schema["exclusiveMaximum" if hi_excl else "maximum"] = float(hi)
    if lo == hi and (lo_excl or hi_excl):
        with pytest.raises(UnsupportedSchemaError):
            Grammar.json_schema(schema)
        return
    g = Grammar.json_schema(schema)
    text = format(x, "f")
    if text.startswith("-") and x == 0:
        text = text[1:]
    inside = (x > lo if lo_excl else x >= lo) and (x < hi if hi_excl else x <= hi)
    assert g.matches(text) == inside, (text, schema)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_walks_parse_and_validate(name):
    schema = SCHEMAS[name]
    g = Grammar.json_schema(schema)
    index = small_index()
    checker = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for seed in range(8):
        m = Matcher(g, index)
        text = random_walk(m, random.Random(seed), 60).decode("utf-8")
        value = json.loads(text)
        checker.validate(value)
        props = list(schema.get("properties", {}))
        keys = [k for k in value if k in props] if isinstance(value, dict) else []
        assert keys == sorted(keys, key=props.index)  # schema order
        if not _has_float(value):
            assert json.dumps(value, ensure_ascii=False) == text  # the canonical compact spelling


def _has_float(value) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


@pytest.mark.parametrize(
    "fmt", ["date", "time", "date-time", "uuid", "ipv4", "ipv6", "hostname", "email", "uri"]
)
def test_formats_only_produce_valid_instances(fmt):
    schema = {"type": "string", "format": fmt}
    g = Grammar.json_schema(schema)
    checker = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for seed in range(6):
        text = random_walk(Matcher(g, small_index()), random.Random(seed), 40).decode()
        checker.validate(json.loads(text))


@pytest.mark.parametrize(
    ("schema", "field", "keyword"),
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "#", "uniqueItems"),
        ({"type": "object", "patternProperties": {"^a": {}}}, "#", "patternProperties"),
        ({"properties": {"a": {"not": {"type": "null"}}}}, "#/properties/a", "not"),
        ({"type": "string", "format": "color"}, "#", "format"),
        ({"type": "number", "multipleOf": 0.5}, "#", "multipleOf"),
        (
            {"type": "object", "properties": {"a": {"type": "string", "propertyNames": {}}}},
            "#/properties/a",
            "propertyNames",
        ),
        ({"if": {"type": "string"}}, "#", "if"),
        ({"type": "strin"}, "#", "type"),
        ({"type": "string", "maxLenght": 3}, "#", "maxLenght"),
        ({"$ref": "https://example.com/s.json"}, "#", "$ref"),
        ({"$ref": "#/$defs/missing"}, "#", "$ref"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "#", "oneOf"),
        ({"type": "string", "pattern": "(?=x)"}, "#", "pattern"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "#", "maxLength"),
        ({"type": "integer", "minimum": 3, "maximum": 2}, "#", "minimum"),
        ({"enum": ["a"], "type": "integer"}, "#", "enum"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "#/allOf/1", "type"),
        (
            {"type": "object", "properties": {"a": {}}, "required": ["b"], "additionalProperties": False},
            "#",
            "required",
        ),
        ({"type": "array", "items": {"type": "integer"}, "contains": {"const": 1}}, "#", "contains"),
        ({"type": "object", "minProperties": 2}, "#", "minProperties"),
        ({"type": "string", "contentEncoding": "base64"}, "#", "contentEncoding"),
        (False, "#", "false"),
    ],
)
def test_unsupported_keywords_are_named(schema, field, keyword):
    with pytest.raises(UnsupportedSchemaError) as e:
        Grammar.json_schema(schema)
    assert (e.value.field, e.value.keyword) == (field, keyword)
    assert isinstance(e.value, InvalidRequestError) and keyword in str(e.value)


def test_annotations_and_vendor_keys_are_fine():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "T",
        "description": "d",
        "type": "object",
        "properties": {
            "a": {"type": "integer", "default": 3, "examples": [1], "x-order": 1, "deprecated": False}
        },
        "required": ["a"],
    }
    assert Grammar.json_schema(schema).matches('{"a": 1}')
    assert Grammar.json_schema(json.dumps(schema)).matches('{"a": 1}')
    with pytest.raises(UnsupportedSchemaError, match="not valid JSON"):
        Grammar.json_schema("{nope")


def test_openai_strict_style_schema_and_nullable():
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": ["string", "null"], "enum": ["c", "f", None]},
            "days": {"type": "integer", "nullable": True},
        },
        "required": ["city", "unit", "days"],
        "additionalProperties": False,
    }
    g = Grammar.json_schema(schema)
    assert g.matches('{"city": "Paris", "unit": null, "days": null}')
    assert g.matches('{"city": "Paris", "unit": "f", "days": 3}')
    assert not g.matches('{"city": "Paris", "unit": "k", "days": 3}')


def test_decimal_bounds_without_exponent():
    g = Grammar.json_schema({"type": "number", "minimum": 0.5, "maximum": 2})
    assert g.matches("0.5") and g.matches("2") and g.matches("2.000") and g.matches("1.99")
    assert not g.matches("0.49") and not g.matches("2.0001") and not g.matches("1e0")
    unbounded = Grammar.json_schema({"type": "number"})
    assert unbounded.matches("-1.5E+3") and not unbounded.matches("01") and not unbounded.matches("1.")
    assert Decimal("1")  # the bound arithmetic is decimal, not float
