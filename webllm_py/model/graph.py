"""The forward pass on the GPU: activations, the KV cache, and the launches of one step, for every architecture.

The graph takes the loaded weights (loader.py) and the model's features (config.py) and builds every launch and bind
group once; a step is then a list of dispatches recorded into one compute pass. Per layer, the kernels are
(matmul.wgsl variants unless named):

    qkv        RMSNorm(x) @ [Wq; Wk; Wv] (+ bias) -> RoPE(q) to scratch, RoPE(k) and v appended to the KV cache;
               with per-head q/k norms the q and k rows go to scratch unrotated and
    qk_norm    (qk_norm.wgsl) norms each head of q and k, rotates them, q -> scratch, k -> the K cache
    attn       (attention.wgsl) causal GQA attention over the cache, within the layer's window -> attn
    o          x += attn @ Wo; with post norms: y = attn @ Wo, then
    attn_post  (norm_add.wgsl) x += RMSNorm(y)
    ffn1       RMSNorm(x) @ [Wgate; Wup] (rows interleaved) -> h = act(gate) * up (SiLU or GELU-tanh)
    ffn2       x += h @ Wdown; with post norms: y = h @ Wdown, then
    ffn_post   x += RMSNorm(y)

plus the token embedding (scaled) before the layers, the LM head (final RMSNorm folded in, logits soft-capped) and
the sampler after them. A matrix product too large for one storage binding (a big vocabulary's embedding and LM
head; any matrix on a device with small bindings) is split by rows (ops.RowSplit): it is one dispatch per part, each
writing its rows where the whole product's would go (the LM head's logits and argmax partials side by side), so a
product in P parts costs P - 1 more dispatches a step (a tied embedding's parts serve the gather and the LM head).
Unsplit: 5 * n_layers + 3 dispatches for a decode step of a Llama (153 for SmolLM2-135M's 30 layers),
one more per layer with q/k norms and two more with post norms, and one more per product that load-time tuning put
on GEMV_MRQ (its x as integer planes: ops.quantize_x). With ``Kernels.fuse_attention`` (where the kernel's
workgroup memory allows, and the layer has neither biases nor q/k norms) decode computes qkv inside attn, each
attention workgroup projecting its own head's rows: 4 * n_layers + 3 (123). Prefill always runs qkv separately
(GEMM projections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DeviceLimitError, InvalidRangeError
from ..gpu.device import Buffer, BufferUsage, Dispatch, Prepared
from ..kernels import ops
from ..kernels.registry import GemvConfig, Kernels
from .config import ModelConfig
from .loader import LayerWeights, ModelWeights

STORAGE = BufferUsage.STORAGE | BufferUsage.COPY_DST | BufferUsage.COPY_SRC


@dataclass
class Layer:
    """One transformer block: its weights, KV cache and launches."""

    w: LayerWeights
    kv: Buffer  # (2, n_kv_heads, max_ctx, head_dim) KV_T: the K cache, then the V cache
    launches: tuple[ops.Launch, ...] = ()  # decode, in order
    prefill_launches: tuple[ops.Launch, ...] = ()  # prefill (GEMM projections, attention per (head, token))
    flash_launches: tuple[ops.Launch, ...] = ()  # prefill with tiled flash attention (long contexts)


class Graph:
    def __init__(self, cfg: ModelConfig, kern: Kernels, weights: ModelWeights, *, max_ctx: int, chunk: int):
        self.cfg = cfg
        self.kern = kern
        self.device = dev = kern.device
        self.weights = weights
        self.max_ctx = max_ctx  # KV cache capacity in positions
        self.chunk = chunk  # most tokens in one prefill step
        self.weight_bytes = weights.nbytes  # bytes of GPU memory held by weights
        self.kv_bytes = 0
        check_kv_limit(cfg, kern, max_ctx)
        sizes = activation_bytes(cfg, chunk, kern.attention_splits)
        self.activation_bytes = sum(sizes.values())  # bytes of GPU memory held by the buffers below

        def scratch(name: str) -> Buffer | None:
            return dev.create_buffer(sizes[name], STORAGE, name) if sizes[name] else None

        # Activations, (tokens, features) row-major f32; shapes in activation_bytes.
        self.x, self.q, self.attn, self.attn_ml, self.h = (
            scratch(n) for n in ("x", "q", "attn", "attn_ml", "h")
        )
        self.qk = scratch("qk")  # qk_norm models only
        self.y = scratch("y")  # post_norms models only
        self.logits, self.tokens = scratch("logits"), scratch("tokens")
        self.xq = scratch("xq")  # decode input of GEMV_MRQ products as integer planes (ops.quantize_x)
        self.state = dev.create_buffer(16, STORAGE | BufferUsage.UNIFORM, "state")  # State (common.wgsl)

        self.layers: list[Layer] = []
        kv_size = kv_cache_bytes(cfg, max_ctx, kern.tier.f16) // cfg.n_layers
        for i, lw in enumerate(weights.layers):
            self.layers.append(Layer(lw, dev.create_buffer(kv_size, STORAGE, f"blk.{i}.kv")))
            self.kv_bytes += kv_size
        self._build_launches()

    @property
    def lm_head(self) -> ops.RowSplit:
        return self.weights.lm_head

    # ---- launches -----------------------------------------------------------------------------------------------------

    def _build_launches(self) -> None:
        k, st = self.kern, self.state
        for i, L in enumerate(self.layers):
            L.launches = self._layer_launches(i, gemm=False)
            L.prefill_launches = self._layer_launches(i, gemm=True)
            attn = self._attention_launch(i, flash=True, label=f"blk.{i}.gemm.flash_attn")
            L.flash_launches = tuple(
                attn if x.label == f"blk.{i}.gemm.attn" else x for x in L.prefill_launches
            )
        embd = self.weights.embd.row_parts()
        self.embed_launches = tuple(
            ops.embed(
                k,
                w=part,
                tokens=self.tokens,
                out=self.x,
                state=st,
                scale=self.cfg.embed_scale,
                row0=first,
                label="embed" if len(embd) == 1 else f"embed.{i}",
            )  # fmt: skip
            for i, (first, part) in enumerate(embd)
        )
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
        self.activation_bytes += self.sampler.nbytes
        self._build_lm_head()
        self._prepare_decode()

    def rebuild_decode(self) -> None:
        """Rebuild the decode launches after ``kern.gemv_roles`` changed (load-time tuning)."""
        for i, L in enumerate(self.layers):
            L.launches = self._layer_launches(i, gemm=False)
        self._build_lm_head()
        self._prepare_decode()

    def _prepare_decode(self) -> None:
        # The same every decode step: whole, and split before the sampler (constrained decoding writes each step's
        # token mask between the two halves).
        step = self.forward(1, sample=True)
        self._decode = self.device.prepare(step)
        self._decode_forward = self.device.prepare(step[:-1])
        self._decode_sample = self.device.prepare(step[-1:])

    def _build_lm_head(self) -> None:
        # Its workgroups also leave greedy argmax partials for the sampler, one per workgroup of rows.
        self.lm_head_launches, n_best = self.lm_head_parts()
        self.sampler.use_partials(n_best)

    def lm_head_parts(self, gemv: GemvConfig | None = None) -> tuple[tuple[ops.Launch, ...], int]:
        """The LM head's decode launches, one per row part (ops.RowSplit), and the argmax partials they leave:
        part i writes its logits at its first row and its partials after part i - 1's. ``gemv`` overrides the
        kernel shape (tuning)."""
        cfg, k = self.cfg, self.kern
        gemv = gemv or k.gemv_roles.get("lm_head") or k.gemv
        parts = self.lm_head.row_parts()
        options: dict[str, object] = dict(x=self.x, state=self.state, gemm=False, gemv=gemv,
                                          norm_w=self.weights.output_norm, eps=cfg.norm_eps, label="lm_head")  # fmt: skip
        launches, best0 = list(ops.planes_input(k, self.lm_head, options, self.xq)), 0
        for i, (first, part) in enumerate(parts):
            launches.append(
                ops.matmul(
                    k,
                    w=part,
                    out=self.logits,
                    epi="STORE",
                    argmax_out=self.sampler.partials,
                    softcap=cfg.final_softcap,
                    row0=first,
                    best0=best0,
                    **{**options, "label": "lm_head" if len(parts) == 1 else f"lm_head.{i}"},
                )  # fmt: skip
            )
            best0 += -(-part.n_rows // gemv.rows_per_workgroup)
        return tuple(launches), best0

    def _layer_launches(self, i: int, *, gemm: bool) -> tuple[ops.Launch, ...]:
        """Layer i's launches of a decode step (``gemm`` False) or a prefill step, in order (module docstring)."""
        cfg, L = self.cfg, self.layers[i]
        tag = f"blk.{i}.{'gemm' if gemm else 'gemv'}"
        fused = None
        qkv = L.w.qkv.parts[0]
        if not gemm and self.fuses_attention and len(L.w.qkv.parts) == 1 and len(qkv.segments) == 1:
            fused = ops.FusedQKV(  # one weight of one format (ops.Weight)
                w=qkv,
                x=self.x,
                norm_w=L.w.attn_norm,
                rope_freq=L.w.rope_freq,
                rope_dims=cfg.rope_dims,
                eps=cfg.norm_eps,
            )
        # Decode splits the keys over several workgroups (flash decoding) and the output projection merges the
        # splits as it loads them; prefill has a workgroup per (head, token) and writes attn directly.
        split = {} if gemm else {"ml": self.attn_ml, "n_splits": self.kern.attention_splits}
        attention = self._attention_launch(
            i, fused=fused, label=f"{tag}.{'qkv_attn' if fused else 'attn'}", **split
        )
        out: list[ops.Launch] = []
        if fused is None:
            out += self.matmul_launch("qkv", i, gemm=gemm)
            if cfg.qk_norm:
                out.append(self._qk_norm_launch(i, f"{tag}.qk_norm"))
        out += [attention, *self.matmul_launch("o", i, gemm=gemm)]
        if cfg.post_norms:
            out.append(self._norm_add_launch(L.w.post_attn_norm, f"{tag}.attn_post_norm"))
        out += [*self.matmul_launch("ffn1", i, gemm=gemm), *self.matmul_launch("ffn2", i, gemm=gemm)]
        if cfg.post_norms:
            out.append(self._norm_add_launch(L.w.post_ffn_norm, f"{tag}.ffn_post_norm"))
        return tuple(out)

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
            scale=cfg.query_scale,
            window=cfg.layers[i].window,
            softcap=cfg.attn_softcap,
            label=label,
            **options,
        )

    def _qk_norm_launch(self, i: int, label: str) -> ops.Launch:
        cfg, L = self.cfg, self.layers[i]
        return ops.qk_norm(
            self.kern,
            src=self.qk,
            q=self.q,
            kv=L.kv,
            state=self.state,
            q_norm_w=L.w.q_norm,
            k_norm_w=L.w.k_norm,
            rope_freq=L.w.rope_freq,
            n_heads=cfg.n_heads,
            n_kv_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim,
            max_ctx=self.max_ctx,
            rope_dims=cfg.rope_dims,
            eps=cfg.norm_eps,
            label=label,
        )

    def _norm_add_launch(self, norm_w: Buffer, label: str) -> ops.Launch:
        cfg = self.cfg
        return ops.norm_add(
            self.kern, y=self.y, x=self.x, norm_w=norm_w, n=cfg.hidden_size, eps=cfg.norm_eps, label=label
        )

    @property
    def fuses_attention(self) -> bool:
        """Whether decode computes the QKV projection inside the attention kernel (see the module docstring)."""
        cfg = self.cfg
        return (
            self.kern.fuse_attention
            and not cfg.qkv_bias
            and not cfg.qk_norm
            and ops.fused_attention_fits(self.kern, cfg.hidden_size, cfg.head_dim)
        )

    def role_weight(self, role: str, layer: int) -> ops.RowSplit:
        """The weight of matrix role "qkv", "o", "ffn1" or "ffn2" of ``layer``."""
        w = self.layers[layer].w
        return {"qkv": w.qkv, "o": w.o, "ffn1": w.gate_up, "ffn2": w.down}[role]

    def matmul_launch(
        self, role: str, layer: int | None, *, gemm: bool, gemv: GemvConfig | None = None
    ) -> tuple[ops.Launch, ...]:
        """The launches of one of the model's matrix products, one per row part (ops.RowSplit; one unless a binding
        cannot hold it): role "qkv", "o", "ffn1", "ffn2" of ``layer`` (the LM head: lm_head_parts). ``gemv``
        overrides the decode kernel shape (tuning measures candidates through this)."""
        cfg, k = self.cfg, self.kern
        gemv = gemv or (None if gemm else k.gemv_roles.get(role))
        tag = f"blk.{layer}.{'gemm' if gemm else 'gemv'}.{role}"
        common = dict(state=self.state, gemm=gemm, gemv=gemv, label=tag, xq=self.xq)
        normed = dict(eps=cfg.norm_eps, **common)  # RMSNorm folded in: norm_w given below
        L = self.layers[layer]
        # With post norms the output projections store their result in y for norm_add; else they add it to x.
        residual = dict(out=self.y, epi="STORE") if cfg.post_norms else dict(out=self.x, epi="ADD")
        if role == "qkv":
            return ops.matmul_parts(
                k,
                w=L.w.qkv,
                x=self.x,
                out=self.qk if cfg.qk_norm else self.q,
                epi="QKV",
                norm_w=L.w.attn_norm,
                bias=L.w.qkv_bias,
                qk_out=cfg.qk_norm,
                kv=L.kv,
                n_q=cfg.q_size,
                n_kv=cfg.kv_size,
                head_dim=cfg.head_dim,
                max_ctx=self.max_ctx,
                rope_dims=cfg.rope_dims,
                rope_freq=None if cfg.qk_norm else L.w.rope_freq,
                **normed,
            )
        if role == "o":
            merge = {} if gemm else {"attn_ml": self.attn_ml, "n_splits": k.attention_splits}
            return ops.matmul_parts(
                k, w=L.w.o, x=self.attn, head_dim=cfg.head_dim, **residual, **merge, **common
            )
        if role == "ffn1":
            act = {"silu": "SILU", "gelu_tanh": "GELU"}[cfg.activation]
            return ops.matmul_parts(
                k, w=L.w.gate_up, x=self.x, out=self.h, epi=act, norm_w=L.w.ffn_norm, **normed
            )
        if role == "ffn2":
            return ops.matmul_parts(k, w=L.w.down, x=self.h, **residual, **common)
        raise ValueError(f"unknown matrix role {role!r}")

    def forward(self, n_tokens: int, *, sample: bool, pos: int = 0) -> list[Dispatch]:
        """The dispatches of one step over ``n_tokens`` tokens (1 when decoding) at positions ``pos`` .., in order.

        With ``sample`` the step ends with the LM head on its last token and the sampler, which writes the next
        token id into ``tokens[0]`` and advances ``state``; without it (a prefill chunk that is not the last) the
        step only fills the KV cache. A prefill step whose queries see at least ``kern.flash_min_keys`` keys (when set)
        uses tiled flash attention (each key tile loaded once per tile of queries) instead of a workgroup per query.
        """
        out = [launch.dispatch(n_tokens) for launch in self.embed_launches]
        for layer in self.layers:
            out.extend(launch.dispatch(n_tokens) for launch in self._step_launches(layer, n_tokens, pos))
        if sample:
            out.extend(launch.dispatch(n_tokens) for launch in self.lm_head_launches)
            out.append(self.sampler.launch.dispatch(n_tokens))
        return out

    def _step_launches(self, layer: Layer, n_tokens: int, pos: int) -> tuple[ops.Launch, ...]:
        if n_tokens == 1:
            return layer.launches
        if self.kern.flash_min_keys is not None and pos + n_tokens >= self.kern.flash_min_keys:
            return layer.flash_launches
        return layer.prefill_launches

    def roles(self, n_tokens: int, pos: int = 0) -> list[str]:
        """What each dispatch of ``forward(n_tokens, sample=True, pos=pos)`` computes, in order ("embed" (once per
        row part), then per layer "qkv_attn" or "qkv" ("qk_norm") and "attn" / "flash_attn", "o" ("attn_post_norm"),
        "ffn1", "ffn2" ("ffn_post_norm"), then "lm_head" (once per row part), "sample"; a decode product on GEMV_MRQ
        has its quantize_x launch "xq_<role>" before it): for benchmarks that time or drop kernel groups."""

        def role(label: str) -> str:  # "blk.3.gemv.o" -> "o"; its planes "blk.3.gemv.o.xq" -> "xq_o"
            head, last = label.rsplit(".", 1) if "." in label else ("", label)
            return "xq_" + head.rsplit(".", 1)[-1] if last == "xq" else last

        layers = [role(x.label) for L in self.layers for x in self._step_launches(L, n_tokens, pos)]
        embed = ["embed"] * len(self.embed_launches)
        head = ["xq_lm_head" if x.label.endswith(".xq") else "lm_head" for x in self.lm_head_launches]
        return [*embed, *layers, *head, "sample"]

    @property
    def decode_roles(self) -> list[str]:
        return self.roles(1)

    @property
    def decode_dispatches(self) -> Prepared:
        """The decode step's dispatches, prepared once on the device (``len()`` gives their number)."""
        return self._decode

    @property
    def decode_forward(self) -> Prepared:
        """``decode_dispatches`` without the sampler: embedding, layers and LM head."""
        return self._decode_forward

    @property
    def decode_sample(self) -> Prepared:
        """The sampler of ``decode_dispatches`` alone."""
        return self._decode_sample


