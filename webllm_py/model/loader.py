"""Weights: a model's GGUF tensors, named per architecture, become repacked GPU weights, once, at load.

    GGUF file -> ModelConfig (config.py: features) -> load_weights (here: GPU weights) -> Graph (graph.py: launches)

Besides repacking every matrix into the layout of weights.wgsl (ops.Repacker), the loader puts each layer's tensors
into the few shapes the graph knows, whatever the file's naming:
- q/k/v: one matrix of rows q, k, v, from attn_q/attn_k/attn_v or from a fused attn_qkv (Phi-3); their biases, when
  present, one (n_q + 2 n_kv,) vector (a missing one is zeros);
- gate/up: one matrix with gate row i at row 2i and up row i at 2i + 1 (the SiLU/GELU epilogue's pairs), from
  ffn_gate and ffn_up or from a fused ffn_up of gate rows then up rows (Phi-3);
- NEOX RoPE (models.md section 4.2): the q and k rows of each head are permuted, feature i -> 2i and
  i + rope_dims / 2 -> 2i + 1, so the kernels' adjacent-pair rotation computes NEOX's; q.k is unchanged because q
  and k are permuted alike, v is not touched. Biases and per-head q/k norm weights get the same permutation.
- RoPE: one inverse-frequency table per distinct (base, scale) of the layers, divided by the model's frequency
  factors (Llama 3.1's rope_freqs; Phi-3's LongRoPE short or long factors, long iff the context window is longer
  than the original context, as llama.cpp chooses).
Source rows are read a staging buffer's worth at a time, so a weight never sits whole in host memory.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UnsupportedModelError
from ..gpu.device import Buffer, BufferUsage
from ..kernels import ops
from ..kernels.registry import Kernels
from .config import ModelConfig
from .gguf import GGUFFile, TensorInfo
from .quant import GGMLType, dequantize_row

STORAGE = BufferUsage.STORAGE | BufferUsage.COPY_DST | BufferUsage.COPY_SRC
Progress = Callable[[float, str], None]
# A matrix source: a whole tensor, or rows [first, first + count) of one (a fused tensor's part).
Part = str | tuple[str, int, int]


@dataclass
class LayerWeights:
    """One transformer block's tensors on the GPU."""

    attn_norm: Buffer  # (H,) f32
    qkv: (
        ops.Weight
    )  # (n_q + 2 n_kv, H): q rows, then k rows, then v rows (NEOX models: q/k rows permuted per head)
    qkv_bias: Buffer | None  # (n_q + 2 n_kv,) f32, permuted like the rows
    q_norm: Buffer | None  # (head_dim,) f32 per-head RMSNorm weight of q, permuted like a head's rows
    k_norm: Buffer | None  # (head_dim,) f32
    o: ops.Weight  # (H, n_q)
    post_attn_norm: Buffer | None  # (H,) f32: RMSNorm of the attention output before the residual add
    ffn_norm: Buffer  # (H,) f32
    gate_up: ops.Weight  # (2 I, H): gate row i at 2i, up row i at 2i + 1
    down: ops.Weight  # (H, I)
    post_ffn_norm: Buffer | None  # (H,) f32
    rope_freq: Buffer  # (rope_dims / 2,) f32 inverse frequencies (shared by the layers with the same RoPE)


@dataclass
class ModelWeights:
    embd: ops.Weight  # (vocab, H)
    layers: list[LayerWeights]
    output_norm: Buffer  # (H,) f32
    lm_head: ops.Weight  # (vocab, H): the embedding itself when tied
    nbytes: int  # GPU memory held by all of the above


async def load_weights(
    gguf: GGUFFile, cfg: ModelConfig, kern: Kernels, *, max_ctx: int, progress: Progress | None = None
) -> ModelWeights:
    """Repack every tensor the model's features use (cfg.check_tensors has checked names and shapes)."""
    return await _Loader(gguf, cfg, kern).load(max_ctx, progress)


