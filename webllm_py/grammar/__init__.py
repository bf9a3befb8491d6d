"""Structured output: constrain generation to a JSON Schema, any JSON object, an EBNF grammar or a regex.

Pure Python, no dependency, identical on every host (CPython desktop, Pyodide in the browser)::

    index = TokenIndex.from_tokenizer(tokenizer)            # once per tokenizer (tries built on first mask)
    grammar = Grammar.json_schema(schema)                   # once per schema (GrammarCache keeps them)
    matcher = Matcher(grammar, index)                       # once per request
    while not matcher.is_done():
        bitmask = matcher.mask()      # ceil(n_vocab / 32) little-endian u32 words; bit set = token allowed
        token = sample(logits, bitmask)
        matcher.accept(token)         # a stop token is allowed only where the grammar accepts

Pipeline: source -> IR (``ir.py``; ``schema.py``, ``ebnf.py``, ``regex.py``) -> one linked automaton
(``automaton.py``, ``program.py``) -> byte-level configs with a stack for recursion (``runtime.py``) -> token
masks over the model's own token bytes (``tokens.py``, ``matcher.py``). Errors: ``UnsupportedSchemaError``,
``InvalidGrammarError``, ``GrammarLimitError`` (all ``InvalidRequestError``).
"""

from ..errors import GrammarLimitError, InvalidGrammarError, UnsupportedSchemaError
from .grammar import Grammar, GrammarCache
from .matcher import Masker, Matcher
from .schema import FORMATS
from .tokens import TokenIndex

__all__ = [
    "FORMATS",
    "Grammar",
    "GrammarCache",
    "GrammarLimitError",
    "InvalidGrammarError",
    "Masker",
    "Matcher",
    "TokenIndex",
    "UnsupportedSchemaError",
]
