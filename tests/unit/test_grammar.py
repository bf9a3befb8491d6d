"""The grammar engine on a hand-made vocabulary: automata, masks (trie + safe slice vs brute force), the
matcher's API, EBNF and regex sources, typed errors, the lazy (tool-call) mode."""

from __future__ import annotations

import itertools
import random

import pytest

from tests.unit._grammar_walk import brute_mask, random_walk, small_index, small_vocab
from webllm_py.errors import GrammarLimitError, InvalidGrammarError, InvalidRequestError
from webllm_py.grammar import Grammar, GrammarCache, Matcher, TokenIndex


@pytest.fixture(scope="module")
def index() -> TokenIndex:
    return small_index()


# ---- regex ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        (r"[0-9]{5}", ["12345"], ["1234", "123456", "abcde", ""]),
        (r"a|bc*", ["a", "b", "bccc"], ["ab", ""]),
        (r"(?:ab)+x?", ["ab", "ababx"], ["abx x", "a"]),
        (r"[^a-c]é\d", ["dé1", "€é9"], ["aé1", "dé"]),
        (r"\u00e9|\u{1F600}|\x41", ["é", "😀", "A"], ["e", "\\u00e9"]),
        (r"\w+\s\W", ["ab_1 -"], ["ab x", "-  "]),
        (r"^x{2,3}$", ["xx", "xxx"], ["x", "xxxx"]),
        (r".+", ["a", "é😀"], ["", "\n"]),
        (r"(?<year>\d{4})-\d{2}", ["2024-01"], ["24-01"]),
        (r"[\]\-a]+", ["]-a"], ["b"]),
        (r"a{,2}", ["a{,2}"], ["a"]),  # ECMAScript: not a quantifier
    ],
)
def test_regex_language(pattern, yes, no):
    g = Grammar.regex(pattern)
    for text in yes:
        assert g.matches(text), (pattern, text)
    for text in no:
        assert not g.matches(text), (pattern, text)


@pytest.mark.parametrize(
    ("pattern", "column", "words"),
    [
        ("(?=a)b", 2, "lookaround"),
        (r"(a)\1", 4, "backreference"),
        ("a**", 3, "quantifier cannot follow"),
        ("[z-a]", 3, "out of order"),
        ("(ab", 1, "missing ')'"),
        (r"\bword", 1, "word boundar"),
        ("a^b", 2, "'^' is only supported"),
        ("a$b", 2, "'$' is only supported"),
        ("x{3,1}", 2, "below the minimum"),
        ("a++", 3, "possessive"),
    ],
)
def test_regex_errors_name_the_place(pattern, column, words):
    with pytest.raises(InvalidGrammarError) as e:
        Grammar.regex(pattern)
    assert e.value.kind == "regex" and e.value.column == column and words in str(e.value)
    assert isinstance(e.value, InvalidRequestError)


# ---- EBNF -----------------------------------------------------------------------------------------------------

ARITH = r"""
# arithmetic, as in xgrammar's docs
root ::= expr ("=" expr)*
expr ::= term ([-+*/] term)*
term ::= num | "(" expr ")"
num  ::= [0-9]+
"""


def test_ebnf_recursive_grammar():
    g = Grammar.ebnf(ARITH)
    assert not g.regular
    for text in ["1+2", "(3*4)-5=7", "2=2=2", "((((1))))"]:
        assert g.matches(text)
    for text in ["(1+", "1+", "()", "1==2", "((1)"]:
        assert not g.matches(text)


def test_ebnf_syntax_forms():
    g = Grammar.ebnf(
        """root ::= greeting " " name{1,2} tail?
        greeting ::= ("hi" | 'hello' | "\\x48\\u0069") ","
        name::=[A-Z] [a-z-]* "."
        tail ::= [^\\n]{,3} | .
        """
    )
    assert g.matches("hi, Ann.")
    assert g.matches("Hi, Ann.Bo-b.xyz")
    assert not g.matches("hi, Ann.Bob.Cyyyy.")
    assert not g.matches("hey, Ann.")


def test_ebnf_gbnf_json_grammar_from_llama_cpp_style():
    g = Grammar.ebnf(
        r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws
array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws
string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
  )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-7]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
