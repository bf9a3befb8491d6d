"""JSON numbers as IR: the unbounded syntax, integer ranges and decimal ranges.

Integers are written canonically (``0``, ``-12``; no ``-0``, no leading zeros); ``number`` follows JSON's syntax
(``-0.5``, ``1E+3``). A bounded ``number`` is written
without an exponent (``-3``, ``0.25``): ranges over exponent forms would need a much larger automaton and a
model gains nothing from ``2.5e-1``. Bounds may be any finite decimal, inclusive or exclusive.
"""

from __future__ import annotations

import math
from decimal import Decimal

from .automaton import from_node, product
from .ir import EMPTY, NOTHING, Chars, Embed, Lit, Node, Rep, alt, opt, seq, star

DIGIT = Chars([(0x30, 0x39)])
NONZERO = Chars([(0x31, 0x39)])
NATURAL = alt(Lit("0"), seq(NONZERO, star(DIGIT)))
INTEGER = alt(Lit("0"), seq(opt(Lit("-")), NONZERO, star(DIGIT)))  # no "-0": an integer has one spelling
NUMBER = seq(
    opt(Lit("-")),
    NATURAL,
    opt(seq(Lit("."), Rep(DIGIT, 1, None))),
    opt(
        seq(
            Chars([(0x45, 0x45), (0x65, 0x65)]), opt(Chars([(0x2B, 0x2B), (0x2D, 0x2D)])), Rep(DIGIT, 1, None)
        )
    ),
)


def _d(lo: int, hi: int) -> Node:
    return Chars([(0x30 + lo, 0x30 + hi)])


def _same_length(x: str, y: str) -> Node:
    """Digit strings of ``len(x)`` between ``x`` and ``y`` (inclusive, equal lengths, leading zeros allowed)."""
    if not x:
        return EMPTY
    if x == y:
        return Lit(x)
    if x[0] == y[0]:
        return seq(Lit(x[0]), _same_length(x[1:], y[1:]))
    n = len(x) - 1
    zeros, nines = "0" * n, "9" * n
    parts: list[Node] = []
    first, last = int(x[0]), int(y[0])
    if x[1:] != zeros:
        parts.append(seq(Lit(x[0]), _same_length(x[1:], nines)))
        first += 1
    mid_last = last if y[1:] == nines else last - 1
    if first <= mid_last:
        parts.append(seq(_d(first, mid_last), Rep(DIGIT, n, n)))
    if y[1:] != nines:
        parts.append(seq(Lit(y[0]), _same_length(zeros, y[1:])))
    return alt(*parts)


def natural_range(a: int, b: int | None) -> Node:
    """Canonical naturals ``a <= n <= b`` (``b=None``: no upper bound)."""
    if a < 0:
        a = 0
    if b is not None and a > b:
        return NOTHING
    la = len(str(a))
    lb = len(str(b)) if b is not None else la
    parts: list[Node] = []
    for length in range(la, lb + 1):
        lo = a if length == la else 10 ** (length - 1)
        hi = b if (b is not None and length == lb) else 10**length - 1
        parts.append(_same_length(str(lo), str(hi)))
    if b is None:
        parts.append(seq(NONZERO, Rep(DIGIT, la, None)))
    return alt(*parts)


def integer_range(lo: int | None, hi: int | None) -> Node:
    """Canonical integers ``lo <= n <= hi`` (None = unbounded)."""
    parts: list[Node] = []
    if lo is None or lo < 0:
        mag_lo = 1 if hi is None or hi >= 0 else -hi
        mag_hi = None if lo is None else -lo
        if mag_hi is None or mag_lo <= mag_hi:
            parts.append(seq(Lit("-"), natural_range(mag_lo, mag_hi)))
    if hi is None or hi >= 0:
        parts.append(natural_range(0 if lo is None else max(lo, 0), hi))
    return alt(*parts)


