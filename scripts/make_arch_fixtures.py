"""Tiny random models of every architecture the engine supports, as GGUF files made by llama.cpp, with goldens.

Run by hand from the repo root (outputs are committed under tests/data/arch/; CI only reads them):

    python3 scripts/make_arch_fixtures.py [--work /work/cache/arch-fixtures] [--only qwen2,gemma2]

Every architecture comes in the four file types people download (Q4_K_M, Q5_K_M, Q6_K, Q8_0), but only the
Q4_K_M file is committed (the smallest; 5.3 MB for all eight): the other three are llama.cpp's requantizations of
it (``llama_model_quantize`` with allow_requantize), which scripts/requantize.py reproduces byte for byte, so CI
remakes them from the committed file (tests/e2e/kquant_models.py, cached under ~/.cache/webllm_py/requantized/arch/)
and refuses any whose sha256 is not llama.cpp's. This script makes llama.cpp's files, runs the numpy requantizer
on the same source and stops unless the bytes are identical; the goldens are made on llama.cpp's files.

Needs (generation time only; CI needs none of them): torch (the CPU wheel, ``pip install torch==2.13.0``),
transformers, sentencepiece, protobuf, safetensors, numpy, and llama-cpp-python 0.3.36 built from source, CPU only:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip wheel --no-deps -w WHEELS llama_cpp_python-0.3.36/
    pip install WHEELS/llama_cpp_python-0.3.36-*.whl

(about 5 minutes on 2 cores). The same sdist provides llama.cpp's converter, ``vendor/llama.cpp/
convert_hf_to_gguf.py`` with its own gguf-py (``--sdist``, default /work/cache/llama_cpp_python-0.3.36).

The pipeline, per architecture (notes/models.md §5):

1. A transformers config (table ``ARCHS``): hidden 256 and every matrix row a multiple of 256, so llama.cpp's
   K-quants apply (the ``fallback`` model has hidden 160, so they fall back to Q5_0 / Q8_0). Weights from a seeded
   generator, chosen so that the context matters and greedy choices are clear: matrices N(0, g^2/fan_in) with
   per-architecture gains (``Arch.init``: q/k x3-4 for a sharp attention; o x32 and down x2 so the layers outweigh
   the embedding; gemma's post norms x64-128 instead, as its sublayers are normalized), the LM head (the embedding
   when tied) N(0, 1) (0.5-0.75 for gemma), norms U(0.6, 1.4) and biases N(0, 0.25). With HF's 0.02 init a random
   tied model only repeats its input; HF's constant norms would hide a norm applied to the wrong tensor. Top-2
   margins are recorded at every greedy step.
2. A synthetic SentencePiece ``tokenizer.model`` (BPE with byte fallback: <unk> <s> </s>, two chat markers, 256
   byte pieces, a few word pieces): every converter here takes its SentencePiece path, which needs no BPE
   pre-tokenizer hash, and the vocabulary stays small.
3. ``convert_hf_to_gguf.py --outtype f32``, then ``llama_model_quantize`` into Q4_K_M (committed), and that file
   requantized by llama.cpp into Q5_K_M, Q6_K and Q8_0 (not committed; see above). Requantizing from Q4_K values
   leaves Q5_K levels mostly even (about 12 % odd: the 4-bit grid seen at twice the resolution) and copies the
   Q6_K tensors of the Q4_K_M mix unchanged; the Q6_K file's other tensors and every Q8_0 tensor use all levels.
4. Goldens on each committed file (``goldens.json`` + ``goldens.npz``):
   - the reference forward is transformers in float32 **on the weights of that GGUF file**: every tensor of the
     file is dequantized with gguf-py and mapped back to the transformers name (undoing the converter's q/k row
     permutation for llama-arch files and the +1 it adds to Gemma norms), loaded into the model built from the
     original config. transformers' own ``from_pretrained(dir, gguf_file=...)`` reads every file here and gives
     exactly these logits (max difference 0, ``hf_gguf_check`` in goldens.json) when handed the original config,
     but with the config it derives from the GGUF metadata it gets phi3 (refused: padding_idx), gemma2/gemma3
     (query_pre_attn_scalar, local RoPE base, linear scaling) and llama3 (RoPE scaling) wrong, and it refuses the
     original config for mistral (its model_type is not a GGUF architecture); so the script maps the weights itself
     and checks, where transformers can load a file, that its logits equal ours. For the F32 file the mapped
     weights must equal the original checkpoint bit for bit (checked: the name mapping and the inverse
     permutations are right), and llama.cpp must agree with transformers on it (F32_AGREEMENT).
   - first-step logits (all vocabulary) for each prompt, and 32 greedy ids after each prompt, with the top-2
     margin and the runner-up at every step; how far two lossy engine layouts would move the logits (K-quant
     block scales rounded to f16, K/V in f16), to size the tests' tolerances.
   - llama.cpp's first-step logits on the same file (its CPU path quantizes activations, so tests compare them
     with a looser tolerance).
   Traps handled: Gemma-2/3 run with eager attention in transformers (sdpa has no softcap). Phi-3 LongRoPE switches
   on the sequence length in transformers (long factors once it exceeds original_max_position_embeddings) but on
   the context size in llama.cpp (long iff n_ctx > rope.scaling.original_context_length), and llama.cpp rounds
   n_ctx up to a multiple of 256 first (llama-context.cpp), so with an original context of 64 it could never run
   the short factors. The Phi-3 fixture therefore has an original context of 256 (max 2048): the short prompts
   (total length with their 32 greedy tokens <= 256) run at n_ctx 256 -> short factors in both; the long prompt
   (300 tokens, + 32) runs at n_ctx 512 -> long factors in both. Each prompt records its n_ctx, and the engine is
   loaded with that context.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "data" / "arch"
SEED = 1234
N_GREEDY = 32
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"  # vendored by llama-cpp-python 0.3.36

# llama_ftype values (llama.h).
FTYPES = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7}
COMMITTED = "Q4_K_M"  # the one file per architecture in the repo; CI remakes the others from it
REQUANTIZED = ("Q5_K_M", "Q6_K", "Q8_0")

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Arch:
    """One fixture model: its transformers config and what its files exercise."""

    name: str
    config_class: str
    config: dict
    exercises: str = ""
    gemma_norms: bool = False  # norms store w with scale (1 + w); the converter writes 1 + w
    llama_permute: bool = False  # GGUF arch llama: the converter permutes q/k rows (rotate-half -> pairs)
    prompt_ctx: dict = field(
        default_factory=dict
    )  # prompt name -> the n_ctx to run it at (default DEFAULT_CTX)
    # Init scales: "head" = std of the LM head (of the embedding too when tied), "out" = gain of o_proj/down_proj
    # over 1/sqrt(fan_in), "post_norm" = scale of gemma's post-attention/post-FFN norms.
    init: dict = field(default_factory=dict)


BASE = dict(
    hidden_size=256,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=64,
    rms_norm_eps=1e-6,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
)
DEFAULT_CTX = 256
# Which matrices each init gain scales (the attention's q/k sharpen it; o/down set how much the layers move the
# residual stream against the embedding).
INIT_GAINS = {
    "q_proj.weight": "qk",
    "k_proj.weight": "qk",
    "qkv_proj.weight": "qk",
    "o_proj.weight": "attn_out",
    "down_proj.weight": "ffn_out",
}
# transformers and llama.cpp on the F32 file: normalized logit difference at most this. Measured 1e-6..1e-5 on the
# two-layer models and up to 2.1e-4 on gemma3's six (llama.cpp's own f32 rounding, amplified by the deliberately
# sharp attention; transformers f32 vs f64 is 1e-6 there); a wrong config costs far more (gemma3 with its linear
# RoPE scaling dropped: 5e-2; applied to the sliding layers too: 0.8).
F32_AGREEMENT = 3e-4

ARCHS = [
    Arch(
        "qwen2",
        "Qwen2Config",
        dict(BASE, tie_word_embeddings=True, rope_theta=1e6, use_sliding_window=False),
        exercises="q/k/v biases, NEOX RoPE, tied embedding (Q6_K)",
        init={"head": 1.0, "qk": 3, "attn_out": 32, "ffn_out": 2},
    ),
    Arch(
        "qwen3",
        "Qwen3Config",
        dict(BASE, num_attention_heads=2, head_dim=128, tie_word_embeddings=True, rope_theta=1e6),
        exercises="per-head q/k RMSNorm before RoPE, head_dim 128",
        init={"head": 1.0, "qk": 3, "attn_out": 32, "ffn_out": 2},
    ),
    Arch(
        "phi3",
        "Phi3Config",
        dict(
            BASE,
            num_key_value_heads=4,
            tie_word_embeddings=False,
            original_max_position_embeddings=256,
            max_position_embeddings=2048,
            rope_scaling={
                "type": "longrope",
                "long_factor": [1.0 + 0.25 * i for i in range(32)],
                "short_factor": [1.0 + 0.02 * i for i in range(32)],
            },
            sliding_window=None,
            pad_token_id=None,
        ),
        exercises="fused attn_qkv and ffn_up (gate|up), LongRoPE short/long factors and attn_factor, untied head",
        prompt_ctx={"short": 256, "window": 256, "long": 512},
        init={"head": 1.0, "qk": 3, "attn_out": 32, "ffn_out": 2},
    ),
    Arch(
        "gemma2",
        "Gemma2Config",
        dict(
            BASE,
            num_key_value_heads=2,
            query_pre_attn_scalar=64,
            sliding_window=8,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            hidden_activation="gelu_pytorch_tanh",
        ),
        exercises="GeGLU (tanh), embedding * sqrt(hidden), post-attention/post-FFN norms, attention and final "
        "softcaps, sliding window 8 on layer 0",
        gemma_norms=True,
        init={"head": 0.5, "qk": 3, "post_norm": 64},
    ),
    Arch(
        "gemma3",
        "Gemma3TextConfig",
        dict(
            BASE,
            num_hidden_layers=6,
            query_pre_attn_scalar=64,
            sliding_window=8,
            rope_theta=1e6,
            rope_local_base_freq=1e4,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
            hidden_activation="gelu_pytorch_tanh",
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
        ),
        exercises="q/k RMSNorm, layers 0-4 sliding (window 8, base 1e4) and layer 5 global (base 1e6, linear "
        "RoPE scaling 8 on the global layer only), post norms",
        gemma_norms=True,
        init={"head": 0.75, "qk": 4, "post_norm": 128},
    ),
    Arch(
        "mistral",
        "MistralConfig",
        dict(
            BASE,
            num_hidden_layers=1,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_theta=1e6,
            sliding_window=None,
        ),
        exercises="llama arch, one layer, untied head (output Q6_K, token_embd in the body type)",
        init={"head": 1.0, "qk": 3, "attn_out": 32, "ffn_out": 2},
        llama_permute=True,
    ),
    Arch(
        "llama3",
        "LlamaConfig",
        dict(
            BASE,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_theta=5e5,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        exercises="llama arch with llama3 RoPE scaling (rope_freqs.weight), tied embedding",
        init={"head": 1.0, "qk": 3, "attn_out": 32, "ffn_out": 2},
        llama_permute=True,
    ),
    Arch(
        "fallback",
        "Qwen2Config",
        dict(
            BASE,
            hidden_size=160,
            intermediate_size=512,
            num_attention_heads=5,
            num_key_value_heads=1,
            head_dim=32,
            tie_word_embeddings=True,
            rope_theta=1e6,
            use_sliding_window=False,
        ),
        exercises="rows of 160 (not a multiple of 256): llama.cpp's fallbacks, Q5_0 for q/k/o/gate/up and Q8_0 "
        "for attn_v (layer 1) and the tied embedding, next to Q4_K/Q6_K ffn_down (rows of 512); q/k/v biases",
        init={"head": 1.0, "qk": 3, "attn_out": 32, "ffn_out": 2},
    ),
]


# ---- tokenizer ---------------------------------------------------------------------------------------------------

FIRST_WORD = 6 + 256  # after <unk> <s> </s>, <|im_start|> <|im_end|> <|endoftext|> and the 256 byte pieces
WORDS = (
    "the of and to in is was for on that with as by at from it his an were are which this be or has had first "
    "one their its new after who they two her she been other when time during there into school more may years "
    "over only year most would world city some where between later three state such used many can"
).split()


def write_tokenizer(model_dir: Path) -> int:
    """A SentencePiece BPE model with byte fallback; returns its vocabulary size."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    Piece = pb.ModelProto.SentencePiece

    def add(text: str, kind: int, score: float = 0.0) -> None:
        p = m.pieces.add()
        p.piece, p.type, p.score = text, kind, score

    add("<unk>", Piece.UNKNOWN)
    add("<s>", Piece.CONTROL)
    add("</s>", Piece.CONTROL)
    add("<|im_start|>", Piece.USER_DEFINED)
    add("<|im_end|>", Piece.USER_DEFINED)
    add("<|endoftext|>", Piece.CONTROL)  # llama.cpp's vocabulary loader looks it up in phi3 models
    for b in range(256):
        add(f"<0x{b:02X}>", Piece.BYTE)
    seen = set()
    score = -1.0
    for w in WORDS:
        for piece in ("\u2581" + w, w):
            if piece not in seen:
                seen.add(piece)
                add(piece, Piece.NORMAL, score)
                score -= 0.25
    for ch in "abcdefghijklmnopqrstuvwxyz\u2581":
        if ch not in seen:
            seen.add(ch)
            add(ch, Piece.NORMAL, score)
            score -= 0.25
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(m.pieces)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.escape_whitespaces = True
    (model_dir / "tokenizer.model").write_bytes(m.SerializeToString())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "chat_template": CHATML,
        "added_tokens_decoder": {
            str(i): {"content": text, "special": True} for i, text in ((3, "<|im_start|>"), (4, "<|im_end|>"))
        },
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return len(m.pieces)