def neox_order(head_dim: int, rope_dims: int) -> list[int]:
    """Source feature of each destination feature of a head: 2i <- i, 2i + 1 <- i + rope_dims / 2 (i < rope_dims / 2),
    features past rope_dims stay."""
    half = rope_dims // 2
    return [(d // 2 + (half if d % 2 else 0)) if d < rope_dims else d for d in range(head_dim)]


class _Loader:
    def __init__(self, gguf: GGUFFile, cfg: ModelConfig, kern: Kernels):
        self.gguf = gguf
        self.cfg = cfg
        self.kern = kern
        self.device = kern.device
        self.weight_bytes = 0
        # NEOX models: the stacked rows [0, n_q + n_kv) (whole heads) are permuted, head by head.
        self.head_order = neox_order(cfg.head_dim, cfg.rope_dims) if cfg.rope_neox else None

    async def load(self, max_ctx: int, progress: Progress | None) -> ModelWeights:
        gguf, cfg = self.gguf, self.cfg
        names = [t for t in gguf.tensors if t.endswith(".weight")]
        total = sum(gguf.tensors[n].nbytes for n in names) or 1
        done = 0
        repacker = ops.Repacker(self.kern)

        async def step(nbytes: int, what: str) -> None:
            nonlocal done
            done += nbytes
            if progress is not None:
                progress(min(done / total, 1.0), what)
            await asyncio.sleep(0)  # let progress events and other tasks through (the browser's only thread)

        rope_tables: dict[tuple[float, float], Buffer] = {}
        for lc in cfg.layers:
            key = (lc.rope_base, lc.rope_scale)
            if key not in rope_tables:
                rope_tables[key] = await self._rope_frequencies(*key, max_ctx=max_ctx)

        embd = await self._matrix(gguf, repacker, ["token_embd.weight"], "token_embd")
        await step(gguf.tensor("token_embd.weight").nbytes, "token_embd")
        layers = []
        n_qk = cfg.q_size + cfg.kv_size
        for i, lc in enumerate(cfg.layers):
            t = {role: name for role, (name, _) in cfg.layer_tensors(i).items()}
            p = f"blk.{i}."
            qkv_parts: list[Part] = [t["qkv"]] if cfg.qkv_fused else [t["q"], t["k"], t["v"]]
            if cfg.ffn_fused:  # gate rows, then up rows, of one tensor
                gate_up: list[Part] = [
                    (t["gate_up"], 0, cfg.ffn_size),
                    (t["gate_up"], cfg.ffn_size, cfg.ffn_size),
                ]
            else:
                gate_up = [t["gate"], t["up"]]
            layers.append(
                LayerWeights(
                    attn_norm=await self._vector(t["attn_norm"]),
                    qkv=await self._matrix(gguf, repacker, qkv_parts, p + "qkv", permute_rows=n_qk),
                    qkv_bias=await self._qkv_bias(i) if cfg.qkv_bias else None,
                    q_norm=await self._vector(t["q_norm"], per_head=True) if cfg.qk_norm else None,
                    k_norm=await self._vector(t["k_norm"], per_head=True) if cfg.qk_norm else None,
                    o=await self._matrix(gguf, repacker, [t["o"]], p + "o"),
                    post_attn_norm=await self._vector(t["post_attn_norm"]) if cfg.post_norms else None,
                    ffn_norm=await self._vector(t["ffn_norm"]),
                    gate_up=await self._matrix(gguf, repacker, gate_up, p + "gate_up", interleave=True),
                    down=await self._matrix(gguf, repacker, [t["down"]], p + "down"),
                    post_ffn_norm=await self._vector(t["post_ffn_norm"]) if cfg.post_norms else None,
                    rope_freq=rope_tables[(lc.rope_base, lc.rope_scale)],
                )
            )
            await step(
                sum(t.nbytes for n, t in gguf.tensors.items() if n.startswith(p)),
                f"layer {i + 1}/{cfg.n_layers}",
            )
        output_norm = await self._vector("output_norm.weight")
        if cfg.tied_embeddings:
            lm_head = embd
        else:
            lm_head = await self._matrix(gguf, repacker, ["output.weight"], "output")
            await step(gguf.tensor("output.weight").nbytes, "output")
        await repacker.close(gguf.name)  # CorruptWeightsError for NaN/Inf scales: one readback per load
        if progress is not None:
            progress(1.0, "weights on the GPU")
        return ModelWeights(embd, layers, output_norm, lm_head, self.weight_bytes)

    async def _rope_frequencies(self, base: float, scale: float, *, max_ctx: int) -> Buffer:
        """Inverse frequency of each rotated pair: scale * base^(-2i / rope_dims), divided by the model's factors."""
        cfg = self.cfg
        n = cfg.rope_dims // 2
        freqs = [scale * base ** (-2.0 * i / cfg.rope_dims) for i in range(n)]
        factors = cfg.rope_factors
        if cfg.rope_factors_long is not None and max_ctx > cfg.rope_original_context:
            factors = cfg.rope_factors_long
        if factors is not None:
            divisors = await self._floats(self.gguf.tensor(factors))
            self.gguf.check_finite(factors, struct.pack(f"<{len(divisors)}f", *divisors), positive=True)
            freqs = [f / divisors[i] for i, f in enumerate(freqs)]
        return self._upload_floats(freqs, f"rope_freq.{base:g}.{scale:g}")

    async def _floats(self, info: TensorInfo) -> list[float]:
        if info.ggml_type not in (GGMLType.F32, GGMLType.F16):
            raise UnsupportedModelError(
                f"{info.name}: expected an F32 or F16 vector, found {info.ggml_type.name}"
            )
        return dequantize_row(info.ggml_type, await self.gguf.tensor_bytes_async(info.name))

    def _upload_floats(self, values: list[float], label: str) -> Buffer:
        """An f32 vector on the GPU; norms, biases and frequencies are small: checked finite on the host first."""
        data = struct.pack(f"<{len(values)}f", *values)
        self.gguf.check_finite(label, data)
        buf = self.device.create_buffer(len(data), STORAGE, label)
        self.device.write_buffer(buf, 0, data)
        self.weight_bytes += len(data)
        return buf

    async def _vector(self, name: str, *, per_head: bool = False) -> Buffer:
        """A small f32 vector; ``per_head`` (a head's q/k norm weight): in the NEOX row order."""
        values = await self._floats(self.gguf.tensor(name))
        if per_head and self.head_order is not None:
            values = [values[j] for j in self.head_order]
        return self._upload_floats(values, name)

    async def _qkv_bias(self, i: int) -> Buffer:
        """q, k, v biases as one vector over the stacked rows, zeros where a bias is absent, q/k permuted per head."""
        cfg, gguf = self.cfg, self.gguf
        values: list[float] = []
        for name, (n,) in self.cfg.bias_tensors(i).values():
            if name not in gguf.tensors:
                values += [0.0] * n
                continue
            part = await self._floats(gguf.tensor(name))
            gguf.check_finite(name, struct.pack(f"<{len(part)}f", *part))  # CorruptWeightsError naming it
            values += part
        if self.head_order is not None:
            hd = cfg.head_dim
            values = [
                values[r - r % hd + self.head_order[r % hd]] if r < cfg.q_size + cfg.kv_size else v
                for r, v in enumerate(values)
            ]
        return self._upload_floats(values, f"blk.{i}.qkv_bias")

    def _neox_rows(self, raw: bytes, n_rows: int, row_bytes: int) -> bytes:
        """Whole heads of raw rows in NEOX order (see the module docstring)."""
        hd, order = self.cfg.head_dim, self.head_order
        view = memoryview(raw)
        return b"".join(
            view[(h + order[d]) * row_bytes : (h + order[d] + 1) * row_bytes]
            for h in range(0, n_rows, hd)
            for d in range(hd)
        )

    async def _matrix(
        self,
        gguf: GGUFFile,
        repacker: ops.Repacker,
        names: list[Part],
        label: str,
        *,
        interleave: bool = False,
        permute_rows: int = 0,
    ) -> ops.Weight:
        """Repack one or more GGUF matrices (same input size) into one stacked (or row-interleaved) GPU weight.
        Matrices of different GGUF types (a Q6_K v beside Q4_K q/k) keep their own formats in segments of the weight
        (ops.alloc_fused), still one product.

        A part is a tensor name, or (name, first row, rows) for part of a fused tensor. With ``interleave`` row r of
        part j goes to r * len(names) + j; else the parts are stacked. NEOX models: the first ``permute_rows``
        stacked rows (whole heads) are permuted per head. Source rows are read a staging buffer's worth at a time
        (``read_async``: browser storage has no synchronous reads), so a weight never sits whole in host memory."""
        parts = [(p, 0, gguf.tensor(p).n_rows) if isinstance(p, str) else p for p in names]
        infos = [gguf.tensor(n) for n, _, _ in parts]
        k = infos[0].shape[0]
        if any(i.shape[0] != k for i in infos):
            desc = ", ".join(f"{i.name} {i.ggml_type.name} {list(i.shape)}" for i in infos)
            raise UnsupportedModelError(f"{gguf.name}: cannot fuse {desc}: they need the same input size")
        if self.head_order is None:
            permute_rows = 0
        weight, places = ops.alloc_fused(
            self.kern, [(i.ggml_type, n) for i, (_, _, n) in zip(infos, parts, strict=True)], k, label,
            interleave=interleave,
        )  # fmt: skip
        row0 = 0
        for (_, src_row0, part_rows), info, place in zip(parts, infos, places, strict=True):
            dst_row0, step = place.dst_row0, place.dst_row_step
            rows_per_chunk = repacker.rows_per_chunk(info.row_bytes)
            if row0 < permute_rows:  # chunks of whole heads (parts start at head boundaries)
                rows_per_chunk = max(1, rows_per_chunk // self.cfg.head_dim) * self.cfg.head_dim
            for r0 in range(0, part_rows, rows_per_chunk):
                rows = min(rows_per_chunk, part_rows - r0)
                start = (src_row0 + r0) * info.row_bytes
                raw = await gguf.tensor_bytes_async(info.name, start, rows * info.row_bytes)
                if row0 + r0 < permute_rows:
                    raw = self._neox_permuted(raw, row0 + r0, rows, info.row_bytes, permute_rows)
                repacker.upload(
                    weight,
                    info.ggml_type,
                    raw,
                    rows,
                    dst_row0=dst_row0 + r0 * step,
                    dst_row_step=step,
                    segment=place.segment,
                    tensor=info.name,
                )
            row0 += part_rows
        self.weight_bytes += weight.nbytes
        return weight

    def _neox_permuted(self, raw: bytes, row0: int, rows: int, row_bytes: int, permute_rows: int) -> bytes:
        """Rows row0 .. row0 + rows of the stacked matrix with those below ``permute_rows`` in NEOX order."""
        n = min(rows, permute_rows - row0)  # whole heads: row0 and permute_rows are multiples of head_dim
        head = self._neox_rows(raw[: n * row_bytes], n, row_bytes)
        return head + raw[n * row_bytes :]
