"""Desktop host: the Device protocol over wgpu-py (wgpu-native: Vulkan, Metal, D3D12; lavapipe on CPU-only Linux)."""

from __future__ import annotations

import asyncio
import glob
import shutil
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import replace

from ..errors import DeviceLimitError, DeviceLostError, WebGPUNotAvailableError
from ..gpu.device import (
    AdapterInfo,
    BindGroup,
    Binding,
    Buffer,
    BufferLedger,
    BufferUsage,
    Copy,
    DeviceCaps,
    Dispatch,
    Pipeline,
)

try:
    import wgpu
    import wgpu.backends.wgpu_native._api as _wgpu_api
except ImportError as exc:  # pragma: no cover - depends on the install
    raise WebGPUNotAvailableError(
        "the desktop host needs wgpu-py: install it with `pip install 'webllm-py[native]'`"
    ) from exc

# Limits we ask for up to the adapter's maximum; kernels are generated for what is granted.
_WANTED_LIMITS = (
    "max-storage-buffer-binding-size",
    "max-buffer-size",
    "max-compute-workgroup-storage-size",
    "max-compute-invocations-per-workgroup",
    "max-storage-buffers-per-shader-stage",
    "max-compute-workgroup-size-x",
)

# Host-neutral names (DeviceCaps fields) of the limits a caller may set (open_device(limits=...)) -> wgpu-py's.
LIMIT_NAMES = {
    "max_storage_buffer_binding_size": "max-storage-buffer-binding-size",
    "max_buffer_size": "max-buffer-size",
    "max_compute_workgroup_storage_size": "max-compute-workgroup-storage-size",
    "max_compute_invocations_per_workgroup": "max-compute-invocations-per-workgroup",
    "max_storage_buffers_per_shader_stage": "max-storage-buffers-per-shader-stage",
    "max_compute_workgroup_size_x": "max-compute-workgroup-size-x",
}

# WebGPU's spec defaults: what a browser device gets unless it asks for more. Tests can open a device with these to
# check that kernels fit the browser baseline.
SPEC_DEFAULT_LIMITS = {
    "max-storage-buffer-binding-size": 128 << 20,
    "max-buffer-size": 256 << 20,
    "max-compute-workgroup-storage-size": 16384,
    "max-compute-invocations-per-workgroup": 256,
    "max-storage-buffers-per-shader-stage": 8,
    "max-compute-workgroup-size-x": 256,
}