# ---- random models -----------------------------------------------------------------------------------------------


def build_model(arch: Arch, vocab: int, model_dir: Path):
    """The seeded random transformers model of ``arch``, saved to ``model_dir`` (safetensors); returns it."""
    import torch
    import transformers

    cfg = getattr(transformers, arch.config_class)(vocab_size=vocab, **arch.config)
    torch.manual_seed(SEED)
    kwargs = {"attn_implementation": "eager"} if arch.gemma_norms else {}
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32, **kwargs)
    gen = torch.Generator().manual_seed(SEED + sum(map(ord, arch.name)))
    tied = cfg.tie_word_embeddings
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=gen) * arch.init["head"])
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * (arch.init["head"] if tied else 1.0))
            elif name.endswith("norm.weight"):
                # Around 1 (never 0), times a gain for gemma's post norms; gemma stores w with scale 1 + w.
                gain = arch.init.get("post_norm", 1.0) if ".post_" in name else 1.0
                u = (torch.rand(p.shape, generator=gen) * 0.8 + 0.6) * gain
                p.copy_(u - 1 if arch.gemma_norms else u)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif p.dim() == 2:
                gain = 1.0
                for suffix, key in INIT_GAINS.items():
                    if name.endswith(suffix):
                        gain = arch.init.get(key, 1.0)
                p.copy_(torch.randn(p.shape, generator=gen) * (gain / math.sqrt(p.shape[1])))
            else:
                raise RuntimeError(f"{arch.name}: no init rule for {name} {tuple(p.shape)}")
    model.save_pretrained(model_dir, safe_serialization=True)
    return model


