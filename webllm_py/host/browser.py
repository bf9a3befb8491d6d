"""Browser host: the Device protocol over ``navigator.gpu``, from Pyodide.

Every WebGPU object lives on the JavaScript side, in the tables of ``gpu_helper.js``; Python holds their indexes.
That keeps each call into JavaScript down to a few small ints (a call with a Python object argument costs several
microseconds more), and it lets a whole decode step be one call: ``prepare`` hands the step's dispatch list to
JavaScript once, as an int32 array, and ``submit`` of the prepared plan then encodes the compute pass, the copies
and the queue submission without converting anything (pyodide_ecosystem.md sections 1.7 and 1.8).

Bytes go to the GPU from a Python buffer without a copy in Python: ``write_buffer`` passes the bytes object to
JavaScript, which hands a view of wasm memory straight to ``queue.writeBuffer``.

WebGPU reports most errors asynchronously (an ``uncapturederror`` event, an error scope's promise). They are
collected on the JavaScript side and raised here as :class:`GPUValidationError` at the next read, which is every
decode step, so a shader that Tint rejects cannot silently produce garbage.
"""

from __future__ import annotations

import importlib.resources
from array import array
from collections.abc import Mapping, Sequence

import js
from pyodide.code import run_js
from pyodide.ffi import JsException, to_js

from ..errors import DeviceLimitError, DeviceLostError, GPUValidationError, WebGPUNotAvailableError
from ..gpu.device import (
    AdapterInfo,
    BindGroup,
    Binding,
    Buffer,
    BufferLedger,
    Copy,
    DeviceCaps,
    Dispatch,
    Pipeline,
)

# JavaScript limit names we ask for up to the adapter's maximum (the spec defaults are far below what models need:
# a 128 MiB storage binding, 16 KiB of workgroup memory).
_WANTED_LIMITS = (
    "maxStorageBufferBindingSize",
    "maxBufferSize",
    "maxComputeWorkgroupStorageSize",
    "maxComputeInvocationsPerWorkgroup",
    "maxStorageBuffersPerShaderStage",
    "maxComputeWorkgroupSizeX",
)

# What the kernels cannot run without (they are written for WebGPU's defaults, so only a broken adapter fails this):
# matmul.wgsl binds up to 8 storage buffers, the sampler runs 256 invocations, reductions use workgroup memory.
_NEEDED_LIMITS = {
    "maxStorageBuffersPerShaderStage": 8,
    "maxComputeInvocationsPerWorkgroup": 256,
    "maxComputeWorkgroupSizeX": 256,
    "maxComputeWorkgroupStorageSize": 16384,
}

# Host-neutral names (DeviceCaps fields) of the limits a caller may set (open_device(limits=...)) -> WebGPU's.
LIMIT_NAMES = {
    "max_storage_buffer_binding_size": "maxStorageBufferBindingSize",
    "max_buffer_size": "maxBufferSize",
    "max_compute_workgroup_storage_size": "maxComputeWorkgroupStorageSize",
    "max_compute_invocations_per_workgroup": "maxComputeInvocationsPerWorkgroup",
    "max_storage_buffers_per_shader_stage": "maxStorageBuffersPerShaderStage",
    "max_compute_workgroup_size_x": "maxComputeWorkgroupSizeX",
}

# SwiftShader (Chromium's CPU adapter) has a 2 GiB device heap (its src/Vulkan/VkConfig.hpp; models.md section 6.1).
SWIFTSHADER_HEAP_BYTES = 2 << 30

# Spec defaults: what a page gets when it asks for nothing (tests use them to check kernels fit the baseline).
SPEC_DEFAULT_LIMITS = {
    "maxStorageBufferBindingSize": 128 << 20,
    "maxBufferSize": 256 << 20,
    "maxComputeWorkgroupStorageSize": 16384,
    "maxComputeInvocationsPerWorkgroup": 256,
    "maxStorageBuffersPerShaderStage": 8,
    "maxComputeWorkgroupSizeX": 256,
}

