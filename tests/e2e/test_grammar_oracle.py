"""Our grammar masks against llguidance's, state by state, on SmolLM2's real 49,152-token vocabulary (its
tokenizer only: no GPU), plus jsonschema validation of every walk's text.

Each walk chooses tokens uniformly among those both engines allow (seeded), for a fixed number of steps, then
the shortest completion as single-byte tokens; at every state the two masks must be equal except for these
deliberate differences, each counted and checked:

* **forced bytes**: where the grammar forces the next bytes (``{"name": `` after ``{``), llguidance allows only
  the token its lexer would pick (``compute_ff_bytes``), we allow every token that is a prefix of the forced
  text. Ours: any allowed token keeps the output valid, and the model's own choice is not overridden.
* **DEL**: we allow U+007F raw inside JSON strings, as JSON and ``json.dumps`` do; llguidance does not.
* **-0**: our integers have one spelling, so ``-`` is never followed by ``0``; llguidance allows ``-0``.

Configured to match us: compact separators ``", "`` / ``": "`` and no free whitespace (``whitespace_flexible:
false``), every schema object with ``additionalProperties: false`` (our strict default), the same stop tokens,
control tokens marked special.
"""

from __future__ import annotations

import json
import random
from functools import cache

import jsonschema
import llguidance  # the dev extra: an oracle, never a dependency of the package
import pytest

from tests.e2e.model_path import smollm2_path
from webllm_py.grammar import Grammar, Matcher, TokenIndex
from webllm_py.model.gguf import GGUFFile
from webllm_py.tokenizer import Tokenizer

pytestmark = pytest.mark.model

LLG_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

SCHEMAS = {
    "profile": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {
                "type": "object",
                "properties": {
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    "city": {"type": "string"},
                },
                "required": ["zip"],
                "additionalProperties": False,
            },
            "kind": {"enum": ["alpha", "beta", "gamma"]},
        },
        "required": ["name", "age", "tags", "address", "kind"],
        "additionalProperties": False,
    },
    "scalars": {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "b": {"type": "boolean"},
            "z": {"type": ["string", "null"]},
            "short": {"type": "string", "maxLength": 5},
        },
        "required": ["n", "x", "b"],
        "additionalProperties": False,
    },
    "list": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}},
                    "required": ["id"],
                    "additionalProperties": False,
                },
                "maxItems": 3,
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    },
    "tree": {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["v", "kids"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    },
    "counted": {  # bounds above program.LOOP_MIN: counted loops at run time
        "type": "object",
        "properties": {
            "s": {"type": "string", "minLength": 2, "maxLength": 40},
            "xs": {
                "type": "array",
                "items": {"type": "integer", "minimum": -9, "maximum": 99},
                "maxItems": 30,
            },
        },
        "required": ["s", "xs"],
        "additionalProperties": False,
    },
    "any_object": {"type": "object"},
}


@cache
def vocab() -> tuple[Tokenizer, TokenIndex]:
    with GGUFFile.open(smollm2_path()) as f:
        tok = Tokenizer.from_gguf(f.metadata)
    return tok, TokenIndex.from_tokenizer(tok)


@cache
def ll_tokenizer():
    tok, index = vocab()

    class Wrapped:
        tokens = list(index.token_bytes)
        eos_token_id = tok.eos_id
        bos_token_id = None
        special_token_ids = sorted(index.special_ids)

        def __call__(self, text):
            return tok.encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(Wrapped()), eos_token=sorted(index.stop_ids))


def _bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def _choose(mask: int, n: int, rng: random.Random) -> int:
    for _ in range(64):  # dense masks: rejection sampling
        i = rng.randrange(n)
        if mask >> i & 1:
            return i
    return rng.choice(_bits(mask))