def convert(sdist: Path, model_dir: Path, out: Path) -> None:
    script = sdist / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    cmd = [sys.executable, str(script), str(model_dir), "--outtype", "f32", "--outfile", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"convert failed for {model_dir}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def quantize(src: Path, dst: Path, ftype: str, allow_requantize: bool = False) -> None:
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = FTYPES[ftype]
    p.nthread = 2
    p.allow_requantize = allow_requantize
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {ftype}) returned {rc}")


def requantized(committed: Path, work: Path, ftype: str) -> Path:
    """llama.cpp's requantization of ``committed`` into ``ftype`` (in ``work``), after checking that
    scripts/requantize.py writes the same bytes (CI makes the file with it)."""
    import requantize  # scripts/ is on sys.path when a script of it runs

    name = committed.name.replace(f".{COMMITTED}.", f".{ftype}.")
    ref, ours = work / name, work / f"numpy.{name}"
    quantize(committed, ref, ftype, allow_requantize=True)
    digest = requantize.requantize(committed, ours, ftype)
    ours.unlink()
    if digest != sha256(ref):
        raise RuntimeError(f"{name}: scripts/requantize.py gives {digest}, llama.cpp {sha256(ref)}")
    return ref


def sha256(path: Path) -> str:
    from requantize import file_sha256  # scripts/ is on sys.path when a script of it runs

    return file_sha256(path)


