"""Build small GGUF files byte by byte for tests (independent of the reader under test)."""

from __future__ import annotations

import struct

TYPE_IDS = {
    "u8": 0,
    "i8": 1,
    "u16": 2,
    "i16": 3,
    "u32": 4,
    "i32": 5,
    "f32": 6,
    "bool": 7,
    "str": 8,
    "arr": 9,
    "u64": 10,
    "i64": 11,
    "f64": 12,
}
FMT = {
    "u8": "<B",
    "i8": "<b",
    "u16": "<H",
    "i16": "<h",
    "u32": "<I",
    "i32": "<i",
    "f32": "<f",
    "bool": "<?",
    "u64": "<Q",
    "i64": "<q",
    "f64": "<d",
}


def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def value(kind: str, v) -> bytes:
    if kind == "str":
        return gguf_string(v)
    if kind.startswith("arr:"):
        item = kind[4:]
        body = b"".join(value(item, x) for x in v)
        return struct.pack("<IQ", TYPE_IDS[item], len(v)) + body
    return struct.pack(FMT[kind], v)


def build_gguf(
    metadata: list[tuple[str, str, object]],
    tensors: list[tuple[str, tuple[int, ...], int, bytes]],
    *,
    version: int = 3,
    alignment: int = 32,
    magic: bytes = b"GGUF",
) -> bytes:
    """metadata: (key, kind, value) with kind like "u32", "str", "arr:str"; tensors: (name, shape, ggml type, data)."""
    out = bytearray(magic + struct.pack("<IQQ", version, len(tensors), len(metadata)))
    for key, kind, v in metadata:
        type_id = TYPE_IDS["arr"] if kind.startswith("arr:") else TYPE_IDS[kind]
        out += gguf_string(key) + struct.pack("<I", type_id) + value(kind, v)
    offset = 0
    placed = []
    for name, shape, ggml_type, data in tensors:
        out += gguf_string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
        out += struct.pack("<IQ", ggml_type, offset)
        placed.append((offset, data))
        offset += -(-len(data) // alignment) * alignment
    out += bytes(-len(out) % alignment)
    base = len(out)
    for off, data in placed:
        out += bytes(base + off - len(out)) + data
    return bytes(out)
