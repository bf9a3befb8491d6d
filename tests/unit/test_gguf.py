"""GGUF reader: good files parse; truncated, corrupt and unsupported files raise GGUFError naming file and offset."""

from __future__ import annotations

import struct

import pytest

from webllm_py.errors import GGUFError
from webllm_py.model.gguf import GGUFFile
from webllm_py.model.quant import GGMLType, dequantize_row

from .gguf_builder import build_gguf

F32_ROW = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
META = [
    ("general.architecture", "str", "llama"),
    ("llama.block_count", "u32", 2),
    ("llama.rope.freq_base", "f32", 10000.0),
    ("tokenizer.ggml.tokens", "arr:str", ["<s>", "a", "b", "ü"]),
    ("tokenizer.ggml.scores", "arr:f32", [0.0, -1.0, -2.0, -3.0]),
    ("flag", "bool", True),
    ("big", "u64", 1 << 40),
]


def good() -> bytes:
    q8 = struct.pack("<e", 0.5) + bytes(range(32))
    return build_gguf(META, [("norm.weight", (4,), 0, F32_ROW), ("w.weight", (32, 2), 8, q8 + q8)])


def test_parses_metadata_and_tensors():
    g = GGUFFile.from_bytes("good.gguf", good())
    assert g.version == 3
    assert g.metadata["llama.block_count"] == 2
    assert g.metadata["tokenizer.ggml.tokens"] == ["<s>", "a", "b", "ü"]
    assert g.metadata["flag"] is True and g.metadata["big"] == 1 << 40
    assert g.metadata["llama.rope.freq_base"] == pytest.approx(10000.0)
    t = g.tensor("w.weight")
    assert t.shape == (32, 2) and t.ggml_type == GGMLType.Q8_0 and t.nbytes == 68 and t.n_rows == 2
    assert t.offset % 32 == 0
    assert dequantize_row(GGMLType.F32, g.tensor_bytes("norm.weight")) == [1.0, -2.0, 0.5, 3.25]
    assert dequantize_row(GGMLType.Q8_0, g.tensor_bytes("w.weight", 34, 34))[:3] == [0.0, 0.5, 1.0]


def raises(data: bytes, *fragments: str) -> GGUFError:
    with pytest.raises(GGUFError) as info:
        GGUFFile.from_bytes("bad.gguf", data)
    msg = str(info.value)
    assert msg.startswith("bad.gguf: at byte offset "), msg
    for f in fragments:
        assert f in msg, msg
    return info.value


def test_not_a_gguf():
    e = raises(b"PK\x03\x04" + bytes(100), "magic bytes b'GGUF'")
    assert e.offset == 0


def test_bad_version():
    raises(build_gguf(META, [], version=7), "GGUF version 2 or 3", "found 7")


@pytest.mark.parametrize("cut", [3, 10, 30, 200, -40, -1])
def test_truncated_anywhere(cut):
    data = good()
    raises(data[:cut] if cut > 0 else data[:cut], "truncated")


def test_unsupported_tensor_type_names_it():
    data = build_gguf(META, [("q2k.weight", (256, 1), 10, bytes(84))])
    e = raises(
        data, "'q2k.weight'", "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K", "type id 10"
    )
    assert e.offset > 0


@pytest.mark.parametrize(
    "ggml_type,block_bytes",
    [
        (GGMLType.Q5_0, 22),
        (GGMLType.Q5_1, 24),
        (GGMLType.Q4_K, 144),
        (GGMLType.Q5_K, 176),
        (GGMLType.Q6_K, 210),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_k_quant_and_q5_tensors_parse_and_rows_must_be_whole_blocks(ggml_type, block_bytes):
    block = 256 if ggml_type.name.endswith("_K") else 32
    data = build_gguf(META, [("w.weight", (2 * block, 3), int(ggml_type), bytes(6 * block_bytes))])
    t = GGUFFile.from_bytes("k.gguf", data).tensor("w.weight")
    assert (t.ggml_type, t.n_rows, t.row_bytes, t.nbytes) == (ggml_type, 3, 2 * block_bytes, 6 * block_bytes)
    short = build_gguf(META, [("w.weight", (block // 2, 3), int(ggml_type), bytes(3 * block_bytes))])
    raises(
        short, f"row length of 'w.weight' to be a multiple of {block} for {ggml_type.name}", str(block // 2)
    )


def test_bf16_tensor_parses_and_dequantizes():
    data = build_gguf(META, [("n.weight", (4,), 30, bytes.fromhex("803f 00c0 003f 5040".replace(" ", "")))])
    g = GGUFFile.from_bytes("bf16.gguf", data)
    assert dequantize_row(GGMLType.BF16, g.tensor_bytes("n.weight")) == [1.0, -2.0, 0.5, 3.25]


def test_unknown_metadata_type():
    data = bytearray(build_gguf([("k", "u32", 1)], []))
    data[24 + 8 + 1 : 24 + 8 + 1 + 4] = struct.pack("<I", 99)  # the value type of key "k"
    raises(bytes(data), "known metadata value type")


def test_absurd_string_length():
    data = bytearray(build_gguf([("k", "str", "v")], []))
    data[24 : 24 + 8] = struct.pack("<Q", 1 << 62)  # the key's length
    raises(bytes(data), "string length")


def test_row_not_multiple_of_block():
    raises(build_gguf(META, [("w.weight", (33, 1), 8, bytes(34))]), "multiple of 32")


def test_misaligned_data_offset():
    data = bytearray(build_gguf([], [("n.weight", (4,), 0, F32_ROW)]))
    pos = data.index(b"n.weight") + len(b"n.weight") + 4 + 8 + 4
    data[pos : pos + 8] = struct.pack("<Q", 3)
    raises(bytes(data), "aligned to 32")


def test_missing_file_names_path(tmp_path):
    with pytest.raises(GGUFError, match="nope.gguf"):
        GGUFFile.open(tmp_path / "nope.gguf")


def test_typed_metadata_getters_name_the_key_and_the_range():
    from webllm_py.errors import GGUFMetadataError

    data = build_gguf(
        [
            ("n", "u32", 7),
            ("neg", "i32", -3),
            ("x", "f32", float("nan")),
            ("s", "str", "abc"),
            ("flag", "bool", True),
            ("arr", "arr:i32", [1, 2, 3]),
        ],
        [],
    )
    g = GGUFFile.from_bytes("m.gguf", data)
    assert g.get_int("n", min=1) == 7
    assert g.get_int("missing", 5) == 5
    assert g.get_array("arr", int) == [1, 2, 3]
    assert g.get_str("s") == "abc" and g.get_bool("flag") is True
    for call, words in [
        (lambda: g.get_int("neg", min=1), "'neg' to be an integer in [1,"),
        (lambda: g.get_int("s"), "found string 'abc'"),
        (lambda: g.get_int("flag"), "found bool"),
        (lambda: g.get_float("x"), "a finite number"),
        (lambda: g.get_float("n", max=1.0), "found 7.0"),
        (lambda: g.get_str("n"), "a string"),
        (lambda: g.get_array("arr", str), "an array of str"),
        (lambda: g.get_int("absent"), "'absent' to be present"),
    ]:
        with pytest.raises(GGUFMetadataError, match=None) as info:
            call()
        assert words in str(info.value), (words, str(info.value))