# ---- GGUF -> transformers weights ---------------------------------------------------------------------------------

# GGUF tensor name (after "blk.N.") -> transformers parameter (after "model.layers.N."); gemma's names differ for
# the norms around the FFN.
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_qkv.weight": "self_attn.qkv_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GEMMA_LAYER_NAMES = {
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
# Tensors of the file that are not parameters: transformers computes them from the config (checked elsewhere).
DERIVED = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo the llama converter's q/k row permutation (within each head, pairs (i, i + half) -> rows 2i, 2i+1)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantize_f16_scales(raw: np.ndarray, kind: str, rounding=np.float16) -> np.ndarray:
    """K-quant blocks dequantized as the planned repacked layout computes them (notes/models.md §3.2): the scale
    products of each 32-weight block (16 for Q6_K) rounded to f16. Only used to size the tests' tolerance."""
    f16 = np.float16
    if kind == "Q6_K":
        b = raw.reshape(-1, 210)
        ql, qh = b[:, :128].astype(np.int32), b[:, 128:192].astype(np.int32)
        sc = b[:, 192:208].view(np.int8).astype(np.float32)
        d = b[:, 208:210].copy().view(f16).astype(np.float32)
        q = np.empty((len(b), 256), np.int32)
        for n in range(2):
            lo, hi = ql[:, 64 * n : 64 * n + 64], qh[:, 32 * n : 32 * n + 32]
            for t in range(4):
                nib = (lo[:, 32 * (t & 1) : 32 * (t & 1) + 32] >> (4 * (t >> 1))) & 15
                q[:, 128 * n + 32 * t : 128 * n + 32 * t + 32] = nib | (((hi >> (2 * t)) & 3) << 4)
        scale = (d * sc).astype(rounding).astype(np.float32)  # (nb, 16)
        return (np.repeat(scale, 16, axis=1) * (q - 32)).reshape(-1)
    size = 144 if kind == "Q4_K" else 176
    b = raw.reshape(-1, size)
    d = b[:, 0:2].copy().view(f16).astype(np.float32)
    dmin = b[:, 2:4].copy().view(f16).astype(np.float32)
    s = b[:, 4:16].astype(np.int32)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    qs = b[:, size - 128 :].astype(np.int32).reshape(-1, 4, 32)
    q = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 256)  # sub-block 2p: low nibbles, 2p + 1: high
    if kind == "Q5_K":
        qh = b[:, 16:48].astype(np.int32)
        q = q | (((qh[:, None, :] >> np.arange(8)[None, :, None]) & 1) << 4).reshape(-1, 256)
    scale = (d * sc).astype(rounding).astype(np.float32)
    offset = (dmin * mn).astype(rounding).astype(np.float32)
    return (np.repeat(scale, 32, axis=1) * q - np.repeat(offset, 32, axis=1)).reshape(-1)


