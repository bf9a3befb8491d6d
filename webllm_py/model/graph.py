"""The Llama-family forward pass on the GPU: weights, KV cache, activations, and the launches of one step.

Everything is allocated and every bind group is built once, in ``load``; a step is then a list of dispatches
recorded into one compute pass. Per layer, five kernels (matmul.wgsl variants and attention.wgsl):

    qkv   RMSNorm(x) @ [Wq; Wk; Wv] -> RoPE(q) to scratch, RoPE(k) and v appended to the KV cache
    attn  causal GQA attention over the cache -> attn
    o     x += attn @ Wo
    ffn1  RMSNorm(x) @ [Wgate; Wup] (rows interleaved) -> h = silu(gate) * up
    ffn2  x += h @ Wdown

plus the token embedding before the layers, the LM head (final RMSNorm folded in) and the sampler after them:
5 * n_layers + 3 dispatches for a decode step (153 for SmolLM2-135M's 30 layers). With ``Kernels.fuse_attention``
(where the kernel's workgroup memory allows) decode computes qkv inside attn, each attention workgroup projecting
its own head's rows: 4 * n_layers + 3 (123). Prefill always runs the five kernels (GEMM projections).
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable

from ..errors import DeviceLimitError, UnsupportedModelError
from ..gpu.device import Buffer, BufferUsage, Dispatch, Prepared
from ..kernels import ops
from ..kernels.registry import GemvConfig, Kernels
from .config import ModelConfig
from .gguf import GGUFFile, TensorInfo
from .quant import GGMLType, dequantize_row

STORAGE = BufferUsage.STORAGE | BufferUsage.COPY_DST | BufferUsage.COPY_SRC
Progress = Callable[[float, str], None]


class Layer:
    """GPU tensors and launches of one transformer block."""

    attn_norm: Buffer  # (H,) f32
    qkv: ops.Weight  # (n_q + 2 n_kv, H): q rows, then k rows, then v rows
    o: ops.Weight  # (H, n_q)
    ffn_norm: Buffer  # (H,) f32
    gate_up: ops.Weight  # (2 I, H): gate row i at 2i, up row i at 2i + 1
    down: ops.Weight  # (H, I)
    kv: Buffer  # (2, n_kv_heads, max_ctx, head_dim) KV_T: the K cache, then the V cache
    launches: tuple[ops.Launch, ...]  # decode: qkv_attn, o, ffn1, ffn2 (fused) or qkv, attn, o, ffn1, ffn2
    prefill_launches: tuple[ops.Launch, ...]  # qkv, attn, o, ffn1, ffn2 with GEMM projections
    flash_attention: ops.Launch  # prefill's attn for long contexts (flash_attention.wgsl)


class LlamaGraph:
    def __init__(self, cfg: ModelConfig, kern: Kernels, *, max_ctx: int, chunk: int):
        self.cfg = cfg
        self.kern = kern
        self.device = kern.device
        self.max_ctx = max_ctx  # KV cache capacity in positions
        self.chunk = chunk  # most tokens in one prefill step
        self.layers: list[Layer] = []
        self.weight_bytes = 0  # bytes of GPU memory held by weights
        self.kv_bytes = 0

    # ---- loading ------------------------------------------------------------------------------------------------------

    async def load(self, gguf: GGUFFile, progress: Progress | None = None) -> None:
        cfg, dev = self.cfg, self.device
        H, FF, C = cfg.hidden_size, cfg.ffn_size, self.chunk
        kv_itemsize = 2 if self.kern.tier.f16 else 4

        # Activations, (tokens, features) row-major f32.
        self.x = dev.create_buffer(C * H * 4, STORAGE, "x")  # (C, H) residual stream
        self.q = dev.create_buffer(C * cfg.q_size * 4, STORAGE, "q")  # (C, n_heads * head_dim) RoPE'd queries
        # (C, n_heads * head_dim) in prefill; decode: (n_heads, splits, head_dim) partial sums of the key splits
        splits = self.kern.attention_splits
        self.attn = dev.create_buffer(max(C, splits) * cfg.q_size * 4, STORAGE, "attn")
        self.attn_ml = dev.create_buffer(
            cfg.n_heads * splits * 2 * 4, STORAGE, "attn_ml"
        )  # (n_heads, splits, 2)
        self.h = dev.create_buffer(C * FF * 4, STORAGE, "h")  # (C, ffn_size) silu(gate) * up
        self.logits = dev.create_buffer(
            ops.Sampler.logits_bytes(cfg.vocab_size), STORAGE, "logits"
        )  # (vocab,) f32 of the step's last token, padded to whole vec4s (the sampler reads vec4s)
        self.tokens = dev.create_buffer(max(C, 4) * 4, STORAGE, "tokens")  # (C,) u32 token ids of the step
        self.state = dev.create_buffer(16, STORAGE | BufferUsage.UNIFORM, "state")  # State (common.wgsl)
        self.rope_freq = dev.create_buffer(cfg.rope_dims // 2 * 4, STORAGE, "rope_freq")  # (rope_dims/2,) f32
        freqs = await self._rope_frequencies(gguf)
        dev.write_buffer(self.rope_freq, 0, struct.pack(f"<{cfg.rope_dims // 2}f", *freqs))

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

        self.embd = await self._matrix(gguf, repacker, ["token_embd.weight"], "token_embd")
        await step(gguf.tensor("token_embd.weight").nbytes, "token_embd")
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            layer = Layer()
            layer.attn_norm = await self._vector(gguf, p + "attn_norm.weight")
            layer.qkv = await self._matrix(
                gguf, repacker, [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"], p + "qkv"
            )
            layer.o = await self._matrix(gguf, repacker, [p + "attn_output.weight"], p + "o")
            layer.ffn_norm = await self._vector(gguf, p + "ffn_norm.weight")
            layer.gate_up = await self._matrix(
                gguf, repacker, [p + "ffn_gate.weight", p + "ffn_up.weight"], p + "gate_up", interleave=True
            )
            layer.down = await self._matrix(gguf, repacker, [p + "ffn_down.weight"], p + "down")
            kv_size = 2 * cfg.n_kv_heads * self.max_ctx * cfg.head_dim * kv_itemsize
            layer.kv = dev.create_buffer(kv_size, STORAGE, p + "kv")
            self.kv_bytes += kv_size
            self.layers.append(layer)
            await step(
                sum(t.nbytes for n, t in gguf.tensors.items() if n.startswith(p)),
                f"layer {i + 1}/{cfg.n_layers}",
            )
        self.output_norm = await self._vector(gguf, "output_norm.weight")
        if cfg.tied_embeddings:
            self.lm_head = self.embd
        else:
            self.lm_head = await self._matrix(gguf, repacker, ["output.weight"], "output")
            await step(gguf.tensor("output.weight").nbytes, "output")
        await repacker.close(gguf.name)  # CorruptWeightsError for NaN/Inf scales: one readback per load
        self._build_launches()
        if progress is not None:
            progress(1.0, "weights on the GPU")

    async def _rope_frequencies(self, gguf: GGUFFile) -> list[float]:
        """Inverse frequency of each rotated pair: base^(-2i / rope_dims), divided by Llama 3.1's factors if any."""
        cfg = self.cfg
        freqs = [cfg.rope_base ** (-2.0 * i / cfg.rope_dims) for i in range(cfg.rope_dims // 2)]
        if cfg.has_rope_freq_factors:
            info = gguf.tensor("rope_freqs.weight")
            factors = await self._floats(gguf, info)
            if len(factors) < len(freqs):
                raise UnsupportedModelError(f"{gguf.name}: rope_freqs.weight has {len(factors)} values; the "
                                            f"rotation needs {len(freqs)}")  # fmt: skip
            gguf.check_finite(info.name, struct.pack(f"<{len(factors)}f", *factors), positive=True)
            freqs = [f / factors[i] for i, f in enumerate(freqs)]
        return freqs

    async def _floats(self, gguf: GGUFFile, info: TensorInfo) -> list[float]:
        if info.ggml_type not in (GGMLType.F32, GGMLType.F16):
            raise UnsupportedModelError(
                f"{info.name}: expected an F32 or F16 vector, found {info.ggml_type.name}"
            )
        return dequantize_row(info.ggml_type, await gguf.tensor_bytes_async(info.name))

    async def _vector(self, gguf: GGUFFile, name: str) -> Buffer:
        info = gguf.tensor(name)
        data = await gguf.tensor_bytes_async(name)
        if info.ggml_type != GGMLType.F32:
            values = await self._floats(gguf, info)
            data = struct.pack(f"<{len(values)}f", *values)
        gguf.check_finite(name, data)  # norms and biases are small: checked on the host, before the upload
        buf = self.device.create_buffer(len(data), STORAGE, name)
        self.device.write_buffer(buf, 0, data)
        self.weight_bytes += len(data)
        return buf

    async def _matrix(
        self,
        gguf: GGUFFile,
        repacker: ops.Repacker,
        names: list[str],
        label: str,
        *,
        interleave: bool = False,
    ) -> ops.Weight:
        """Repack one or more GGUF matrices (same input size) into one stacked (or row-interleaved) GPU weight.
        Matrices of different GGUF types (a Q6_K v beside Q4_K q/k) keep their own formats in segments of the weight
        (ops.alloc_fused), still one product.

        Source rows are read a staging buffer's worth at a time (``read_async``: browser storage has no
        synchronous reads), so a weight never sits whole in host memory."""
        infos = [gguf.tensor(n) for n in names]
        k = infos[0].shape[0]
        if any(i.shape[0] != k for i in infos):
            desc = ", ".join(f"{i.name} {i.ggml_type.name} {list(i.shape)}" for i in infos)
            raise UnsupportedModelError(f"{gguf.name}: cannot fuse {desc}: they need the same input size")
        weight, places = ops.alloc_fused(
            self.kern, [(i.ggml_type, i.n_rows) for i in infos], k, label, interleave=interleave
        )
        for info, place in zip(infos, places, strict=True):
            rows_per_chunk = repacker.rows_per_chunk(info.row_bytes)
            for r0 in range(0, info.n_rows, rows_per_chunk):
                rows = min(rows_per_chunk, info.n_rows - r0)
                raw = await gguf.tensor_bytes_async(info.name, r0 * info.row_bytes, rows * info.row_bytes)
                repacker.upload(
                    weight,
                    info.ggml_type,
                    raw,
                    rows,
                    dst_row0=place.dst_row0 + r0 * place.dst_row_step,
                    dst_row_step=place.dst_row_step,
                    segment=place.segment,
                    tensor=info.name,
                )
        self.weight_bytes += weight.nbytes
        return weight

    # ---- launches -----------------------------------------------------------------------------------------------------

    def _build_launches(self) -> None:
        k, st = self.kern, self.state
        for i, L in enumerate(self.layers):
            L.launches = self._layer_launches(i, gemm=False)
            L.prefill_launches = self._layer_launches(i, gemm=True)
            L.flash_attention = self._attention_launch(i, flash=True, label=f"blk.{i}.gemm.flash_attn")
        self.embed_launch = ops.embed(k, w=self.embd, tokens=self.tokens, out=self.x, state=st)
        self.sampler = ops.Sampler(
            k,
            logits=self.logits,
            tokens=self.tokens,
            state=st,
            vocab=self.cfg.vocab_size,
            partials=self.device.create_buffer(
                ops.Sampler.partials_bytes(self.cfg.vocab_size), STORAGE, "lm_head.argmax"
            ),
        )
        self._build_lm_head()
        self._decode = self.device.prepare(self.forward(1, sample=True))  # the same every decode step

    def rebuild_decode(self) -> None:
        """Rebuild the decode launches after ``kern.gemv_roles`` changed (load-time tuning)."""
        for i, L in enumerate(self.layers):
            L.launches = self._layer_launches(i, gemm=False)
        self._build_lm_head()
        self._decode = self.device.prepare(self.forward(1, sample=True))

    def _build_lm_head(self) -> None:
        # Its workgroups also leave greedy argmax partials for the sampler, one per workgroup of rows.
        self.lm_head_launch = self.matmul_launch("lm_head", None, gemm=False)
        shape = self.kern.gemv_roles.get("lm_head") or self.kern.gemv
        self.sampler.use_partials(-(-self.cfg.vocab_size // shape.rows_per_workgroup))

    def _layer_launches(self, i: int, *, gemm: bool) -> tuple[ops.Launch, ...]:
        cfg, L = self.cfg, self.layers[i]
        # Decode splits the keys over several workgroups (flash decoding) and the output projection merges the
        # splits as it loads them; prefill has a workgroup per (head, token) and writes attn directly.
        split = {} if gemm else {"ml": self.attn_ml, "n_splits": self.kern.attention_splits}
        fused = None
        if not gemm and self.fuses_attention and len(L.qkv.segments) == 1:  # one weight format (ops.Weight)
            fused = ops.FusedQKV(
                w=L.qkv,
                x=self.x,
                norm_w=L.attn_norm,
                rope_freq=self.rope_freq,
                rope_dims=cfg.rope_dims,
                eps=cfg.norm_eps,
            )
        attention = self._attention_launch(
            i,
            fused=fused,
            label=f"blk.{i}.{'gemm' if gemm else 'gemv'}.{'qkv_attn' if fused else 'attn'}",
            **split,
        )
        o, ffn1, ffn2 = (self.matmul_launch(role, i, gemm=gemm) for role in ("o", "ffn1", "ffn2"))
        if fused is not None:
            return (attention, o, ffn1, ffn2)
        return (self.matmul_launch("qkv", i, gemm=gemm), attention, o, ffn1, ffn2)

    def _attention_launch(self, i: int, *, label: str, **options: object) -> ops.Launch:
        """ops.attention over layer i's KV cache, q -> attn, with ``options`` (split, fused, flash)."""
        cfg = self.cfg
        return ops.attention(
            self.kern,
            q=self.q,
            kv=self.layers[i].kv,
            out=self.attn,
            state=self.state,
            n_heads=cfg.n_heads,
            n_kv_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim,
            max_ctx=self.max_ctx,
            label=label,
            **options,
        )

    @property
    def fuses_attention(self) -> bool:
        """Whether decode computes the QKV projection inside the attention kernel (see the module docstring)."""
        cfg = self.cfg
        return self.kern.fuse_attention and ops.fused_attention_fits(self.kern, cfg.hidden_size, cfg.head_dim)

    def matmul_launch(
        self, role: str, layer: int | None, *, gemm: bool, gemv: GemvConfig | None = None
    ) -> ops.Launch:
        """The launch of one of the model's matrix products: role "qkv", "o", "ffn1", "ffn2" of ``layer``, or
        "lm_head". ``gemv`` overrides the decode kernel shape (tuning measures candidates through this)."""
        cfg, k = self.cfg, self.kern
        gemv = gemv or (None if gemm else k.gemv_roles.get(role))
        tag = f"blk.{layer}.{'gemm' if gemm else 'gemv'}.{role}" if layer is not None else role
        common = dict(state=self.state, gemm=gemm, gemv=gemv, label=tag)
        normed = dict(eps=cfg.norm_eps, **common)  # RMSNorm folded in: norm_w given below
        if role == "lm_head":
            return ops.matmul(
                k,
                w=self.lm_head,
                x=self.x,
                out=self.logits,
                epi="STORE",
                norm_w=self.output_norm,
                argmax_out=self.sampler.partials,
                **{**normed, "gemm": False},
            )
        L = self.layers[layer]
        if role == "qkv":
            return ops.matmul(
                k,
                w=L.qkv,
                x=self.x,
                out=self.q,
                epi="QKV",
                norm_w=L.attn_norm,
                kv=L.kv,
                n_q=cfg.q_size,
                n_kv=cfg.kv_size,
                head_dim=cfg.head_dim,
                max_ctx=self.max_ctx,
                rope_dims=cfg.rope_dims,
                rope_freq=self.rope_freq,
                **normed,
            )
        if role == "o":
            merge = {} if gemm else {"attn_ml": self.attn_ml, "n_splits": k.attention_splits}
            return ops.matmul(
                k, w=L.o, x=self.attn, out=self.x, epi="ADD", head_dim=cfg.head_dim, **merge, **common
            )
        if role == "ffn1":
            return ops.matmul(k, w=L.gate_up, x=self.x, out=self.h, epi="SILU", norm_w=L.ffn_norm, **normed)
        if role == "ffn2":
            return ops.matmul(k, w=L.down, x=self.h, out=self.x, epi="ADD", **common)
        raise ValueError(f"unknown matrix role {role!r}")

    def forward(self, n_tokens: int, *, sample: bool, pos: int = 0) -> list[Dispatch]:
        """The dispatches of one step over ``n_tokens`` tokens (1 when decoding) at positions ``pos`` .., in order.

        With ``sample`` the step ends with the LM head on its last token and the sampler, which writes the next
        token id into ``tokens[0]`` and advances ``state``; without it (a prefill chunk that is not the last) the
        step only fills the KV cache. A prefill step whose queries see at least ``kern.flash_min_keys`` keys (when set)
        uses tiled flash attention (each key tile loaded once per tile of queries) instead of a workgroup per query.
        """
        out = [self.embed_launch.dispatch(n_tokens)]
        for layer in self.layers:
            out.extend(launch.dispatch(n_tokens) for launch in self._step_launches(layer, n_tokens, pos))
        if sample:
            out.append(self.lm_head_launch.dispatch(n_tokens))
            out.append(self.sampler.launch.dispatch(n_tokens))
        return out

    def _step_launches(self, layer: Layer, n_tokens: int, pos: int) -> tuple[ops.Launch, ...]:
        if n_tokens == 1:
            return layer.launches
        if self.kern.flash_min_keys is not None and pos + n_tokens >= self.kern.flash_min_keys:
            qkv, _, *rest = layer.prefill_launches
            return (qkv, layer.flash_attention, *rest)
        return layer.prefill_launches

    def roles(self, n_tokens: int, pos: int = 0) -> list[str]:
        """What each dispatch of ``forward(n_tokens, sample=True, pos=pos)`` computes, in order ("embed", then per
        layer "qkv_attn" or "qkv" and "attn" / "flash_attn", "o", "ffn1", "ffn2", then "lm_head", "sample"): for
        benchmarks that time or drop kernel groups."""
        layers = [
            launch.label.rsplit(".", 1)[-1]
            for L in self.layers
            for launch in self._step_launches(L, n_tokens, pos)
        ]
        return ["embed", *layers, "lm_head", "sample"]

    @property
    def decode_roles(self) -> list[str]:
        return self.roles(1)

    @property
    def decode_dispatches(self) -> Prepared:
        """The decode step's dispatches, prepared once on the device (``len()`` gives their number)."""
        return self._decode

    def check_limits(self) -> None:
        caps = self.device.caps
        biggest = max(L.kv.size for L in self.layers)
        if biggest > caps.max_storage_buffer_binding_size:
            raise DeviceLimitError(
                f"a layer's KV cache needs {biggest} bytes for {self.max_ctx} positions but this GPU allows "
                f"{caps.max_storage_buffer_binding_size} per binding: lower context_window_size"
            )


def kv_cache_bytes(cfg: ModelConfig, max_ctx: int, f16: bool) -> int:
    return cfg.n_layers * 2 * cfg.n_kv_heads * max_ctx * cfg.head_dim * (2 if f16 else 4)


def default_chunk(max_ctx: int) -> int:
    return min(256, max(32, 2 ** math.ceil(math.log2(max(1, min(max_ctx, 256))))))
