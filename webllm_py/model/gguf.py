"""GGUF reader in pure Python (``struct`` only): header, metadata, tensor table, tensor bytes by offset.

Layout (all little-endian), from ggml's ``docs/gguf.md``:

    magic "GGUF" | version u32 (2 or 3) | tensor_count u64 | kv_count u64
    kv_count x  (key: string, value_type: u32, value)
    tensor_count x  (name: string, n_dims: u32, dims: u64 x n_dims, ggml_type: u32, offset: u64)
    padding to ``general.alignment`` (default 32)
    tensor data; each tensor's ``offset`` is relative to the start of this section

A string is ``u64 length + UTF-8 bytes``; an array is ``item_type u32 + count u64 + items``.

Every failure raises :class:`~webllm_py.errors.GGUFError` naming the source, the byte offset and what was
expected there. The reader never loads tensor data it was not asked for: metadata is read through a small
window that grows as needed, so a 5 GB file costs a few MB to open.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import GGUFError, GGUFMetadataError
from .quant import QUANT_FORMATS, SUPPORTED_TYPE_NAMES, GGMLType, tensor_nbytes

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Refuse absurd counts early (a corrupt header would otherwise make us allocate for days).
MAX_STRING_BYTES = 64 << 20
MAX_ARRAY_ITEMS = 1 << 26
MAX_DIMS = 4

# GGUF metadata value types.
(
    _UINT8,
    _INT8,
    _UINT16,
    _INT16,
    _UINT32,
    _INT32,
    _FLOAT32,
    _BOOL,
    _STRING,
    _ARRAY,
    _UINT64,
    _INT64,
    _FLOAT64,
) = range(13)
_SCALAR_FORMATS = {
    _UINT8: "<B",
    _INT8: "<b",
    _UINT16: "<H",
    _INT16: "<h",
    _UINT32: "<I",
    _INT32: "<i",
    _FLOAT32: "<f",
    _BOOL: "<?",
    _UINT64: "<Q",
    _INT64: "<q",
    _FLOAT64: "<d",
}
_TYPE_NAMES = {
    _UINT8: "uint8",
    _INT8: "int8",
    _UINT16: "uint16",
    _INT16: "int16",
    _UINT32: "uint32",
    _INT32: "int32",
    _FLOAT32: "float32",
    _BOOL: "bool",
    _STRING: "string",
    _ARRAY: "array",
    _UINT64: "uint64",
    _INT64: "int64",
    _FLOAT64: "float64",
}


# A source of bytes: read(offset, size) -> bytes (may return fewer bytes only at the end of the data).
ReadAt = Callable[[int, int], bytes]
AsyncReadAt = Callable[[int, int], Awaitable[bytes]]
# How much of an asynchronous source is fetched to parse the header (metadata and tensor table) from; it grows
# when a header is bigger (large vocabularies take several MB).
HEADER_PREFETCH = 8 << 20
_MISSING: Any = object()  # typed metadata getters: no default given, the key is required


class ByteSource:
    """Random access to the bytes of a GGUF file: a local path, in-memory bytes (downloaded, or built in tests), or
    browser storage. A source reads synchronously (``read_at``), or only asynchronously (``read_at_async``: the
    Cache API and IndexedDB have no synchronous reads); open the latter with ``GGUFFile.open_async``."""

    def __init__(
        self,
        name: str,
        size: int,
        read_at: ReadAt | None = None,
        *,
        read_at_async: AsyncReadAt | None = None,
        close: Callable[[], None] | None = None,
    ):
        if read_at is None and read_at_async is None:
            raise ValueError("a ByteSource needs read_at or read_at_async")
        self.name = name
        self.size = size
        self._read_at = read_at
        self._read_at_async = read_at_async
        self._close = close

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> ByteSource:
        path = os.fspath(path)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - kept open for the life of the model
        except OSError as exc:
            raise GGUFError(path, 0, "a readable file", f"{type(exc).__name__}: {exc.strerror}") from exc
        size = os.fstat(fh.fileno()).st_size

        def read_at(offset: int, n: int) -> bytes:
            fh.seek(offset)
            return fh.read(n)

        return cls(path, size, read_at, close=fh.close)

    @classmethod
    def from_bytes(cls, name: str, data: bytes | bytearray | memoryview) -> ByteSource:
        view = memoryview(data)
        return cls(name, len(view), lambda offset, n: bytes(view[offset : offset + n]))

    @property
    def is_sync(self) -> bool:
        return self._read_at is not None

    def read(self, offset: int, n: int) -> bytes:
        if self._read_at is None:
            raise TypeError(
                f"{self.name} can only be read asynchronously: use read_async / GGUFFile.open_async"
            )
        return self._read_at(offset, n)

    async def read_async(self, offset: int, n: int) -> bytes:
        if self._read_at_async is not None:
            return await self._read_at_async(offset, n)
        return self._read_at(offset, n)  # type: ignore[misc]

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None


class _Prefix(ByteSource):
    """The first bytes of an asynchronous source, read synchronously while the header is parsed; notes whether a
    read wanted more than it holds (then the parse is retried on a longer prefix)."""

    def __init__(self, src: ByteSource, data: bytes):
        super().__init__(src.name, src.size, self._read_prefix)
        self.data = data
        self.ran_short = False

    def _read_prefix(self, offset: int, n: int) -> bytes:
        if offset + n > len(self.data) and len(self.data) < self.size:
            self.ran_short = True
        return self.data[offset : offset + n]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the contiguous (row) dimension
    ggml_type: GGMLType
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.shape[0]

    @property
    def row_bytes(self) -> int:
        return tensor_nbytes(self.ggml_type, self.shape[0])


class _Cursor:
    """Sequential reader over a ByteSource through a window that is refilled as needed."""

    WINDOW = 1 << 20

    def __init__(self, src: ByteSource):
        self.src = src
        self.pos = 0
        self._buf = b""
        self._buf_start = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > self.src.size:
            raise GGUFError(
                self.src.name,
                self.pos,
                f"{n} bytes of {what}",
                f"end of file ({self.src.size} bytes): truncated",
            )
        rel = self.pos - self._buf_start
        if rel < 0 or rel + n > len(self._buf):
            self._buf_start = self.pos
            self._buf = self.src.read(self.pos, max(n, self.WINDOW))
            rel = 0
            if len(self._buf) < n:
                raise GGUFError(self.src.name, self.pos, f"{n} bytes of {what}", "a short read: truncated")
        self.pos = end
        return self._buf[rel : rel + n]

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def string(self, what: str) -> str:
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > MAX_STRING_BYTES:
            raise GGUFError(
                self.src.name, start, f"a string length for {what} below {MAX_STRING_BYTES}", str(n)
            )
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GGUFError(self.src.name, start + 8, f"UTF-8 text for {what}", "invalid UTF-8") from exc

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            start = self.pos
            item_type = self.u32(f"item type of {what}")
            count = self.u64(f"item count of {what}")
            if count > MAX_ARRAY_ITEMS:
                raise GGUFError(
                    self.src.name,
                    start + 4,
                    f"an array length for {what} below {MAX_ARRAY_ITEMS}",
                    str(count),
                )
            if item_type in _SCALAR_FORMATS:
                fmt = _SCALAR_FORMATS[item_type][1]
                size = struct.calcsize(fmt)
                return list(struct.unpack(f"<{count}{fmt}", self.take(size * count, what)))
            if item_type == _STRING:
                return [self.string(f"{what}[{i}]") for i in range(count)]
            if item_type == _ARRAY:
                return [self.value(_ARRAY, f"{what}[{i}]") for i in range(count)]
            raise GGUFError(
                self.src.name, start, f"a known array item type (0..12) for {what}", str(item_type)
            )
        raise GGUFError(
            self.src.name, self.pos - 4, f"a known metadata value type (0..12) for {what}", str(vtype)
        )


class GGUFFile:
    """A parsed GGUF file: ``metadata`` (dict), ``tensors`` (name -> TensorInfo), and tensor bytes on demand."""

    def __init__(self, src: ByteSource):
        self.source = src
        self.name = src.name
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, str] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GGUFFile:
        return cls(ByteSource.from_path(path))

    @classmethod
    def from_bytes(cls, name: str, data: bytes | bytearray | memoryview) -> GGUFFile:
        return cls(ByteSource.from_bytes(name, data))

    @classmethod
    async def open_async(cls, src: ByteSource) -> GGUFFile:
        """Parse the header of a source that may only read asynchronously: from a prefix of it, fetched once
        (and again, longer, only when the header does not fit)."""
        if src.is_sync:
            return cls(src)
        n = min(src.size, HEADER_PREFETCH)
        while True:
            prefix = _Prefix(src, await src.read_async(0, n))
            try:
                gguf = cls(prefix)
            except GGUFError:
                if not prefix.ran_short:
                    raise
                n = min(src.size, n * 4)
                continue
            gguf.source = src
            return gguf

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- parsing ----------------------------------------------------------------------------------------------------

    def _parse(self) -> None:
        cur = _Cursor(self.source)
        magic = cur.take(4, "the GGUF magic")
        if magic != GGUF_MAGIC:
            raise GGUFError(self.name, 0, "the magic bytes b'GGUF' (is this a GGUF model file?)", repr(magic))
        self.version = cur.u32("the GGUF version")
        if self.version not in (2, 3):
            raise GGUFError(self.name, 4, "GGUF version 2 or 3", str(self.version))
        n_tensors = cur.u64("the tensor count")
        n_kv = cur.u64("the metadata count")
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise GGUFError(self.name, 8, "tensor and metadata counts below 2^20", f"{n_tensors} and {n_kv}")

        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            vtype = cur.u32(f"value type of {key!r}")
            self.metadata_types[key] = _TYPE_NAMES.get(vtype, str(vtype))
            self.metadata[key] = cur.value(vtype, repr(key))

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment % 8:
            raise GGUFError(
                self.name, cur.pos, "general.alignment to be a positive multiple of 8", repr(alignment)
            )

        infos: list[tuple[str, tuple[int, ...], GGMLType, int, int]] = []
        for i in range(n_tensors):
            info_pos = cur.pos
            name = cur.string(f"name of tensor #{i}")
            n_dims = cur.u32(f"dimension count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(
                    self.name, cur.pos - 4, f"1..{MAX_DIMS} dimensions for tensor {name!r}", str(n_dims)
                )
            shape = tuple(cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims))
            type_pos = cur.pos
            type_id = cur.u32(f"type of tensor {name!r}")
            try:
                ggml_type = GGMLType(type_id)
            except ValueError:
                raise GGUFError(
                    self.name,
                    type_pos,
                    f"a supported tensor type for {name!r} ({SUPPORTED_TYPE_NAMES})",
                    f"ggml type id {type_id}",
                ) from None
            rel = cur.u64(f"data offset of tensor {name!r}")
            if rel % alignment:
                raise GGUFError(
                    self.name, cur.pos - 8, f"a data offset aligned to {alignment} for {name!r}", str(rel)
                )
            block = QUANT_FORMATS[ggml_type].block_size
            if shape[0] % block:
                raise GGUFError(
                    self.name,
                    info_pos,
                    f"row length of {name!r} to be a multiple of {block} for {ggml_type.name}",
                    str(shape[0]),
                )
            infos.append((name, shape, ggml_type, rel, info_pos))

        data_start = -(-cur.pos // alignment) * alignment
        self.data_offset = data_start
        for name, shape, ggml_type, rel, info_pos in infos:
            n = 1
            for d in shape:
                n *= d
            nbytes = tensor_nbytes(ggml_type, n)
            offset = data_start + rel
            if offset + nbytes > self.source.size:
                raise GGUFError(
                    self.name,
                    offset,
                    f"{nbytes} bytes of tensor {name!r} data",
                    f"end of file at {self.source.size}: truncated",
                )
            if name in self.tensors:
                raise GGUFError(self.name, info_pos, f"unique tensor names, {name!r} appears twice")
            self.tensors[name] = TensorInfo(name, shape, ggml_type, offset, nbytes)

    # ---- access -----------------------------------------------------------------------------------------------------

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(
                self.name, self.data_offset, f"a tensor named {name!r}", "no such tensor"
            ) from None

    def tensor_bytes(self, name: str, start: int = 0, size: int | None = None) -> bytes:
        """Bytes of tensor ``name``, optionally a sub-range [start, start + size) of them."""
        info = self.tensor(name)
        if size is None:
            size = info.nbytes - start
        data = self.source.read(info.offset + start, size)
        if len(data) != size:
            raise GGUFError(
                self.name, info.offset + start, f"{size} bytes of tensor {name!r}", f"{len(data)} bytes"
            )
        return data

    async def tensor_bytes_async(self, name: str, start: int = 0, size: int | None = None) -> bytes:
        """``tensor_bytes`` for any source (the loader's path: browser storage only reads asynchronously)."""
        info = self.tensor(name)
        if size is None:
            size = info.nbytes - start
        data = await self.source.read_async(info.offset + start, size)
        if len(data) != size:
            raise GGUFError(
                self.name, info.offset + start, f"{size} bytes of tensor {name!r}", f"{len(data)} bytes"
            )
        return data

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise GGUFError(self.name, 0, f"metadata key {key!r}", "it is missing")
        return self.metadata[key]

    # Typed access: every number the model's shape is built from goes through one of these, so a corrupt or
    # hostile file fails here with the key and the allowed range instead of deep in the graph (ZeroDivisionError,
    # a NaN frequency table, a buffer of size 0). ``_MISSING`` as default: the key is required.

    def _typed(self, key: str, default: Any) -> tuple[bool, Any]:
        if key in self.metadata:
            return True, self.metadata[key]
        if default is _MISSING:
            raise GGUFMetadataError(self.name, key, "present", "it is missing")
        return False, default

    def get_int(self, key: str, default: Any = _MISSING, *, min: int = 0, max: int = 2**31 - 1) -> int:
        """An integer in [min, max] (bool is not an integer here)."""
        present, v = self._typed(key, default)
        if not present:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise GGUFMetadataError(
                self.name, key, f"an integer in [{min}, {max}]", f"{self.metadata_types.get(key)} {_short(v)}"
            )
        if not min <= v <= max:
            raise GGUFMetadataError(self.name, key, f"an integer in [{min}, {max}]", str(v))
        return v

    def get_float(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        min: float = -math.inf,
        max: float = math.inf,
        min_exclusive: bool = False,
    ) -> float:
        """A finite number in [min, max] (or (min, max] with ``min_exclusive``); integers are accepted."""
        present, v = self._typed(key, default)
        if not present:
            return v
        low = "(" if min_exclusive else "["
        allowed = f"a finite number in {low}{min:g}, {max:g}]"
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise GGUFMetadataError(self.name, key, allowed, f"{self.metadata_types.get(key)} {_short(v)}")
        v = float(v)
        if not math.isfinite(v) or v < min or v > max or (min_exclusive and v == min):
            raise GGUFMetadataError(self.name, key, allowed, repr(v))
        return v

    def get_str(self, key: str, default: Any = _MISSING) -> str:
        present, v = self._typed(key, default)
        if present and not isinstance(v, str):
            raise GGUFMetadataError(self.name, key, "a string", f"{self.metadata_types.get(key)} {_short(v)}")
        return v

    def get_bool(self, key: str, default: Any = _MISSING) -> bool:
        present, v = self._typed(key, default)
        if present and not isinstance(v, bool):
            raise GGUFMetadataError(self.name, key, "a bool", f"{self.metadata_types.get(key)} {_short(v)}")
        return v

    def get_array(self, key: str, item: type | tuple[type, ...], default: Any = _MISSING) -> list[Any]:
        """A flat list whose items are all of type ``item`` (``int``, ``float`` (ints accepted), ``str``)."""
        present, v = self._typed(key, default)
        if not present:
            return v
        want = item if isinstance(item, tuple) else (item,)
        if float in want:
            want = (*want, int)
        name = "/".join(t.__name__ for t in (item if isinstance(item, tuple) else (item,)))
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, want) for x in v):
            raise GGUFMetadataError(
                self.name, key, f"an array of {name}", f"{self.metadata_types.get(key)} {_short(v)}"
            )
        return v


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