def gguf_weights(
    path: Path,
    gemma_norms: bool,
    llama_permute: bool,
    n_head: int,
    n_kv: int,
    fused_phi3: bool,
    f16_scales: bool = False,
):
    """Every tensor of ``path`` dequantized to f32 by gguf-py, keyed by its transformers name, plus the types.
    ``f16_scales``: K-quant tensors dequantized with f16-rounded block scales instead (tolerance study)."""
    import gguf

    reader = gguf.GGUFReader(path)
    out, types, derived = {}, {}, {}
    for t in reader.tensors:
        types[t.name] = t.tensor_type.name
        shape = tuple(int(d) for d in reversed(t.shape))  # numpy order: rows first
        if f16_scales and t.tensor_type.name in ("Q4_K", "Q5_K", "Q6_K"):
            w = dequantize_f16_scales(np.asarray(t.data).reshape(-1), t.tensor_type.name).reshape(shape)
        else:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if t.name in DERIVED:
            derived[t.name] = w
            continue
        if t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            names = dict(LAYER_NAMES, **GEMMA_LAYER_NAMES) if gemma_norms else LAYER_NAMES
            if fused_phi3 and rest == "ffn_up.weight":
                hf = "mlp.gate_up_proj.weight"
            else:
                hf = names[rest]
            name = f"model.layers.{layer}.{hf}"
            if llama_permute and rest == "attn_q.weight":
                w = unpermute(w, n_head)
            elif llama_permute and rest == "attn_k.weight":
                w = unpermute(w, n_kv)
        else:
            name = {
                "token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight",
            }[t.name]
        if gemma_norms and t.name.endswith("norm.weight"):
            w = w - np.float32(1)  # the converter stored 1 + w; (1 + w) - 1 + 1 == 1 + w exactly in f32
        out[name] = w
    return out, types, derived