def integer_bounds(
    lo: Decimal | None, lo_excl: bool, hi: Decimal | None, hi_excl: bool
) -> tuple[int | None, int | None]:
    """Decimal bounds -> inclusive integer bounds."""
    ilo = None if lo is None else (math.floor(lo) + 1 if lo_excl else math.ceil(lo))
    ihi = None if hi is None else (math.ceil(hi) - 1 if hi_excl else math.floor(hi))
    return ilo, ihi


def _split(value: Decimal) -> tuple[int, str]:
    """A non-negative decimal as (integer part, fraction digits without trailing zeros)."""
    text = format(value, "f")
    whole, _, frac = text.partition(".")
    return int(whole), frac.rstrip("0")


_ANY_FRACTION = opt(seq(Lit("."), Rep(DIGIT, 1, None)))


def _fraction(digits: str, *, above: bool, strict: bool) -> Node:
    """The optional fraction ``.F`` of a magnitude whose integer part equals the bound's, with ``0.F >= 0.D``
    (``above``) or ``<= 0.D``, strictly if ``strict``."""
    any_digits = star(DIGIT)
    if above:
        if not digits:
            return seq(Lit("."), any_digits, NONZERO, any_digits) if strict else _ANY_FRACTION
        alts = [
            seq(Lit(digits[:i]), _d(int(digits[i]) + 1, 9), any_digits)
            for i in range(len(digits))
            if digits[i] != "9"
        ]
        alts.append(
            seq(Lit(digits), any_digits, NONZERO, any_digits) if strict else seq(Lit(digits), any_digits)
        )
        return seq(Lit("."), alt(*alts))
    if not digits:
        return NOTHING if strict else opt(seq(Lit("."), Rep(Lit("0"), 1, None)))
    alts = [
        seq(Lit(digits[:i]), _d(0, int(digits[i]) - 1), any_digits)
        for i in range(len(digits))
        if digits[i] != "0"
    ]
    alts.extend(Lit(digits[:i]) for i in range(1, len(digits)))
    if not strict:
        alts.append(seq(Lit(digits), star(Lit("0"))))
    return alt(EMPTY, seq(Lit("."), alt(*alts)))


def _magnitude_at_least(bound: Decimal, strict: bool) -> Node:
    whole, frac = _split(bound)
    return alt(
        seq(natural_range(whole + 1, None), _ANY_FRACTION),
        seq(Lit(str(whole)), _fraction(frac, above=True, strict=strict)),
    )


def _magnitude_at_most(bound: Decimal, strict: bool) -> Node:
    whole, frac = _split(bound)
    below = seq(natural_range(0, whole - 1), _ANY_FRACTION) if whole > 0 else NOTHING
    return alt(below, seq(Lit(str(whole)), _fraction(frac, above=False, strict=strict)))


def _magnitude(lo: Decimal, lo_strict: bool, hi: Decimal | None, hi_strict: bool) -> Node:
    """Magnitudes (no sign) ``lo <(=) m <(=) hi``, as one embedded DFA."""
    dfa = from_node(_magnitude_at_least(lo, lo_strict))
    if hi is not None:
        dfa = product(dfa, from_node(_magnitude_at_most(hi, hi_strict)))
    return NOTHING if dfa.is_empty() else Embed(dfa)


def number_range(lo: Decimal | None, lo_excl: bool, hi: Decimal | None, hi_excl: bool) -> Node:
    """Decimal numbers (no exponent) in the range; None bounds are open."""
    parts: list[Node] = []
    zero = Decimal(0)
    if hi is None or hi > zero or (hi == zero and not hi_excl):
        if lo is None or lo < zero:
            low, low_strict = zero, False
        else:
            low, low_strict = lo, lo_excl
        parts.append(_magnitude(low, low_strict, hi, hi_excl))
    if lo is None or lo < zero:
        # x < 0 is "-" and a magnitude m = -x > 0 with -hi <= m <= -lo.
        if hi is not None and hi < zero:
            low, low_strict = -hi, hi_excl
        else:
            low, low_strict = zero, True
        parts.append(seq(Lit("-"), _magnitude(low, low_strict, None if lo is None else -lo, lo_excl)))
    return alt(*parts)
