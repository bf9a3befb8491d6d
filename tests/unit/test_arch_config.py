"""ModelConfig: the architecture features read from GGUF metadata and the tensor table, and the typed errors for what
is not supported (naming the key or tensor)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.kernels.tiny_llama import build_tiny_model
from webllm_py.errors import GGUFError, GGUFMetadataError, UnsupportedModelError
from webllm_py.model.config import ModelConfig
from webllm_py.model.gguf import GGUFFile
from webllm_py.model.loader import neox_order


def config(tmp_path, **shape) -> ModelConfig:
    path = build_tiny_model(tmp_path / "m.gguf", **shape)
    with GGUFFile.open(path) as g:
        return ModelConfig.from_gguf(g)


def test_llama_defaults(tmp_path):
    cfg = config(tmp_path)
    assert not (
        cfg.rope_neox or cfg.qkv_bias or cfg.qk_norm or cfg.post_norms or cfg.qkv_fused or cfg.ffn_fused
    )
    assert (
        cfg.activation == "silu" and cfg.embed_scale == 1.0 and cfg.attn_softcap == cfg.final_softcap == 0.0
    )
    assert cfg.query_scale == 1 / math.sqrt(16)
    assert all(lc.window == 0 and lc.rope_base == 10000.0 and lc.rope_scale == 1.0 for lc in cfg.layers)


def test_llama_sliding_window_and_linear_rope(tmp_path):
    cfg = config(tmp_path, n_layers=3, sliding_window=64, rope_linear=4.0, rope_factors=True)
    assert [lc.window for lc in cfg.layers] == [64, 64, 64]  # every layer when the file stores a window
    assert all(lc.rope_scale == 0.25 for lc in cfg.layers) and cfg.rope_factors == "rope_freqs.weight"


def test_qwen2_biases_and_neox(tmp_path):
    cfg = config(tmp_path, arch="qwen2", qkv_bias=True, rope_base=1e6)
    assert cfg.rope_neox and cfg.qkv_bias and cfg.layers[0].rope_base == 1e6


def test_qwen3_head_dim_and_qk_norm(tmp_path):
    cfg = config(tmp_path, arch="qwen3", hidden=64, n_heads=2, n_kv_heads=1, head_dim=128, qk_norm=True)
    assert cfg.head_dim == 128 and cfg.q_size == 256 and cfg.qk_norm and cfg.query_scale == 1 / math.sqrt(128)


def test_phi3_fused_tensors_and_longrope(tmp_path):
    cfg = config(
        tmp_path, arch="phi3", hidden=192, n_heads=2, fused_qkv=True, fused_ffn=True, tied=False,
        longrope_original_ctx=64, attn_factor=1.25, sliding_window=2047,
    )  # fmt: skip
    assert cfg.qkv_fused and cfg.ffn_fused and not cfg.tied_embeddings and cfg.head_dim == 96
    assert (cfg.rope_factors, cfg.rope_factors_long) == (
        "rope_factors_short.weight",
        "rope_factors_long.weight",
    )
    assert cfg.rope_original_context == 64
    assert cfg.query_scale == pytest.approx(1.25**2 / math.sqrt(96))  # the attention factor on q and on k
    assert all(lc.window == 0 for lc in cfg.layers)  # Phi-3's window is ignored, as llama.cpp does


def test_gemma2_features(tmp_path):
    cfg = config(tmp_path, arch="gemma2", n_layers=4, post_norms=True, attn_softcap=None, final_softcap=None)
    assert cfg.activation == "gelu_tanh" and cfg.embed_scale == math.sqrt(64) and cfg.post_norms
    assert (cfg.attn_softcap, cfg.final_softcap) == (
        50.0,
        30.0,
    )  # llama.cpp's defaults when the keys are absent
    assert [lc.window for lc in cfg.layers] == [4096, 0, 4096, 0]  # window 4096 by default, even layers slide


def test_gemma3_local_global_rope(tmp_path):
    cfg = config(
        tmp_path, arch="gemma3", n_layers=7, qk_norm=True, post_norms=True, sliding_window=512, rope_base=1e6,
        rope_linear=8.0,
    )  # fmt: skip
    assert [lc.window for lc in cfg.layers] == [512] * 5 + [0] + [512]
    local, glob = cfg.layers[0], cfg.layers[5]
    assert (local.rope_base, local.rope_scale) == (
        10000.0,
        1.0,
    )  # freq_base_swa's default; no scaling locally
    assert (glob.rope_base, glob.rope_scale) == (1e6, 0.125)
    assert cfg.attn_softcap == 0.0 and cfg.final_softcap == 0.0 and cfg.qk_norm


def test_gemma3_without_window_is_global(tmp_path):
    cfg = config(tmp_path, arch="gemma3", n_layers=6, qk_norm=True, post_norms=True, rope_base=1e6)
    assert all(lc.window == 0 and lc.rope_base == 1e6 for lc in cfg.layers)


def test_gemma_27b_query_scale(tmp_path):
    """llama.cpp's rule (query_pre_attn_scalar is not in GGUF): 46-layer Gemma 2 scales q by 1/sqrt(hidden/heads)."""
    cfg = config(tmp_path, arch="gemma2", n_layers=46, hidden=64, n_heads=2, head_dim=64, post_norms=True)
    assert cfg.query_scale == 1 / math.sqrt(32)