def reference_model(arch: Arch, model_dir: Path, gguf_path: Path, f16_scales: bool = False):
    """transformers fp32 with the weights of ``gguf_path``."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    kwargs = {"attn_implementation": "eager"} if arch.gemma_norms else {}
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, **kwargs)
    weights, types, derived = gguf_weights(
        gguf_path,
        arch.gemma_norms,
        arch.llama_permute,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        fused_phi3=arch.config_class == "Phi3Config",
        f16_scales=f16_scales,
    )
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise RuntimeError(f"{gguf_path.name}: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    return model, types, derived, weights


# ---- goldens ------------------------------------------------------------------------------------------------------


def prompts_for(arch: Arch, vocab: int) -> list[dict]:
    """Token-id prompts (BOS first): a short one, one longer than the sliding window, a long one. Each with the
    context length every engine runs it at."""
    rng = np.random.default_rng(7)
    first_word = FIRST_WORD
    out = []
    for name, n in (("short", 6), ("window", 20), ("long", 300 if arch.config_class == "Phi3Config" else 96)):
        ids = [1] + [int(i) for i in rng.integers(first_word, vocab, n - 1)]
        prompt = {"name": name, "ids": ids, "n_ctx": arch.prompt_ctx.get(name, DEFAULT_CTX)}
        if "original_max_position_embeddings" in arch.config:  # LongRoPE: the factors both references use
            orig = arch.config["original_max_position_embeddings"]
            # transformers picks by the sequence length (it must not cross orig during the greedy steps),
            # llama.cpp by the context size
            if n <= orig < n + N_GREEDY or (n > orig) != (prompt["n_ctx"] > orig):
                raise RuntimeError(
                    f"{arch.name} {name}: transformers and llama.cpp would use different factors"
                )
            prompt["longrope_factors"] = "long" if n > orig else "short"
        out.append(prompt)
    return out


def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy().astype(np.float32)


def hf_greedy(model, ids: list[int], n: int) -> tuple[list[int], list[float], list[int]]:
    """Greedy ids by full recomputation each step (no cache), with the top-2 margin and runner-up of each step."""
    seq, tokens, margins, seconds = list(ids), [], [], []
    for _ in range(n):
        lg = hf_logits(model, seq)
        top = np.argsort(-lg.astype(np.float64), kind="stable")[:2]
        tokens.append(int(top[0]))
        margins.append(float(lg[top[0]] - lg[top[1]]))
        seconds.append(int(top[1]))
        seq.append(int(top[0]))
    return tokens, margins, seconds


def llama_cpp_logits(path: Path, ids: list[int], n_ctx: int) -> np.ndarray:
    import llama_cpp

    # K/V in f32 (llama.cpp's default is f16), so that only the activation quantization of its matrix products
    # separates it from exact math.
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=2,
        logits_all=False,
        verbose=False,
        seed=0,
        type_k=0,
        type_v=0,
    )
    llm.eval(ids)
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    out = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()
    del llm
    return out


def hf_gguf_check(arch: Arch, model_dir: Path, gguf_path: Path, ours: np.ndarray, ids: list[int]) -> dict:
    """Whether transformers' own GGUF loader reads this file, with the config it derives from the GGUF metadata
    and with the original config, and if so how far its first-step logits are from the reference's."""
    import torch
    import transformers

    out = {}
    kwargs = {"attn_implementation": "eager"} if arch.gemma_norms else {}
    for label, extra in (
        ("gguf_metadata_config", {}),
        ("original_config", {"config": transformers.AutoConfig.from_pretrained(model_dir)}),
    ):
        try:
            m = transformers.AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, **kwargs, **extra
            )
        except Exception as e:  # noqa: BLE001 - the message is the finding
            out[label] = f"fails: {type(e).__name__}: {str(e)[:240]}"
            continue
        err = float(np.abs(hf_logits(m, ids) - ours).max())
        out[label] = f"loads; max |logit - reference| {err:.3g}"
    return out


def simulated_errors(arch: Arch, model_dir: Path, path: Path, model, arrays: dict, stem: str) -> tuple:
    """How far two lossy engine layouts would move the first-step logits (max normalized error over prompts):
    K-quant block scales rounded to f16 (the planned repack), and K/V rounded to f16 (the f16 tier's cache; here
    the k/v projections' outputs are rounded, a slight overestimate for q/k-norm models)."""
    import torch

    prompts = prompts_for(arch, len(model.get_input_embeddings().weight))
    repack, _, _, _ = reference_model(arch, model_dir, path, f16_scales=True)
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith(("k_proj", "v_proj", "qkv_proj")):
            hooks.append(mod.register_forward_hook(lambda m, i, o: o.to(torch.float16).to(torch.float32)))
    try:
        kv = [hf_logits(model, p["ids"]) for p in prompts]
    finally:
        for h in hooks:
            h.remove()
    r_err = max(
        float(np.linalg.norm(hf_logits(repack, p["ids"]) - arrays[f"{stem}/{p['name']}/hf"]))
        / float(np.linalg.norm(arrays[f"{stem}/{p['name']}/hf"]))
        for p in prompts
    )
    k_err = max(
        float(
            np.linalg.norm(lg - arrays[f"{stem}/{p['name']}/hf"])
            / np.linalg.norm(arrays[f"{stem}/{p['name']}/hf"])
        )
        for lg, p in zip(kv, prompts, strict=True)
    )
    return round(r_err, 7), round(k_err, 7)


def f16_gelu_agreement(arch: Arch, model_dir: Path, f32: Path, vocab: int) -> list[float]:
    """Normalized distance between llama.cpp and transformers on the F32 file when transformers' GELU is replaced
    by llama.cpp's CPU one: gelu_tanh looked up at the f16-rounded input, the result rounded to f16 (0 below -10,
    identity above 10)."""
    import torch

    class TableGelu(torch.nn.Module):
        def forward(self, x):
            g = torch.nn.functional.gelu(x.to(torch.float16).to(torch.float32), approximate="tanh")
            g = g.to(torch.float16).to(torch.float32)
            return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, g))

    model, *_ = reference_model(arch, model_dir, f32)
    for layer in model.model.layers:
        layer.mlp.act_fn = TableGelu()
    out = []
    for p in prompts_for(arch, vocab):
        ref = hf_logits(model, p["ids"])
        lcpp = llama_cpp_logits(f32, p["ids"], p["n_ctx"])
        out.append(round(float(np.linalg.norm(lcpp - ref) / np.linalg.norm(ref)), 7))
    return out


