"""Kernel tier selection and the pipeline cache: one compiled pipeline per (shader, defines) variant."""

from __future__ import annotations

from dataclasses import dataclass

from ..gpu.device import BufferUsage, Device, Pipeline
from .preprocess import preprocess, variant_key

# The repacked layout (weights.wgsl): each format a sequence of groups of G 32-weight blocks, U vec4<u32> words (16
# bytes) a group, holding its GGUF type's values exactly. (G, U) by format; bits per weight = U * 128 / (G * 32).
WEIGHT_GROUPS = {
    "Q4_0": (8, 9),  # 4.5 bits per weight, as the GGUF file
    "Q4_1": (4, 5),  # 5
    "Q5_0": (8, 11),  # 5.5
    "Q5_1": (4, 6),  # 6
    "Q8_0": (8, 17),  # 8.5
    "Q4_K": (32, 37),  # 4.625 (GGUF 4.5: the 6-bit scales and mins become bytes)
    "Q5_K": (32, 45),  # 5.625 (5.5)
    "Q6_K": (64, 105),  # 6.5625, as the file
    "F16": (1, 4),
    "BF16": (1, 4),
    "F32": (1, 8),
}
# Weight format of each GGUF type: its own (a format per type keeps every file's values exact and its size).
WEIGHT_FORMAT = {name: name for name in WEIGHT_GROUPS}
SUPER_BLOCK_FORMATS = ("Q4_K", "Q5_K", "Q6_K")  # 256-weight super-blocks: rows must be a multiple of 256