def check_kv_limit(cfg: ModelConfig, kern: Kernels, max_ctx: int) -> None:
    """A layer's KV cache is one binding: it must fit maxStorageBufferBindingSize (checked before any upload)."""
    limit = ops.binding_limit(kern.device.caps)
    biggest = kv_cache_bytes(cfg, max_ctx, kern.tier.f16) // cfg.n_layers
    if biggest > limit:
        per_position = biggest // max_ctx
        raise DeviceLimitError(
            f"a layer's KV cache needs {biggest} bytes for {max_ctx} positions but this GPU allows {limit} per "
            f"binding (maxStorageBufferBindingSize / maxBufferSize): lower context_window_size to at most "
            f"{limit // per_position}"
        )


def kv_cache_bytes(cfg: ModelConfig, max_ctx: int, f16: bool) -> int:
    """The KV cache of all layers: (n_layers, 2, n_kv_heads, max_ctx, head_dim), f16 or f32."""
    return cfg.n_layers * 2 * cfg.n_kv_heads * max_ctx * cfg.head_dim * (2 if f16 else 4)


def activation_bytes(cfg: ModelConfig, chunk: int, attention_splits: int) -> dict[str, int]:
    """Bytes of each activation buffer of a Graph (0: the model has no use for it), for prefill steps of up to
    ``chunk`` tokens (f32 throughout); the sampler's buffers are ops.Sampler.nbytes."""
    C, H, splits = chunk, cfg.hidden_size, attention_splits
    return {
        "x": C * H * 4,  # (C, H) residual stream
        "q": C * cfg.q_size * 4,  # (C, n_heads * head_dim) RoPE'd queries
        # (C, n_heads * head_dim) in prefill; decode: (n_heads, splits, head_dim) partial sums of the key splits
        "attn": max(C, splits) * cfg.q_size * 4,
        "attn_ml": cfg.n_heads * splits * 2 * 4,  # (n_heads, splits, 2) max and sum of each split
        "h": C * cfg.ffn_size * 4,  # (C, ffn_size) act(gate) * up
        # (C, n_q + n_kv) raw q and k rows before the per-head norms (qk_norm models)
        "qk": C * (cfg.q_size + cfg.kv_size) * 4 if cfg.qk_norm else 0,
        "y": C * H * 4 if cfg.post_norms else 0,  # (C, H) an output projection before its post norm
        # (vocab,) f32 of the step's last token, padded to whole vec4s (the sampler reads vec4s)
        "logits": ops.Sampler.logits_bytes(cfg.vocab_size),
        "tokens": max(C, 4) * 4,  # (C,) u32 token ids of the step
        # a decode product's input as integer planes (GEMV_MRQ), three planes for the widest input (ops.xq_bytes)
        "xq": ops.xq_bytes(max(H, cfg.q_size, cfg.ffn_size), 3),
    }


