"""The WGSL preprocessor and the Params structs: packing order and size match the shaders."""

from __future__ import annotations

import re

import pytest

from webllm_py.kernels import params
from webllm_py.kernels.preprocess import PreprocessError, load_source, preprocess, variant_key


def wgsl_struct_fields(source: str, name: str) -> list[tuple[str, str]]:
    body = re.search(r"struct\s+" + name + r"\s*\{(.*?)\}", source, re.S).group(1)
    fields = []
    for line in body.splitlines():
        line = line.split("//")[0].strip().rstrip(",")
        if line:
            field, kind = (p.strip() for p in line.split(":"))
            fields.append((field, kind))
    return fields


@pytest.mark.parametrize("spec", params.ALL, ids=lambda s: s.shader)
def test_params_match_wgsl_struct(spec):
    assert wgsl_struct_fields(load_source(spec.shader), "Params") == list(spec.fields)
    packed = spec.pack()
    assert len(packed) == spec.size + (-spec.size % 16) and len(packed) % 16 == 0


def test_state_matches_common_wgsl():
    assert wgsl_struct_fields(load_source("common.wgsl"), "State") == list(params.STATE_FIELDS)
    assert len(params.pack_state(1, 2, 3)) == 16


def test_pack_rejects_unknown_field():
    with pytest.raises(KeyError, match="no field"):
        params.MATMUL.pack(n_rowz=3)


SOURCES = {
    "main.wgsl": '#include "inc.wgsl"\n#ifdef A\nlet a = X;\n#else\nlet b = X;\n#endif\n#if MODE == fast\nfast();\n#endif\n',
    "inc.wgsl": "const SIZE: u32 = WG;\n",
}


def test_preprocess_defines_includes_and_branches():
    out = preprocess("main.wgsl", {"A": 1, "X": "7u", "WG": 64, "MODE": "fast"}, sources=SOURCES)
    assert "const SIZE: u32 = 64;" in out and "let a = 7u;" in out and "let b" not in out and "fast();" in out
    out = preprocess("main.wgsl", {"X": "1", "WG": 8, "MODE": "slow"}, sources=SOURCES)
    assert "let b = 1;" in out and "let a" not in out and "fast();" not in out


def test_preprocess_if_any_of_several_comparisons():
    src = {"k.wgsl": "#if SRC == A || SRC == B\nab();\n#else\nother();\n#endif\n"}
    assert "ab();" in preprocess("k.wgsl", {"SRC": "B"}, sources=src)
    assert "other();" in preprocess("k.wgsl", {"SRC": "C"}, sources=src)
    assert "ab();" in preprocess("k.wgsl", {"SRC": "A"}, sources=src)
    with pytest.raises(PreprocessError, match="joined by"):
        preprocess("k.wgsl", {}, sources={"k.wgsl": "#if SRC == A ||\n#endif\n"})


def test_preprocess_emits_enables_per_host():
    src = {"k.wgsl": "fn f() {}\n"}
    assert preprocess("k.wgsl", {"F16": 1, "SUBGROUPS": 1}, sources=src).startswith("enable f16;\nfn")
    browser = preprocess("k.wgsl", {"SUBGROUPS": 1}, enable_subgroups_directive=True, sources=src)
    assert browser.startswith("enable subgroups;\n")


def test_preprocess_errors():
    with pytest.raises(PreprocessError, match="unterminated"):
        preprocess("x.wgsl", {}, sources={"x.wgsl": "#ifdef A\n"})
    with pytest.raises(PreprocessError, match="#endif without"):
        preprocess("x.wgsl", {}, sources={"x.wgsl": "#endif\n"})


def test_variant_key_is_stable():
    assert variant_key("matmul.wgsl", {"WG": 64, "GEMV": 1, "A": ""}) == "matmul:A:GEMV=1:WG=64"
