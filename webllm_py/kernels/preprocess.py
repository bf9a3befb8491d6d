"""A small WGSL preprocessor: one source file per op family, variants by defines.

Directives (each on its own line, ``#`` first after optional spaces):

    #include "common.wgsl"     paste another file from shaders/ (once per file)
    #ifdef NAME / #ifndef NAME / #else / #endif     keep or drop lines by whether NAME is defined
    #if NAME == VALUE / #if NAME != VALUE           compare a define's value (as text); `A == X || B == Y`: any

Every define ``NAME -> value`` also replaces the identifier ``NAME`` in kept lines (whole words only), so a shader
can write ``@workgroup_size(WG)`` or ``array<KV_T>``. Per-host lines (``enable f16;``, ``enable subgroups;``) are
emitted here from the define set and the device's needs, never written in a shader.
"""

from __future__ import annotations

import re
from pathlib import Path

_PACKAGE_SHADERS = Path(__file__).resolve().parent.parent / "shaders"  # installed wheel: webllm_py/shaders/
_SOURCE_SHADERS = Path(__file__).resolve().parents[2] / "shaders"  # source checkout: <repo>/shaders/


def shader_dir() -> Path:
    for d in (_PACKAGE_SHADERS, _SOURCE_SHADERS):
        if d.is_dir() and any(d.glob("*.wgsl")):
            return d
    raise FileNotFoundError(f"no WGSL shaders found in {_PACKAGE_SHADERS} or {_SOURCE_SHADERS}")


_source_cache: dict[str, str] = {}


def load_source(name: str) -> str:
    if name not in _source_cache:
        _source_cache[name] = (shader_dir() / name).read_text(encoding="utf-8")
    return _source_cache[name]


class PreprocessError(ValueError):
    pass


_DIRECTIVE = re.compile(r"^\s*#(include|ifdef|ifndef|if|else|endif)\b\s*(.*?)\s*$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def preprocess(
    name: str,
    defines: dict[str, object],
    *,
    enable_subgroups_directive: bool = False,
    sources: dict[str, str] | None = None,
) -> str:
    """Expand shader ``name`` with ``defines``. ``sources`` overrides file loading (for tests)."""
    defs = {k: str(v) for k, v in defines.items()}
    out: list[str] = []
    if "F16" in defs:
        out.append("enable f16;")
    if "SUBGROUPS" in defs and enable_subgroups_directive:
        out.append("enable subgroups;")
    included: set[str] = set()

    def get(src_name: str) -> str:
        if sources is not None and src_name in sources:
            return sources[src_name]
        return load_source(src_name)

    def expand(src_name: str) -> None:
        included.add(src_name)
        stack: list[tuple[bool, bool]] = []  # (this branch active, parent active)
        active = True
        for lineno, line in enumerate(get(src_name).splitlines(), 1):
            m = _DIRECTIVE.match(line)
            if m is None:
                if active:
                    out.append(_substitute(line, defs))
                continue
            kind, arg = m.groups()
            where = f"{src_name}:{lineno}"
            if kind == "include":
                if active:
                    inc = arg.strip('"')
                    if inc not in included:
                        expand(inc)
            elif kind in ("ifdef", "ifndef", "if"):
                cond = _condition(kind, arg, defs, where)
                stack.append((cond, active))
                active = active and cond
            elif kind == "else":
                if not stack:
                    raise PreprocessError(f"{where}: #else without #if")
                cond, parent = stack[-1]
                stack[-1] = (not cond, parent)
                active = parent and not cond
            elif kind == "endif":
                if not stack:
                    raise PreprocessError(f"{where}: #endif without #if")
                _, active = stack.pop()
        if stack:
            raise PreprocessError(f"{src_name}: {len(stack)} unterminated #if block(s)")

    expand(name)
    return "\n".join(out) + "\n"


def _condition(kind: str, arg: str, defs: dict[str, str], where: str) -> bool:
    if kind == "ifdef":
        return arg in defs
    if kind == "ifndef":
        return arg not in defs
    result = False
    for term in arg.split("||"):  # any of several comparisons
        m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(==|!=)\s*(\S+)\s*", term)
        if m is None:
            raise PreprocessError(
                f"{where}: #if wants `NAME == VALUE` or `NAME != VALUE` (joined by ||), got {arg!r}"
            )
        name, op, value = m.groups()
        equal = defs.get(name) == value
        result = result or (equal if op == "==" else not equal)
    return result


def _substitute(line: str, defs: dict[str, str]) -> str:
    if not defs:
        return line
    return _WORD.sub(lambda m: defs.get(m.group(0), m.group(0)), line)


def variant_key(name: str, defines: dict[str, object]) -> str:
    """A readable, stable name for a variant: keys the pipeline cache and labels the pipeline."""
    parts = [name.removesuffix(".wgsl")]
    for k in sorted(defines):
        v = defines[k]
        parts.append(k if v == "" or v is True else f"{k}={v}")
    return ":".join(parts)
