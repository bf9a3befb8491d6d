"""ModelConfig: the architecture of a model as numbers and features, read from GGUF metadata once and passed down.

Everything below this module (the weight loader, the graph, the kernels) sees features, never an architecture name:
whether q/k/v carry biases, whether q and k are RMS-normed per head, whether the attention and FFN outputs are normed
before the residual add, the activation, the soft-caps and scales, and per layer the attention window and the RoPE
base and scale. What GGUF does not store (llama.cpp hard-codes it per architecture in src/models/*.cpp: the NEOX
rotation, Gemma's embedding scale and layer patterns) comes from the small ``ARCHITECTURES`` table here; what the
tensor table shows (fused or split q/k/v and gate/up, biases, norms, an untied LM head) is decided by presence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import GGUFError, GGUFMetadataError, UnsupportedModelError
from .gguf import GGUFFile


@dataclass(frozen=True)
class ArchRules:
    """What an architecture implies beyond its GGUF keys and tensors (llama.cpp's per-architecture code)."""

    rope_neox: bool  # RoPE rotates pairs (i, i + rope_dims / 2) ("NEOX"); else adjacent pairs (2i, 2i + 1)
    activation: str = "silu"  # of the gated FFN: "silu" (SwiGLU) or "gelu_tanh" (GeGLU, tanh approximation)
    embed_scale: bool = False  # the token embedding is multiplied by sqrt(hidden_size)
    attn_softcap: float | None = None  # None: none; else the default of {arch}.attn_logit_softcapping
    final_softcap: float | None = None  # None: none; else the default of {arch}.final_logit_softcapping
    window_default: int = 0  # {arch}.attention.sliding_window when the key is absent (0: no sliding window)
    window_pattern: int = 0  # layer il slides iff il % n < n - 1 (llama.cpp set_swa_pattern); 0: every layer
    uses_window: bool = True  # False: the key is ignored, as llama.cpp does ("Phi SWA is currently disabled")
    swa_rope_scale_1: bool = False  # sliding layers run RoPE without the linear scaling (Gemma 3 global-only)
    swa_base_default: float | None = None  # rope.freq_base_swa when absent; None: the global base
    wide_query_layers: int = 0  # a variant with this many layers scales q by 1/sqrt(hidden/heads) (Gemma 27B)


ARCHITECTURES: dict[str, ArchRules] = {
    # Llama 3.x, SmolLM2 and Mistral 7B (the converter writes Mistral as `llama`).
    "llama": ArchRules(rope_neox=False),
    "qwen2": ArchRules(rope_neox=True),
    "qwen3": ArchRules(rope_neox=True),
    "phi3": ArchRules(rope_neox=True, uses_window=False),
    "gemma2": ArchRules(
        rope_neox=True,
        activation="gelu_tanh",
        embed_scale=True,
        attn_softcap=50.0,
        final_softcap=30.0,
        window_default=4096,
        window_pattern=2,
        wide_query_layers=46,
    ),
    "gemma3": ArchRules(
        rope_neox=True,
        activation="gelu_tanh",
        embed_scale=True,
        final_softcap=0.0,
        window_pattern=6,
        swa_rope_scale_1=True,
        swa_base_default=10000.0,
        wide_query_layers=62,
    ),
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
ROPE_SCALING_TYPES = ("none", "linear", "longrope")


@dataclass(frozen=True)
class LayerConfig:
    """What differs between the layers of one model."""

    window: int  # 0: causal attention over every key; else a query at p sees keys k with p - k < window
    rope_base: float  # theta: pair i turns by pos * base^(-2i / rope_dims) * rope_scale
    rope_scale: float  # frequency multiplier: 1 / the linear scaling factor (1 without scaling)


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    n_layers: int
    hidden_size: int  # H: features of the residual stream
    ffn_size: int  # I: features of the gated MLP
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int  # positions the model was trained for
    rope_dims: int  # rotated features per head
    norm_eps: float  # every RMSNorm's epsilon (including the per-head q/k norms)
    tied_embeddings: bool  # no output.weight: the LM head is the token embedding
    layers: tuple[LayerConfig, ...]  # (n_layers,)
    rope_neox: bool = False  # NEOX pairs: the loader permutes q/k rows so the kernels' adjacent pairs do NEOX
    # RoPE frequency divisors per pair (rope_dims / 2 f32 tensors): rope_freqs.weight (Llama 3.1) on every layer;
    # LongRoPE (Phi-3): rope_factors_short.weight, or rope_factors_long.weight when the context window is longer
    # than rope_original_context (llama.cpp chooses by n_ctx, for the whole context).
    rope_factors: str | None = None
    rope_factors_long: str | None = None
    rope_original_context: int = 0
    qkv_fused: bool = False  # blk.N.attn_qkv.weight (rows q, k, v) instead of attn_q/attn_k/attn_v
    qkv_bias: bool = False  # q, k, v biases (Qwen2), added before RoPE
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3)
    post_norms: bool = False  # RMSNorm of the attention and FFN outputs before each residual add (Gemma)
    ffn_fused: bool = False  # blk.N.ffn_up.weight holds gate rows then up rows (Phi-3); no ffn_gate
    activation: str = "silu"  # "silu" | "gelu_tanh"
    embed_scale: float = 1.0  # the token embedding is multiplied by this (Gemma: sqrt(hidden_size))
    # scores = (q . k) * attn_scale (0: 1 / sqrt(head_dim)), LongRoPE's attention factor squared included
    attn_scale: float = 0.0
    attn_softcap: float = 0.0  # 0: none; else scores = c * tanh(scores / c) (Gemma 2)
    final_softcap: float = 0.0  # 0: none; else logits = c * tanh(logits / c) (Gemma 2)

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def query_scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelConfig:
        arch = gguf.get_str("general.architecture")
        rules = ARCHITECTURES.get(arch)
        if rules is None:
            raise UnsupportedModelError(
                f"{gguf.name}: architecture {arch!r} (general.architecture) is not supported "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        # Every number goes through the typed getters (GGUFMetadataError names the key and the range).
        big = (
            1 << 20
        )  # features, heads, layers: far above any real model, far below what overflows a u32 index
        hidden = gguf.get_int(f"{arch}.embedding_length", min=1, max=big)
        n_layers = gguf.get_int(f"{arch}.block_count", min=1, max=4096)
        n_heads = gguf.get_int(f"{arch}.attention.head_count", min=1, max=4096)
        n_kv_heads = gguf.get_int(f"{arch}.attention.head_count_kv", n_heads, min=1, max=n_heads)
        head_dim = gguf.get_int(f"{arch}.attention.key_length", hidden // n_heads, min=2, max=1024)
        value_dim = gguf.get_int(f"{arch}.attention.value_length", head_dim, min=2, max=1024)
        if value_dim != head_dim:
            raise UnsupportedModelError(
                f"{gguf.name}: {arch}.attention.value_length = {value_dim} differs from key_length {head_dim}"
            )
        embd = gguf.tensor("token_embd.weight")
        if len(embd.shape) != 2:
            raise UnsupportedModelError(
                f"{gguf.name}: token_embd.weight must be a matrix; its shape is {list(embd.shape)}"
            )
        vocab = gguf.get_int(f"{arch}.vocab_size", embd.shape[1], min=1, max=1 << 24)
        if vocab != embd.shape[1]:
            raise GGUFMetadataError(
                gguf.name, f"{arch}.vocab_size", f"the embedding's row count {embd.shape[1]}", str(vocab)
            )
        context = gguf.get_int(f"{arch}.context_length", min=1, max=1 << 24)
        rope_dims = gguf.get_int(f"{arch}.rope.dimension_count", head_dim, min=2, max=head_dim)
        norm_eps = gguf.get_float(
            f"{arch}.attention.layer_norm_rms_epsilon", min=0.0, max=1.0, min_exclusive=True
        )
        tensors = gguf.tensors

        # RoPE: base (and the sliding layers' base), linear scaling, frequency-factor tensors, attention factor.
        base = gguf.get_float(f"{arch}.rope.freq_base", 10000.0, min=0.0, min_exclusive=True)
        base_swa = gguf.get_float(
            f"{arch}.rope.freq_base_swa",
            rules.swa_base_default if rules.swa_base_default is not None else base,
            min=0.0,
            min_exclusive=True,
        )
        scaling_key = f"{arch}.rope.scaling.type"
        # llama.cpp's default type: linear, with the factor below (none: 1)
        scaling = gguf.get_str(scaling_key, "linear")
        if scaling not in ROPE_SCALING_TYPES:
            hint = " (YaRN: no supported model needs it at its default context)" if scaling == "yarn" else ""
            raise UnsupportedModelError(
                f"{gguf.name}: RoPE scaling {scaling_key} = {scaling!r} is not supported{hint}; "
                f"supported: {', '.join(ROPE_SCALING_TYPES)}"
            )
        factor = 0.0
        if scaling == "linear":
            factor_key = f"{arch}.rope.scaling.factor"
            if factor_key not in gguf.metadata:
                factor_key = f"{arch}.rope.scale_linear"  # the older key name
            factor = gguf.get_float(factor_key, 0.0, min=0.0, max=1e6)
        rope_scale = 1.0 / factor if factor > 0.0 else 1.0
        rope_factors = rope_factors_long = None
        if "rope_freqs.weight" in tensors:
            rope_factors = "rope_freqs.weight"
        elif "rope_factors_long.weight" in tensors or "rope_factors_short.weight" in tensors:
            rope_factors, rope_factors_long = "rope_factors_short.weight", "rope_factors_long.weight"
            for name in (rope_factors, rope_factors_long):
                gguf.tensor(name)  # both are needed: GGUFError naming the missing one
        elif scaling == "longrope":
            raise UnsupportedModelError(
                f"{gguf.name}: {scaling_key} = 'longrope' needs the tensors rope_factors_long.weight and "
                "rope_factors_short.weight"
            )
        original_context = gguf.get_int(
            f"{arch}.rope.scaling.original_context_length", context, min=1, max=1 << 24
        )
        attn_factor_key = f"{arch}.rope.scaling.attn_factor"
        attn_factor = gguf.get_float(attn_factor_key, 1.0, min=0.0, max=100.0, min_exclusive=True)
        if attn_factor != 1.0 and rope_dims != head_dim:
            # It multiplies the rotated features only; folded into the score scale it would scale all of them.
            raise UnsupportedModelError(
                f"{gguf.name}: {attn_factor_key} = {attn_factor} with partial rotation (rope_dims {rope_dims} < "
                f"head_dim {head_dim}) is not supported"
            )

        # Attention: query scale (llama.cpp's rule: Gemma's 27B variants scale by 1/sqrt(hidden/heads), every other
        # model by 1/sqrt(head_dim); query_pre_attn_scalar is not in GGUF), LongRoPE's factor on both q and k.
        query_scale = 1.0 / math.sqrt(head_dim)
        if rules.wide_query_layers and n_layers == rules.wide_query_layers:
            query_scale = 1.0 / math.sqrt(hidden // n_heads)
        attn_softcap = final_softcap = 0.0
        if rules.attn_softcap is not None:
            attn_softcap = gguf.get_float(
                f"{arch}.attn_logit_softcapping", rules.attn_softcap, min=0.0, max=1e6
            )
        if rules.final_softcap is not None:
            final_softcap = gguf.get_float(
                f"{arch}.final_logit_softcapping", rules.final_softcap, min=0.0, max=1e6
            )

        # Sliding-window layers and per-layer RoPE.
        window = 0
        if rules.uses_window:
            window = gguf.get_int(
                f"{arch}.attention.sliding_window", rules.window_default, min=0, max=1 << 24
            )
        pattern_key = f"{arch}.attention.sliding_window_pattern"
        if window and gguf.metadata_types.get(pattern_key) == "array":
            raise UnsupportedModelError(f"{gguf.name}: a per-layer {pattern_key} array is not supported")
        pattern = gguf.get_int(pattern_key, rules.window_pattern, min=0, max=4096) if window else 0
        layers = []
        for il in range(n_layers):
            sliding = window > 0 and (pattern == 0 or il % pattern < pattern - 1)
            layers.append(
                LayerConfig(
                    window=window if sliding else 0,
                    rope_base=base_swa if sliding else base,
                    rope_scale=1.0 if sliding and rules.swa_rope_scale_1 else rope_scale,
                )
            )

        # Tensor presence decides the rest.
        qkv_fused = "blk.0.attn_qkv.weight" in tensors
        ffn_fused = "blk.0.ffn_gate.weight" not in tensors
        cfg = cls(
            architecture=arch,
            n_layers=n_layers,
            hidden_size=hidden,
            ffn_size=gguf.get_int(f"{arch}.feed_forward_length", min=1, max=big),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
            context_length=context,
            rope_dims=rope_dims,
            norm_eps=norm_eps,
            tied_embeddings="output.weight" not in tensors,
            layers=tuple(layers),
            rope_neox=rules.rope_neox,
            rope_factors=rope_factors,
            rope_factors_long=rope_factors_long,
            rope_original_context=original_context,
            qkv_fused=qkv_fused,
            qkv_bias=any(f"blk.0.attn_{t}.bias" in tensors for t in ("q", "k", "v", "qkv")),
            qk_norm="blk.0.attn_q_norm.weight" in tensors,
            post_norms="blk.0.post_attention_norm.weight" in tensors,
            ffn_fused=ffn_fused,
            activation=rules.activation,
            embed_scale=math.sqrt(hidden) if rules.embed_scale else 1.0,
            attn_scale=query_scale * attn_factor * attn_factor,
            attn_softcap=attn_softcap,
            final_softcap=final_softcap,
        )
        cfg.check()
        cfg.check_tensors(gguf)
        return cfg

    def layer_tensors(self, i: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Layer i's tensors by role: (GGUF name, shape in GGUF order, the row length first). The loader's map from
        the file to GPU weights."""
        p = f"blk.{i}."
        H, FF, nq, nkv, hd = self.hidden_size, self.ffn_size, self.q_size, self.kv_size, self.head_dim
        names = {
            "attn_norm": (p + "attn_norm.weight", (H,)),
            "o": (p + "attn_output.weight", (nq, H)),
            "ffn_norm": (p + "ffn_norm.weight", (H,)),
        }
        if self.qkv_fused:
            names["qkv"] = (p + "attn_qkv.weight", (H, nq + 2 * nkv))
        else:
            names.update(
                q=(p + "attn_q.weight", (H, nq)),
                k=(p + "attn_k.weight", (H, nkv)),
                v=(p + "attn_v.weight", (H, nkv)),
            )
        if self.qk_norm:
            names.update(q_norm=(p + "attn_q_norm.weight", (hd,)), k_norm=(p + "attn_k_norm.weight", (hd,)))
        if self.post_norms:
            names.update(
                post_attn_norm=(p + "post_attention_norm.weight", (H,)),
                post_ffn_norm=(p + "post_ffw_norm.weight", (H,)),
            )
        if self.ffn_fused:
            names["gate_up"] = (p + "ffn_up.weight", (H, 2 * FF))
        else:
            names.update(gate=(p + "ffn_gate.weight", (H, FF)), up=(p + "ffn_up.weight", (H, FF)))
        names["down"] = (p + "ffn_down.weight", (FF, H))
        return names

    def bias_tensors(self, i: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Layer i's q/k/v bias tensors that may be present (each is optional: absent means zeros)."""
        p = f"blk.{i}."
        if self.qkv_fused:
            return {"qkv": (p + "attn_qkv.bias", (self.q_size + 2 * self.kv_size,))}
        return {
            "q": (p + "attn_q.bias", (self.q_size,)),
            "k": (p + "attn_k.bias", (self.kv_size,)),
            "v": (p + "attn_v.bias", (self.kv_size,)),
        }

    def tensor_shapes(self, gguf: GGUFFile) -> dict[str, tuple[int, ...]]:
        """Every tensor the graph reads, with its GGUF shape (contiguous dimension first: a matrix is (in, out)); the
        optional q/k/v biases where ``gguf`` has them."""
        shapes = {
            "token_embd.weight": (self.hidden_size, self.vocab_size),
            "output_norm.weight": (self.hidden_size,),
        }
        if not self.tied_embeddings:
            shapes["output.weight"] = (self.hidden_size, self.vocab_size)
        shapes.update({n: (self.rope_dims // 2,) for n in (self.rope_factors, self.rope_factors_long) if n})
        for i in range(self.n_layers):
            shapes.update(self.layer_tensors(i).values())
            if self.qkv_bias:
                shapes.update((n, s) for n, s in self.bias_tensors(i).values() if n in gguf.tensors)
        return shapes

    def check_tensors(self, gguf: GGUFFile) -> None:
        """Every tensor the graph reads is there with the shape the metadata implies (a tensor of the wrong shape
        would otherwise load and compute garbage, or fail in the GPU's validation without its name), and the file
        holds none that no feature uses (a tensor we ignored would make the output silently wrong). Runs before
        anything is allocated."""
        shapes = self.tensor_shapes(gguf)
        for name, shape in shapes.items():
            info = gguf.tensor(name)  # GGUFError naming it if it is missing
            if info.shape != shape:
                raise GGUFError(
                    gguf.name, info.offset, f"tensor {name!r} of shape {list(shape)} (from the metadata)",
                    str(list(info.shape)),
                )  # fmt: skip
        unused = sorted(set(gguf.tensors) - set(shapes))
        if unused:
            more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
            raise UnsupportedModelError(
                f"{gguf.name}: tensor(s) {', '.join(map(repr, unused[:3]))}{more} belong to a feature of "
                f"{self.architecture!r} models that is not supported"
            )

    def check(self) -> None:
        problems = []
        if self.n_heads % self.n_kv_heads:
            problems.append(f"head_count {self.n_heads} is not a multiple of head_count_kv {self.n_kv_heads}")
        if self.head_dim % 2 or self.rope_dims % 2 or self.rope_dims > self.head_dim:
            problems.append(
                f"rope dimension {self.rope_dims} must be even and at most head_dim {self.head_dim}"
            )
        for name, v in (
            ("embedding_length", self.hidden_size),
            ("feed_forward_length", self.ffn_size),
            ("n_heads * head_dim", self.q_size),
        ):
            if v % 32:
                problems.append(f"{name} = {v} is not a multiple of 32 (needed by the quantized kernels)")
        if problems:
            raise UnsupportedModelError("unsupported model shape: " + "; ".join(problems))
