"""A plain numpy forward pass of a GGUF model (float64, dequantized weights): the oracle for the GPU graph.

Written from the math of each architecture (llama.cpp's src/models/*.cpp graphs; Hugging Face's modeling files for
the same models), independent of the package: it reads the metadata itself, dequantizes with the test-side numpy
dequantizer, rotates NEOX architectures' q/k the NEOX way on the file's own (unpermuted) rows, and applies every
feature where the architecture puts it: q/k/v biases, per-head q/k RMSNorm before RoPE, post-attention and post-FFN
norms, GeGLU, the embedding scale, attention and final soft-caps, sliding-window layers, per-layer RoPE bases and
linear scaling, Llama 3.1's and LongRoPE's frequency factors and LongRoPE's attention factor.
"""

from __future__ import annotations

import math

import numpy as np

from webllm_py.model.gguf import GGUFFile

from ..kernels.quantize import dequantize

NEOX = {"qwen2", "qwen3", "phi3", "gemma2", "gemma3"}  # llama.cpp llama_model_rope_type: LLAMA_ROPE_TYPE_NEOX


class ReferenceModel:
    def __init__(self, gguf: GGUFFile, n_ctx: int | None = None):
        """``n_ctx``: the context window the engine runs with (LongRoPE picks its factors by it)."""
        self.g = gguf
        self._cache: dict[str, np.ndarray] = {}
        arch = self.arch = gguf.get("general.architecture")

        def key(name, default=None):
            return gguf.get(f"{arch}.{name}", default)

        self.n_layers = key("block_count")
        self.h = key("embedding_length")
        self.n_heads = key("attention.head_count")
        self.n_kv = key("attention.head_count_kv", self.n_heads)
        self.hd = key("attention.key_length", self.h // self.n_heads)
        self.n_rot = key("rope.dimension_count", self.hd)
        self.eps = key("attention.layer_norm_rms_epsilon")
        gemma = arch in ("gemma2", "gemma3")
        self.neox = arch in NEOX
        self.embed_scale = math.sqrt(self.h) if gemma else 1.0
        self.gelu = gemma
        self.attn_softcap = key("attn_logit_softcapping", 50.0) if arch == "gemma2" else 0.0
        self.final_softcap = {
            "gemma2": key("final_logit_softcapping", 30.0),
            "gemma3": key("final_logit_softcapping", 0.0),
        }.get(arch, 0.0)
        big = {"gemma2": 46, "gemma3": 62}.get(arch)
        self.q_scale = 1 / math.sqrt(self.h // self.n_heads if self.n_layers == big else self.hd)
        # Sliding windows: Gemma 2 every other layer (window 4096 unless stored), Gemma 3 five of six, Phi-3 never
        # (llama.cpp disables it), other architectures every layer when the file stores a window.
        window = 0 if arch == "phi3" else key("attention.sliding_window", 4096 if arch == "gemma2" else 0)
        period = {"gemma2": 2, "gemma3": 6}.get(arch, 0)
        self.windows = [
            window if window and (not period or i % period < period - 1) else 0 for i in range(self.n_layers)
        ]
        # RoPE per layer: sliding layers use rope.freq_base_swa (Gemma 3's default 10000) and, in Gemma 3, no scaling.
        base = key("rope.freq_base", 10000.0)
        base_swa = key("rope.freq_base_swa", 10000.0 if arch == "gemma3" else base)
        linear = key("rope.scaling.factor", 1.0) if key("rope.scaling.type", "linear") == "linear" else 1.0
        self.rope = []
        for w in self.windows:
            b, f = (base_swa, 1.0 if arch == "gemma3" else linear) if w else (base, linear)
            self.rope.append(b ** (-np.arange(0, self.n_rot, 2) / self.n_rot) / f)
        self.rope_divisors = np.ones(self.n_rot // 2)
        if "rope_freqs.weight" in gguf.tensors:
            self.rope_divisors = self.w("rope_freqs.weight")[0]
        elif "rope_factors_short.weight" in gguf.tensors:
            long = n_ctx is not None and n_ctx > key("rope.scaling.original_context_length")
            self.rope_divisors = self.w("rope_factors_long.weight" if long else "rope_factors_short.weight")[
                0
            ]
        self.attn_factor = key("rope.scaling.attn_factor", 1.0)

    def w(self, name: str) -> np.ndarray:
        if name not in self._cache:
            info = self.g.tensor(name)
            shape = (info.n_rows, info.shape[0])
            self._cache[name] = dequantize(self.g.tensor_bytes(name), info.ggml_type, shape).astype(
                np.float64
            )
        return self._cache[name]

    def has(self, name: str) -> bool:
        return name in self.g.tensors

    def rms(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + self.eps) * weight

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return self.rms(x, self.w(name)[0])

    def rotate(self, v: np.ndarray, pos: np.ndarray, layer: int) -> np.ndarray:
        """RoPE of (m, heads, hd): NEOX pairs (i, i + n_rot / 2) or adjacent pairs (2i, 2i + 1); cos and sin times the
        attention factor (LongRoPE), features past n_rot unrotated."""
        freqs = self.rope[layer] / self.rope_divisors
        ang = pos[:, None, None] * freqs[None, None, :]
        c, s = np.cos(ang) * self.attn_factor, np.sin(ang) * self.attn_factor
        rot, rest = v[..., : self.n_rot], v[..., self.n_rot :]
        if self.neox:
            a, b = rot[..., : self.n_rot // 2], rot[..., self.n_rot // 2 :]
            out = np.concatenate([a * c - b * s, b * c + a * s], axis=-1)
        else:
            a, b = rot[..., 0::2], rot[..., 1::2]
            out = np.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(rot.shape)
        return np.concatenate([out, rest], axis=-1)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits (vocab,) of the last position after the whole prompt."""
        m, nq, nkv, hd = len(ids), self.n_heads * self.hd, self.n_kv * self.hd, self.hd
        pos = np.arange(m)
        x = self.w("token_embd.weight")[ids] * self.embed_scale
        group = self.n_heads // self.n_kv
        for i in range(self.n_layers):
            p = f"blk.{i}."
            xn = self.norm(x, p + "attn_norm.weight")
            if self.has(p + "attn_qkv.weight"):
                qkv = xn @ self.w(p + "attn_qkv.weight").T
                if self.has(p + "attn_qkv.bias"):
                    qkv = qkv + self.w(p + "attn_qkv.bias")[0]
                q, k, v = qkv[:, :nq], qkv[:, nq : nq + nkv], qkv[:, nq + nkv :]
            else:
                q, k, v = (xn @ self.w(p + f"attn_{t}.weight").T for t in "qkv")
                q, k, v = (
                    y + self.w(p + f"attn_{t}.bias")[0] if self.has(p + f"attn_{t}.bias") else y
                    for t, y in zip("qkv", (q, k, v), strict=True)
                )
            q, k, v = q.reshape(m, self.n_heads, hd), k.reshape(m, self.n_kv, hd), v.reshape(m, self.n_kv, hd)
            if self.has(p + "attn_q_norm.weight"):
                q = self.norm(q, p + "attn_q_norm.weight")
                k = self.norm(k, p + "attn_k_norm.weight")
            q, k = self.rotate(q, pos, i), self.rotate(k, pos, i)
            visible = pos[None, :] <= pos[:, None]  # (query, key)
            if self.windows[i]:
                visible &= pos[:, None] - pos[None, :] < self.windows[i]
            att = np.zeros((m, self.n_heads, hd))
            for h in range(self.n_heads):
                s = q[:, h] @ k[:, h // group].T * self.q_scale
                if self.attn_softcap:
                    s = self.attn_softcap * np.tanh(s / self.attn_softcap)
                s = np.where(visible, s, -np.inf)
                pr = np.exp(s - s.max(axis=1, keepdims=True))
                att[:, h] = (pr / pr.sum(axis=1, keepdims=True)) @ v[:, h // group]
            o = att.reshape(m, -1) @ self.w(p + "attn_output.weight").T  # (m, n_heads * hd) -> (m, H)
            x = x + (
                self.norm(o, p + "post_attention_norm.weight")
                if self.has(p + "post_attention_norm.weight")
                else o
            )
            xn = self.norm(x, p + "ffn_norm.weight")
            if self.has(p + "ffn_gate.weight"):
                g, u = xn @ self.w(p + "ffn_gate.weight").T, xn @ self.w(p + "ffn_up.weight").T
            else:  # Phi-3: gate rows, then up rows
                g, u = np.split(xn @ self.w(p + "ffn_up.weight").T, 2, axis=1)
            if self.gelu:
                act = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
            else:
                act = g / (1 + np.exp(-g))
            f = (act * u) @ self.w(p + "ffn_down.weight").T
            x = x + (self.norm(f, p + "post_ffw_norm.weight") if self.has(p + "post_ffw_norm.weight") else f)
        out = "output.weight" if self.has("output.weight") else "token_embd.weight"
        logits = self.norm(x[-1:], "output_norm.weight")[0] @ self.w(out).T
        if self.final_softcap:
            logits = self.final_softcap * np.tanh(logits / self.final_softcap)
        return logits