def check_f32_mapping(model_dir: Path, weights: dict, gemma_norms: bool) -> None:
    """The F32 file's weights, mapped back, must be the checkpoint's (norms compared as used: 1 + w for gemma)."""
    from safetensors.numpy import load_file

    orig = load_file(str(model_dir / "model.safetensors"))
    for name, w in weights.items():
        if name not in orig:
            raise RuntimeError(f"{name}: in the GGUF but not in the checkpoint")
        o = orig[name].astype(np.float32)
        if gemma_norms and name.endswith("norm.weight"):
            w, o = w + np.float32(1), o + np.float32(1)
        if w.shape != o.shape or not np.array_equal(w, o):
            raise RuntimeError(f"{name}: mapped F32 weight differs from the checkpoint")


def goldens_for_file(
    arch: Arch, model_dir: Path, path: Path, vocab: int
) -> tuple[dict, dict[str, np.ndarray]]:
    model, types, derived, weights = reference_model(arch, model_dir, path)
    if path.name.endswith(".F32.gguf"):
        check_f32_mapping(model_dir, weights, arch.gemma_norms)
    entry = {
        "file": path.name,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "types": dict(
            sorted({t: sum(1 for v in types.values() if v == t) for t in set(types.values())}.items())
        ),
        "tensor_types": types,
        "prompts": [],
    }
    arrays = {}
    for p in prompts_for(arch, vocab):
        logits = hf_logits(model, p["ids"])
        tokens, margins, seconds = hf_greedy(model, p["ids"], N_GREEDY)
        lcpp = llama_cpp_logits(path, p["ids"], p["n_ctx"])
        key = f"{path.stem}/{p['name']}"
        arrays[f"{key}/hf"] = logits
        arrays[f"{key}/llama_cpp"] = lcpp
        rel = float(np.linalg.norm(lcpp - logits) / np.linalg.norm(logits))
        entry["prompts"].append(
            dict(
                p,
                greedy_ids=tokens,
                top2_margin=[round(m, 6) for m in margins],
                second_ids=seconds,
                hf_argmax=int(np.argmax(logits)),
                llama_cpp_argmax=int(np.argmax(lcpp)),
                llama_cpp_rel_err=round(rel, 6),
            )
        )
        print(
            f"  {key}: {len(p['ids'])} ids, greedy {tokens[:8]}..., min margin {min(margins):.3f}, "
            f"llama.cpp rel err {rel:.4f}"
        )
    entry["simulated_repack_rel_err"], entry["simulated_f16_kv_rel_err"] = simulated_errors(
        arch, model_dir, path, model, arrays, path.stem
    )
    entry["hf_gguf_check"] = hf_gguf_check(
        arch, model_dir, path, arrays[f"{path.stem}/short/hf"], entry["prompts"][0]["ids"]
    )
    return entry, arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/cache/arch-fixtures"))
    ap.add_argument("--sdist", type=Path, default=Path("/work/cache/llama_cpp_python-0.3.36"))
    ap.add_argument("--only", default="", help="comma-separated fixture names")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    only = set(filter(None, args.only.split(",")))
    OUT.mkdir(parents=True, exist_ok=True)
    goldens, arrays = load_goldens()
    for arch in ARCHS:
        if only and arch.name not in only:
            continue
        model_dir = args.work / arch.name
        model_dir.mkdir(parents=True, exist_ok=True)
        vocab = write_tokenizer(model_dir)
        build_model(arch, vocab, model_dir)
        f32 = args.work / f"{arch.name}.F32.gguf"
        convert(args.sdist, model_dir, f32)
        committed = OUT / f"{arch.name}.{COMMITTED}.gguf"
        quantize(f32, committed, COMMITTED)
        files = [committed, *(requantized(committed, args.work, q) for q in REQUANTIZED)]
        for f in files:
            print(f"{f.name}: {f.stat().st_size} bytes, sha256 {sha256(f)}")
        # The F32 file is not committed: its run checks that transformers (with this config) and llama.cpp compute
        # the same model, where llama.cpp's CPU math is exact f32 (no activation quantization) except for GeGLU,
        # which it reads from an f16 table (ggml-cpu vec.h); for gemma the check swaps that table in.
        f32_entry, _ = goldens_for_file(arch, model_dir, f32, vocab)
        f32_check = {
            "llama_cpp_rel_err": [p["llama_cpp_rel_err"] for p in f32_entry["prompts"]],
            "hf_gguf_check": f32_entry["hf_gguf_check"],
        }
        agreement = f32_check["llama_cpp_rel_err"]
        if arch.gemma_norms:
            agreement = f32_check["llama_cpp_rel_err_with_f16_gelu_table"] = f16_gelu_agreement(
                arch, model_dir, f32, vocab
            )
        if max(agreement) > F32_AGREEMENT:
            raise RuntimeError(
                f"{arch.name}: transformers and llama.cpp disagree on the F32 file ({agreement})"
            )
        entries = {}
        for path in files:
            entry, arr = goldens_for_file(arch, model_dir, path, vocab)
            if path != committed:  # where CI gets it: requantized from the committed file (sha256 checked)
                entry = {"requantized_from": committed.name, **entry}
            arrays.update(arr)
            entries[path.name] = entry
        config = json.loads((model_dir / "config.json").read_text())
        goldens["models"][arch.name] = {
            "exercises": arch.exercises,
            "config": {k: v for k, v in config.items() if k not in ("transformers_version", "dtype")},
            "vocab_size": vocab,
            "f32_check": f32_check,
            "files": entries,
        }
    write_goldens(goldens, arrays)


