"""The GPU device protocol the engine depends on; ``host/native.py`` and ``host/browser.py`` implement it.

The protocol is deliberately small and shaped for one pattern: build every buffer, pipeline and bind group once at
load, then per step hand the whole list of dispatches to ``submit`` (one command encoder, one compute pass, then
any buffer copies, one queue submission) and read back a few bytes from a MAP_READ buffer.

Creation calls are synchronous because they are synchronous in WebGPU too (createBuffer, createBindGroup,
writeBuffer, submit); only reading back is async, because nothing in a browser may block on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class BufferUsage:
    """GPUBufferUsage flag values (identical in WebGPU and wgpu-py)."""

    MAP_READ = 0x0001
    MAP_WRITE = 0x0002
    COPY_SRC = 0x0004
    COPY_DST = 0x0008
    UNIFORM = 0x0040
    STORAGE = 0x0080
    INDIRECT = 0x0100


@dataclass(eq=False)
class Buffer:
    """A GPU buffer: the host's object (wgpu-py or a JS proxy) with the size and label we gave it."""

    handle: Any
    size: int  # bytes
    label: str
    usage: int


# Opaque host objects: a wgpu-py object natively, a JS proxy (or an index into a JS-side table) in the browser.
Pipeline = Any
BindGroup = Any

# One dispatch: (pipeline, bind group, workgroups x, y, z).
Dispatch = tuple[Pipeline, BindGroup, int, int, int]
# One copy after the compute pass: (src buffer, src offset, dst buffer, dst offset, size in bytes).
Copy = tuple[Buffer, int, Buffer, int, int]
# One bind group entry: (binding index, buffer, offset in bytes, size in bytes).
Binding = tuple[int, Buffer, int, int]
# A dispatch list handed to the host once (Device.prepare) and submitted many times: the decode step. Natively a
# list; in the browser an index into a JavaScript-side table, so a step costs one call with no conversion.
Prepared = Any
# A prepared step encoded into a command buffer but not yet submitted (Device.encode).
Encoded = Any


class BufferLedger:
    """A device's live buffers in creation order (hosts' devices inherit it), so a load that fails frees exactly the
    buffers it made, and a model that unloads frees its own, on a device other models share: ``buffer_mark`` before,
    ``buffers_since`` after. Also counts live and peak bytes (load_stats, memory checks)."""

    def __init__(self) -> None:
        self.allocated_bytes = 0  # live buffer bytes
        self.peak_allocated_bytes = 0
        self._live: dict[int, tuple[int, Buffer]] = {}  # id(buffer) -> (serial, buffer)
        self._serial = 0

    def _track(self, buf: Buffer) -> None:
        self._live[id(buf)] = (self._serial, buf)
        self._serial += 1
        self.allocated_bytes += buf.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)

    def _untrack(self, buf: Buffer) -> bool:
        """Forget ``buf``; False when it was not live (destroyed already: nothing to do)."""
        if self._live.pop(id(buf), None) is None:
            return False
        self.allocated_bytes -= buf.size
        return True

    def buffer_mark(self) -> int:
        """A mark: buffers created from now on are ``buffers_since(mark)``."""
        return self._serial

    def buffers_since(self, start: int, end: int | None = None) -> list[Buffer]:
        """Live buffers created between two marks (``end`` None: until now)."""
        stop = self._serial if end is None else end
        return [b for serial, b in self._live.values() if start <= serial < stop]