_helper_factory = None  # gpu_helper.js, evaluated once per interpreter


def preloaded_helper(name: str):
    """``globalThis.webllmPyHelpers[name]``: a helper the host script imported as a module, or None. A Chrome
    extension's CSP forbids the ``eval`` behind ``run_js``, so its background script imports gpu_helper.js and
    cache_helper.js (``build.py extension`` wraps them as modules) and hands them over this way."""
    helpers = getattr(js.globalThis, "webllmPyHelpers", None)
    return getattr(helpers, name, None) if helpers else None


def _create_helper(device):
    global _helper_factory
    if _helper_factory is None:
        _helper_factory = preloaded_helper("gpu")
    if _helper_factory is None:
        source = importlib.resources.files(__package__).joinpath("gpu_helper.js").read_text(encoding="utf-8")
        _helper_factory = run_js(source)
    return _helper_factory(device)


def _u32(values: list[int]) -> array:
    # JavaScript reads these with getBuffer("u32"): no per-element conversion across the boundary.
    return array("I", values)


class PreparedPlan:
    """A dispatch list that lives on the JavaScript side (``BrowserDevice.prepare``)."""

    __slots__ = ("index", "n_dispatches")

    def __init__(self, index: int, n_dispatches: int):
        self.index = index
        self.n_dispatches = n_dispatches

    def __len__(self) -> int:
        return self.n_dispatches


