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

A corrupt or hostile header costs at most what the file's own bytes can pay for: every count (metadata entries,
tensors, array items) is checked against the bytes left in the file before anything is allocated for it (an array
of 2^26 strings needs 2^29 bytes of lengths alone), all arrays together hold at most ``MAX_METADATA_ITEMS`` items
(a 262,144-token vocabulary's four arrays are about a million), and arrays nest at most ``MAX_ARRAY_DEPTH`` deep.
Metadata is read only through ``GGUFMetadata``'s typed getters, which raise ``GGUFMetadataError`` naming the key
and what is allowed.
"""

from __future__ import annotations

import array
import math
import os
import struct
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptWeightsError, GGUFError, GGUFMetadataError, _show
from .quant import QUANT_FORMATS, SUPPORTED_TYPE_NAMES, GGMLType, tensor_nbytes

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Refuse absurd counts early (a corrupt header would otherwise make us allocate for days).
MAX_STRING_BYTES = 64 << 20
MAX_ARRAY_ITEMS = 1 << 21  # one array: 8 times the largest vocabulary in use (262,144 tokens)
MAX_METADATA_ITEMS = 1 << 22  # all arrays together: a few times what the largest vocabulary needs
MAX_ARRAY_DEPTH = 4  # arrays of arrays; no model uses more than 2
MAX_DIMS = 4
MAX_ENTRIES = 1 << 20  # metadata entries, tensors

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
        self.items_left = MAX_METADATA_ITEMS  # array items all metadata may still hold

    @property
    def remaining(self) -> int:
        return self.src.size - self.pos

    def count(self, n: int, item_bytes: int, what: str, start: int, limit: int) -> None:
        """Refuse a count of ``n`` items of at least ``item_bytes`` each before anything is allocated for it: the
        file must still hold their bytes, and ``n`` be at most ``limit``."""
        if n > limit:
            raise GGUFError(self.src.name, start, f"at most {limit} items for {what}", str(n))
        if n * item_bytes > self.remaining:
            raise GGUFError(
                self.src.name,
                start,
                f"{what}: {n} items of at least {item_bytes} bytes each",
                f"{self.remaining} bytes left in the file: a corrupt count or a truncated file",
            )

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

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.scalar(_SCALAR_FORMATS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            start = self.pos
            if depth >= MAX_ARRAY_DEPTH:
                raise GGUFError(
                    self.src.name, start, f"arrays nested at most {MAX_ARRAY_DEPTH} deep in {what}"
                )
            item_type = self.u32(f"item type of {what}")
            count = self.u64(f"item count of {what}")
            # the smallest an item can be: a scalar's size, a string's length field, an array's type and count
            item_bytes = (
                struct.calcsize(_SCALAR_FORMATS[item_type])
                if item_type in _SCALAR_FORMATS
                else {_STRING: 8, _ARRAY: 12}.get(item_type, 1)
            )
            self.count(
                count, item_bytes, f"the array {what}", start + 4, min(MAX_ARRAY_ITEMS, self.items_left)
            )
            self.items_left -= count
            if item_type in _SCALAR_FORMATS:
                fmt = _SCALAR_FORMATS[item_type][1]
                return list(struct.unpack(f"<{count}{fmt}", self.take(item_bytes * count, what)))
            if item_type == _STRING:
                return [self.string(f"{what}[{i}]") for i in range(count)]
            if item_type == _ARRAY:
                return [self.value(_ARRAY, f"{what}[{i}]", depth + 1) for i in range(count)]
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
        self.metadata = GGUFMetadata(src.name)
        self.metadata_types = self.metadata.types  # key -> GGUF value type name, for error messages
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
        # an entry is at least a key length, a type and one byte; a tensor's record at least 32 bytes
        cur.count(n_kv, 13, "the metadata entries", 16, MAX_ENTRIES)
        cur.count(n_tensors, 32, "the tensor records", 8, MAX_ENTRIES)

        for i in range(n_kv):
            key_pos = cur.pos
            key = cur.string(f"metadata key #{i}")
            if key in self.metadata:
                raise GGUFError(self.name, key_pos, f"unique metadata keys, {key!r} appears twice")
            vtype = cur.u32(f"value type of {key!r}")
            self.metadata.types[key] = _TYPE_NAMES.get(vtype, str(vtype))
            self.metadata[key] = cur.value(vtype, repr(key))

        alignment = self.metadata.get_int("general.alignment", DEFAULT_ALIGNMENT, min=8, max=1 << 16)
        if alignment % 8:
            raise GGUFMetadataError(self.name, "general.alignment", "a multiple of 8", str(alignment))

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
            if 0 in shape:
                raise GGUFError(self.name, info_pos, f"dimensions >= 1 for tensor {name!r}", str(list(shape)))
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

    def check_finite(self, name: str, f32: bytes, *, positive: bool = False) -> None:
        """Raise ``CorruptWeightsError`` unless every little-endian f32 in ``f32`` (tensor ``name``'s values) is
        finite (and > 0 with ``positive``). For the small vectors checked on the host: norms, biases, RoPE factors;
        quantization scales are scanned on the GPU as they are repacked."""
        values = array.array("f")
        values.frombytes(f32[: len(f32) // 4 * 4])
        if sys.byteorder == "big":
            values.byteswap()
        if all(map(math.isfinite, values)) and (not positive or min(values, default=1.0) > 0.0):
            return
        i = next(i for i, v in enumerate(values) if not math.isfinite(v) or positive and v <= 0.0)
        problem = f"{values[i]} at element {i}" + (" (must be > 0)" if math.isfinite(values[i]) else "")
        raise CorruptWeightsError(self.name, name, problem)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise GGUFError(self.name, 0, f"metadata key {key!r}", "it is missing")
        return self.metadata[key]

    # Typed access (``GGUFMetadata``'s getters): every value read from metadata goes through one of them.

    def get_int(self, key: str, default: Any = _MISSING, *, min: int = 0, max: int = 2**31 - 1) -> int:
        return self.metadata.get_int(key, default, min=min, max=max)

    def get_float(self, key: str, default: Any = _MISSING, **limits: Any) -> float:
        return self.metadata.get_float(key, default, **limits)

    def get_str(self, key: str, default: Any = _MISSING) -> str:
        return self.metadata.get_str(key, default)

    def get_bool(self, key: str, default: Any = _MISSING) -> bool:
        return self.metadata.get_bool(key, default)

    def get_array(
        self, key: str, item: type | tuple[type, ...], default: Any = _MISSING, **limits: Any
    ) -> list[Any]:
        return self.metadata.get_array(key, item, default, **limits)


class GGUFMetadata(dict):
    """A GGUF file's metadata: a dict (key -> value) whose typed getters raise ``GGUFMetadataError`` naming the
    key and what is allowed. Every number a model's shape is built from, and everything the tokenizer reads, goes
    through them, so a corrupt or hostile file fails here instead of deep in the graph (ZeroDivisionError, a NaN
    frequency table, a buffer of size 0, an AttributeError on a token that is not a string). ``_MISSING`` as the
    default: the key is required. A plain dict of metadata (tests, a hand-built tokenizer) can be wrapped in one."""

    def __init__(self, source: str = "GGUF metadata", values: Any = (), types: dict[str, str] | None = None):
        super().__init__(values)
        self.source = source
        self.types: dict[str, str] = dict(types or {})  # key -> GGUF value type name, for error messages

    @classmethod
    def of(cls, metadata: Any, source: str = "GGUF metadata") -> GGUFMetadata:
        return metadata if isinstance(metadata, GGUFMetadata) else cls(source, metadata)

    def _found(self, key: str, v: Any) -> str:
        kind = self.types.get(key) or type(v).__name__
        return f"{kind} {_short(v)}"

    def _typed(self, key: str, default: Any) -> tuple[bool, Any]:
        if key in self:
            return True, self[key]
        if default is _MISSING:
            raise GGUFMetadataError(self.source, key, "present", "it is missing")
        return False, default

    def get_int(self, key: str, default: Any = _MISSING, *, min: int = 0, max: int = 2**31 - 1) -> int:
        """An integer in [min, max] (bool is not an integer here)."""
        present, v = self._typed(key, default)
        if not present:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise GGUFMetadataError(self.source, key, f"an integer in [{min}, {max}]", self._found(key, v))
        if not min <= v <= max:
            raise GGUFMetadataError(self.source, key, f"an integer in [{min}, {max}]", str(v))
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
            raise GGUFMetadataError(self.source, key, allowed, self._found(key, v))
        v = float(v)
        if not math.isfinite(v) or v < min or v > max or (min_exclusive and v == min):
            raise GGUFMetadataError(self.source, key, allowed, repr(v))
        return v

    def get_str(self, key: str, default: Any = _MISSING) -> str:
        present, v = self._typed(key, default)
        if present and not isinstance(v, str):
            raise GGUFMetadataError(self.source, key, "a string", self._found(key, v))
        return v

    def get_bool(self, key: str, default: Any = _MISSING) -> bool:
        present, v = self._typed(key, default)
        if present and not isinstance(v, bool):
            raise GGUFMetadataError(self.source, key, "a bool", self._found(key, v))
        return v

    def get_array(
        self,
        key: str,
        item: type | tuple[type, ...],
        default: Any = _MISSING,
        *,
        length: int | None = None,
        min_length: int = 0,
    ) -> list[Any]:
        """A flat list whose items are all of type ``item`` (``int``, ``float`` (ints accepted; NaN and infinities
        refused), ``str``), with exactly ``length`` items when given, else at least ``min_length``."""
        present, v = self._typed(key, default)
        if not present:
            return v
        want = item if isinstance(item, tuple) else (item,)
        name = "/".join(t.__name__ for t in want)
        if float in want:
            want = (*want, int)
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, want) for x in v):
            raise GGUFMetadataError(self.source, key, f"an array of {name}", self._found(key, v))
        if float in want and not all(map(math.isfinite, v)):
            bad = next(i for i, x in enumerate(v) if not math.isfinite(x))
            raise GGUFMetadataError(self.source, key, "finite numbers", f"{v[bad]} at index {bad}")
        if length is not None and len(v) != length:
            raise GGUFMetadataError(self.source, key, f"an array of {length} items", f"{len(v)} items")
        if len(v) < min_length:
            raise GGUFMetadataError(
                self.source, key, f"an array of at least {min_length} items", f"{len(v)} items"
            )
        return v


def _short(v: Any) -> str:
    return _show(v)  # bounded whatever the value: a million-item array shows as its first few