@dataclass(frozen=True)
class DeviceCaps:
    """What the adapter granted us; the kernel tier and every kernel variant are chosen from this."""

    has_f16: bool  # WebGPU feature "shader-f16"
    has_subgroups: bool  # WebGPU feature "subgroups" (wgpu-native: "subgroup")
    max_storage_buffer_binding_size: int  # bytes
    max_buffer_size: int  # bytes
    max_compute_workgroup_storage_size: int  # bytes
    max_compute_invocations_per_workgroup: int
    max_storage_buffers_per_shader_stage: int
    min_storage_buffer_offset_alignment: int  # bytes
    min_uniform_buffer_offset_alignment: int  # bytes
    max_compute_workgroups_per_dimension: int
    max_compute_workgroup_size_x: int = 256  # largest @workgroup_size(x)
    # WGSL directives this host's compiler needs for the features above: Tint requires `enable subgroups;`,
    # naga rejects it. Emitted by the preprocessor, never written in a shader.
    wgsl_enables_subgroups: bool = False
    subgroup_min_size: int = 0
    subgroup_max_size: int = 0
    # Shader modules are compiled without the WGSL compiler's run-time checks (index clamps, loop counters): desktop
    # GPUs through wgpu-native (host/native.py). A browser's Tint always adds its own.
    unchecked_shaders: bool = False
    # WGSL's dot4I8Packed (language feature packed_4x8_integer_dot_product): naga has it; browsers say through
    # navigator.gpu.wgslLanguageFeatures. The integer-activation decode kernel (GEMV_MRQ) needs it.
    packed_int_dot: bool = False
    # GPU memory the host says is free for us, in bytes, and where the number comes from; None where it cannot tell
    # (WebGPU has no memory query: model/memory.py says what is checked then).
    memory_bytes: int | None = None
    memory_source: str = ""


@dataclass(frozen=True)
class AdapterInfo:
    vendor: str = ""
    architecture: str = ""
    device: str = ""
    description: str = ""
    backend: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [p for p in (self.vendor, self.device or self.architecture, self.backend) if p]
        return " / ".join(parts) or "unknown adapter"


class Device(Protocol):
    """An open WebGPU device."""

    caps: DeviceCaps
    info: AdapterInfo
    host: str  # "native" or "browser"

    def create_buffer(self, size: int, usage: int, label: str) -> Buffer: ...

    def write_buffer(self, buffer: Buffer, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def create_pipeline(self, code: str, label: str) -> Pipeline:
        """A compute pipeline with entry point ``main`` and an automatic layout of bind group 0."""
        ...

    def create_bind_group(self, pipeline: Pipeline, entries: Sequence[Binding], label: str) -> BindGroup: ...

    def prepare(self, dispatches: Sequence[Dispatch]) -> Prepared:
        """Keep a dispatch list that will be submitted many times; ``len()`` of the result is its length."""
        ...

    def submit(self, dispatches: Sequence[Dispatch] | Prepared, copies: Sequence[Copy] = ()) -> None:
        """Encode all dispatches (a list, or what ``prepare`` returned) in one compute pass, then the copies, and
        submit once."""
        ...

    def encode(self, plan: Prepared, copies: Sequence[Copy] = ()) -> Encoded:
        """Encode a prepared dispatch list and its copies as ``submit`` would, without submitting: the decode loop
        builds the next step while the GPU still runs the current one, and submits it (``submit_encoded``) the
        moment the token it waited for is read. At most one encoded step at a time: encoding again may drop one
        that was never submitted."""
        ...

    def submit_encoded(self, encoded: Encoded) -> None:
        """Submit what ``encode`` returned (once)."""
        ...

    async def read_buffer(self, buffer: Buffer, offset: int, size: int) -> bytes:
        """Map a MAP_READ buffer, copy ``size`` bytes out, unmap. Waits only for the work that wrote it."""
        ...

    async def read_storage(self, buffer: Buffer, offset: int, size: int) -> bytes:
        """Read any COPY_SRC buffer (through a temporary staging buffer). For tests and rare reads only."""
        ...

    def pass_seconds(self, dispatches: Sequence[Dispatch]) -> float | None:
        """GPU seconds of one compute pass over ``dispatches`` by the GPU's own timestamps, or None where this host
        cannot time passes (the browser: timestamp queries are optional and quantized there)."""
        ...

    async def idle(self) -> None:
        """Wait until the GPU finished all submitted work; raise any error the host reported asynchronously
        (the browser reports shader compilation and validation errors that way)."""
        ...

    def destroy_buffer(self, buffer: Buffer) -> None: ...

    def destroy(self) -> None: ...
