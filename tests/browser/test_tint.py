"""Every WGSL variant the engine and the kernel tests use compiles under Tint (Chromium's WGSL compiler).

naga (wgpu-py, the desktop) and Tint disagree on details (kernels.md section 2.12): Tint requires ``enable
subgroups;``, rejects subgroup builtins and barriers outside uniform control flow, and checks workgroup memory
against the device's limit. The variants are generated here, on the desktop, by the real preprocessor and kernel
code driven against a recording device that has the browser's capabilities; the page then compiles each one with
``createShaderModule`` + ``createComputePipelineAsync`` and reports every error with its line.

SwiftShader has no ``shader-f16``, so the f16 tiers cannot be compiled here; the f32 tiers (with and without
subgroups) are what a browser without f16 runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re

import pytest

from webllm_py.gpu.device import AdapterInfo, Buffer, DeviceCaps
from webllm_py.kernels import ops
from webllm_py.kernels.probe import PROBE_WG_SIZES
from webllm_py.kernels.registry import Q8_FORMATS, SUPER_BLOCK_FORMATS, GemvConfig, Kernels, Tier
from webllm_py.kernels.tuning import CANDIDATES, Q8_CANDIDATES
from webllm_py.model.quant import GGMLType

TIERS = [Tier(f16=False, subgroups=True), Tier(f16=False, subgroups=False)]
# The engine's kernel shapes: defaults on GPUs, CPU adapters (SwiftShader, lavapipe) get 16-wide GEMV workgroups;
# decode with the QKV projection inside attention (Kernels.fuse_attention) and 16-query flash attention tiles.
# The GPU default (GEMV_MR decode, registry.default_tuning) and the register-tiled prefill GEMM too.
TUNINGS = [
    {},
    {"gemv_wg": 16, "gemm_wg": 64},
    {"fuse_attention": True, "flash_queries": 16},
    {
        "gemv_variant": "GEMV_MR",
        "gemv_wg": 128,
        "gemv_seg": 32,
        "gemv_rt": 4,
        "gemm_variant": "GEMM_RT",
        "gemm_wg": 64,
        "gemm_rt_min_dim": 0,  # GEMM_RT for the small test products too
    },
]
TYPES = list(GGMLType)  # every weight format (weights.wgsl)
EPILOGUE_TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.F16, GGMLType.F32]
# Products fused from matrices of different types (segmented weights): q/k/v of a Q4_K_M layer, of the fallback for
# rows not a multiple of 256, of three types; gate/up of two.
MIXED_QKV = [
    (GGMLType.Q4_K, GGMLType.Q4_K, GGMLType.Q6_K),
    (GGMLType.Q5_0, GGMLType.Q5_0, GGMLType.Q8_0),
    (GGMLType.Q4_1, GGMLType.BF16, GGMLType.Q5_1),
]
MIXED_GATE_UP = [(GGMLType.Q4_K, GGMLType.Q6_K)]


def in_features(*types: GGMLType) -> int:
    """Input features a weight of these types can have in the variants below (K-quants: 256-weight super-blocks)."""
    return 256 if any(t.name in SUPER_BLOCK_FORMATS for t in types) else 96


HEAD_DIMS = [32, 64, 96, 128, 256]  # tests/kernels/test_attention.py; SmolLM2 has 64, Phi-3.5 96, Gemma 256


class RecordingDevice:
    """A Device that compiles nothing: it keeps each pipeline's WGSL by label (what the engine would create)."""

    host = "recording"

    def __init__(self, tier: Tier):
        self.caps = DeviceCaps(
            has_f16=tier.f16,
            has_subgroups=tier.subgroups,
            max_storage_buffer_binding_size=1 << 30,
            max_buffer_size=1 << 30,
            max_compute_workgroup_storage_size=32768,
            max_compute_invocations_per_workgroup=1024,
            max_storage_buffers_per_shader_stage=10,
            min_storage_buffer_offset_alignment=256,
            min_uniform_buffer_offset_alignment=256,
            max_compute_workgroups_per_dimension=65535,
            wgsl_enables_subgroups=True,  # as host/browser.py sets it
            packed_int_dot=True,  # Chromium's wgslLanguageFeatures has packed_4x8_integer_dot_product
        )
        self.info = AdapterInfo(vendor="recording")
        self.sources: dict[str, str] = {}

    def create_buffer(self, size: int, usage: int, label: str) -> Buffer:
        return Buffer(None, max(4, -(-size // 4) * 4), label, usage)

    def write_buffer(self, buffer, offset, data) -> None:
        pass

    def create_pipeline(self, code: str, label: str):
        self.sources[label] = code
        return label

    def create_bind_group(self, pipeline, entries, label):
        return label

    def prepare(self, dispatches):
        return list(dispatches)

    def submit(self, dispatches, copies=()) -> None:
        pass

    async def idle(self) -> None:
        pass

    async def read_storage(self, buffer, offset, size) -> bytes:
        return b"\xff" * size  # e.g. the repack scan's flag: nothing found

    def destroy_buffer(self, buffer) -> None:
        pass

    def destroy(self) -> None:
        pass


def kernel_matrix_variants(kern: Kernels, *, all_formats: bool = True) -> None:
    """Create the pipelines of every op over the define space the kernel tests cover. Epilogues, kernel shapes and
    head sizes are crossed with EPILOGUE_TYPES; with ``all_formats`` every other format (its code is the same
    functions of weights.wgsl in every variant) gets its repack, gather, GEMM, both decode kernels and fused
    attention, and the segmented weights theirs."""
    types = TYPES if all_formats else EPILOGUE_TYPES
    buf = kern.device.create_buffer(1 << 16, ops.STORAGE, "buf")
    state = kern.device.create_buffer(16, ops.STORAGE, "state")
    for t in types:
        w = ops.alloc_weight(kern, t, 96, in_features(t), "w")
        kern.pipeline("repack.wgsl", WG=ops.REPACK_WG, SRC=t.name)
        ops.embed(kern, w=w, tokens=buf, out=buf, state=state)
        for gemm in (False, True):
            for norm in (None, buf) if t in EPILOGUE_TYPES else (buf,):
                for epi in ("STORE", "ADD", "SILU", "GELU") if t in EPILOGUE_TYPES else ("STORE",):
                    ops.matmul(
                        kern, w=w, x=buf, out=buf, state=state, epi=epi, gemm=gemm, norm_w=norm, eps=1e-5
                    )
                for bias, qk_out in ((None, False), (buf, False), (None, True), (buf, True))[
                    : 4 if t in EPILOGUE_TYPES else 1
                ]:
                    ops.matmul(
                        kern, w=w, x=buf, out=buf, state=state, epi="QKV", gemm=gemm, norm_w=norm, eps=1e-5,
                        kv=buf, rope_freq=buf, n_q=32, n_kv=32, head_dim=16, max_ctx=64, rope_dims=16, bias=bias,
                        qk_out=qk_out,
                    )  # fmt: skip
    for hd in HEAD_DIMS:
        for softcap in (0.0, 50.0):  # Gemma 2's soft-capped scores
            for flash in (False, True):
                ops.attention(
                    kern, q=buf, kv=buf, out=buf, state=state, n_heads=2, n_kv_heads=1, head_dim=hd, max_ctx=64,
                    softcap=softcap, flash=flash, window=8,
                )  # fmt: skip
            ops.attention(
                kern, q=buf, kv=buf, out=buf, state=state, n_heads=2, n_kv_heads=1, head_dim=hd, max_ctx=64,
                ml=buf, n_splits=4, softcap=softcap,
            )  # fmt: skip
        ops.qk_norm(
            kern, src=buf, q=buf, kv=buf, state=state, q_norm_w=buf, k_norm_w=buf, rope_freq=buf, n_heads=2,
            n_kv_heads=1, head_dim=hd, max_ctx=64, rope_dims=hd, eps=1e-6,
        )  # fmt: skip
    ops.norm_add(kern, y=buf, x=buf, norm_w=buf, n=96, eps=1e-6)
    for hd in HEAD_DIMS:  # decode: split attention, alone and with the QKV projection fused in
        ops.attention(
            kern, q=buf, kv=buf, out=buf, state=state, n_heads=2, n_kv_heads=1, head_dim=hd, max_ctx=64,
            ml=buf, n_splits=4,
        )  # fmt: skip
        for t in types if hd == 64 else EPILOGUE_TYPES:
            w = ops.alloc_weight(kern, t, 4 * hd, in_features(t), "w")
            fused = ops.FusedQKV(w=w, x=buf, norm_w=buf, rope_freq=buf, rope_dims=hd, eps=1e-5)
            ops.attention(
                kern, q=None, kv=buf, out=buf, state=state, n_heads=2, n_kv_heads=1, head_dim=hd, max_ctx=64,
                ml=buf, n_splits=4, fused=fused,
            )  # fmt: skip
    # Every decode kernel shape load-time tuning may pick on a GPU (browsers with a GPU tune too).
    for cand in CANDIDATES:
        if cand.variant == "GEMV_SEG" and not kern.tier.subgroups:
            continue
        if cand.variant == "GEMV_MR" and not kern.tier.subgroups and cand.seg < 32:
            continue  # without subgroups every segment length is the same workgroup-memory code (one kept)
        for t in types if cand in (CANDIDATES[0], CANDIDATES[-1]) else EPILOGUE_TYPES:
            w = ops.alloc_weight(kern, t, 96, in_features(t), "w")
            ops.matmul(kern, w=w, x=buf, out=buf, state=state, epi="STORE", gemm=False, norm_w=buf, gemv=cand)
            for softcap in (0.0, 30.0):  # the LM head, with Gemma 2's final soft-cap
                ops.matmul(
                    kern, w=w, x=buf, out=buf, state=state, epi="STORE", gemm=False, norm_w=buf, gemv=cand,
                    argmax_out=buf, softcap=softcap,
                )  # fmt: skip
            ops.matmul(  # the QKV projection of Qwen2 (bias) and of q/k-norm models
                kern, w=w, x=buf, out=buf, state=state, epi="QKV", gemm=False, norm_w=buf, gemv=cand, bias=buf,
                qk_out=True, kv=buf, n_q=32, n_kv=32, head_dim=16, max_ctx=64, rope_dims=16,
            )  # fmt: skip
            ops.matmul(
                kern, w=w, x=buf, out=buf, state=state, epi="ADD", gemm=False, gemv=cand, head_dim=32,
                attn_ml=buf, n_splits=4,
            )  # fmt: skip
    # The integer-activation decode forms (three planes, and one with Kernels.q8_decode) over the formats they read,
    # each after its quantize_x launch: the LM head (every format), and for Q4_0 and Q4_K also the QKV projection,
    # the output projection merging the attention splits, gate/up (GEMV_MRQ, not the GEMV_MR fallback: the
    # recording device has dot4I8Packed as Chromium); then fused weights of two formats (q/k/v and gate/up).
    q8 = kern.q8_decode
    for kern.q8_decode in (False, True):
        xq = buf  # compiled and bound, never run: any buffer of ops.xq_bytes(K, planes) bytes or more
        for cand in (Q8_CANDIDATES[0], Q8_CANDIDATES[-1]):
            for t in (GGMLType[f] for f in Q8_FORMATS if f not in ("Q4_0", "Q4_K")):
                w = ops.alloc_weight(kern, t, 96, in_features(t), "w")
                head = ops.matmul_parts(kern, w=w, x=buf, out=buf, xq=xq, state=state, epi="STORE", gemm=False,
                                        norm_w=buf, gemv=cand, argmax_out=buf)  # fmt: skip
                assert len(head) == 2  # quantize_x, then GEMV_MRQ
            for t in (GGMLType.Q4_0, GGMLType.Q4_K):
                w = ops.alloc_weight(kern, t, 96, in_features(t), "w")
                mrq = [
                    ops.matmul_parts(
                        kern, w=w, x=buf, out=buf, xq=xq, state=state, epi="STORE", gemm=False, norm_w=buf,
                        gemv=cand, argmax_out=buf,
                    ),
                    ops.matmul_parts(
                        kern, w=w, x=buf, out=buf, xq=xq, state=state, epi="QKV", gemm=False, norm_w=buf, gemv=cand,
                        kv=buf, rope_freq=buf, n_q=32, n_kv=32, head_dim=16, max_ctx=64, rope_dims=16,
                    ),
                    ops.matmul_parts(
                        kern, w=w, x=buf, out=buf, xq=xq, state=state, epi="ADD", gemm=False, gemv=cand,
                        head_dim=32, attn_ml=buf, n_splits=4,
                    ),
                    ops.matmul_parts(
                        kern, w=w, x=buf, out=buf, xq=xq, state=state, epi="SILU", gemm=False, norm_w=buf, gemv=cand
                    ),
                ]  # fmt: skip
                assert all(len(launches) == 2 for launches in mrq)  # quantize_x, then GEMV_MRQ
        mixed = []
        for types in MIXED_QKV[:2]:  # Q4_K_M's; the fallback's (Q8_0 v: bytes sorted to even / odd planes)
            qkv, _ = ops.alloc_fused(kern, [(t, 32) for t in types], in_features(*types), "qkv")
            mixed.append(ops.matmul_parts(
                kern, w=qkv, x=buf, out=buf, xq=xq, state=state, epi="QKV", gemm=False, norm_w=buf,
                gemv=Q8_CANDIDATES[0], kv=buf, rope_freq=buf, n_q=32, n_kv=32, head_dim=16, max_ctx=64, rope_dims=16,
            ))  # fmt: skip
        parts = [(t, 32) for t in MIXED_GATE_UP[0]]
        gate_up, _ = ops.alloc_fused(kern, parts, in_features(*MIXED_GATE_UP[0]), "gate_up", interleave=True)
        mixed.append(ops.matmul_parts(kern, w=gate_up, x=buf, out=buf, xq=xq, state=state, epi="SILU", gemm=False,
                                      norm_w=buf, gemv=Q8_CANDIDATES[0]))  # fmt: skip
        assert all(len(launches) == 2 for launches in mixed)
    kern.q8_decode = q8
    # Segmented weights in the prefill GEMM and both decode kernels (GEMV_SEG's barrier-free form needs subgroups).
    shapes = [(True, None), (False, None)] if all_formats else []
    if kern.tier.subgroups and all_formats:
        shapes.append((False, GemvConfig("GEMV_SEG", 64, 16)))
    if all_formats:
        shapes.append((False, GemvConfig("GEMV_MR", 128, 32, 4)))
    for gemm, gemv in shapes:
        for types in MIXED_QKV:
            w, _ = ops.alloc_fused(kern, [(t, 32) for t in types], in_features(*types), "qkv")
            ops.matmul(
                kern, w=w, x=buf, out=buf, state=state, epi="QKV", gemm=gemm, gemv=gemv, norm_w=buf, eps=1e-5,
                kv=buf, rope_freq=buf, n_q=32, n_kv=32, head_dim=16, max_ctx=64, rope_dims=16,
            )  # fmt: skip
        for types in MIXED_GATE_UP:
            parts = [(t, 32) for t in types]
            w, _ = ops.alloc_fused(kern, parts, in_features(*types), "gate_up", interleave=True)
            ops.matmul(
                kern, w=w, x=buf, out=buf, state=state, epi="SILU", gemm=gemm, gemv=gemv, norm_w=buf, eps=1e-5
            )
    ops.Sampler(kern, logits=buf, tokens=buf, state=state, vocab=1000)
    if kern.tier.subgroups:  # the start-up subgroup layout probe (engine.load_engine)
        for wg in PROBE_WG_SIZES:
            kern.pipeline("probe.wgsl", WG=wg)


def engine_variants(kern: Kernels, gguf_path: str) -> None:
    """Load a model's graph on the recording device: the pipelines the engine creates for it."""
    from webllm_py.model.config import ModelConfig
    from webllm_py.model.gguf import GGUFFile
    from webllm_py.model.graph import Graph
    from webllm_py.model.loader import load_weights

    with GGUFFile.open(gguf_path) as gguf:
        cfg = ModelConfig.from_gguf(gguf)
        Graph(cfg, kern, asyncio.run(load_weights(gguf, cfg, kern, max_ctx=256)), max_ctx=256, chunk=32)


ARCH_FEATURES = re.compile(r"BIAS|SOFTCAP|QK_OUT|EPI=GELU|^qk_norm|^norm_add|HD=96")


def tiny_architecture_models() -> list[str]:
    """The tiny GGUF of every architecture tests/kernels/test_arch_tiny.py runs (their features' variants)."""
    import tempfile
    from pathlib import Path

    from tests.kernels.test_arch_tiny import MODELS
    from tests.kernels.tiny_llama import build_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="tint-arch-"))
    return [str(build_tiny_model(folder / f"{name}.gguf", **shape)) for name, shape in MODELS.items()]


def all_variants() -> tuple[dict[str, str], set[str]]:
    """label -> WGSL of every distinct variant, and the labels of the engine's own variants on a GPU."""
    from tests.e2e.model_path import smollm2_path

    sources: dict[str, str] = {}
    engine_on_gpu: set[str] = set()
    archs = tiny_architecture_models()
    for tier in TIERS:
        for tuning in TUNINGS:
            engine_dev, tests_dev, arch_dev = (
                RecordingDevice(tier),
                RecordingDevice(tier),
                RecordingDevice(tier),
            )
            kerns = [Kernels(d, tier, **tuning) for d in (engine_dev, tests_dev)]
            # As the engine's probe sets it: GEMV_MR segments up to 32 lanes sum by shuffles.
            if tier.subgroups:
                for k in kerns:
                    k.subgroup_min = 32
            engine_variants(kerns[0], str(smollm2_path()))
            for model in archs:
                arch_kern = Kernels(arch_dev, tier, **tuning)
                arch_kern.subgroup_min = kerns[0].subgroup_min
                engine_variants(arch_kern, model)
            kernel_matrix_variants(kerns[1], all_formats=tuning == TUNINGS[0])
            for label, code in [
                *engine_dev.sources.items(),
                *arch_dev.sources.items(),
                *tests_dev.sources.items(),
            ]:
                sources.setdefault(code, label)  # identical text is compiled once
            if tuning is not TUNINGS[1]:  # the GPU shapes (not the CPU adapters'): also made into pipelines
                engine_on_gpu |= {sources[code] for code in engine_dev.sources.values()}
                # The tiny architectures' variants of their own features (new binding layouts and workgroup sizes);
                # their other variants differ from the real model's in shapes only and are compiled, not made into
                # pipelines (about half a second each on SwiftShader).
                engine_on_gpu |= {
                    sources[c] for c in arch_dev.sources.values() if ARCH_FEATURES.search(sources[c])
                }
    return {label: code for code, label in sources.items()}, engine_on_gpu


# Tint's whole front end (parsing, types, uniformity, `enable` rules) runs in createShaderModule; creating the
# pipeline adds the layout and limit checks but also SwiftShader's machine-code generation (about half a second a
# pipeline on two cores), so pipelines are made for the engine's GPU variants only (its SwiftShader variants are
# made by test_runtime's reply test).
COMPILE_ALL = """async ([sources, withPipeline]) => {
  const adapter = await navigator.gpu.requestAdapter();
  const L = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures: adapter.features.has("subgroups") ? ["subgroups"] : [],
    requiredLimits: {
      maxComputeWorkgroupStorageSize: L.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: L.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: L.maxComputeWorkgroupSizeX,
      maxStorageBuffersPerShaderStage: L.maxStorageBuffersPerShaderStage,
      maxStorageBufferBindingSize: L.maxStorageBufferBindingSize,
      maxBufferSize: L.maxBufferSize,
    },
  });
  const failures = [];
  const pending = sources.map(async ([label, code]) => {
    device.pushErrorScope("validation");
    const module = device.createShaderModule({ code, label });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === "error").map((m) => `${m.lineNum}:${m.linePos} ${m.message}`);
    let pipeline = null;
    if (withPipeline.includes(label)) {
      try {
        await device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" }, label });
      } catch (e) {
        pipeline = e.message;
      }
    }
    const scope = await device.popErrorScope();
    if (errors.length || pipeline || scope) failures.push({ label, errors, pipeline, scope: scope && scope.message });
  });
  await Promise.all(pending);
  return { compiled: sources.length, failures, subgroups: adapter.features.has("subgroups") };
}"""


@pytest.fixture(scope="module")
def variants() -> tuple[dict[str, str], set[str]]:
    # Loading a graph uses asyncio.run, which cannot run on the thread whose loop Playwright's sync API owns.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(all_variants).result()


def test_variants_cover_the_engine_and_both_f32_tiers(variants):
    sources, engine = variants
    labels = set(sources)
    assert engine <= labels and len(engine) >= 20
    assert any(label.endswith("@f32-subgroups") for label in labels)
    assert any(label.endswith("@f32") for label in labels)
    for shader in (
        "matmul",
        "attention",
        "flash_attention",
        "embed",
        "qk_norm",
        "norm_add",
        "sample",
        "repack",
        "probe",
    ):
        assert any(label.startswith(shader + ":") for label in labels), shader
    subgroup_sources = [code for label, code in sources.items() if label.endswith("@f32-subgroups")]
    assert all(
        "enable subgroups;" in code for code in subgroup_sources if "subgroup" in code.split("\n", 1)[1]
    )


def test_every_variant_compiles_under_tint(variants, server, browser_context):
    page = browser_context.new_page()
    try:
        page.goto(server.url + "webllm_py.json")  # any page of the origin: WebGPU needs a secure context
        page.set_default_timeout(600_000)
        sources, engine = variants
        result = page.evaluate(COMPILE_ALL, [sorted(sources.items()), sorted(engine)])
    finally:
        page.close()
    assert result["subgroups"], "SwiftShader should offer subgroups"
    report = "\n".join(
        f"{f['label']}: {'; '.join(f['errors']) or f['pipeline'] or f['scope']}" for f in result["failures"]
    )
    assert not result["failures"], (
        f"{len(result['failures'])} of {result['compiled']} variants fail:\n{report}"
    )
    assert result["compiled"] == len(sources) > 50