# Most tokens of one prefill step by default. On the H200 a 512-token prompt prefilled at 1,453 tok/s (8B Q4_0) and
# 9,167 (1B) in one step against 1,386 and 4,852 in two of 256: a step's GEMMs get that many more workgroups (a
# 2,048-row product of 256 tokens is 128 workgroups, fewer than the GPU's 132 multiprocessors). WebLLM's models use
# 1,024 to 2,048.
DEFAULT_PREFILL_CHUNK = 1024


def default_chunk(max_ctx: int) -> int:
    """Tokens of one prefill step for a context of ``max_ctx``: the power of two that holds it, from 32 up to
    DEFAULT_PREFILL_CHUNK."""
    cap = DEFAULT_PREFILL_CHUNK
    return min(cap, max(32, 2 ** math.ceil(math.log2(max(1, min(max_ctx, cap))))))


def prefill_chunk(max_ctx: int, requested: int | None = None) -> int:
    """Tokens of one prefill step: ``requested`` (WebLLM's prefill_chunk_size; at most the context), else
    default_chunk. InvalidRangeError for a size below 1."""
    if requested is None:
        return default_chunk(max_ctx)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise InvalidRangeError("prefill_chunk_size", requested, "a whole number of tokens, at least 1")
    return min(requested, max_ctx)