class NativeDevice(BufferLedger):
    host = "native"

    def __init__(
        self,
        adapter: wgpu.GPUAdapter,
        device: wgpu.GPUDevice,
        caps: DeviceCaps,
        info: AdapterInfo,
        trusted_shaders: bool = False,
    ):
        self.adapter = adapter
        # Shader modules made without naga's run-time checks (open_device's ``trusted_shaders``).
        self.trusted_shaders = trusted_shaders
        self.device = device
        self.queue = device.queue
        self.caps = caps
        self.info = info
        BufferLedger.__init__(self)  # live buffers, their bytes and the peak
        # MAP_READ buffer handle -> index of the last submission that copied into it (see read_buffer).
        self._written_by: dict[int, int] = {}
        # pass_seconds: a query set of two timestamps and the buffer they resolve into (None: no timestamp-query).
        self._timestamps = None
        if "timestamp-query" in set(device.features):
            self._timestamps = (
                device.create_query_set(type="timestamp", count=2),
                device.create_buffer(
                    size=16, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC
                ),
            )

    # ---- resources --------------------------------------------------------------------------------------------------

    def create_buffer(self, size: int, usage: int, label: str) -> Buffer:
        if size > self.caps.max_buffer_size:
            raise DeviceLimitError(
                f"buffer {label!r} needs {size} bytes but this GPU's maxBufferSize is {self.caps.max_buffer_size}"
            )
        # WebGPU wants buffer sizes in multiples of 4.
        size = max(4, -(-size // 4) * 4)
        buf = Buffer(self.device.create_buffer(size=size, usage=usage, label=label), size, label, usage)
        self._track(buf)
        return buf

    def write_buffer(self, buffer: Buffer, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.queue.write_buffer(buffer.handle, offset, data)

    def create_pipeline(self, code: str, label: str) -> Pipeline:
        if self.trusted_shaders:
            module = _trusted_module(self.device, code, label)
        else:
            module = self.device.create_shader_module(code=code, label=label)
        return self.device.create_compute_pipeline(
            layout="auto", compute={"module": module, "entry_point": "main"}, label=label
        )

    def create_bind_group(self, pipeline: Pipeline, entries: Sequence[Binding], label: str) -> BindGroup:
        return self.device.create_bind_group(
            layout=pipeline.get_bind_group_layout(0),
            entries=[
                {"binding": b, "resource": {"buffer": buf.handle, "offset": off, "size": size}}
                for b, buf, off, size in entries
            ],
            label=label,
        )

    # ---- execution --------------------------------------------------------------------------------------------------

    def prepare(self, dispatches: Sequence[Dispatch]) -> _Plan:
        return _Plan(dispatches)

    def submit(self, dispatches: Sequence[Dispatch], copies: Sequence[Copy] = ()) -> None:
        self.submit_encoded(self.encode(dispatches, copies))

    def encode(self, dispatches: Sequence[Dispatch], copies: Sequence[Copy] = ()) -> _Encoded:
        encoder = self.device.create_command_encoder()
        if dispatches:
            cpass = encoder.begin_compute_pass()
            if isinstance(dispatches, _Plan):
                # The decode step: straight calls into wgpu-native with the handles resolved once, which takes the
                # host's encoding time for a 153-dispatch step from milliseconds to a fraction of one.
                raw_pass = cpass._internal
                last = None
                for pipeline, bind_group, x, y, z in dispatches.raw:
                    if pipeline != last:
                        _set_pipeline(raw_pass, pipeline)
                        last = pipeline
                    _set_bind_group(raw_pass, 0, bind_group, 0, _NULL)
                    _dispatch(raw_pass, x, y, z)
            else:
                last_pipeline = None
                for pipeline, bind_group, x, y, z in dispatches:
                    if pipeline is not last_pipeline:
                        cpass.set_pipeline(pipeline)
                        last_pipeline = pipeline
                    cpass.set_bind_group(0, bind_group)
                    cpass.dispatch_workgroups(x, y, z)
            cpass.end()
        for src, src_off, dst, dst_off, size in copies:
            encoder.copy_buffer_to_buffer(src.handle, src_off, dst.handle, dst_off, size)
        readbacks = [copy[2].handle for copy in copies if copy[2].usage & BufferUsage.MAP_READ]
        return _Encoded(encoder.finish(), readbacks)

    def pass_seconds(self, dispatches: Sequence[Dispatch]) -> float | None:
        """GPU seconds of one compute pass over ``dispatches``, by timestamps the pass writes at its start and end
        (the adapter feature "timestamp-query", requested by open_device where the adapter has it); None without.
        Blocks until the pass has run: for load-time tuning, not for steps."""
        if self._timestamps is None:
            return None
        queries, resolved = self._timestamps
        encoder = self.device.create_command_encoder()
        cpass = encoder.begin_compute_pass(
            timestamp_writes={
                "query_set": queries,
                "beginning_of_pass_write_index": 0,
                "end_of_pass_write_index": 1,
            }
        )
        for pipeline, bind_group, x, y, z in dispatches:
            cpass.set_pipeline(pipeline)
            cpass.set_bind_group(0, bind_group)
            cpass.dispatch_workgroups(x, y, z)
        cpass.end()
        encoder.resolve_query_set(queries, 0, 2, resolved, 0)
        self.queue.submit([encoder.finish()])
        t0, t1 = struct.unpack("<2Q", bytes(self.queue.read_buffer(resolved, 0, 16)))
        return max(t1 - t0, 0) * 1e-9

    def submit_encoded(self, encoded: _Encoded) -> None:
        if encoded.command_buffer is None:
            raise RuntimeError("this encoded step was already submitted")
        # Submitted by index so that a later read waits for this submission only (read_buffer).
        index = _submit_for_index(
            self.queue._internal, 1, _ffi.new("WGPUCommandBuffer[1]", [encoded.command_buffer._internal])
        )
        encoded.command_buffer = None
        for handle in encoded.readbacks:
            self._written_by[id(handle)] = index

    async def read_buffer(self, buffer: Buffer, offset: int, size: int) -> bytes:
        # wgpu-native has no event loop integration, so yield once first to let other tasks run; then block.
        await asyncio.sleep(0)
        handle = buffer.handle
        index = self._written_by.pop(id(handle), None)
        if index is not None:
            return _map_read_after(self.device._internal, handle._internal, index, offset, size)
        # wgpu-py's map_sync: its poll thread waits for the newest submission, not the one that wrote the buffer.
        handle.map_sync(wgpu.MapMode.READ, offset, -(-size // 4) * 4)
        try:
            return bytes(handle.read_mapped(offset, size))
        finally:
            handle.unmap()

    async def read_storage(self, buffer: Buffer, offset: int, size: int) -> bytes:
        await asyncio.sleep(0)
        return bytes(self.queue.read_buffer(buffer.handle, offset, size))

    async def idle(self) -> None:
        # wgpu-py raises validation errors at the call that caused them, and the next map waits for the GPU; the
        # queue's work-done callback is broken in wgpu-py 0.32 (a ctypes signature mismatch).
        await asyncio.sleep(0)

    def destroy_buffer(self, buffer: Buffer) -> None:
        if self._untrack(buffer):  # once: a buffer a failed load and its owner's unload both free
            buffer.handle.destroy()

    def destroy(self) -> None:
        self.device.destroy()


# wgpu-native's C entry points (wgpu-py's cffi binding; pinned to wgpu 0.32 in pyproject.toml). The per-dispatch
# calls go to the bare cffi functions, not wgpu-py's error-capturing wrappers (`libf`: 0.9 us a call against 0.35 us,
# three calls per dispatch): wgpu-core only records pass commands there and validates them when the pass ends, and
# `cpass.end()` / `encoder.finish()` still go through wgpu-py, which raises what the validation finds.
_set_pipeline = _wgpu_api.lib.wgpuComputePassEncoderSetPipeline
_set_bind_group = _wgpu_api.lib.wgpuComputePassEncoderSetBindGroup
_dispatch = _wgpu_api.lib.wgpuComputePassEncoderDispatchWorkgroups
_NULL = _wgpu_api.ffi.NULL


_submit_for_index = _wgpu_api.libf.wgpuQueueSubmitForIndex
_ffi = _wgpu_api.ffi
_lib = _wgpu_api.lib


def _trusted_module(device: wgpu.GPUDevice, code: str, label: str) -> wgpu.GPUShaderModule:
    """A WGSL module made by wgpu-native's wgpuDeviceCreateShaderModuleTrusted with no run-time checks: naga then
    neither clamps indices nor counts every loop's iterations (its guard against infinite loops). Our kernels index
    within their bindings by construction (the kernel tests check every variant on lavapipe with the checks on) and
    every loop has a bound; the driver's robust buffer access, a device feature, still applies."""
    src = _ffi.new("WGPUShaderSourceWGSL *")
    code_c = _ffi.new("char[]", code.encode())
    src.chain.next = _ffi.NULL
    src.chain.sType = _lib.WGPUSType_ShaderSourceWGSL
    src.code.data = code_c
    src.code.length = len(code.encode())
    label_c = _ffi.new("char[]", label.encode())
    desc = _ffi.new("WGPUShaderModuleDescriptor *")
    desc.nextInChain = _ffi.cast("WGPUChainedStruct *", src)
    desc.label.data = label_c
    desc.label.length = len(label.encode())
    handle = _wgpu_api.libf.wgpuDeviceCreateShaderModuleTrusted(
        device._internal, desc, _lib.WGPUShaderRuntimeChecks_None
    )
    if handle == _ffi.NULL:
        raise RuntimeError(f"shader module {label!r} could not be created")
    return _wgpu_api.GPUShaderModule(label, handle, device)


_map_status: dict[int, int] = {}  # buffer handle address -> WGPUMapAsyncStatus, set by _on_mapped


@_ffi.callback("void(WGPUMapAsyncStatus, WGPUStringView, void *, void *)")
def _on_mapped(status, _message, userdata1, _userdata2):
    _map_status[int(_ffi.cast("uintptr_t", userdata1))] = status


def _map_read_after(device, buffer, index: int, offset: int, size: int) -> bytes:
    """Map ``buffer`` for reading once submission ``index`` (which wrote it) is done, copy ``size`` bytes out, unmap.

    The decode loop reads step N's token while step N+1 runs; waiting for the newest submission (as wgpu-py's poll
    thread does) would idle the GPU while the host encodes step N+2. Polling with the submission index waits for
    step N alone."""
    key = int(_ffi.cast("uintptr_t", buffer))
    _map_status.pop(key, None)
    aligned = -(-size // 4) * 4
    info = _ffi.new("WGPUBufferMapCallbackInfo *")
    info.mode = _lib.WGPUCallbackMode_AllowProcessEvents
    info.callback = _on_mapped
    info.userdata1 = _ffi.cast("void *", key)
    _wgpu_api.libf.wgpuBufferMapAsync(buffer, _lib.WGPUMapMode_Read, offset, aligned, info[0])
    wanted = _ffi.new("WGPUSubmissionIndex *", index)
    while key not in _map_status:  # the callback runs inside a poll (here, or on wgpu-py's poll thread)
        _wgpu_api.libf.wgpuDevicePoll(device, True, wanted)
        if key not in _map_status:
            _wgpu_api.libf.wgpuDevicePoll(device, False, _ffi.NULL)
    status = _map_status.pop(key)
    if status != _lib.WGPUMapAsyncStatus_Success:
        raise DeviceLostError(f"could not map a read-back buffer (WGPUMapAsyncStatus {status})")
    try:
        src = _wgpu_api.libf.wgpuBufferGetConstMappedRange(buffer, offset, aligned)
        return bytes(_ffi.buffer(src, size))
    finally:
        _wgpu_api.libf.wgpuBufferUnmap(buffer)


class _Encoded:
    """A command buffer NativeDevice.encode finished, and the MAP_READ buffers its copies write."""

    __slots__ = ("command_buffer", "readbacks")

    def __init__(self, command_buffer: wgpu.GPUCommandBuffer, readbacks: list[wgpu.GPUBuffer]):
        self.command_buffer: wgpu.GPUCommandBuffer | None = command_buffer
        self.readbacks = readbacks


class _Plan(list):
    """A dispatch list kept for many submissions, with its wgpu-native handles resolved once (``raw``)."""

    def __init__(self, dispatches: Sequence[Dispatch]):
        super().__init__(dispatches)
        # The wgpu-py objects stay referenced by this list, so the raw handles stay valid.
        self.raw = [(p._internal, bg._internal, x, y, z) for p, bg, x, y, z in self]


def _adapter_info(adapter: wgpu.GPUAdapter) -> AdapterInfo:
    raw = dict(adapter.info)
    return AdapterInfo(
        vendor=str(raw.get("vendor", "")),
        architecture=str(raw.get("architecture", "")),
        device=str(raw.get("device", "")),
        description=str(raw.get("description", "")),
        backend=str(raw.get("backend_type", "")),
        extra={k: v for k, v in raw.items() if isinstance(v, (str, int, float))},
    )


def _best_adapter(power_preference: str):
    """The adapter to run on: GPUs before CPU rasterizers, and a native backend (Vulkan, Metal, D3D12) before
    OpenGL, which wgpu-native also offers on Linux but without shader-f16 or subgroups. ``request_adapter`` alone
    was seen to return lavapipe's OpenGL twin instead of its Vulkan adapter on a loaded CI machine."""
    kinds = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "Unknown": 3, "CPU": 4}
    if power_preference == "low-power":
        kinds["IntegratedGPU"], kinds["DiscreteGPU"] = 0, 1

    def rank(adapter) -> tuple[int, int]:
        info = adapter.info
        backend = str(info.get("backend_type", ""))
        return (kinds.get(str(info.get("adapter_type", "Unknown")), 3), 1 if backend == "OpenGL" else 0)

    try:
        adapters = list(wgpu.gpu.enumerate_adapters_sync())
    except AttributeError:  # an old wgpu without enumeration: let it choose
        adapters = []
    if adapters:
        return min(adapters, key=rank)
    return wgpu.gpu.request_adapter_sync(power_preference=power_preference)


def _open_adapter(power_preference: str):
    adapter = _best_adapter(power_preference)
    if adapter is None:
        raise WebGPUNotAvailableError(
            "no WebGPU adapter found: install a Vulkan driver (on Linux without a GPU: `apt-get install "
            "mesa-vulkan-drivers` for the lavapipe CPU driver)"
        )
    return adapter


async def adapter_caps(*, power_preference: str = "high-performance") -> DeviceCaps:
    """What a device on the adapter open_device would pick could get (its maximum limits and features) and the
    GPU memory free on it, without opening a device: for checking a model before it is downloaded."""
    adapter = _open_adapter(power_preference)
    features = set(adapter.features)
    has_subgroups = "subgroup" in features or "subgroups" in features
    return _caps(adapter.limits, "shader-f16" in features, has_subgroups, adapter)


def _caps(limits, has_f16: bool, has_subgroups: bool, adapter) -> DeviceCaps:
    memory, source = memory_budget(dict(adapter.info))
    return DeviceCaps(
        has_f16=has_f16,
        has_subgroups=has_subgroups,
        max_storage_buffer_binding_size=limits["max-storage-buffer-binding-size"],
        max_buffer_size=limits["max-buffer-size"],
        max_compute_workgroup_storage_size=limits["max-compute-workgroup-storage-size"],
        max_compute_invocations_per_workgroup=limits["max-compute-invocations-per-workgroup"],
        max_compute_workgroup_size_x=limits["max-compute-workgroup-size-x"],
        max_storage_buffers_per_shader_stage=limits["max-storage-buffers-per-shader-stage"],
        min_storage_buffer_offset_alignment=limits["min-storage-buffer-offset-alignment"],
        min_uniform_buffer_offset_alignment=limits["min-uniform-buffer-offset-alignment"],
        max_compute_workgroups_per_dimension=limits["max-compute-workgroups-per-dimension"],
        # naga rejects `enable subgroups;` (it enables subgroup builtins from the device feature alone).
        wgsl_enables_subgroups=False,
        packed_int_dot=True,  # naga compiles dot4I8Packed for every backend
        memory_bytes=memory,
        memory_source=source,
    )


def memory_budget(info: dict) -> tuple[int | None, str]:
    """GPU memory free for a new device on the adapter described by ``info`` (wgpu-py's adapter.info), in bytes,
    and where the number comes from; (None, "") when this host cannot tell. wgpu-native reports no memory sizes, so
    this asks the operating system: a CPU adapter (lavapipe) allocates buffers in host RAM (MemAvailable); NVIDIA
    GPUs through nvidia-smi (free memory); AMD GPUs through the amdgpu driver's sysfs counters."""
    kind = str(info.get("adapter_type", ""))
    name = str(info.get("device", ""))
    try:
        if kind == "CPU":
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(
                            line.split()[1]
                        ) * 1024, "host RAM available (/proc/meminfo), a CPU adapter's memory"
        vendor = int(info.get("vendor_id", 0) or 0)
        if vendor == 0x10DE and shutil.which("nvidia-smi"):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.free", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout  # fmt: skip
            rows = [line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line]
            free = [int(mib) << 20 for gpu, mib in rows if gpu.strip() and gpu.strip() in name]
            if len(free) >= 1:
                return max(free), f"nvidia-smi: free memory of {name}"
        if vendor == 0x1002:
            for card in sorted(glob.glob("/sys/class/drm/card*/device")):
                with open(f"{card}/vendor", encoding="ascii") as f:
                    if int(f.read(), 16) != vendor:
                        continue
                with open(f"{card}/mem_info_vram_total", encoding="ascii") as f:
                    total = int(f.read())
                with open(f"{card}/mem_info_vram_used", encoding="ascii") as f:
                    used = int(f.read())
                return total - used, f"amdgpu sysfs: free VRAM of {card}"
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return None, ""


async def open_device(
    *,
    power_preference: str = "high-performance",
    use_f16: bool | None = None,
    use_subgroups: bool | None = None,
    spec_default_limits: bool = False,
    limits: Mapping[str, int] | None = None,
    extra_features: tuple[str, ...] = (),
    trusted_shaders: bool | None = None,
) -> NativeDevice:
    """Open the best WebGPU adapter on this machine.

    ``use_f16`` / ``use_subgroups``: None takes the feature when the adapter has it, False refuses it (to test the
    f32 or no-subgroup tiers on an adapter that has them), True requires it. ``spec_default_limits`` asks for
    WebGPU's default limits instead of the adapter's maximum, to check kernels against the browser baseline.
    ``limits`` (DeviceCaps names, e.g. ``{"max_storage_buffer_binding_size": 1 << 20}``) asks for exactly these
    values instead (what a model needs, model/memory.py; tests cap bindings to make models split); a value above the
    adapter's maximum is a DeviceLimitError naming both.
    ``extra_features`` are requested as well (e.g. timestamp queries for profiling tools). ``trusted_shaders`` makes
    shader modules without naga's run-time bounds checks and loop counters (see _trusted_module); None: on GPUs,
    off on CPU rasterizers (lavapipe), where the kernel tests run with the checks.
    """
    adapter = _open_adapter(power_preference)
    info = _adapter_info(adapter)
    if trusted_shaders is None:
        trusted_shaders = str(info.extra.get("adapter_type", "")).lower() not in ("cpu", "")
    features = set(adapter.features)
    has_f16 = "shader-f16" in features
    has_subgroups = "subgroup" in features or "subgroups" in features
    for name, want, have in (("shader-f16", use_f16, has_f16), ("subgroups", use_subgroups, has_subgroups)):
        if want and not have:
            raise DeviceLimitError(
                f"the adapter {_adapter_info(adapter).summary()} lacks the feature {name!r}"
            )
    has_f16 = has_f16 if use_f16 is None else bool(use_f16)
    has_subgroups = has_subgroups if use_subgroups is None else bool(use_subgroups)

    required_features = list(extra_features)
    if "timestamp-query" in features and "timestamp-query" not in required_features:
        required_features.append("timestamp-query")  # load-time tuning times kernels by them (pass_seconds)
    if has_f16:
        required_features.append("shader-f16")
    if has_subgroups:
        required_features.append("subgroup" if "subgroup" in features else "subgroups")

    alimits = adapter.limits
    if spec_default_limits:
        wanted = {k: min(v, alimits[k]) for k, v in SPEC_DEFAULT_LIMITS.items()}
    else:
        wanted = {k: alimits[k] for k in _WANTED_LIMITS}
    for name, value in (limits or {}).items():
        key = LIMIT_NAMES.get(name)
        if key is None:
            raise ValueError(f"unknown device limit {name!r}: one of {', '.join(LIMIT_NAMES)}")
        if value > alimits[key]:
            raise DeviceLimitError(
                f"a device with {name} = {value} was asked for, but the adapter "
                f"{info.summary()} allows at most {alimits[key]}"
            )
        wanted[key] = value
    device = adapter.request_device_sync(required_features=required_features, required_limits=wanted)
    caps = replace(_caps(device.limits, has_f16, has_subgroups, adapter), unchecked_shaders=trusted_shaders)
    return NativeDevice(adapter, device, caps, info, trusted_shaders)


__all__ = ["NativeDevice", "open_device", "adapter_caps", "BufferUsage"]