class BrowserDevice(BufferLedger):
    host = "browser"

    def __init__(self, adapter, device, caps: DeviceCaps, info: AdapterInfo):
        self.adapter = adapter
        self.device = device
        self.caps = caps
        self.info = info
        self.js = _create_helper(device)
        # Bound methods, looked up once: attribute access on a JS proxy is a call across the boundary.
        self._submit_plan = self.js.submitPlan
        self._encode_plan = self.js.encodePlan
        self._submit_encoded = self.js.submitEncoded
        self._encoded_seq = 0  # the step gpu_helper.js holds encoded (encodePlan), 0: none
        self._last_seq = 0
        self._read = self.js.read
        self._take_errors = self.js.takeErrors
        BufferLedger.__init__(self)  # live buffers, their bytes and the peak

    # ---- resources --------------------------------------------------------------------------------------------------

    def create_buffer(self, size: int, usage: int, label: str) -> Buffer:
        if size > self.caps.max_buffer_size:
            raise DeviceLimitError(
                f"buffer {label!r} needs {size} bytes but this GPU's maxBufferSize is {self.caps.max_buffer_size}"
            )
        size = max(4, -(-size // 4) * 4)  # WebGPU wants multiples of 4
        buf = Buffer(self.js.createBuffer(size, usage, label), size, label, usage)
        self._track(buf)
        return buf

    def write_buffer(self, buffer: Buffer, offset: int, data: bytes | bytearray | memoryview) -> None:
        # The bytes object crosses as a proxy; JavaScript reads it in place (gpu_helper.js writeBuffer).
        self.js.writeBuffer(buffer.handle, offset, data)

    def write_buffer_from_js(self, buffer: Buffer, offset: int, js_bytes) -> None:
        """Write a JavaScript Uint8Array / ArrayBuffer (e.g. a chunk read from browser storage) without bringing
        it into Python at all."""
        self.js.writeBufferFromJs(buffer.handle, offset, js_bytes)

    def create_pipeline(self, code: str, label: str) -> Pipeline:
        return self.js.createPipeline(code, label)

    def create_bind_group(self, pipeline: Pipeline, entries: Sequence[Binding], label: str) -> BindGroup:
        flat: list[int] = []
        for binding, buf, offset, size in entries:
            flat += (binding, buf.handle, offset, size)
        return self.js.createBindGroup(pipeline, label, _u32(flat))

    # ---- execution --------------------------------------------------------------------------------------------------

    def prepare(self, dispatches: Sequence[Dispatch]) -> PreparedPlan:
        flat: list[int] = []
        for d in dispatches:
            flat += d
        return PreparedPlan(self.js.prepare(_u32(flat)), len(dispatches))

    def submit(self, dispatches: Sequence[Dispatch] | PreparedPlan, copies: Sequence[Copy] = ()) -> None:
        flat_copies: list[int] = []
        for src, src_off, dst, dst_off, size in copies:
            flat_copies += (src.handle, src_off, dst.handle, dst_off, size)
        if isinstance(dispatches, PreparedPlan):
            self._submit_plan(dispatches.index, *flat_copies)
            return
        flat: list[int] = []
        for d in dispatches:
            flat += d
        self.js.submitOnce(_u32(flat), _u32(flat_copies))

    def encode(self, plan: PreparedPlan, copies: Sequence[Copy] = ()) -> int:
        # The command buffer stays on the JavaScript side (one slot); Python keeps a sequence number for it.
        flat_copies: list[int] = []
        for src, src_off, dst, dst_off, size in copies:
            flat_copies += (src.handle, src_off, dst.handle, dst_off, size)
        self._encode_plan(plan.index, *flat_copies)
        self._last_seq += 1
        self._encoded_seq = self._last_seq
        return self._encoded_seq

    def submit_encoded(self, encoded: int) -> None:
        if encoded != self._encoded_seq:
            raise RuntimeError("this encoded step was already submitted, or a later encode replaced it")
        self._encoded_seq = 0
        self._submit_encoded()

    async def read_buffer(self, buffer: Buffer, offset: int, size: int) -> bytes:
        # The decode loop's read, once per token: one call. gpu_helper.js rejects it when WebGPU reported errors
        # meanwhile, and _raise_for raises them; mapAsync rejects when the device is lost or the buffer is bad.
        try:
            data = await self._read(buffer.handle, offset, size)
        except JsException as exc:
            self._raise_for(exc)
        return data.to_bytes()

    async def read_storage(self, buffer: Buffer, offset: int, size: int) -> bytes:
        try:
            data = await self.js.readStorage(buffer.handle, offset, size)
        except JsException as exc:
            self._raise_for(exc)
        self.raise_errors()
        return data.to_bytes()

    def _raise_for(self, exc: JsException) -> None:
        self.raise_errors()  # the reported cause, when there is one
        lost = self.js.lostReason()
        if lost:
            raise DeviceLostError(f"the WebGPU device was lost ({lost})") from exc
        raise GPUValidationError(f"reading a GPU buffer failed: {exc}") from exc

    def pass_seconds(self, dispatches: Sequence[Dispatch]) -> float | None:
        return (
            None  # timestamp queries are optional in browsers and quantized to 100 us: tuning uses the clock
        )

    async def idle(self) -> None:
        """Wait for the GPU and for pending error reports; raise the first error (load time: shaders compiled)."""
        await self.js.idle()
        self.raise_errors()

    def raise_errors(self) -> None:
        errors = self._take_errors()
        if errors.length:
            lost = self.js.lostReason()
            if lost:
                raise DeviceLostError(f"the WebGPU device was lost ({lost})")
            shown = "; ".join(str(e) for e in list(errors)[:3])
            more = f" (and {errors.length - 3} more)" if errors.length > 3 else ""
            raise GPUValidationError(f"WebGPU reported an error: {shown}{more}")

    def destroy_buffer(self, buffer: Buffer) -> None:
        if self._untrack(buffer):  # once: a buffer a failed load and its owner's unload both free
            self.js.destroyBuffer(buffer.handle)

    def destroy(self) -> None:
        self.js.destroy()


def _adapter_info(adapter) -> AdapterInfo:
    raw = adapter.info
    info = {k: str(getattr(raw, k, "") or "") for k in ("vendor", "architecture", "device", "description")}
    extra: dict[str, object] = {}
    fallback = bool(getattr(raw, "isFallbackAdapter", False))
    # SwiftShader is Chromium's CPU rasterizer: kernels are tuned for it as for lavapipe (registry.default_tuning).
    if fallback or "swiftshader" in info["architecture"].lower():
        extra["adapter_type"] = "cpu"
    for k in ("subgroupMinSize", "subgroupMaxSize"):
        v = getattr(raw, k, None)
        if isinstance(v, int):
            extra[k] = v
    extra["isFallbackAdapter"] = fallback
    return AdapterInfo(
        vendor=info["vendor"],
        architecture=info["architecture"],
        device=info["device"],
        description=info["description"],
        backend="WebGPU (browser)",
        extra=extra,
    )


async def request_adapter(power_preference: str = "high-performance"):
    """This browser's GPUAdapter, or WebGPUNotAvailableError saying why there is none."""
    gpu = getattr(js.navigator, "gpu", None)
    if not gpu:
        raise WebGPUNotAvailableError(
            "this browser does not expose WebGPU (navigator.gpu is missing): use a browser with WebGPU enabled "
            "(Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows), over https or http://localhost"
        )
    adapter = await gpu.requestAdapter(to_js({"powerPreference": power_preference}))
    if not adapter:  # JS null arrives as jsnull, which is falsy but not None
        raise WebGPUNotAvailableError(
            "WebGPU is exposed but no adapter was found (navigator.gpu.requestAdapter() returned null): the GPU "
            "may be blocklisted or disabled; check chrome://gpu, or start Chromium with --enable-unsafe-webgpu"
        )
    return adapter


def memory_budget(adapter, info: AdapterInfo) -> tuple[int | None, str]:
    """GPU memory for a device on ``adapter`` and where the number comes from; (None, "") where the browser does not
    say (WebGPU has no memory query). Chromium exposes ``adapter.info.memoryHeaps`` with its WebGPU developer
    features on (the device-local heaps are summed); SwiftShader's device heap is 2 GiB."""
    heaps = getattr(adapter.info, "memoryHeaps", None)
    if heaps:
        local = [int(h.size) for h in heaps if int(getattr(h, "properties", 0)) & 1]  # DeviceLocal
        if local:
            return sum(local), "adapter.info.memoryHeaps (device-local heaps)"
    if info.extra.get("adapter_type") == "cpu" and "swiftshader" in info.architecture.lower():
        return SWIFTSHADER_HEAP_BYTES, "SwiftShader's device heap"
    return None, ""


async def adapter_caps(*, power_preference: str = "high-performance") -> DeviceCaps:
    """What a device on this browser's adapter could get (its maximum limits and features) and its memory where the
    browser says, without opening a device: for checking a model before it is downloaded."""
    adapter = await request_adapter(power_preference)
    info = _adapter_info(adapter)
    return _caps(adapter.limits, bool(adapter.features.has("shader-f16")), bool(adapter.features.has("subgroups")),
                 adapter, info)  # fmt: skip


def _wgsl_has(feature: str) -> bool:
    """Whether this browser's WGSL has language feature ``feature`` (navigator.gpu.wgslLanguageFeatures)."""
    try:
        return bool(js.navigator.gpu.wgslLanguageFeatures.has(feature))
    except Exception:  # noqa: BLE001 - an older browser without the set: the feature is absent
        return False


def _caps(limits, has_f16: bool, has_subgroups: bool, adapter, info: AdapterInfo) -> DeviceCaps:
    memory, source = memory_budget(adapter, info)
    return DeviceCaps(
        has_f16=has_f16,
        has_subgroups=has_subgroups,
        max_storage_buffer_binding_size=int(limits.maxStorageBufferBindingSize),
        max_buffer_size=int(limits.maxBufferSize),
        max_compute_workgroup_storage_size=int(limits.maxComputeWorkgroupStorageSize),
        max_compute_invocations_per_workgroup=int(limits.maxComputeInvocationsPerWorkgroup),
        max_compute_workgroup_size_x=int(limits.maxComputeWorkgroupSizeX),
        max_storage_buffers_per_shader_stage=int(limits.maxStorageBuffersPerShaderStage),
        min_storage_buffer_offset_alignment=int(limits.minStorageBufferOffsetAlignment),
        min_uniform_buffer_offset_alignment=int(limits.minUniformBufferOffsetAlignment),
        max_compute_workgroups_per_dimension=int(limits.maxComputeWorkgroupsPerDimension),
        # Tint requires `enable subgroups;` before subgroup builtins (kernels.md section 2.4).
        wgsl_enables_subgroups=True,
        subgroup_min_size=int(info.extra.get("subgroupMinSize", 0)),
        subgroup_max_size=int(info.extra.get("subgroupMaxSize", 0)),
        packed_int_dot=_wgsl_has("packed_4x8_integer_dot_product"),
        memory_bytes=memory,
        memory_source=source,
    )


async def open_device(
    *,
    power_preference: str = "high-performance",
    use_f16: bool | None = None,
    use_subgroups: bool | None = None,
    spec_default_limits: bool = False,
    limits: Mapping[str, int] | None = None,
) -> BrowserDevice:
    """Open this browser's WebGPU adapter. Same options as ``host.native.open_device``; the f32 kernel tier is
    chosen when the adapter lacks ``shader-f16`` (Chromium's SwiftShader, many Linux and Android GPUs)."""
    adapter = await request_adapter(power_preference)
    info = _adapter_info(adapter)
    has_f16 = bool(adapter.features.has("shader-f16"))
    has_subgroups = bool(adapter.features.has("subgroups"))
    for name, want, have in (("shader-f16", use_f16, has_f16), ("subgroups", use_subgroups, has_subgroups)):
        if want and not have:
            raise DeviceLimitError(f"the adapter {info.summary()} lacks the feature {name!r}")
    has_f16 = has_f16 if use_f16 is None else bool(use_f16)
    has_subgroups = has_subgroups if use_subgroups is None else bool(use_subgroups)

    alimits = adapter.limits
    for name, needed in _NEEDED_LIMITS.items():
        have = int(getattr(alimits, name))
        if have < needed:
            raise DeviceLimitError(
                f"the adapter {info.summary()} allows {name} = {have}, but the kernels need at least {needed}"
            )
    if spec_default_limits:
        wanted = {k: min(v, int(getattr(alimits, k))) for k, v in SPEC_DEFAULT_LIMITS.items()}
    else:
        wanted = {k: int(getattr(alimits, k)) for k in _WANTED_LIMITS}
    for name, value in (limits or {}).items():
        key = LIMIT_NAMES.get(name)
        if key is None:
            raise ValueError(f"unknown device limit {name!r}: one of {', '.join(LIMIT_NAMES)}")
        if value > int(getattr(alimits, key)):
            raise DeviceLimitError(
                f"a device with {name} = {value} was asked for, but the adapter {info.summary()} allows at most "
                f"{int(getattr(alimits, key))}"
            )
        wanted[key] = value
    features = [f for f, on in (("shader-f16", has_f16), ("subgroups", has_subgroups)) if on]
    try:
        device = await adapter.requestDevice(
            to_js({"requiredFeatures": features, "requiredLimits": wanted, "label": "webllm_py"})
        )
    except Exception as exc:  # a JsException: the adapter refused the limits or features
        raise DeviceLimitError(f"the adapter {info.summary()} refused a device with {wanted}: {exc}") from exc
    caps = _caps(device.limits, has_f16, has_subgroups, adapter, info)
    return BrowserDevice(adapter, device, caps, info)


__all__ = ["BrowserDevice", "PreparedPlan", "open_device", "adapter_caps", "SPEC_DEFAULT_LIMITS"]
