"""Goldens for the real SmolLM2-135M requantized by llama.cpp into Q4_K_M, Q5_K_M, Q6_K and Q8_0.

Run by hand from the repo root (same tools as scripts/make_arch_fixtures.py: torch, transformers, gguf,
llama-cpp-python 0.3.36 built from source):

    python3 scripts/make_kquant_goldens.py [--model SmolLM2-135M-Instruct.Q4_1.gguf] [--work /work/cache/smollm2-kq]

The four files are ~100 MB each, too big to commit, and CI cannot build llama.cpp; CI remakes them from the Q4_1
file with scripts/requantize.py (numpy) and checks each sha256 against the one recorded here from llama.cpp's own
output. This script makes llama.cpp's files, runs the numpy requantizer on the same source and refuses to write
goldens unless the bytes are identical.

Writes tests/data/arch/smollm2_kquants.json (+ .npz):
- per file: sha256, size, tensor type counts, whether transformers' own GGUF loader reads it;
- per conversation (four of tests/data/goldens/chat_greedy.json, prompt ids as rendered there): 32 greedy ids from
  transformers fp32 on that file's weights (dequantized by gguf-py, q/k rows un-permuted), stopping at an
  end-of-generation token, with the top-2 margin and runner-up of every step;
- first-step logits of transformers and of llama.cpp (K/V in f32), as their top TOP_K entries (ids, values): the
  full 49152-entry rows would cost 0.2 MB each. Recorded: their normalized distance over the whole vocabulary and
  over llama.cpp's top TOP_K (what the test measures), and how far rounding the K-quant block scales to f16 would
  move transformers' logits (``simulated_repack_rel_err``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_arch_fixtures as fx  # noqa: E402
import requantize  # noqa: E402

REPO = fx.REPO
OUT = fx.OUT
FTYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
CONVERSATIONS = ("capital_system", "code", "french", "multi_turn_system")
N_GREEDY = 32
TOP_K = 512


def source_model(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    sys.path.insert(0, str(REPO))
    from tests.e2e.model_path import smollm2_path

    return Path(smollm2_path())


def llama_config(path: Path):
    """A transformers LlamaConfig from the GGUF metadata of SmolLM2 (llama arch, tied embedding)."""
    import gguf
    import transformers

    r = gguf.GGUFReader(path)

    def get(key):
        return r.fields[key].contents()

    return transformers.LlamaConfig(
        vocab_size=len(r.fields["tokenizer.ggml.tokens"].data),
        hidden_size=get("llama.embedding_length"),
        intermediate_size=get("llama.feed_forward_length"),
        num_hidden_layers=get("llama.block_count"),
        num_attention_heads=get("llama.attention.head_count"),
        num_key_value_heads=get("llama.attention.head_count_kv"),
        head_dim=get("llama.rope.dimension_count"),
        max_position_embeddings=get("llama.context_length"),
        rms_norm_eps=get("llama.attention.layer_norm_rms_epsilon"),
        rope_theta=get("llama.rope.freq_base"),
        tie_word_embeddings="output.weight" not in {t.name for t in r.tensors},
        bos_token_id=get("tokenizer.ggml.bos_token_id"),
        eos_token_id=get("tokenizer.ggml.eos_token_id"),
    )


def reference(path: Path, f16_scales: bool = False):
    """transformers fp32 with the weights of ``path`` (``f16_scales``: K-quant block scales rounded to f16, to
    size the tolerance; see make_arch_fixtures.dequantize_f16_scales)."""
    import torch
    import transformers

    cfg = llama_config(path)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float32)
    weights, types, _ = fx.gguf_weights(
        path,
        False,
        True,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        fused_phi3=False,
        f16_scales=f16_scales,
    )
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in weights.items()}, strict=False
    )
    if set(missing) - {"lm_head.weight"} or unexpected:
        raise RuntimeError(f"{path.name}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.eval()
    return model, types


def greedy(model, ids: list[int], n: int, eog: set[int]):
    """Greedy decoding with transformers' KV cache; returns (first logits, ids, margins, runner-ups)."""
    import torch

    tokens, margins, seconds, first = [], [], [], None
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            lg = out.logits[0, -1].numpy().astype(np.float32)
            if first is None:
                first = lg
            top = np.argsort(-lg.astype(np.float64), kind="stable")[:2]
            tokens.append(int(top[0]))
            margins.append(round(float(lg[top[0]] - lg[top[1]]), 6))
            seconds.append(int(top[1]))
            if tokens[-1] in eog:
                break
            out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return first, tokens, margins, seconds