def weight_nbytes(fmt: str, n_blocks: int) -> int:
    """Bytes of ``n_blocks`` 32-weight blocks in format ``fmt``, rounded up to whole groups."""
    g, u = WEIGHT_GROUPS[fmt]
    return -(-n_blocks // g) * u * 16


# GEMV_MR and its forms (matmul.wgsl): octet lanes with a compile-time trip count, octet lanes with a run-time one
# (MR_RUNTIME), whole-block lanes (MR_BLOCK).
MR_VARIANTS = {
    "GEMV_MR": {},
    "GEMV_MRR": {"MR_RUNTIME": 1},
    "GEMV_MRB": {"MR_BLOCK": 1},
    "GEMV_MRQ": {"MR_Q8": 1},
}
# GEMV_MRQ (integer activations, matmul.wgsl MR_Q8) covers these weight formats; others run GEMV_MR of its shape.
Q8_FORMATS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
# Of those, the formats whose weights (all segments in them) read x's planes in element order (matmul.wgsl
# XQ_CONTIGUOUS: Q8_0's bytes as stored); other weights read them split into even / odd elements, as nibble words
# hold them (a Q8_0 segment fused with nibble formats sorts its bytes to match).
Q8_CONTIGUOUS = ("Q8_0",)


@dataclass(frozen=True)
class GemvConfig:
    """Shape of the decode matrix-vector kernel (matmul.wgsl GEMV / GEMV_SEG / GEMV_MR)."""

    # "GEMV": K split over wg invocations, four rows each; "GEMV_SEG": seg invocations per row pair; "GEMV_MR": rt
    # rows per invocation, seg invocations along K per row group
    variant: str
    wg: int  # invocations per workgroup
    seg: int = 0  # GEMV_SEG: invocations per row pair (at most the smallest subgroup size); GEMV_MR: along K
    rt: int = 0  # GEMV_MR: rows per invocation (even)

    @property
    def rows_per_workgroup(self) -> int:
        if self.variant in MR_VARIANTS:
            return self.rt * self.wg // self.seg
        return 2 * self.wg // self.seg if self.variant == "GEMV_SEG" else 4

    def label(self) -> str:
        if self.variant in MR_VARIANTS:
            return f"{self.variant}/{self.wg}/{self.seg}/{self.rt}"
        return f"{self.variant}/{self.wg}" + (f"/{self.seg}" if self.variant == "GEMV_SEG" else "")


@dataclass(frozen=True)
class Tier:
    """What the kernels may use: decided once per device from its features."""

    f16: bool  # KV cache in f16 (shader-f16)
    subgroups: bool  # subgroupAdd / subgroupMax reductions

    @property
    def name(self) -> str:
        return ("f16" if self.f16 else "f32") + ("-subgroups" if self.subgroups else "")

    @classmethod
    def for_device(cls, device: Device, *, f16: bool | None = None, subgroups: bool | None = None) -> Tier:
        caps = device.caps
        return cls(
            f16=caps.has_f16 if f16 is None else (f16 and caps.has_f16),
            subgroups=caps.has_subgroups if subgroups is None else (subgroups and caps.has_subgroups),
        )


class Kernels:
    """Compiles shader variants for one device and tier, each once."""

    def __init__(
        self,
        device: Device,
        tier: Tier,
        *,
        gemv_variant: str = "GEMV",
        gemv_wg: int = 64,
        attention_wg: int = 256,
        gemv_seg: int = 8,
        gemv_rt: int = 4,
        attention_splits: int = 16,
        sample_wg: int = 1024,
        fuse_attention: bool = False,
        flash_queries: int = 4,
        flash_min_keys: int | None = None,
        split_min_keys: int = 128,
        gemm_wg: int = 256,
        gemm_variant: str = "GEMM",
        q8_decode: bool = False,
        gemm_rt_min_dim: int = 2048,
        gemm_f16: bool = False,
    ):
        self.device = device
        self.tier = tier
        # Decode matrix-vector kernel: "GEMV" splits K over a workgroup of gemv_wg invocations, four rows each;
        # "GEMV_SEG" gives each row pair a segment of gemv_seg invocations and sums it with subgroup shuffles.
        self.gemv_variant = gemv_variant
        self.gemv_wg = gemv_wg
        # "GEMV_SEG": invocations per row pair; at most the smallest subgroup size the probe measured.
        self.gemv_seg = gemv_seg
        self.gemv_rt = gemv_rt  # "GEMV_MR": rows per invocation (gemv_seg invocations along K per row group)
        # The smallest subgroup size the start-up probe measured (0: not probed). GEMV_MR segments of at most this
        # many invocations sum with subgroup shuffles, longer ones through workgroup memory.
        self.subgroup_min = 0
        # Per matrix role ("qkv", "o", "ffn1", "ffn2", "lm_head"), the GEMV shape load-time tuning chose.
        self.gemv_roles: dict[str, GemvConfig] = {}
        self.attention_wg = attention_wg
        # The sampler is one workgroup reading every logit: as wide as the device allows (up to sample_wg).
        caps = device.caps
        self.sample_wg = min(
            sample_wg, caps.max_compute_invocations_per_workgroup, caps.max_compute_workgroup_size_x
        )
        # Key splits of decode attention (flash decoding): more workgroups for long contexts.
        self.attention_splits = attention_splits
        # Fewest keys per split: a short context uses fewer splits (fewer for the output projection to merge). 128
        # measured best of 64 / 128 / 256 on the H100 over 128..1024 keys (bench/results/README.md).
        self.split_min_keys = split_min_keys
        # Decode: the QKV projection computed inside the attention kernel (one dispatch fewer per layer, where its
        # workgroup memory fits) or in its own kernel. Off by default: on the H100 the fused step takes ~6 % more
        # GPU time (each attention workgroup's projection is a serial chain of weight loads), though ~17 % less host
        # encoding time (bench/results/README.md).
        self.fuse_attention = fuse_attention
        # Prefill attention: queries per flash-attention tile (each key tile is loaded once for them all). Small
        # tiles keep many workgroups in flight; prefill attention is latency-bound at these model sizes.
        self.flash_queries = flash_queries
        # Prefill steps whose last query sees at least this many keys use flash attention, the others a workgroup
        # per (head, query). None: never. Off by default: on the H100 the per-query kernel measured about twice as
        # fast at 256 to 4096 keys (its many workgroups hide memory latency; bench/results/README.md).
        self.flash_min_keys = flash_min_keys
        # Prefill GEMM workgroup: 256 invocations in four groups splitting K (GPUs: more warps to hide latency with;
        # 14.6 -> 6.0 ms for a 128-token step on the H100) or 64 in one (CPU adapters, which run every invocation
        # through each barrier; on idle lavapipe the 256 shape took 0.16 s against the former 64-invocation
        # kernel's 0.135 s for a 64 x 576 x 1536 product).
        # "GEMM_RT": register-tiled, gemm_wg (64 or 128) rows x 64 tokens a workgroup, 8 x 8 outputs an invocation.
        allowed = {"GEMM": (64, 256), "GEMM_RT": (64, 128)}
        if gemm_wg not in allowed.get(gemm_variant, ()):
            raise ValueError(
                f"gemm_variant {gemm_variant!r} with gemm_wg {gemm_wg}: expected one of {allowed}"
            )
        self.gemm_variant = gemm_variant
        self.gemm_wg = gemm_wg
        # GEMM_RT runs products of at least this many rows and input features; smaller ones GEMM/256. On the H200
        # SmolLM2-135M (576 features) prefilled 512 tokens at 27,455 tok/s with GEMM/256 against 18,600-18,850 with
        # GEMM_RT/64, while the 1B and 8B shapes (every product at least 2048 x 2048) gained (8B: 1,022 -> 1,545).
        self.gemm_rt_min_dim = gemm_rt_min_dim
        # GEMM_RT in the f16 tier with f16 tiles and per-block f16 sums (matmul.wgsl RT_HALF): twice the FMA rate of
        # f32 on NVIDIA GPUs; weights and activations rounded to f16 (2^-11) and sums in f16 within a 32-column block.
        # Opt-in: products within ~1e-3 of exact, but on the sharp-attention arch fixtures first-step logits moved
        # 1.4e-3..2.5e-2 from transformers (the f16 tier's bound is 1e-2; its other kernels 2e-4..4.5e-3). Ignored in
        # the f32 tiers.
        self.gemm_f16 = gemm_f16
        # Decode products on GEMV_MRQ (the formats in Q8_FORMATS) read x as integer planes (ops.quantize_x). By
        # default three planes: 24-bit activations, rounding below 2^-23 of a block's largest value, so results stay
        # those of the f32 tier (greedy replies equal the f32 reference's). q8_decode: one plane, x rounded to int8 as
        # llama.cpp's GPU and CPU decode (results within that rounding), fewer integer products per weight.
        self.q8_decode = q8_decode
        self._pipelines: dict[str, Pipeline] = {}
        self._uniforms: dict[bytes, object] = {}

    @property
    def act_planes(self) -> int:
        """Signed-byte planes of each activation for GEMV_MRQ (ops.quantize_x): 1 with q8_decode, else 3."""
        return 1 if self.q8_decode else 3

    @property
    def gemv(self) -> GemvConfig:
        """The default decode GEMV shape (roles without a tuned one use it)."""
        return GemvConfig(
            self.gemv_variant,
            self.gemv_wg,
            self.gemv_seg,
            self.gemv_rt if self.gemv_variant in MR_VARIANTS else 0,
        )

    def defines(self, **defines: object) -> dict[str, object]:
        d = dict(defines)
        if self.tier.f16:
            d["F16"] = 1
        if self.tier.subgroups:
            d["SUBGROUPS"] = 1
            d["SG_ARGS"] = (
                ", @builtin(subgroup_size) sg_size: u32, @builtin(subgroup_invocation_id) sg_lane: u32"
            )
            d["SG_INIT"] = "sg_size_p = sg_size; sg_lane_p = sg_lane;"
        else:
            d["SG_ARGS"] = ""
            d["SG_INIT"] = ""
        return d

    def source(self, shader: str, **defines: object) -> str:
        return preprocess(
            shader,
            self.defines(**defines),
            enable_subgroups_directive=self.device.caps.wgsl_enables_subgroups,
        )

    def pipeline(self, shader: str, **defines: object) -> Pipeline:
        key = variant_key(shader, {k: v for k, v in defines.items()}) + f"@{self.tier.name}"
        pipe = self._pipelines.get(key)
        if pipe is None:
            pipe = self.device.create_pipeline(self.source(shader, **defines), key)
            self._pipelines[key] = pipe
        return pipe

    def uniform(self, data: bytes, label: str = "params") -> object:
        """A uniform buffer holding ``data``; identical Params share one buffer."""
        buf = self._uniforms.get(data)
        if buf is None:
            buf = self.device.create_buffer(len(data), BufferUsage.UNIFORM | BufferUsage.COPY_DST, label)
            self.device.write_buffer(buf, 0, data)
            self._uniforms[data] = buf
        return buf

    @property
    def n_pipelines(self) -> int:
        return len(self._pipelines)


def is_cpu_adapter(device: Device) -> bool:
    """CPU rasterizers (lavapipe/llvmpipe, SwiftShader) run a workgroup as SIMD loops on one core."""
    info = device.info
    text = f"{info.vendor} {info.device} {info.description} {info.extra.get('adapter_type', '')}".lower()
    return any(k in text for k in ("llvmpipe", "lavapipe", "swiftshader", "cpu"))


def default_tuning(device: Device) -> dict[str, object]:
    """Kernel shapes by adapter kind, before (or instead of) load-time tuning: on CPU adapters small workgroups
    waste less on reductions, and tuning is skipped there (each measurement costs seconds)."""
    if is_cpu_adapter(device):
        return {
            "gemv_variant": "GEMV",
            "gemv_wg": 16,
            "attention_wg": 64,
            "attention_splits": 2,
            "sample_wg": 256,
            "gemm_wg": 64,
        }
    # GPUs: rows per invocation, a subgroup along K (tuning.CANDIDATES[0]); tuning measures the others. The
    # register-tiled prefill GEMM where shaders run without run-time checks: on the H200 it ran at 20-25 TFLOP/s
    # unchecked against 2.5 with naga's checks, where GEMM/256 runs at 11-15 either way (bench/results/README.md).
    gemm = {"gemm_variant": "GEMM_RT", "gemm_wg": 64} if device.caps.unchecked_shaders else {}
    return {"gemv_variant": "GEMV_MR", "gemv_wg": 128, "gemv_seg": 32, "gemv_rt": 2, **gemm}
