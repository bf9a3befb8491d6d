"""ModelConfig: the architecture numbers of a model, read from GGUF metadata once and passed down everywhere."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GGUFError, GGUFMetadataError, UnsupportedModelError
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
        arch = gguf.get_str("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"{gguf.name}: architecture {arch!r} is not supported yet (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        # Every shape number goes through the typed getters (GGUFMetadataError names the key and the range).
        big = (
            1 << 20
        )  # features, heads, layers: far above any real model, far below what overflows a u32 index
        hidden = gguf.get_int(f"{arch}.embedding_length", min=1, max=big)
        n_heads = gguf.get_int(f"{arch}.attention.head_count", min=1, max=4096)
        n_kv_heads = gguf.get_int(f"{arch}.attention.head_count_kv", n_heads, min=1, max=n_heads)
        head_dim = gguf.get_int(f"{arch}.attention.key_length", hidden // n_heads, min=2, max=1024)
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
        rope_dims = gguf.get_int(f"{arch}.rope.dimension_count", head_dim, min=2, max=head_dim)
        scaling = gguf.get_str(f"{arch}.rope.scaling.type", "none")
        if scaling != "none":
            raise UnsupportedModelError(f"{gguf.name}: RoPE scaling type {scaling!r} is not supported yet")
        cfg = cls(
            architecture=arch,
            n_layers=gguf.get_int(f"{arch}.block_count", min=1, max=4096),
            hidden_size=hidden,
            ffn_size=gguf.get_int(f"{arch}.feed_forward_length", min=1, max=big),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
            context_length=gguf.get_int(f"{arch}.context_length", min=1, max=1 << 24),
            rope_base=gguf.get_float(f"{arch}.rope.freq_base", 10000.0, min=0.0, min_exclusive=True),
            rope_dims=rope_dims,
            norm_eps=gguf.get_float(
                f"{arch}.attention.layer_norm_rms_epsilon", min=0.0, max=1.0, min_exclusive=True
            ),
            tied_embeddings="output.weight" not in gguf.tensors,
            has_rope_freq_factors="rope_freqs.weight" in gguf.tensors,
        )
        cfg.check()
        cfg.check_tensors(gguf)
        return cfg

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the graph reads, with its GGUF shape (contiguous dimension first: a matrix is (in, out))."""
        H, V = self.hidden_size, self.vocab_size
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (H, V), "output_norm.weight": (H,)}
        for i in range(self.n_layers):
            p = f"blk.{i}."
            shapes.update(
                {
                    p + "attn_norm.weight": (H,),
                    p + "attn_q.weight": (H, self.q_size),
                    p + "attn_k.weight": (H, self.kv_size),
                    p + "attn_v.weight": (H, self.kv_size),
                    p + "attn_output.weight": (self.q_size, H),
                    p + "ffn_norm.weight": (H,),
                    p + "ffn_gate.weight": (H, self.ffn_size),
                    p + "ffn_up.weight": (H, self.ffn_size),
                    p + "ffn_down.weight": (self.ffn_size, H),
                }
            )
        if not self.tied_embeddings:
            shapes["output.weight"] = (H, V)
        if self.has_rope_freq_factors:
            shapes["rope_freqs.weight"] = (self.rope_dims // 2,)
        return shapes

    def check_tensors(self, gguf: GGUFFile) -> None:
        """Every tensor the graph reads is there with the shape the metadata implies (a tensor of the wrong shape
        would otherwise load and compute garbage, or fail in the GPU's validation without its name)."""
        for name, shape in self.tensor_shapes().items():
            info = gguf.tensor(name)  # GGUFError naming it if it is missing
            if info.shape != shape:
                raise GGUFError(
                    gguf.name, info.offset, f"tensor {name!r} of shape {list(shape)} (from the metadata)",
                    str(list(info.shape)),
                )  # fmt: skip

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