"""
    )
    assert g.matches('{"a": [1, 2.5, {"b": null}], "c": "x\\"y"}')
    assert not g.matches('{"a": [1, 2.5, {"b": null}], "c": "x\\"y"')


def test_ebnf_left_recursion():
    g = Grammar.ebnf('root ::= root "a" | "b"')
    assert g.matches("baaa") and not g.matches("ab")
    with pytest.raises(InvalidGrammarError, match="left-recursive"):
        Grammar.ebnf('root ::= a "x"\na ::= root "y" | "z"')


def test_ebnf_regex_macro():
    g = Grammar.ebnf('root ::= "id=" Regex("[0-9]{3}") ";"')
    assert g.matches("id=123;") and not g.matches("id=12;")


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ('root ::= "a" b', 1, 14, "'b' is not defined"),
        ('root ::= "a"\nroot ::= "b"', 2, 1, "defined twice"),
        ('start ::= "a"', None, None, "no rule named 'root'"),
        ('root ::= "a\n"', 1, 10, "unterminated string"),
        ("root ::= [a-", 1, 10, "unterminated character class"),
        ('root ::= ("a"', 1, 10, "missing ')'"),
        ('root ::= "a" (= "b")', 1, 14, "lookahead"),
        ('root[max_tokens=3] ::= "a"', 1, 5, "rule options"),
        ('root ::= "a"++', 1, 14, "two repetition operators"),
        ('root ::= TagDispatch(("<t>", a))\na ::= "x"', 1, 10, "TagDispatch"),
        ('root ::= "\\q"', 1, 11, "unknown escape"),
        ("root ::= [\\d]", 1, 11, "not supported"),
        ('root ::= "a"{3,1}', 1, 13, "below the minimum"),
        ('root ::= x\nx ::= "a" x', None, None, "matches no string"),
        ("root ::= <[100]>", 1, 10, "token references"),
    ],
)
def test_ebnf_errors_name_line_and_column(text, line, column, words):
    with pytest.raises(InvalidGrammarError) as e:
        Grammar.ebnf(text)
    assert words in str(e.value)
    assert (e.value.line, e.value.column) == (line, column)


# ---- masks ----------------------------------------------------------------------------------------------------

SOURCES = [
    lambda: Grammar.json_object(),
    lambda: Grammar.json_schema(
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 6},
                "tags": {"type": "array", "items": {"enum": ["ab", "é", 3]}, "maxItems": 3},
                "n": {"type": "number", "minimum": -1.5, "exclusiveMaximum": 20},
            },
            "required": ["name"],
        }
    ),
    lambda: Grammar.ebnf(ARITH),
    lambda: Grammar.regex(r"(ab|\u00e9)+ [0-9]{2,4}"),
    lambda: Grammar.json_schema({"type": "string", "pattern": "^[a-z]*é$"}),
]


@pytest.mark.parametrize("make", SOURCES)
def test_masks_equal_brute_force_on_random_walks(index, make):
    grammar = make()
    checked = 0

    def check(m: Matcher) -> None:
        nonlocal checked
        assert m.mask_int() == brute_mask(m), m._config
        checked += 1

    for seed in range(6):
        m = Matcher(grammar, index)
        text = random_walk(m, random.Random(seed), 25, check)
        assert grammar.matches(text), text
        text.decode("utf-8")  # never partial or invalid UTF-8 at accept
    assert checked > 60


def test_bitmask_layout_and_width(index):
    m = Matcher(Grammar.regex("ab"), index)
    mask = m.mask()
    assert len(mask) == 4 * ((index.n_vocab + 31) // 32)
    allowed = {i for i in range(index.n_vocab) if mask[i // 32 * 4 + (i % 32) // 8] >> (i % 8) & 1}
    tokens = index.token_bytes
    assert allowed == {i for i, t in enumerate(tokens) if t in (b"a", b"ab")}  # both "ab" ids (duplicates)
    assert not any(i >= len(tokens) for i in allowed)  # padded logits width: never allowed


def test_special_tokens_never_and_stop_only_when_accepting(index):
    g = Grammar.json_schema({"type": "string"})
    m = Matcher(g, index)
    assert m.accept(index.token_bytes.index(b'"'))
    inside = m.mask_int()
    assert not inside & 0b111  # <|im_start|>, <|im_end|> (stop), <s>: not inside a string
    assert not m.accepts_eos() and not m.accept(1)
    assert m.accept(index.token_bytes.index(b'"'))
    assert m.accepts_eos() and m.is_done() and m.mask_int() == 1 << 1
    assert m.accept(1) and m.mask_int() == 0


def test_partial_utf8_is_accepted_but_never_completes(index):
    m = Matcher(Grammar.json_schema({"type": "string", "maxLength": 1}), index)
    assert m.accept(index.token_bytes.index(b'"'))
    assert m.accept(index.token_bytes.index(b"\xf0\x9f"))  # half of 😀
    assert not m.is_allowed(index.token_bytes.index(b'"'))  # cannot close inside the character
    assert not m.is_allowed(index.token_bytes.index(b"a"))
    assert m.accept(index.token_bytes.index(b"\x98\x80"))
    assert m.accept(index.token_bytes.index(b'"')) and m.accepts_eos()


def test_accept_rollback_reset(index):
    g = Grammar.regex("abc|abd")
    m = Matcher(g, index)
    ids = {t: i for i, t in enumerate(index.token_bytes)}
    assert m.accept(ids[b"ab"]) and not m.accept(ids[b"x"])
    assert m.accept(ids[b"c"]) and m.accepts_eos()
    m.rollback(1)
    assert not m.accepts_eos() and m.accept(ids[b"d"]) and m.accepts_eos()
    m.rollback(2)
    assert m.mask_int() == Matcher(g, index).mask_int()
    with pytest.raises(ValueError):
        m.rollback(1)
    m.accept(ids[b"a"])
    m.reset()
    assert m.is_allowed(ids[b"ab"])


def test_lazy_trigger_text(index):
    g = Grammar.regex("<call>[0-9]+</call>")
    m = Matcher(g, index, triggers=[b"<call>"])
    ids = {t: i for i, t in enumerate(index.token_bytes)}
    assert not m.armed and m.mask_int() == index.all_mask
    for ch in b"hi <ca":
        assert m.accept(ids[bytes([ch])])
    assert not m.armed
    assert m.accept(ids[b"l"]) and m.accept(ids[b"l"]) and m.accept(ids[b">"])
    assert m.armed and m.is_allowed(ids[b"7"]) and not m.is_allowed(ids[b"x"])
    m.rollback(1)
    assert not m.armed


def test_lazy_trigger_token(index):
    g = Grammar.json_schema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    m = Matcher(g, index, trigger_ids=[0])
    assert m.accept(index.token_bytes.index(b"z")) and not m.armed
    assert m.accept(0) and m.armed
    assert m.is_allowed(index.token_bytes.index(b'{"')) and not m.is_allowed(index.token_bytes.index(b"z"))


def test_token_index_validation():
    with pytest.raises(InvalidRequestError, match="n_vocab"):
        TokenIndex([b"a", b"b"], n_vocab=1)
    with pytest.raises(InvalidRequestError, match="stop_ids"):
        TokenIndex([b"a"], stop_ids=[5])
    tokens, special, stop = small_vocab()
    idx = TokenIndex(tokens, special_ids=special, stop_ids=stop).ensure_built()
    assert idx.n_safe == sum(1 for t in tokens[3:] if _safe(t))


def _safe(t: bytes) -> bool:
    """Whole safe characters, possibly cut inside one more (checked by completing it)."""
    for cut in range(len(t), max(-1, len(t) - 4), -1):
        try:
            head = t[:cut].decode()
        except UnicodeDecodeError:
            continue
        if not all(c not in '"\\' and ord(c) >= 0x20 for c in head):
            return False
        rest = t[cut:]
        if not rest:
            return True
        # A proper prefix of one character: some completion by continuation bytes decodes (these four cover
        # every lead byte's allowed second-byte range).
        for n in range(1, 4):
            for tail in itertools.product(b"\x80\x90\xa0\xbf", repeat=n):
                try:
                    (rest + bytes(tail)).decode()
                    return True
                except UnicodeDecodeError:
                    pass
        return False
    return False


def test_limits_are_typed_errors(monkeypatch):
    from webllm_py.grammar import automaton

    monkeypatch.setattr(automaton, "MAX_DFA_STATES", 50)
    with pytest.raises(GrammarLimitError) as e:
        Grammar.regex("[ab]{20}x[ab]{20}y[ab]{20}")
    assert e.value.limit == 50 and "50" in str(e.value)
    monkeypatch.setattr(automaton, "MAX_NFA_STATES", 100)
    with pytest.raises(GrammarLimitError):
        Grammar.ebnf('root ::= ("abc" | "d"){20}')


def test_large_counts_are_counted_loops_not_copies():
    g = Grammar.json_schema({"type": "string", "minLength": 2, "maxLength": 2000})
    assert g.program.n_states < 50 and not g.regular
    assert g.matches('"' + "é" * 2000 + '"') and not g.matches('"' + "a" * 2001 + '"')
    assert not g.matches('"a"') and g.matches('"ab"')
    e = Grammar.ebnf('root ::= ("ab" | "c"){3,100} "!"')
    assert e.matches("abcab!") and e.matches("c" * 100 + "!") and not e.matches("c" * 101 + "!")
    assert not e.matches("cc!")


def test_grammar_cache_lru():
    cache = GrammarCache(size=2)
    a, b, c = (cache.put(Grammar.regex(p)) for p in ("a", "b", "c"))
    assert cache.get(a.key) is None and cache.get(b.key) is b and cache.get(c.key) is c