def top_k(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.argsort(-logits.astype(np.float64), kind="stable")[:TOP_K]
    return ids.astype(np.int32), logits[ids].astype(np.float32)


def hf_gguf_check(path: Path, ids: list[int], ours: np.ndarray) -> str:
    import torch
    import transformers

    try:
        m = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    except Exception as e:  # noqa: BLE001 - the message is the finding
        return f"fails: {type(e).__name__}: {str(e)[:240]}"
    with torch.no_grad():
        lg = m(torch.tensor([ids])).logits[0, -1].numpy()
    return f"loads; max |logit - reference| {float(np.abs(lg - ours).max()):.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/work/cache/smollm2-kq"))
    args = ap.parse_args()
    src = source_model(args.model)
    args.work.mkdir(parents=True, exist_ok=True)
    chats = json.loads((REPO / "tests" / "data" / "goldens" / "chat_greedy.json").read_text())
    eog = set(chats["eog_ids"])
    convs = [c for c in chats["chats"] if c["name"] in CONVERSATIONS]

    out = {
        "source": {"file": src.name, "sha256": fx.sha256(src), "bytes": src.stat().st_size},
        "llama_cpp_commit": fx.LLAMA_CPP_COMMIT,
        "n_greedy": N_GREEDY,
        "top_k": TOP_K,
        "eog_ids": sorted(eog),
        "files": {},
    }
    arrays = {}
    for ftype in FTYPES:
        ref_path = args.work / f"SmolLM2-135M-Instruct.{ftype}.gguf"
        fx.quantize(src, ref_path, ftype, allow_requantize=True)
        digest = fx.sha256(ref_path)
        t0 = time.process_time()
        ours = requantize.requantize(src, args.work / f"numpy.{ftype}.gguf", ftype)
        cpu = time.process_time() - t0
        if ours != digest:
            raise RuntimeError(f"{ftype}: scripts/requantize.py gives {ours}, llama.cpp {digest}")
        (args.work / f"numpy.{ftype}.gguf").unlink()
        model, types = reference(ref_path)
        repack, _ = reference(ref_path, f16_scales=True)
        entry = {
            "file": ref_path.name,
            "sha256": digest,
            "bytes": ref_path.stat().st_size,
            "types": {t: sum(1 for v in types.values() if v == t) for t in sorted(set(types.values()))},
            "numpy_requantizer": f"byte-identical to llama.cpp ({cpu:.1f} s CPU here)",
            "chats": [],
        }
        for c in convs:
            first, tokens, margins, seconds = greedy(model, c["prompt_ids"], N_GREEDY, eog)
            lcpp = fx.llama_cpp_logits(ref_path, c["prompt_ids"], 2048)
            key = f"{ftype}/{c['name']}"
            arrays[f"{key}/hf_ids"], arrays[f"{key}/hf_values"] = top_k(first)
            arrays[f"{key}/llama_cpp_ids"], arrays[f"{key}/llama_cpp_values"] = top_k(lcpp)
            rel = float(np.linalg.norm(lcpp - first) / np.linalg.norm(first))
            lids = arrays[f"{key}/llama_cpp_ids"]
            rel_top = float(np.linalg.norm(first[lids] - lcpp[lids]) / np.linalg.norm(lcpp[lids]))
            sim = first_logits(repack, c)
            rel_sim = float(np.linalg.norm(sim - first) / np.linalg.norm(first))
            entry["chats"].append(
                {
                    "name": c["name"],
                    "messages": c["messages"],
                    "prompt_ids": c["prompt_ids"],
                    "greedy_ids": tokens,
                    "top2_margin": margins,
                    "second_ids": seconds,
                    "stop_token": tokens[-1] if tokens[-1] in eog else None,
                    "llama_cpp_rel_err": round(rel, 6),
                    "llama_cpp_topk_rel_err": round(rel_top, 6),
                    "simulated_repack_rel_err": round(rel_sim, 7),
                    "llama_cpp_argmax": int(np.argmax(lcpp)),
                }
            )
            print(f"  {key}: {len(tokens)} ids, min margin {min(margins):.3f}, llama.cpp rel err {rel:.4f}")
        entry["hf_gguf_check"] = hf_gguf_check(
            ref_path, convs[0]["prompt_ids"], first_logits(model, convs[0])
        )
        out["files"][ftype] = entry
        print(f"{ref_path.name}: {entry['bytes']} bytes, sha256 {digest}, {entry['types']}")
    np.savez_compressed(OUT / "smollm2_kquants.npz", **arrays)
    (OUT / "smollm2_kquants.json").write_text(json.dumps(out, indent=1) + "\n")


def first_logits(model, conv) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([conv["prompt_ids"]])).logits[0, -1].numpy()


if __name__ == "__main__":
    main()