@pytest.mark.parametrize(
    "shape,error,words",
    [
        (dict(extra_metadata={"llama.rope.scaling.type": "yarn"}), UnsupportedModelError, "llama.rope.scaling.type"),
        (dict(extra_metadata={"llama.rope.scaling.type": "dynamic"}), UnsupportedModelError, "'dynamic'"),
        (dict(extra_metadata={"general.architecture": "mamba"}), UnsupportedModelError, "'mamba'"),
        (dict(extra_tensors={"blk.0.attn_output.bias": np.zeros(64)}), UnsupportedModelError, "attn_output.bias"),
        (dict(extra_tensors={"blk.1.attn_q.bias": np.zeros(64)}), UnsupportedModelError, "blk.1.attn_q.bias"),
        (dict(arch="phi3", rope_dims=8, longrope_original_ctx=64, attn_factor=1.2), UnsupportedModelError, "attn_factor"),
        (dict(extra_metadata={"llama.attention.value_length": 32}), UnsupportedModelError, "value_length"),
        (dict(sliding_window=8, extra_metadata={"llama.attention.sliding_window_pattern": [1, 0]}), UnsupportedModelError,
         "sliding_window_pattern"),
        (dict(extra_metadata={"llama.rope.scaling.factor": -2.0}), GGUFMetadataError, "rope.scaling.factor"),
        (dict(extra_metadata={"gemma2.attn_logit_softcapping": "50"}, arch="gemma2", post_norms=True), GGUFMetadataError,
         "attn_logit_softcapping"),
        # a feature's tensors come as a set: one post norm present makes the others required
        (dict(arch="gemma2", extra_tensors={"blk.0.post_attention_norm.weight": np.ones(64)}), GGUFError,
         "blk.0.post_ffw_norm"),
        (dict(extra_metadata={"llama.feed_forward_length": 128}), GGUFError, "ffn_gate.weight"),  # shape
    ],
)  # fmt: skip
def test_unsupported_features_name_the_key(tmp_path, shape, error, words):
    with pytest.raises(error, match=words.replace(".", r"\.").replace("(", r"\(")):
        config(tmp_path, **shape)


def test_neox_order():
    """Destination 2i takes feature i, 2i + 1 takes i + rope_dims / 2; features past rope_dims stay."""
    assert neox_order(8, 8) == [0, 4, 1, 5, 2, 6, 3, 7]
    assert neox_order(8, 4) == [0, 2, 1, 3, 4, 5, 6, 7]