def load_goldens() -> tuple[dict, dict[str, np.ndarray]]:
    path = OUT / "goldens.json"
    if not path.exists():
        return {"models": {}}, {}
    with np.load(OUT / "goldens.npz") as z:
        return json.loads(path.read_text()), {k: z[k] for k in z.files}


def write_goldens(goldens: dict, arrays: dict[str, np.ndarray]) -> None:
    import llama_cpp

    goldens["meta"] = {
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_commit": LLAMA_CPP_COMMIT,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "seed": SEED,
        "n_greedy": N_GREEDY,
        "reference": "transformers fp32 (eager attention for gemma), weights = the GGUF file dequantized by gguf-py",
    }
    keep = {f"{Path(f).stem}/" for m in goldens["models"].values() for f in m["files"]}
    arrays = {k: v for k, v in arrays.items() if any(k.startswith(p) for p in keep)}
    # llama.cpp's logits are compared within 15 %: f16 holds them to 5e-4 and halves their bytes. transformers'
    # stay f32 (the f32 tier is held to 1e-4).
    arrays = {k: v.astype(np.float16) if k.endswith("/llama_cpp") else v for k, v in arrays.items()}
    np.savez_compressed(OUT / "goldens.npz", **dict(sorted(arrays.items())))
    (OUT / "goldens.json").write_text(compact_json(goldens) + "\n")
    write_readme(goldens)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


def compact_json(obj, indent: int = 0) -> str:
    """JSON with one key per line but every list of numbers or strings on one line (a third of indent=1's bytes)."""
    pad = " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(k)}: {compact_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(pad + compact_json(v, indent + 1) for v in obj) + "\n" + " " * indent + "]"
    return json.dumps(obj)


def write_readme(goldens: dict) -> None:
    """tests/data/arch/README.md: every file of the matrix, where it comes from, its size and sha256."""
    lines = [
        "# Architecture fixtures (generated: do not edit)",
        "",
        "Tiny seeded random models converted by llama.cpp's `convert_hf_to_gguf.py` and quantized by llama.cpp",
        f"(llama-cpp-python {goldens['meta']['llama_cpp_python']}, llama.cpp {LLAMA_CPP_COMMIT[:7]}), made by",
        "`scripts/make_arch_fixtures.py`; goldens in `goldens.json` / `goldens.npz`, checked by",
        "`tests/e2e/test_arch_goldens.py`. Only the Q4_K_M files are committed: the Q5_K_M, Q6_K and Q8_0 files",
        "are llama.cpp's requantizations of them, remade in CI by `scripts/requantize.py` (byte-identical, sha256",
        "checked) into `~/.cache/webllm_py/requantized/arch/`. `smollm2_kquants.json` / `.npz`: goldens for",
        "SmolLM2-135M requantized by llama.cpp (`scripts/make_kquant_goldens.py`; the files are remade in CI the",
        "same way).",
        "",
        "| file | in the repo | bytes | tensor types | sha256 |",
        "|---|---|---|---|---|",
    ]
    for model in goldens["models"].values():
        for name, f in model["files"].items():
            types = ", ".join(f"{t} {n}" for t, n in f["types"].items())
            where = f"no: from {f['requantized_from']}" if "requantized_from" in f else "yes"
            lines.append(f"| {name} | {where} | {f['bytes']} | {types} | `{f['sha256']}` |")
    lines += ["", "| model | exercises |", "|---|---|"]
    lines += [f"| {name} | {model['exercises']} |" for name, model in goldens["models"].items()]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
