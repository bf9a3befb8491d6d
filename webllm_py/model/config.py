"""ModelConfig: the architecture numbers of a model, read from GGUF metadata once and passed down everywhere."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnsupportedModelError
from .gguf import GGUFFile

SUPPORTED_ARCHITECTURES = ("llama",)


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
    rope_base: float
    rope_dims: int  # rotated features per head
    norm_eps: float
    tied_embeddings: bool  # no output.weight: the LM head is the token embedding
    has_rope_freq_factors: bool  # Llama 3.1+: rope_freqs.weight divides each frequency

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelConfig:
        arch = gguf.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"{gguf.name}: architecture {arch!r} is not supported yet (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )

        def key(name: str) -> object:
            return gguf.require(f"{arch}.{name}")

        hidden = int(key("embedding_length"))
        n_heads = int(key("attention.head_count"))
        n_kv_heads = int(gguf.get(f"{arch}.attention.head_count_kv", n_heads))
        head_dim = int(gguf.get(f"{arch}.attention.key_length", hidden // n_heads))
        embd = gguf.tensor("token_embd.weight")
        vocab = int(gguf.get(f"{arch}.vocab_size", embd.shape[1]))
        rope_dims = int(gguf.get(f"{arch}.rope.dimension_count", head_dim))
        scaling = gguf.get(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", None):
            raise UnsupportedModelError(f"{gguf.name}: RoPE scaling type {scaling!r} is not supported yet")
        cfg = cls(
            architecture=arch,
            n_layers=int(key("block_count")),
            hidden_size=hidden,
            ffn_size=int(key("feed_forward_length")),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
            context_length=int(key("context_length")),
            rope_base=float(gguf.get(f"{arch}.rope.freq_base", 10000.0)),
            rope_dims=rope_dims,
            norm_eps=float(key("attention.layer_norm_rms_epsilon")),
            tied_embeddings="output.weight" not in gguf.tensors,
            has_rope_freq_factors="rope_freqs.weight" in gguf.tensors,
        )
        cfg.check()
        return cfg

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
