"""Sizes: the GPU memory a model needs and whether an adapter can hold it, from the GGUF header alone.

The header (metadata and tensor table, a few MB at the front of the file) says every tensor's type and shape, so the
bytes each buffer will take are known before a weight is read: a model that cannot fit fails before its download,
with both numbers, and loses nothing already loaded (api/mlc_engine.py ``reload``; host/ fetch the header with one
HTTP range request, model/download.py ``open_remote_header``).

What a model needs (MemoryPlan):
  weights      every matrix as repacked (kernels/registry.py ``weight_nbytes`` of its GGUF type: Q4_K 4.625 bits a
               weight, Q6_K 6.5625, Q8_0 8.5), every vector (norms, biases) and RoPE table in f32;
  kv_cache     n_layers x 2 x n_kv_heads x head_dim x context_window_size x (2 bytes in the f16 tier, else 4);
  activations  the graph's buffers for prefill chunks of ``prefill_chunk(context, ...)`` tokens, the logits and the
               sampler's buffers (graph.activation_bytes, ops.Sampler.buffer_bytes);
  staging      the repacker's staging buffer, held only while weights load (freed before the KV cache exists).
  peak = max(weights + staging, weights + kv_cache + activations).

What an adapter can hold, by what it says (WebGPU has no memory query):
  1. one binding: a layer's KV cache and every activation buffer must fit min(maxStorageBufferBindingSize,
     maxBufferSize); a matrix product (embedding, LM head, a layer's fused q/k/v, o, gate/up, down) that does not
     is split by rows into parts that do (ops.RowSplit), and only a product whose smallest part (256 rows, or whole
     heads) exceeds it cannot load. Checked on every host.
  2. in total: the peak must fit ``DeviceCaps.memory_bytes``, the memory the host says is free for us: on the
     desktop NVIDIA's free memory (nvidia-smi), AMD's free VRAM (amdgpu sysfs), or host RAM for a CPU adapter
     (lavapipe's buffers live there); in the browser the adapter's device-local memory heaps where Chromium exposes
     them (WebGPU developer features) and SwiftShader's 2 GiB heap. Where the host cannot tell (most browsers), only
     rule 1 is checked and an allocation past the GPU's memory fails at load with the browser's out-of-memory error.
  The device is then requested with the binding and buffer sizes the model needs (``device_limits``), not the
  adapter's maxima: the largest whole product when the adapter allows it (no split), at least the spec defaults.

Example (bench/synth_gguf.py --shape llama-3.1-8b --mix Q4_K_M, f16 tier, context 4096): weights 4.67 GiB, KV cache
512 MiB, activations 27 MiB: 5.20 GiB (5.70 GiB at 8192). On a 128 MiB binding the embedding goes in 3 parts and the
LM head in 4; with 2 GiB bindings nothing splits and the device is asked for 411 MiB bindings (the LM head whole). On
an adapter with 4 GiB free it fails before the download with ModelTooLargeError naming 5.20 GiB and 4.00 GiB, and
that the weights alone (4.69 GiB with the staging buffer) exceed it, so no context window would fit
(tests/unit/test_preflight_http.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import DeviceLimitError, ModelTooLargeError
from ..gpu.device import DeviceCaps
from ..kernels import ops
from ..kernels.registry import WEIGHT_FORMAT
from .config import ModelConfig
from .gguf import GGUFFile
from .graph import activation_bytes, kv_cache_bytes, prefill_chunk

# WebGPU's default limits: a device never gets less than these, whatever it asks for.
SPEC_BINDING_BYTES = 128 << 20
SPEC_BUFFER_BYTES = 256 << 20
SPLITTABLE = ("token_embd.weight", "output.weight")  # their own products (loader._Loader.load)
DEFAULT_ATTENTION_SPLITS = 16  # Kernels' default (GPUs); CPU adapters use fewer, which needs less


@dataclass(frozen=True)
class MemoryPlan:
    """The GPU memory one model needs at one context window, in bytes (see the module docstring)."""

    model: str
    context: int  # context_window_size: positions of KV cache
    weight_bytes: int
    kv_bytes: int
    activation_bytes: int
    staging_bytes: int
    kv_bytes_per_position: int  # all layers
    # Buffers that must each be one binding: name -> bytes (a layer's KV cache, activations).
    bindings: dict[str, int] = field(default_factory=dict)
    # Matrix products (the embedding, the LM head, each layer's qkv, o, gate_up, down): name -> bytes whole; they are
    # split by rows where one binding cannot hold them. parts: name -> rows of each part, for those split on this
    # adapter.
    splittable: dict[str, int] = field(default_factory=dict)
    parts: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def resident_bytes(self) -> int:
        """What stays allocated after the load: weights, KV cache, activations."""
        return self.weight_bytes + self.kv_bytes + self.activation_bytes

    @property
    def peak_bytes(self) -> int:
        return max(self.weight_bytes + self.staging_bytes, self.resident_bytes)

    def device_limits(self, caps: DeviceCaps) -> dict[str, int]:
        """The binding and buffer sizes to request a device with (host open_device ``limits``): what this model
        binds, the whole embedding and LM head included where the adapter allows it, never below the spec
        defaults nor above the adapter (``caps`` holds the adapter's maxima)."""
        largest = max([*self.bindings.values(), *self.splittable.values(), self.staging_bytes])
        binding = min(caps.max_storage_buffer_binding_size, max(SPEC_BINDING_BYTES, largest))
        buffer = min(caps.max_buffer_size, max(SPEC_BUFFER_BYTES, largest))
        return {"max_storage_buffer_binding_size": binding, "max_buffer_size": buffer}

    def summary(self) -> str:
        split = "".join(
            f", {name} in {len(rows)} parts" for name, rows in self.parts.items() if len(rows) > 1
        )
        return (
            f"{gib(self.resident_bytes)} (weights {gib(self.weight_bytes)} as repacked, KV cache "
            f"{gib(self.kv_bytes)} at context_window_size {self.context}, activations {gib(self.activation_bytes)}"
            f"{split})"
        )

    def as_stats(self) -> dict[str, object]:
        """The plan as load_stats keys."""
        return {
            "planned_weight_bytes": self.weight_bytes,
            "planned_kv_cache_bytes": self.kv_bytes,
            "planned_activation_bytes": self.activation_bytes,
            "planned_peak_bytes": self.peak_bytes,
            "split_parts": {name: len(rows) for name, rows in self.parts.items()},
        }


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def layer_products(cfg: ModelConfig, i: int) -> dict[str, list[str]]:
    """Layer i's matrix products and the tensors each one is fused from: one GPU buffer each (loader._Loader.load)."""
    t = {role: name for role, (name, _) in cfg.layer_tensors(i).items()}
    p = f"blk.{i}."
    qkv = [t["qkv"]] if cfg.qkv_fused else [t["q"], t["k"], t["v"]]
    gate_up = [t["gate_up"]] if cfg.ffn_fused else [t["gate"], t["up"]]
    return {p + "qkv": qkv, p + "o": [t["o"]], p + "gate_up": gate_up, p + "down": [t["down"]]}


def products(gguf: GGUFFile, cfg: ModelConfig) -> dict[str, tuple[list[tuple[str, int]], int, bool, int]]:
    """Every matrix product the loader makes (loader._Loader.load): name -> (sources (format, rows), input features,
    interleaved, the row unit of its parts)."""
    out: dict[str, tuple[list[tuple[str, int]], int, bool, int]] = {}

    def source(name: str, rows: int | None = None) -> tuple[str, int]:
        info = gguf.tensor(name)
        return WEIGHT_FORMAT[info.ggml_type.name], info.n_rows if rows is None else rows

    for name in SPLITTABLE:
        if name in gguf.tensors:
            out[name] = ([source(name)], gguf.tensor(name).shape[0], False, ops.PART_ROWS)
    for i in range(cfg.n_layers):
        for product, tensors in layer_products(cfg, i).items():
            k = gguf.tensor(tensors[0]).shape[0]
            if product.endswith("gate_up"):
                srcs = (
                    [source(tensors[0], cfg.ffn_size)] * 2 if cfg.ffn_fused else [source(t) for t in tensors]
                )
                out[product] = (srcs, k, True, ops.PART_ROWS)
            else:
                unit = math.lcm(ops.PART_ROWS, cfg.head_dim) if product.endswith("qkv") else ops.PART_ROWS
                out[product] = ([source(t) for t in tensors], k, False, unit)
    return out


def plan_memory(
    gguf: GGUFFile,
    cfg: ModelConfig,
    *,
    context: int,
    f16: bool,
    caps: DeviceCaps,
    model: str = "",
    attention_splits: int = DEFAULT_ATTENTION_SPLITS,
    prefill_chunk_size: int | None = None,
) -> MemoryPlan:
    """The memory plan of ``gguf`` (its header suffices: no tensor data is read) at ``context`` positions, on an
    adapter with ``caps`` (how products split depends on its bindings). ModelTooLargeError for a product that cannot
    be split small enough."""
    limit = ops.binding_limit(caps)
    bindings: dict[str, int] = {}
    splittable: dict[str, int] = {}
    parts: dict[str, tuple[int, ...]] = {}
    weights = 0
    for name, (srcs, k, interleave, unit) in products(gguf, cfg).items():
        fmts, rows = [f for f, _ in srcs], [n for _, n in srcs]
        splittable[name] = ops.product_nbytes(fmts, rows, k)
        try:
            part_rows = ops.split_rows(fmts, rows, k, limit, name, interleave=interleave, unit=unit)
        except DeviceLimitError as exc:
            raise ModelTooLargeError(
                f"{model or gguf.name}: {exc}", needed_bytes=splittable[name], available_bytes=limit
            ) from None
        first = 0
        for n in part_rows:
            got = ops.source_rows(rows, first, first + n, interleave)
            weights += ops.product_nbytes([fmts[j] for j, _, _ in got], [m for _, _, m in got], k)
            first += n
        if len(part_rows) > 1:
            parts[name] = part_rows
    # Vectors (norms, biases, RoPE factors) go up as f32; RoPE tables: one per distinct (base, scale).
    weights += sum(4 * t.n_elements for t in gguf.tensors.values() if len(t.shape) == 1)
    weights += len({(lc.rope_base, lc.rope_scale) for lc in cfg.layers}) * cfg.rope_dims // 2 * 4
    kv = kv_cache_bytes(cfg, context, f16)
    bindings["a layer's KV cache"] = kv // cfg.n_layers
    acts = activation_bytes(cfg, prefill_chunk(context, prefill_chunk_size), attention_splits)
    bindings.update({f"activations {k}": v for k, v in acts.items()})
    return MemoryPlan(
        model=model or gguf.name,
        context=context,
        weight_bytes=weights,
        kv_bytes=kv,
        activation_bytes=sum(acts.values()) + ops.Sampler.buffer_bytes(cfg.vocab_size),
        staging_bytes=ops.STAGING_BYTES,
        kv_bytes_per_position=kv // context,
        bindings=bindings,
        splittable=splittable,
        parts=parts,
    )


def check_fits(plans: list[MemoryPlan], caps: DeviceCaps, *, adapter: str = "", reclaimable: int = 0) -> None:
    """Raise ModelTooLargeError unless every plan's buffers fit the adapter's bindings and all plans together fit
    its memory (where the host knows it; ``reclaimable``: bytes that models about to be unloaded free)."""
    where = f"the adapter {adapter}" if adapter else "this adapter"
    limit = ops.binding_limit(caps)
    for plan in plans:
        name, size = max(plan.bindings.items(), key=lambda kv: kv[1])
        if size > limit:
            hint = (
                f"lower context_window_size to at most {limit * plan.context // size}"
                if name == "a layer's KV cache"
                else "no context window helps: this model's matrices are too large for this GPU"
            )
            raise ModelTooLargeError(
                f"{plan.model}: {name} needs one {size}-byte buffer but {where} allows {limit} per binding "
                f"(maxStorageBufferBindingSize / maxBufferSize): {hint}",
                needed_bytes=size,
                available_bytes=limit,
            )
    if caps.memory_bytes is None:
        return
    available = caps.memory_bytes + reclaimable
    needed = sum(p.peak_bytes for p in plans)
    if needed <= available:
        return
    names = ", ".join(p.model for p in plans)
    detail = "; ".join(f"{p.model}: {p.summary()}" for p in plans)
    rest = available - sum(p.peak_bytes for p in plans[:-1])  # what the last model may use
    last = plans[-1]
    fixed = max(last.weight_bytes + last.staging_bytes, last.weight_bytes + last.activation_bytes)
    if fixed >= rest:
        hint = (
            f"the weights alone ({gib(last.weight_bytes + last.staging_bytes)} with the load's staging buffer) "
            "exceed it, so no context window fits: choose a smaller model or quantization"
        )
    else:
        # activations shrink with the context too; fitting the KV cache in what the weights leave is the safe bound
        fits = (rest - last.weight_bytes - last.activation_bytes) // last.kv_bytes_per_position
        hint = (
            f"lower context_window_size to at most {fits} (the KV cache takes "
            f"{last.kv_bytes_per_position} bytes per position)"
        )
    raise ModelTooLargeError(
        f"{names} needs {gib(needed)} of GPU memory ({needed} bytes) but {where} has {gib(available)} "
        f"({available} bytes; {caps.memory_source or 'as the host reports'}): {hint}. Needs: {detail}",
        needed_bytes=needed,
        available_bytes=available,
    )