def compare_walks(
    grammar: Grammar, ll_grammar: str, seeds: range, steps: int, stats: dict, integer: bool = False
) -> list[str]:
    """Walk both engines in lockstep; returns the texts. Differences outside the documented ones fail."""
    tok, index = vocab()
    single = {
        data[0]: i
        for i, data in enumerate(index.token_bytes)
        if len(data) == 1 and i not in index.special_ids
    }
    texts = []
    for seed in seeds:
        rng = random.Random(seed)
        ours = Matcher(grammar, index)
        theirs = llguidance.LLMatcher(ll_tokenizer(), ll_grammar, log_level=0)
        assert not theirs.is_error(), theirs.get_error()
        text = b""
        forced_tail: list[int] = []
        step = 0
        while True:
            a = int.from_bytes(theirs.compute_bitmask(), "little")
            o = ours.mask_int()
            stats["states"] += 1
            stats["tokens_compared"] += index.n_vocab
            if a != o:
                forced = theirs.compute_ff_bytes()
                for i in _bits(a ^ o):
                    data = index.token_bytes[i]
                    if o >> i & 1 and forced and forced.startswith(data):
                        stats["forced_prefix"] += 1
                    elif o >> i & 1 and b"\x7f" in data:
                        stats["del"] += 1
                    elif a >> i & 1 and text.endswith(b"-") and data.startswith(b"0") and integer:
                        stats["minus_zero"] += 1
                    else:
                        side = "ours only" if o >> i & 1 else "llguidance only"
                        raise AssertionError(f"after {text!r}: token {i} {data!r} allowed by {side}")
            both = a & o
            assert both, f"no common token after {text!r}"
            if step < steps:
                free = both & ~index.stop_mask  # stop only when nothing else is allowed
                t = _choose(free or both, index.n_vocab, rng)
            else:
                if not forced_tail:
                    from tests.unit._grammar_walk import shortest_completion

                    rest = shortest_completion(ours)
                    assert rest is not None
                    forced_tail = [single[b] for b in rest] + [min(index.stop_ids & set(_bits(both)) or {-1})]
                t = forced_tail.pop(0)
                if t < 0:  # already complete: take the stop token both allow
                    t = next(i for i in _bits(both) if i in index.stop_ids)
            step += 1
            assert ours.accept(t) and theirs.consume_token(t), (text, t)
            if t in index.stop_ids:
                break
            text += index.token_bytes[t]
        texts.append(text.decode("utf-8"))
    return texts


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_masks_match_llguidance(name):
    schema = SCHEMAS[name]
    stats = {"states": 0, "tokens_compared": 0, "forced_prefix": 0, "del": 0, "minus_zero": 0}
    ll_grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=LLG_JSON)
    integer = "integer" in json.dumps(schema)
    texts = compare_walks(Grammar.json_schema(schema), ll_grammar, range(5), 40, stats, integer)
    checker = jsonschema.Draft202012Validator(schema)
    for text in texts:
        checker.validate(json.loads(text))
    assert stats["states"] >= 30
    print(name, stats)


EBNF = r"""
root ::= expr ("=" expr)*
expr ::= term ([-+*/] term)*
term ::= num | "(" expr ")"
num  ::= [0-9]+
"""


def test_ebnf_and_regex_masks_match_llguidance():
    stats = {"states": 0, "tokens_compared": 0, "forced_prefix": 0, "del": 0, "minus_zero": 0}
    compare_walks(Grammar.ebnf(EBNF), llguidance.grammar_from("gbnf", EBNF), range(3), 30, stats)
    pattern = r"(yes|no|maybe): [a-z ]{1,12}\."
    compare_walks(Grammar.regex(pattern), llguidance.grammar_from("regex", pattern), range(3), 10, stats)
    print(stats)


def test_control_tokens_never_inside_strings():
    """xgrammar, given token strings, allows SmolLM2's 17 control tokens as string text (structured.md §2.2)."""
    tok, index = vocab()
    m = Matcher(Grammar.json_schema({"type": "object", "properties": {"name": {"type": "string"}}}), index)
    for t in tok.encode('{"name": "'):
        assert m.accept(t)
    allowed = m.mask_int()
    assert len(index.special_ids) == 17
    assert not any(allowed >> i & 1 for i in index.special_ids | index.stop_ids)
    assert bin(allowed).count("1") >= index.n_safe  # every safe token, plus those with escapes or a quote
