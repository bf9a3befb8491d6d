"""GPU operations as launches: a pipeline, a bind group built once, and a grid for a given number of tokens.

The graph builds every launch at load time; a step is then just ``[launch.dispatch(n_tokens) for ...]``. Kernel
tests use the same functions on hand-made buffers, so what is tested is what the model runs.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..errors import CorruptWeightsError, DeviceLimitError, UnsupportedModelError
from ..gpu.device import Buffer, BufferUsage, DeviceCaps, Dispatch, Pipeline
from ..model.quant import GGMLType
from . import params
from .registry import (
    MR_VARIANTS,
    Q8_CONTIGUOUS,
    Q8_FORMATS,
    SUPER_BLOCK_FORMATS,
    WEIGHT_FORMAT,
    GemvConfig,
    Kernels,
    weight_nbytes,
)

STORAGE = BufferUsage.STORAGE | BufferUsage.COPY_DST | BufferUsage.COPY_SRC
GEMM_TILE = 32  # rows and tokens per GEMM workgroup
GEMM_RT_TOKENS = 64  # tokens per GEMM_RT workgroup (its rows: kern.gemm_wg)
REPACK_WG = 64
ATTENTION_TILE = 1024  # key positions per attention tile (4 KiB of scores in workgroup memory)


@dataclass(frozen=True)
class Launch:
    pipeline: Pipeline
    bind_group: object
    grid: Callable[[int], tuple[int, int, int]]  # n_tokens -> workgroups (x, y, z)
    label: str

    def dispatch(self, n_tokens: int) -> Dispatch:
        x, y, z = self.grid(n_tokens)
        return (self.pipeline, self.bind_group, x, y, z)


@dataclass(frozen=True)
class Segment:
    """Rows of a Weight stored in one format (weights.wgsl): a matrix of its own inside the weight's buffer."""

    fmt: str  # the GGUF type name of these rows (registry.WEIGHT_GROUPS)
    n_rows: int  # rows it holds
    first_row: int  # the Weight row its row 0 is ("range" rows); "parity" rows: 0 or 1
    base: int  # where its groups start in Weight.q, in vec4<u32> words (16 bytes)


@dataclass(frozen=True)
class Weight:
    """A matrix W (n_rows, k) in the repacked layout of weights.wgsl, in one buffer.

    Most weights are one segment of one format. A product fused from matrices of different GGUF types (q/k with a
    differently quantized v; gate/up) keeps each type in a segment of its own, one dispatch for all (matmul.wgsl
    W_SEGS): ``rows = "range"``: segment s holds rows [first_row, first_row + n_rows) (q/k/v stacked);
    ``rows = "parity"``: segment 0 holds the even rows 2i, segment 1 the odd rows 2i + 1 (gate/up interleaved)."""

    segments: tuple[Segment, ...]
    n_rows: int
    k: int  # input features, a multiple of 32 (of 256 for K-quants)
    q: Buffer  # (sum over segments of whole groups,) vec4<u32>
    rows: str = "range"  # how rows map to segments: "range" | "parity"

    @property
    def fmt(self) -> str:
        """The format, or "A+B" for a segmented weight (labels, tuning keys)."""
        return "+".join(s.fmt for s in self.segments)

    @property
    def k_blocks(self) -> int:
        return self.k // 32

    @property
    def nbytes(self) -> int:
        return self.q.size


@dataclass(frozen=True)
class Placement:
    """Where alloc_fused puts the rows of one of its parts: source row r goes to row dst_row0 + r * dst_row_step
    of segment ``segment`` (the arguments of Repacker.upload)."""

    segment: int
    dst_row0: int
    dst_row_step: int


# Rows of each part of a RowSplit are a multiple of this (the last part excepted): every decode kernel shape's rows per
# workgroup (4 .. 128) divides it, so a part's argmax partials are whole workgroups and follow the previous part's; it
# is even (gate/up pairs stay together) and a whole number of groups of every format.
PART_ROWS = 256


@dataclass(frozen=True)
class RowSplit:
    """A matrix product (n_rows, k) kept as consecutive row ranges in several Weights, for a product whose repacked
    bytes exceed one storage binding (models.md section 6: the embedding and LM head of big vocabularies, such as
    Llama 3's 128,256 x 4,096 Q6_K output on a 128 MiB binding; any matrix on a device with small bindings). Part i
    holds rows [first_rows[i], first_rows[i] + parts[i].n_rows), in a buffer of its own, with the segments its rows
    need (a part of a mixed q/k/v or gate/up product is itself mixed); every product runs one launch per part
    (matmul.wgsl and embed.wgsl ``row0``). A product that fits is one part: the same launches as an unsplit Weight."""

    parts: tuple[Weight, ...]
    first_rows: tuple[int, ...]

    @property
    def n_rows(self) -> int:
        return sum(w.n_rows for w in self.parts)

    @property
    def k(self) -> int:
        return self.parts[0].k

    @property
    def fmt(self) -> str:
        return self.parts[0].fmt

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.parts)

    def row_parts(self) -> list[tuple[int, Weight]]:
        """(first row, part) pairs, in row order."""
        return list(zip(self.first_rows, self.parts, strict=True))


@dataclass(frozen=True)
class Piece:
    """Source rows [src_row0, src_row0 + n_rows) of source matrix ``source`` of alloc_split, held by part ``part``
    at ``place`` (the arguments of Repacker.upload)."""

    source: int
    src_row0: int
    n_rows: int
    part: int
    place: Placement


def binding_limit(caps: DeviceCaps) -> int:
    """The most bytes one weight buffer may hold: it is bound whole (maxStorageBufferBindingSize) and is one buffer
    (maxBufferSize)."""
    return min(caps.max_storage_buffer_binding_size, caps.max_buffer_size)


