"""A plain numpy forward pass of a Llama-family GGUF (float64, dequantized weights): the oracle for the GPU graph.

Written from the math, independent of the package's kernels: GGUF bytes are dequantized by the test-side numpy
dequantizer, RoPE is GGML's "normal" (adjacent pairs), attention is causal with grouped KV heads.
"""

from __future__ import annotations

import numpy as np

from webllm_py.model.gguf import GGUFFile

from ..kernels.quantize import dequantize


class ReferenceLlama:
    def __init__(self, gguf: GGUFFile):
        self.g = gguf
        arch = gguf.get("general.architecture")
        self.n_layers = gguf.require(f"{arch}.block_count")
        self.h = gguf.require(f"{arch}.embedding_length")
        self.n_heads = gguf.require(f"{arch}.attention.head_count")
        self.n_kv = gguf.get(f"{arch}.attention.head_count_kv", self.n_heads)
        self.hd = gguf.get(f"{arch}.attention.key_length", self.h // self.n_heads)
        self.eps = gguf.require(f"{arch}.attention.layer_norm_rms_epsilon")
        self.base = gguf.get(f"{arch}.rope.freq_base", 10000.0)
        self._cache: dict[str, np.ndarray] = {}

    def w(self, name: str) -> np.ndarray:
        if name not in self._cache:
            info = self.g.tensor(name)
            shape = (info.n_rows, info.shape[0])
            self._cache[name] = dequantize(self.g.tensor_bytes(name), info.ggml_type, shape).astype(
                np.float64
            )
        return self._cache[name]

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + self.eps) * self.w(name)[0]

    def rope(self, v: np.ndarray, pos: np.ndarray) -> np.ndarray:
        m = v.shape[0]
        v = v.reshape(m, -1, self.hd // 2, 2)
        freqs = self.base ** (-np.arange(0, self.hd, 2) / self.hd)
        if "rope_freqs.weight" in self.g.tensors:  # Llama 3.1: per-pair frequency divisors
            freqs = freqs / self.w("rope_freqs.weight")[0]
        ang = pos[:, None, None] * freqs[None, None, :]
        c, s = np.cos(ang), np.sin(ang)
        return np.stack([v[..., 0] * c - v[..., 1] * s, v[..., 0] * s + v[..., 1] * c], axis=-1).reshape(
            m, -1
        )

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits (vocab,) of the last position after the whole prompt."""
        m = len(ids)
        pos = np.arange(m)
        x = self.w("token_embd.weight")[ids]
        group = self.n_heads // self.n_kv
        mask = np.triu(np.full((m, m), -np.inf), 1)
        for i in range(self.n_layers):
            p = f"blk.{i}."
            xn = self.norm(x, p + "attn_norm.weight")
            q = self.rope(xn @ self.w(p + "attn_q.weight").T, pos).reshape(m, self.n_heads, self.hd)
            k = self.rope(xn @ self.w(p + "attn_k.weight").T, pos).reshape(m, self.n_kv, self.hd)
            v = (xn @ self.w(p + "attn_v.weight").T).reshape(m, self.n_kv, self.hd)
            att = np.zeros((m, self.n_heads, self.hd))
            for h in range(self.n_heads):
                s = q[:, h] @ k[:, h // group].T / np.sqrt(self.hd) + mask
                pr = np.exp(s - s.max(axis=1, keepdims=True))
                att[:, h] = (pr / pr.sum(axis=1, keepdims=True)) @ v[:, h // group]
            x = x + att.reshape(m, -1) @ self.w(p + "attn_output.weight").T  # (m, n_heads * hd) -> (m, H)
            xn = self.norm(x, p + "ffn_norm.weight")
            g = xn @ self.w(p + "ffn_gate.weight").T
            u = xn @ self.w(p + "ffn_up.weight").T
            x = x + (g / (1 + np.exp(-g)) * u) @ self.w(p + "ffn_down.weight").T
        out = "output.weight" if "output.weight" in self.g.tensors else "token_embd.weight"
        return self.norm(x[-1:], "output_norm.weight")[0] @ self.w(out).T