def source_rows(rows: Sequence[int], a: int, b: int, interleave: bool) -> list[tuple[int, int, int]]:
    """(source, first source row, rows) of product rows [a, b) of sources of ``rows`` rows, stacked or interleaved
    (then a and b are multiples of the source count, or b is the end)."""
    if interleave:
        m = len(rows)
        return [(j, a // m, (b - a) // m) for j in range(m)]
    out, s = [], 0
    for j, n in enumerate(rows):
        lo, hi = max(a, s), min(b, s + n)
        if lo < hi:
            out.append((j, lo - s, hi - lo))
        s += n
    return out


def product_nbytes(fmts: Sequence[str], rows: Sequence[int], k: int, *, interleave: bool = False) -> int:
    """Bytes of a product of sources (format, rows) as alloc_fused lays it out: consecutive sources of one format
    share a segment."""
    segs: list[list] = []
    for fmt, n in zip(fmts, rows, strict=True):
        if segs and segs[-1][0] == fmt:
            segs[-1][1] += n
        else:
            segs.append([fmt, n])
    return sum(weight_nbytes(fmt, n * (k // 32)) for fmt, n in segs)


def split_rows(
    fmts: Sequence[str],
    rows: Sequence[int],
    k: int,
    limit: int,
    label: str,
    *,
    interleave: bool = False,
    unit: int = PART_ROWS,
) -> tuple[int, ...]:
    """Rows of each part of a product of sources (format, rows), stacked or interleaved, whose parts must each fit
    ``limit`` bytes: the whole product when it fits, else the fewest parts that fit, as even as they go, each a
    multiple of ``unit`` rows (PART_ROWS, or a multiple of it that holds whole heads) but the last."""

    def nbytes(a: int, b: int) -> int:
        got = source_rows(rows, a, b, interleave)
        return product_nbytes([fmts[j] for j, _, _ in got], [n for _, _, n in got], k)

    n_rows = sum(rows)
    if nbytes(0, n_rows) <= limit:
        return (n_rows,)
    units = -(-n_rows // unit)

    def fits(per: int) -> bool:  # parts of ``per`` units each
        return all(nbytes(a, min(a + per * unit, n_rows)) <= limit for a in range(0, n_rows, per * unit))

    if not fits(1):
        worst = max(range(0, n_rows, unit), key=lambda a: nbytes(a, min(a + unit, n_rows)))
        raise DeviceLimitError(
            f"weight {label!r} cannot be split to fit this GPU's {limit}-byte storage bindings: {unit} rows of "
            f"{k} {'+'.join(dict.fromkeys(fmts))} weights already take {nbytes(worst, min(worst + unit, n_rows))} "
            "bytes (maxStorageBufferBindingSize / maxBufferSize)"
        )
    most = (
        1  # the most units a part may hold: the largest per that fits (parts fit less when they hold fewer)
    )
    while most < units and fits(most + 1):
        most += 1
    per = -(-units // -(-units // most))  # the fewest parts, then as even as they go
    if not fits(per):
        per = most
    step = per * unit
    return tuple(min(step, n_rows - r0) for r0 in range(0, n_rows, step))


def alloc_split(
    kern: Kernels,
    sources: Sequence[tuple[GGMLType, int]],
    k: int,
    label: str,
    *,
    interleave: bool = False,
    unit: int = PART_ROWS,
) -> tuple[RowSplit, list[Piece]]:
    """One product fused from matrices (GGUF type, rows), stacked or interleaved (alloc_fused), split by rows
    (split_rows) into as many Weights as the device's bindings need: one when it fits. Returns it and where each
    source's rows go (fill each Piece with Repacker.upload); the parts' labels are ``label.i`` when there are
    several."""
    fmts = [WEIGHT_FORMAT[t.name] for t, _ in sources]
    rows = [n for _, n in sources]
    limit = binding_limit(kern.device.caps)
    part_rows = split_rows(fmts, rows, k, limit, label, interleave=interleave, unit=unit)
    weights, firsts, pieces, a = [], [], [], 0
    for p, n in enumerate(part_rows):
        got = source_rows(rows, a, a + n, interleave)
        w, places = alloc_fused(
            kern, [(sources[j][0], m) for j, _, m in got], k, f"{label}.{p}" if len(part_rows) > 1 else label,
            interleave=interleave,
        )  # fmt: skip
        pieces += [Piece(j, r0, m, p, place) for (j, r0, m), place in zip(got, places, strict=True)]
        weights.append(w)
        firsts.append(a)
        a += n
    return RowSplit(tuple(weights), tuple(firsts)), pieces


def fold_grid(n_workgroups: int, limit: int = 65535) -> tuple[int, int, int]:
    """Spread a 1-D grid over x and y when it exceeds the per-dimension limit."""
    if n_workgroups <= limit:
        return (max(1, n_workgroups), 1, 1)
    y = math.ceil(n_workgroups / limit)
    return (math.ceil(n_workgroups / y), y, 1)


def alloc_weight(kern: Kernels, ggml_type: GGMLType, n_rows: int, k: int, label: str) -> Weight:
    """A weight of one format, for ``n_rows`` rows of ``k`` features (filled by Repacker.upload)."""
    w, _ = alloc_fused(kern, [(ggml_type, n_rows)], k, label)
    return w


def alloc_fused(
    kern: Kernels, parts: Sequence[tuple[GGMLType, int]], k: int, label: str, *, interleave: bool = False
) -> tuple[Weight, list[Placement]]:
    """One weight for matrices (GGUF type, rows) fused into one product: stacked, or with ``interleave`` their rows
    alternated (row i of part j at i * len(parts) + j). Parts of one format share a segment (rows really stacked or
    interleaved at repack); differing formats get segments of their own. Returns the weight and each part's
    Placement."""
    if k % 32:
        raise ValueError(f"{label}: input features {k} must be a multiple of 32")
    fmts = [WEIGHT_FORMAT[t.name] for t, _ in parts]
    for fmt in set(fmts) & set(SUPER_BLOCK_FORMATS):
        if k % 256:
            raise UnsupportedModelError(
                f"{label}: {fmt} rows of {k} weights are not whole 256-weight super-blocks"
            )
    n_rows = sum(n for _, n in parts)
    rows = "range"
    if len(set(fmts)) == 1:
        segs = [(fmts[0], n_rows, 0)]
        if interleave:
            places = [Placement(0, j, len(parts)) for j in range(len(parts))]
        else:
            places = [Placement(0, sum(n for _, n in parts[:j]), 1) for j in range(len(parts))]
    elif interleave:
        if len(parts) != 2 or parts[0][1] != parts[1][1]:
            desc = ", ".join(f"{t.name} x {n}" for t, n in parts)
            raise UnsupportedModelError(f"{label}: cannot interleave {desc}: two matrices of equal rows only")
        rows = "parity"
        segs = [(fmts[0], parts[0][1], 0), (fmts[1], parts[1][1], 1)]
        places = [Placement(0, 0, 1), Placement(1, 0, 1)]
    else:  # consecutive parts of one format share a segment
        segs, places, row0 = [], [], 0
        for fmt, (_, n) in zip(fmts, parts, strict=True):
            if segs and segs[-1][0] == fmt:
                places.append(Placement(len(segs) - 1, segs[-1][1], 1))
                segs[-1] = (fmt, segs[-1][1] + n, segs[-1][2])
            else:
                places.append(Placement(len(segs), 0, 1))
                segs.append((fmt, n, row0))
            row0 += n
        if len(segs) > 3:
            raise UnsupportedModelError(f"{label}: {len(segs)} weight formats in one product; at most 3")
    kb = k // 32
    segments, base = [], 0
    for fmt, n, first in segs:
        segments.append(Segment(fmt, n, first, base))
        base += weight_nbytes(fmt, n * kb) // 16
    size = base * 16
    limit = binding_limit(kern.device.caps)
    if size > limit:
        raise DeviceLimitError(
            f"weight {label!r} needs a {size}-byte storage binding but this GPU allows {limit} "
            "(maxStorageBufferBindingSize / maxBufferSize); only the embedding and the LM head are split"
        )
    q = kern.device.create_buffer(size, STORAGE, f"{label}.q")
    return Weight(tuple(segments), n_rows, k, q, rows), places


def weight_defines(w: Weight) -> dict[str, object]:
    """Defines of weights.wgsl (and matmul.wgsl's W_SEGS) for reading ``w``: segment 0's format as W_FMT, with the
    names of its dot / dequant functions; FMT_<name> for every format used; segments 1 and 2 as W_FMT1 / W_FMT2."""
    defines: dict[str, object] = {f"FMT_{s.fmt}": 1 for s in w.segments}
    for i, seg in enumerate(w.segments):
        tag = str(i) if i else ""
        defines.update({f"W_FMT{tag}": seg.fmt, f"W_DOT{tag}": f"dot_{seg.fmt.lower()}"})
        defines[f"W_DQ{tag}"] = f"dq_{seg.fmt.lower()}"
        defines[f"W_OCT{tag}"] = f"oct_{seg.fmt.lower()}"
        defines[f"W_Q8{tag}"] = f"q8_{seg.fmt.lower()}"  # with MR_Q8 (x as integer planes)
    if len(w.segments) > 1:
        defines["W_SEGS"] = w.rows.upper()
    return defines


def _single_format(w: Weight, what: str) -> None:
    if len(w.segments) != 1:
        raise ValueError(f"{what} reads weights of one format; {w.fmt} has {len(w.segments)} segments")


STAGING_BYTES = 16 << 20  # the Repacker's staging buffer: the most of a tensor in host memory at once

# Problems repack.wgsl reports (bad = tensor id * 4 + code).
REPACK_PROBLEMS = {
    1: "a quantization scale (d) is NaN or infinite",
    2: "a quantization min (m / dmin) is NaN or infinite",
    3: "a weight is NaN or infinite",
}


class Repacker:
    """Moves GGUF tensor bytes into Weight buffers through one reusable staging buffer and the repack kernel, which
    also scans scales and float weights for NaN/Inf into a small flag buffer: ``close`` reads it back once, at the
    end of the load, and names the first bad tensor."""

    def __init__(self, kern: Kernels, staging_bytes: int = STAGING_BYTES):
        self.kern = kern
        # one binding at most (a device with small limits gets a smaller staging buffer, more dispatches)
        self.staging_bytes = min(staging_bytes, binding_limit(kern.device.caps))
        self.staging = kern.device.create_buffer(self.staging_bytes, STORAGE, "repack.staging")
        # Each chunk's Params, rewritten before each chunk's dispatch like the staging buffer (the queue orders the
        # writes and the dispatches), so a load keeps no uniform buffer per chunk alive after it.
        self.params = kern.device.create_buffer(
            params.REPACK.size, BufferUsage.UNIFORM | BufferUsage.COPY_DST, "repack.params"
        )
        # (1,) u32: the smallest tensor id * 4 + problem found (repack.wgsl); 0xFFFFFFFF: none
        self.bad = kern.device.create_buffer(16, STORAGE, "repack.bad")
        kern.device.write_buffer(self.bad, 0, b"\xff" * 16)
        self.tensors: list[tuple[str, GGMLType]] = []  # tensor id - 1 -> (name, type), in upload order

    def rows_per_chunk(self, row_bytes: int) -> int:
        return max(1, self.staging_bytes // row_bytes)

    def upload(
        self,
        w: Weight,
        ggml_type: GGMLType,
        raw: bytes,
        n_rows: int,
        *,
        dst_row0: int = 0,
        dst_row_step: int = 1,
        segment: int = 0,
        tensor: str = "",
    ) -> None:
        """Repack ``n_rows`` source rows held in ``raw`` into rows dst_row0 + i * dst_row_step of ``segment``."""
        row_bytes = len(raw) // n_rows
        view = memoryview(raw)  # slices of a view are not copies
        self.upload_rows(
            w,
            ggml_type,
            n_rows,
            row_bytes,
            lambda r0, rows: view[r0 * row_bytes : (r0 + rows) * row_bytes],
            dst_row0=dst_row0,
            dst_row_step=dst_row_step,
            segment=segment,
            tensor=tensor,
        )

    def upload_rows(
        self,
        w: Weight,
        ggml_type: GGMLType,
        n_rows: int,
        row_bytes: int,
        read_rows: Callable[[int, int], bytes],
        *,
        dst_row0: int = 0,
        dst_row_step: int = 1,
        segment: int = 0,
        tensor: str = "",
    ) -> None:
        """Like upload, reading source rows on demand (``read_rows(first_row, count)``), one staging chunk at a time,
        so a weight never sits whole in host memory. ``tensor`` names the source in a CorruptWeightsError."""
        if row_bytes > self.staging_bytes:
            raise DeviceLimitError(
                f"a row of {row_bytes} bytes does not fit the {self.staging_bytes}-byte staging buffer"
            )
        seg = w.segments[segment]
        if WEIGHT_FORMAT[ggml_type.name] != seg.fmt:
            raise ValueError(f"{tensor or 'tensor'}: {ggml_type.name} rows into a {seg.fmt} segment")
        kb = w.k_blocks
        units = kb // 8 if seg.fmt in SUPER_BLOCK_FORMATS else kb  # invocations per row
        if not self.tensors or self.tensors[-1] != (tensor, ggml_type) or not tensor:
            self.tensors.append((tensor or f"{w.q.label} rows", ggml_type))
        tensor_id = len(self.tensors)
        pipe = self.kern.pipeline("repack.wgsl", WG=REPACK_WG, SRC=ggml_type.name)
        step = self.rows_per_chunk(row_bytes)
        for r0 in range(0, n_rows, step):
            rows = min(step, n_rows - r0)
            chunk = read_rows(r0, rows)
            if len(chunk) % 4:  # a copy only for the odd tail (F16 / Q-rows of odd byte lengths)
                chunk = bytes(chunk) + bytes(-len(chunk) % 4)
            self.kern.device.write_buffer(self.staging, 0, chunk)
            data = params.REPACK.pack(
                n_rows=rows,
                k_blocks=kb,
                dst_row0=dst_row0 + r0 * dst_row_step,
                dst_row_step=dst_row_step,
                dst_base=seg.base,
                tensor_id=tensor_id,
            )
            self.kern.device.write_buffer(self.params, 0, data)
            entries = [
                (0, self.params, 0, len(data)),
                (1, self.staging, 0, len(chunk)),
                _whole(2, w.q),
                _whole(3, self.bad),
            ]
            bg = self.kern.device.create_bind_group(pipe, entries, "repack")
            n_wg = math.ceil(rows * units / REPACK_WG)
            self.kern.device.submit([(pipe, bg, *fold_grid(n_wg))])

    async def check(self, source: str) -> None:
        """Raise CorruptWeightsError for the first uploaded tensor whose scales (or float weights) hold NaN/Inf.
        One readback for the whole load."""
        (found,) = struct.unpack("<I", await self.kern.device.read_storage(self.bad, 0, 4))
        if found != 0xFFFFFFFF:
            name, ggml_type = self.tensors[found // 4 - 1]
            raise CorruptWeightsError(source, name, f"{ggml_type.name}: {REPACK_PROBLEMS[found % 4]}")

    async def close(self, source: str) -> None:
        """check(source), then free the staging buffers (whatever check found)."""
        try:
            await self.check(source)
        finally:
            self.destroy()

    def destroy(self) -> None:
        for buf in (self.staging, self.params, self.bad):
            self.kern.device.destroy_buffer(buf)


def _whole(binding: int, buf: Buffer) -> tuple[int, Buffer, int, int]:
    return (binding, buf, 0, buf.size)


def _segment_params(w: Weight) -> dict[str, int]:
    """matmul.wgsl's Params of segments 1 and 2 (W_SEGS): their first rows ("range") and bases in w.q."""
    out = {"seg1_row": w.n_rows, "seg2_row": w.n_rows}
    for i, seg in enumerate(w.segments[1:], 1):
        out[f"seg{i}_row"] = seg.first_row
        out[f"seg{i}_base"] = seg.base
    return out


def _uniform_entry(
    kern: Kernels, spec: params.ParamsSpec, label: str, **values: float
) -> tuple[int, Buffer, int, int]:
    data = spec.pack(**values)
    return (0, kern.uniform(data, label), 0, len(data))


def q8_fits(kern: Kernels, w: Weight, gemv: GemvConfig) -> bool:
    """Whether GEMV_MRQ (integer activations) can run ``w``: every segment in a format it reads (Q8_FORMATS), on a
    device whose WGSL has dot4I8Packed, with its segment partials (one f32 a row an invocation) in workgroup memory."""
    return (
        kern.device.caps.packed_int_dot
        and segment_formats(w) <= set(Q8_FORMATS)
        and 4 * (gemv.rt + 1) * gemv.wg <= kern.device.caps.max_compute_workgroup_storage_size
    )


def product_parts(w: RowSplit | Weight) -> tuple[Weight, ...]:
    """The row parts of a product: a RowSplit's, or the Weight itself."""
    return w.parts if isinstance(w, RowSplit) else (w,)


def uses_planes(kern: Kernels, w: RowSplit | Weight, gemv: GemvConfig | None) -> bool:
    """Whether a decode product of ``w`` with kernel shape ``gemv`` reads x as integer planes: GEMV_MRQ where every
    row part fits it (q8_fits); then a quantize_x launch comes first (matmul_parts)."""
    gemv = gemv or kern.gemv
    return gemv.variant == "GEMV_MRQ" and all(q8_fits(kern, part, gemv) for part in product_parts(w))


def segment_formats(w: RowSplit | Weight) -> set[str]:
    """The formats of every segment of every row part of ``w``."""
    return {s.fmt for part in product_parts(w) for s in part.segments}


def contiguous_planes(w: RowSplit | Weight) -> bool:
    """Whether a GEMV_MRQ product of ``w`` takes x's planes in element order (matmul.wgsl XQ_CONTIGUOUS): when all its
    formats are in Q8_CONTIGUOUS (Q8_0's bytes as stored); else in even / odd order (nibble words; Q8_0 segments of a
    mixed weight sort their bytes)."""
    return segment_formats(w) <= set(Q8_CONTIGUOUS)


XQ_WG = 256  # invocations of a quantize_x workgroup: a vec4 of x each, so 32 blocks a workgroup


def xq_bytes(k: int, planes: int) -> int:
    """Bytes of k activations as integer planes (matmul.wgsl XQ_PACK): a 32-block is 2 * planes + 1 vec4 words."""
    return k // 32 * (2 * planes + 1) * 16


def quantize_x(
    kern: Kernels,
    *,
    x: Buffer,
    xq: Buffer,
    state: Buffer,
    k: int,
    x_stride: int | None = None,
    norm_w: Buffer | None = None,
    eps: float = 0.0,
    attn_ml: Buffer | None = None,
    n_splits: int = 0,
    head_dim: int = 0,
    contiguous: bool = False,
    label: str = "xq",
) -> Launch:
    """The step's last token of x (k features; normed with ``norm_w``, or merged from split attention output with
    ``attn_ml`` as matmul does) into ``xq`` as kern.act_planes integer planes for GEMV_MRQ (matmul.wgsl XQ_PACK):
    each 32-block x ~ dx X, X of 1 signed byte (int8 rounding) or 3 (below 2^-23 of the block's largest value).
    ``contiguous``: the planes in element order (XQ_CONTIGUOUS, for the weights of Q8_CONTIGUOUS), else even / odd."""
    if xq.size < xq_bytes(k, kern.act_planes):
        raise ValueError(f"{label}: xq holds {xq.size} bytes, {xq_bytes(k, kern.act_planes)} needed")
    defines: dict[str, object] = {"XQ_PACK": 1, "WG": XQ_WG, "EPI": "XQ", "PLANES": f"{kern.act_planes}u"}
    entries = [
        _uniform_entry(
            kern,
            params.MATMUL,
            f"{label}.params",
            k_blocks=k // 32,
            x_stride=x_stride if x_stride is not None else k,
            eps=eps,
            head_dim=head_dim,
            n_splits=n_splits,
        ),
        _whole(1, state),
        _whole(2, x),
        _whole(6, xq),
    ]
    if contiguous:
        defines["XQ_CONTIGUOUS"] = 1
    if norm_w is not None:
        defines["NORM"] = 1
        entries.append(_whole(5, norm_w))
    if attn_ml is not None:
        assert head_dim and n_splits, "split attention input needs head_dim and n_splits"
        defines.update(ATTN_IN=1, SPLIT_MIN=f"{kern.split_min_keys}u")
        entries.append(_whole(9, attn_ml))
    pipe = kern.pipeline("matmul.wgsl", **defines)
    bg = kern.device.create_bind_group(pipe, entries, label)
    fixed = fold_grid(math.ceil(k // 32 / (XQ_WG // 8)))
    return Launch(pipe, bg, lambda n_tokens: fixed, label)


def matmul(
    kern: Kernels,
    *,
    w: Weight,
    x: Buffer,
    out: Buffer,
    state: Buffer,
    epi: str,
    gemm: bool,
    x_stride: int | None = None,
    out_stride: int | None = None,
    norm_w: Buffer | None = None,
    eps: float = 0.0,
    kv: Buffer | None = None,
    rope_freq: Buffer | None = None,
    n_q: int = 0,
    n_kv: int = 0,
    head_dim: int = 0,
    max_ctx: int = 0,
    rope_dims: int = 0,
    attn_ml: Buffer | None = None,
    n_splits: int = 0,
    argmax_out: Buffer | None = None,
    bias: Buffer | None = None,
    softcap: float = 0.0,
    qk_out: bool = False,
    gemv: GemvConfig | None = None,
    row0: int = 0,
    best0: int = 0,
    xq_contiguous: bool = False,
    label: str = "matmul",
) -> Launch:
    """out = epilogue(W @ norm(x) + bias); see matmul.wgsl for the variants.

    With ``attn_ml`` (decode only), x is split attention output: (n_heads, n_splits, head_dim) partial sums with their
    (max, sum) pairs in ``attn_ml``, merged as they are loaded. With ``argmax_out`` (decode, STORE: the LM head),
    each workgroup also writes its best (f32 bits, row) pair there: ceil(n_rows / gemv.rows_per_workgroup) pairs.
    ``row0``: ``w`` is a part of a RowSplit whose row 0 is row ``row0`` of the whole product (every epilogue places
    and treats its rows as the whole product's: q/k/v by row, gate/up pairs at row / 2, biases by row; matmul_parts);
    ``best0`` (ARGMAX): its argmax pairs (rows counted in the whole matrix) go from argmax_out[best0] on.
    ``softcap`` > 0 caps every result (c * tanh(y / c)). ``qk_out`` (QKV): q and k rows go to ``out`` unrotated,
    (n_tokens, n_q + n_kv), for ``qk_norm``; only v goes to the cache. On GEMV_MRQ, x is integer planes (quantize_x;
    ``xq_contiguous``: in element order, as planes_input chose for the whole product)."""
    gemv = gemv or kern.gemv
    if not gemm and gemv.variant == "GEMV_MRQ" and not q8_fits(kern, w, gemv):
        gemv = replace(gemv, variant="GEMV_MR")
    # x is integer planes (quantize_x): no norm, no merge here
    planes = not gemm and gemv.variant == "GEMV_MRQ"
    assert not planes or (norm_w is None and attn_ml is None), "GEMV_MRQ reads x as planes: see matmul_parts"
    gemm_variant, gemm_wg = kern.gemm_variant, kern.gemm_wg
    if gemm and gemm_variant == "GEMM_RT" and min(w.n_rows, w.k) < kern.gemm_rt_min_dim:
        gemm_variant, gemm_wg = "GEMM", 256
    defines: dict[str, object] = {"WG": gemm_wg if gemm else gemv.wg, "EPI": epi, **weight_defines(w)}
    if gemm:
        defines[gemm_variant] = 1
        if gemm_variant == "GEMM_RT" and kern.gemm_f16 and kern.tier.f16:
            defines["RT_HALF"] = 1
    elif gemv.variant in MR_VARIANTS:
        defines.update(GEMV_MR=1, **MR_VARIANTS[gemv.variant])
        if planes:
            defines["PLANES"] = f"{kern.act_planes}u"
            if xq_contiguous:
                defines["XQ_CONTIGUOUS"] = 1
    else:
        defines[gemv.variant] = 1
    if not gemm and gemv.variant == "GEMV_SEG":
        defines["SEG"] = gemv.seg
        defines["KQ"] = w.k // 4
    if not gemm and gemv.variant in MR_VARIANTS:
        if gemv.rt % 2 or gemv.rows_per_workgroup < 4 or gemv.wg % gemv.seg:
            raise ValueError(
                f"GEMV_MR shape {gemv.label()}: rt even, seg divides wg, at least 4 rows a workgroup"
            )
        defines.update(TK=gemv.seg, RT=gemv.rt, KB=w.k_blocks)
        if kern.tier.subgroups and gemv.seg <= kern.subgroup_min:
            defines["MR_SHUFFLE"] = 1
    if norm_w is not None:
        defines["NORM"] = 1
    if bias is not None:
        assert argmax_out is None, "the argmax partials see results before the bias"
        defines["BIAS"] = 1
    if softcap:
        defines["SOFTCAP"] = 1
    if qk_out:
        assert epi == "QKV", "QK_OUT is a variant of the QKV epilogue"
        defines["QK_OUT"] = 1
    if attn_ml is not None:
        assert not gemm and head_dim and n_splits, "split attention input is a decode (GEMV) feature"
        defines["ATTN_IN"] = 1
        defines["SPLIT_MIN"] = f"{kern.split_min_keys}u"
    if argmax_out is not None:
        assert not gemm and epi == "STORE", "argmax partials are a decode (GEMV) STORE feature"
        defines["ARGMAX"] = 1
    pipe = kern.pipeline("matmul.wgsl", **defines)
    if out_stride is None:  # outputs of a token are contiguous
        out_stride = default_out_stride(epi, w.n_rows, n_q, n_kv, qk_out)
    entries = [
        _uniform_entry(
            kern,
            params.MATMUL,
            f"{label}.params",
            n_rows=w.n_rows,
            k_blocks=w.k_blocks,
            x_stride=x_stride if x_stride is not None else w.k,
            out_stride=out_stride,
            eps=eps,
            n_q=n_q,
            n_kv=n_kv,
            head_dim=head_dim,
            max_ctx=max_ctx,
            rope_dims=rope_dims,
            n_splits=n_splits,
            softcap=softcap,
            row0=row0,
            best0=best0,
            **_segment_params(w),
        ),
        _whole(1, state),
        _whole(2, x),
        _whole(3, w.q),
        _whole(6, out),
    ]
    if norm_w is not None:
        entries.append(_whole(5, norm_w))
    if epi == "QKV":
        assert kv is not None and (rope_freq is not None or qk_out)
        entries.append(_whole(7, kv))
        if not qk_out:
            entries.append(_whole(8, rope_freq))
    if bias is not None:
        entries.append(_whole(11, bias))
    if attn_ml is not None:
        entries.append(_whole(9, attn_ml))
    if argmax_out is not None:
        entries.append(_whole(10, argmax_out))
    storage = len(entries) - 2  # bindings 0 and 1 are uniforms
    if storage > kern.device.caps.max_storage_buffers_per_shader_stage:
        raise DeviceLimitError(
            f"{label}: this product needs {storage} storage buffers but this GPU allows "
            f"{kern.device.caps.max_storage_buffers_per_shader_stage} per shader stage (maxStorageBuffersPerShaderStage)"
        )
    bg = kern.device.create_bind_group(pipe, entries, label)
    if gemm:
        rows, tokens = GEMM_TILE, GEMM_TILE
        if gemm_variant == "GEMM_RT":
            rows, tokens = gemm_wg, GEMM_RT_TOKENS
        row_tiles = math.ceil(w.n_rows / rows)

        def grid(n_tokens: int) -> tuple[int, int, int]:
            return (row_tiles, math.ceil(n_tokens / tokens), 1)

    else:
        fixed = fold_grid(math.ceil(w.n_rows / gemv.rows_per_workgroup))

        def grid(n_tokens: int) -> tuple[int, int, int]:
            return fixed

    return Launch(pipe, bg, grid, label)


def default_out_stride(epi: str, n_rows: int, n_q: int = 0, n_kv: int = 0, qk_out: bool = False) -> int:
    """Elements between tokens of a product's output when they are contiguous: a product of ``n_rows`` rows."""
    return {"SILU": n_rows // 2, "GELU": n_rows // 2, "QKV": n_q + n_kv if qk_out else n_q}.get(epi, n_rows)


def planes_input(
    kern: Kernels, w: RowSplit | Weight, options: dict[str, object], xq: Buffer | None
) -> tuple[Launch, ...]:
    """For a decode product that reads x as integer planes (uses_planes): the quantize_x launch that must run first,
    taking the RMSNorm and the attention-split merge out of ``options`` and pointing its x at ``xq`` (changed in
    place). Otherwise nothing; a GEMV_MRQ shape that some row part cannot run becomes GEMV_MR of the same shape for
    every part (the choice is the product's, so no part reads planes that were never packed)."""
    gemv: GemvConfig = options.get("gemv") or kern.gemv  # type: ignore[assignment]
    if options.get("gemm"):
        return ()
    if not uses_planes(kern, w, gemv):
        if gemv.variant == "GEMV_MRQ":
            options["gemv"] = replace(gemv, variant="GEMV_MR")
        return ()
    if xq is None:
        raise ValueError("a GEMV_MRQ product needs an xq buffer for its integer planes (ops.xq_bytes)")
    merge = options.pop("attn_ml", None)
    pre = quantize_x(
        kern,
        x=options["x"],  # type: ignore[arg-type]
        xq=xq,
        state=options["state"],  # type: ignore[arg-type]
        k=w.k,
        x_stride=options.get("x_stride"),  # type: ignore[arg-type]
        norm_w=options.pop("norm_w", None),  # type: ignore[arg-type]
        eps=float(options.pop("eps", 0.0)),  # type: ignore[arg-type]
        attn_ml=merge,  # type: ignore[arg-type]
        n_splits=int(options.pop("n_splits", 0)) if merge is not None else 0,  # type: ignore[arg-type]
        head_dim=int(options.get("head_dim", 0)),  # type: ignore[arg-type]
        contiguous=contiguous_planes(w),
        label=f"{options.get('label', 'matmul')}.xq",
    )
    options["x"] = xq
    options["x_stride"] = None
    # every row part reads the planes in the order quantize_x writes them
    options["xq_contiguous"] = contiguous_planes(w)
    return (pre,)


def matmul_parts(
    kern: Kernels, *, w: RowSplit | Weight, epi: str, xq: Buffer | None = None, **options: object
) -> tuple[Launch, ...]:
    """``matmul`` of every row part of ``w`` (one launch each, results at the part's rows: ``row0``), with the
    output layout of the whole product; ``options`` as matmul's. A decode product on GEMV_MRQ starts with the
    quantize_x launch that fills ``xq`` (planes_input)."""
    if isinstance(w, Weight):
        w = RowSplit((w,), (0,))
    pre = planes_input(kern, w, options, xq)
    if options.get("out_stride") is None:
        options["out_stride"] = default_out_stride(
            epi,
            w.n_rows,
            int(options.get("n_q", 0)),
            int(options.get("n_kv", 0)),
            bool(options.get("qk_out")),
        )
    return pre + tuple(matmul(kern, w=part, epi=epi, row0=first, **options) for first, part in w.row_parts())


@dataclass(frozen=True)
class FusedQKV:
    """The QKV projection fused in front of decode attention (attention.wgsl QKV_IN): the stacked [Wq; Wk; Wv] weight,
    the residual stream it reads, the layer's RMSNorm weight and the RoPE parameters."""

    w: Weight
    x: Buffer  # (H,) f32 residual stream
    norm_w: Buffer  # (H,) f32
    rope_freq: Buffer  # (rope_dims / 2,) f32
    rope_dims: int
    eps: float


FUSED_TILE = 256  # key positions per tile in the fused kernel (its workgroup memory also holds x)


def attention_wg(kern: Kernels, head_dim: int) -> int:
    """Invocations of an attention.wgsl workgroup: kern.attention_wg, raised to a power of two >= head_dim."""
    return 1 << (max(kern.attention_wg, head_dim) - 1).bit_length()


def fused_attention_fits(kern: Kernels, hidden: int, head_dim: int) -> bool:
    """Whether attention.wgsl QKV_IN's workgroup memory (x, the head's rows, the tile's scores, reductions) fits."""
    wg = attention_wg(kern, head_dim)
    need = 4 * (hidden + 6 * head_dim + FUSED_TILE + wg + 4 * wg)  # ... + reductions (f32 and vec4)
    return hidden % 32 == 0 and need <= kern.device.caps.max_compute_workgroup_storage_size


def attention(
    kern: Kernels,
    *,
    q: Buffer | None,
    kv: Buffer,
    out: Buffer,
    state: Buffer,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    max_ctx: int,
    ml: Buffer | None = None,
    n_splits: int = 1,
    fused: FusedQKV | None = None,
    flash: bool = False,
    scale: float | None = None,
    window: int = 0,
    softcap: float = 0.0,
    label: str = "attention",
) -> Launch:
    """Causal GQA attention. With ``ml`` (decode), the keys are cut into ``n_splits`` splits: ``out`` receives
    (n_heads, n_splits, head_dim) partial sums and ``ml`` their (max, sum) pairs, for matmul(attn_ml=...).
    Without, one workgroup per (head, token) writes the normalized output; with ``flash`` (prefill), tiled flash
    attention (flash_attention.wgsl) does, each key tile loaded once for ``kern.flash_queries`` queries.
    With ``fused`` (decode only), the kernel computes q, k and v itself from the residual stream and appends k and v
    to the cache (``q`` unused). Scores are (q . k) * ``scale`` (default 1 / sqrt(head_dim)), soft-capped with
    ``softcap`` > 0; ``window`` > 0 hides keys ``window`` or more positions before the query."""
    if head_dim % 4 or not 4 <= head_dim <= 256:
        raise UnsupportedModelError(
            f"head_dim {head_dim} is not supported by the attention kernel (a multiple of 4, at most 256)"
        )
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    if flash:
        assert ml is None and fused is None, "flash attention is the prefill kernel"
        return _flash_attention(
            kern, q=q, kv=kv, out=out, state=state, n_heads=n_heads, n_kv_heads=n_kv_heads,
            head_dim=head_dim, max_ctx=max_ctx, scale=scale, window=window, softcap=softcap, label=label,
        )  # fmt: skip
    defines: dict[str, object] = {
        "WG": attention_wg(kern, head_dim), "HD": head_dim, "TILE": ATTENTION_TILE,
        "SPLIT_MIN": f"{kern.split_min_keys}u",
    }  # fmt: skip
    if softcap:
        defines["SOFTCAP"] = 1
    if ml is not None:
        defines["SPLIT"] = 1
    if fused is not None:
        assert ml is not None, "the fused QKV projection is a decode (split attention) feature"
        _single_format(fused.w, "the fused QKV projection")
        defines.update(QKV_IN=1, XK4=fused.w.k // 4, TILE=FUSED_TILE, **weight_defines(fused.w))
    pipe = kern.pipeline("attention.wgsl", **defines)
    entries = [
        _uniform_entry(
            kern,
            params.ATTENTION,
            f"{label}.params",
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            max_ctx=max_ctx,
            q_stride=n_heads * head_dim,
            scale=scale,
            window=window,
            rope_dims=fused.rope_dims if fused else 0,
            eps=fused.eps if fused else 0.0,
            softcap=softcap,
        ),
        _whole(1, state),
        _whole(2, fused.x if fused else q),
        _whole(3, kv),
        _whole(4, out),
    ]
    if ml is not None:
        entries.append(_whole(5, ml))
    else:
        n_splits = 1
    if fused is not None:
        entries += [_whole(6, fused.w.q), _whole(8, fused.norm_w), _whole(9, fused.rope_freq)]
    bg = kern.device.create_bind_group(pipe, entries, label)
    return Launch(pipe, bg, lambda n_tokens: (n_heads, n_tokens, n_splits), label)


def flash_tiles(kern: Kernels, head_dim: int) -> tuple[int, int, int]:
    """(invocations, queries per tile BR, keys per tile BC) of flash_attention.wgsl for this head size: BR =
    ``kern.flash_queries`` queries, one invocation per (query, 4 features), key tiles of at most 8 KiB of f32."""
    hd4 = head_dim // 4
    br = max(1, min(kern.flash_queries, 1024 // head_dim))  # the query tile within 4 KiB, BR x HD/4 <= 256
    wg = 1 << max(5, (br * hd4 - 1).bit_length())  # a power of two >= BR x HD/4, at least 32
    bc = min(64, 2048 // head_dim)
    return wg, br, bc


def _flash_attention(
    kern: Kernels,
    *,
    q: Buffer,
    kv: Buffer,
    out: Buffer,
    state: Buffer,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    max_ctx: int,
    scale: float,
    window: int,
    softcap: float,
    label: str,
) -> Launch:
    wg, br, bc = flash_tiles(kern, head_dim)
    defines: dict[str, object] = {"WG": wg, "HD": head_dim, "BR": br, "BC": bc}
    if softcap:
        defines["SOFTCAP"] = 1
    pipe = kern.pipeline("flash_attention.wgsl", **defines)
    entries = [
        _uniform_entry(
            kern,
            params.FLASH_ATTENTION,
            f"{label}.params",
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            max_ctx=max_ctx,
            q_stride=n_heads * head_dim,
            scale=scale,
            window=window,
            softcap=softcap,
        ),
        _whole(1, state),
        _whole(2, q),
        _whole(3, kv),
        _whole(4, out),
    ]
    bg = kern.device.create_bind_group(pipe, entries, label)
    return Launch(pipe, bg, lambda n_tokens: (n_heads, math.ceil(n_tokens / br), 1), label)


def embed(
    kern: Kernels,
    *,
    w: Weight,
    tokens: Buffer,
    out: Buffer,
    state: Buffer,
    scale: float = 1.0,
    row0: int = 0,
    label: str = "embed",
) -> Launch:
    """out[t] = row tokens[t] of the embedding ``w``, times ``scale``. ``w`` may be one part of a RowSplit, holding
    rows [row0, row0 + w.n_rows): then only the tokens of those ids are written (one launch per part)."""
    wg = 64
    _single_format(w, "the embedding gather")
    defines: dict[str, object] = {"WG": wg, **weight_defines(w)}
    pipe = kern.pipeline("embed.wgsl", **defines)
    entries = [
        _uniform_entry(
            kern,
            params.EMBED,
            f"{label}.params",
            k_blocks=w.k_blocks,
            out_stride=w.k,
            scale=scale,
            row0=row0,
            n_rows=w.n_rows,
        ),  # fmt: skip
        _whole(1, state),
        _whole(2, tokens),
        _whole(3, w.q),
        _whole(6, out),
    ]
    bg = kern.device.create_bind_group(pipe, entries, label)
    x_groups = math.ceil(w.k // 4 / wg)
    return Launch(pipe, bg, lambda n_tokens: (x_groups, n_tokens, 1), label)


def qk_norm(
    kern: Kernels,
    *,
    src: Buffer,
    q: Buffer,
    kv: Buffer,
    state: Buffer,
    q_norm_w: Buffer,
    k_norm_w: Buffer,
    rope_freq: Buffer,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    max_ctx: int,
    rope_dims: int,
    eps: float,
    label: str = "qk_norm",
) -> Launch:
    """Per-head RMSNorm and RoPE of the raw q and k rows in ``src`` (matmul QKV with ``qk_out``): q -> ``q``, k -> the
    K cache at the step's positions (qk_norm.wgsl)."""
    wg = 1 << (max(64, head_dim // 2) - 1).bit_length()
    pipe = kern.pipeline("qk_norm.wgsl", WG=wg, HD=head_dim)
    entries = [
        _uniform_entry(
            kern,
            params.QK_NORM,
            f"{label}.params",
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            max_ctx=max_ctx,
            rope_dims=rope_dims,
            eps=eps,
        ),  # fmt: skip
        _whole(1, state),
        _whole(2, src),
        _whole(3, q),
        _whole(4, kv),
        _whole(5, q_norm_w),
        _whole(6, k_norm_w),
        _whole(7, rope_freq),
    ]
    bg = kern.device.create_bind_group(pipe, entries, label)
    return Launch(pipe, bg, lambda n_tokens: (n_heads + n_kv_heads, n_tokens, 1), label)


def norm_add(
    kern: Kernels, *, y: Buffer, x: Buffer, norm_w: Buffer, n: int, eps: float, label: str = "norm_add"
) -> Launch:
    """x[t] += RMSNorm(y[t]) * norm_w for each token t of the step (norm_add.wgsl); ``n`` features per token."""
    pipe = kern.pipeline("norm_add.wgsl", WG=1 << (kern.attention_wg - 1).bit_length())
    entries = [
        _uniform_entry(kern, params.NORM_ADD, f"{label}.params", n=n, eps=eps),
        _whole(2, y),
        _whole(3, x),
        _whole(4, norm_w),
    ]
    bg = kern.device.create_bind_group(pipe, entries, label)
    return Launch(pipe, bg, lambda n_tokens: (n_tokens, 1, 1), label)


class Sampler:
    """The sampling launch (sample.wgsl) and its per-request buffers.

    ``configure`` writes one request's knobs: Params, the logit-bias list, and, when a penalty is active, clears the
    token counts the kernel keeps (penalties count the tokens sampled in this request only, as WebLLM's: prompt
    tokens do not count). With ``logprobs`` the kernel also writes ``record``: the token, its log-probability and
    the ``top_logprobs`` most likely (id, log-probability) pairs, which the engine copies out next to the token id.

    Structured output: ``set_mask(bitmask)`` writes a grammar's allowed tokens (``mask_bytes(vocab)``: one bit per
    id, little-endian u32 words) and turns masking on; ``set_mask(None)`` turns it off. Either is a queue write,
    ordered with the submissions around it, so a step submitted after it samples under the new mask.
    """

    MAX_BIAS = 300  # (id, bias) pairs of one request's logit_bias (OpenAI's limit)
    MAX_TOP_LOGPROBS = 20
    RECORD_BYTES = 4 * (2 + 2 * MAX_TOP_LOGPROBS)  # (token u32, logprob f32, (id u32, logprob f32) x 20)

    @staticmethod
    def logits_bytes(vocab: int) -> int:
        """Size of the logits buffer: (vocab,) f32 padded to whole vec4s, which the kernel reads."""
        return -(-vocab // 4) * 16

    @staticmethod
    def mask_bytes(vocab: int) -> int:
        """Size of a token mask: ceil(vocab / 32) u32 words."""
        return -(-vocab // 32) * 4

    @staticmethod
    def partials_bytes(vocab: int) -> int:
        """Size of a buffer for the LM head's argmax partials, whatever its kernel shape (GEMV: 4 rows a workgroup,
        the fewest; a RowSplit's parts but the last are whole workgroups of every shape, so they need no more)."""
        return -(-vocab // 4) * 8

    @classmethod
    def buffer_bytes(cls, vocab: int) -> int:
        """GPU memory a Sampler holds for ``vocab`` tokens (its partials buffer of partials_bytes included)."""
        return (
            params.SAMPLE.size + vocab * 4 + cls.MAX_BIAS * 8 + cls.RECORD_BYTES + cls.partials_bytes(vocab)
        )

    @property
    def nbytes(self) -> int:
        return sum(b.size for b in (self.params, self.counts, self.bias, self.record, self.partials))

    def __init__(
        self,
        kern: Kernels,
        *,
        logits: Buffer,
        tokens: Buffer,
        state: Buffer,
        vocab: int,
        partials: Buffer | None = None,
    ):
        if logits.size < self.logits_bytes(vocab):
            raise ValueError(
                f"logits buffer of {logits.size} bytes; {vocab} logits need {self.logits_bytes(vocab)}"
            )
        self.kern = kern
        self.vocab = vocab
        dev = kern.device
        self.params = dev.create_buffer(
            params.SAMPLE.size, BufferUsage.UNIFORM | BufferUsage.COPY_DST, "sample.params"
        )
        self.counts = dev.create_buffer(vocab * 4, STORAGE, "sample.counts")  # (vocab,) u32
        self.bias = dev.create_buffer(self.MAX_BIAS * 8, STORAGE, "sample.bias")  # (300,) (u32 id, f32 bias)
        self.record = dev.create_buffer(self.RECORD_BYTES, STORAGE, "sample.record")
        # (n_best,) (f32 bits, id) pairs the LM head writes (matmul argmax_out); greedy reads them once
        # use_partials says how many there are.
        self.partials = partials or dev.create_buffer(8, STORAGE, "sample.partials")
        self.n_best = 0
        # (ceil(vocab / 32),) u32: bit i % 32 of word i // 32 set = token i allowed; read only while masked.
        self.mask = dev.create_buffer(self.mask_bytes(vocab), STORAGE, "sample.mask")
        self.masked = False
        dev.write_buffer(self.counts, 0, bytes(vocab * 4))
        self.configure(temperature=0.0, top_p=1.0, seed=0)
        pipe = kern.pipeline("sample.wgsl", WG=kern.sample_wg)
        entries = [
            (0, self.params, 0, params.SAMPLE.size),
            _whole(1, state),
            _whole(2, logits),
            _whole(3, tokens),
            _whole(4, self.counts),
            _whole(5, self.bias),
            _whole(6, self.record),
            _whole(7, self.partials),
            _whole(8, self.mask),
        ]
        bg = dev.create_bind_group(pipe, entries, "sample")
        self.launch = Launch(pipe, bg, lambda n_tokens: (1, 1, 1), "sample")

    def configure(
        self,
        *,
        temperature: float,
        top_p: float,
        seed: int,
        top_k: int = 0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        logit_bias: Sequence[tuple[int, float]] = (),
        logprobs: bool = False,
        top_logprobs: int = 0,
    ) -> None:
        """Set one request's sampling. ``logit_bias``: (token id, bias) pairs with distinct ids < vocab."""
        if len(logit_bias) > self.MAX_BIAS:
            raise ValueError(f"at most {self.MAX_BIAS} logit_bias entries; got {len(logit_bias)}")
        if not 0 <= top_logprobs <= self.MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {self.MAX_TOP_LOGPROBS}]; got {top_logprobs}")
        ids = [i for i, _ in logit_bias]
        if len(set(ids)) != len(ids) or any(not 0 <= i < self.vocab for i in ids):
            raise ValueError(f"logit_bias ids must be distinct and in [0, {self.vocab}); got {ids}")
        penalize = presence_penalty != 0.0 or frequency_penalty != 0.0 or repetition_penalty != 1.0
        dev = self.kern.device
        if penalize:
            dev.write_buffer(self.counts, 0, bytes(self.vocab * 4))
        if logit_bias:
            dev.write_buffer(self.bias, 0, b"".join(struct.pack("<If", i, b) for i, b in logit_bias))
        data = params.SAMPLE.pack(
            vocab=self.vocab,
            temperature=temperature,
            top_p=top_p,
            seed=seed & 0xFFFFFFFF,
            top_k=top_k,
            presence=presence_penalty,
            frequency=frequency_penalty,
            repetition=repetition_penalty,
            n_bias=len(logit_bias),
            penalize=int(penalize),
            n_top=top_logprobs if logprobs else 0,
            logprobs=int(logprobs),
            n_best=self.n_best,
            masked=int(self.masked),
        )
        dev.write_buffer(self.params, 0, data)

    def use_partials(self, n_best: int) -> None:
        """Greedy requests (no bias, penalty or logprobs) take the argmax of the first ``n_best`` entries of
        ``partials``, which the LM head launch writes every step; 0 goes back to reading the logits."""
        if not 0 <= n_best <= self.partials.size // 8:
            raise ValueError(f"{n_best} argmax partials; the buffer holds {self.partials.size // 8}")
        self.n_best = n_best
        offset = 4 * [name for name, _ in params.SAMPLE.fields].index("n_best")
        self.kern.device.write_buffer(self.params, offset, struct.pack("<I", n_best))

    def set_mask(self, bitmask: bytes | None) -> None:
        """Sample only the ids whose bit is set in ``bitmask`` (``mask_bytes(vocab)`` bytes, see the class doc) from
        the next submitted step on; None: every id again. Only a change of on/off rewrites Params."""
        dev = self.kern.device
        if bitmask is not None:
            if len(bitmask) != self.mask.size:
                raise ValueError(
                    f"a token mask of {len(bitmask)} bytes; {self.vocab} ids need {self.mask.size}"
                )
            dev.write_buffer(self.mask, 0, bitmask)
        on = bitmask is not None
        if on != self.masked:
            self.masked = on
            offset = 4 * [name for name, _ in params.SAMPLE.fields].index("masked")
            dev.write_buffer(self.params, offset, struct.pack("<I", int(on)))

    @staticmethod
    def parse_record(data: bytes, top_logprobs: int) -> tuple[int, float, list[tuple[int, float]]]:
        """(token, its log-probability, [(id, log-probability)] x top_logprobs) from the bytes of ``record``."""
        token, logprob = struct.unpack_from("<If", data, 0)
        top = [struct.unpack_from("<If", data, 8 + 8 * j) for j in range(top_logprobs)]
        return token, logprob, top


def f32_bytes(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)
