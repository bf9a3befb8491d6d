"""Kernel-shape options shared by the bench scripts: command-line flags -> load_engine's ``tuning`` and ``tune``.

``--gemv VARIANT/WG[/SEG[/RT]]`` fixes the decode kernel of every matrix (no load-time tuning); ``--gemm
VARIANT/WG`` picks the prefill GEMM. The others set one Kernels keyword each. Whatever is not given keeps the
adapter's default (registry.default_tuning), and tuning runs as in the engine unless --gemv or --no-tune.
"""

from __future__ import annotations

import argparse

FLAGS = {  # flag: (Kernels keyword, type, help)
    "--attention-splits": ("attention_splits", int, "key splits of decode attention"),
    "--split-min-keys": ("split_min_keys", int, "fewest keys per decode attention split"),
    "--sample-wg": ("sample_wg", int, "invocations of the sampler's workgroup"),
    "--flash-queries": ("flash_queries", int, "queries per prefill attention tile"),
    "--flash-min-keys": ("flash_min_keys", int, "prefill uses flash attention from this many keys"),
}


def add_kernel_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--gemv", default=None, help="decode kernel for every matrix, e.g. GEMV_MR/128/32/4 or GEMV/64"
    )
    ap.add_argument("--gemm", default=None, help="prefill GEMM: GEMM/256, GEMM/64, GEMM_RT/64 or GEMM_RT/128")
    ap.add_argument("--no-tune", action="store_true", help="skip load-time kernel tuning (default shapes)")
    ap.add_argument(
        "--fuse",
        choices=["on", "off"],
        default=None,
        help="decode with the QKV projection inside the attention kernel (on) or apart (off)",
    )
    for flag, (_, kind, text) in FLAGS.items():
        ap.add_argument(flag, type=kind, default=None, help=text)
    ap.add_argument(
        "--q8-decode",
        choices=["on", "off"],
        default=None,
        help="decode products with int8 activations (GEMV_MRQ) where the format allows: on, off (default)",
    )
    ap.add_argument(
        "--gemm-f16",
        choices=["on", "off"],
        default=None,
        help="GEMM_RT with f16 tiles and per-block f16 sums in the f16 tier (RT_HALF): on, off (default)",
    )
    ap.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        help="tokens of one prefill step (load_engine's prefill_chunk_size; default graph.default_chunk: 256)",
    )
    ap.add_argument(
        "--checks",
        choices=["on", "off"],
        default=None,
        help="naga's run-time checks in shader modules: on (wgpu's default), off (trusted modules)",
    )


def device_options(args: argparse.Namespace) -> dict:
    """open_device keywords from the parsed flags (--checks)."""
    return {} if args.checks is None else {"trusted_shaders": args.checks == "off"}


def kernel_tuning(args: argparse.Namespace, device) -> tuple[dict | None, bool | None]:
    """(tuning, tune) for load_engine from the parsed flags; (None, None) when none was given."""
    from webllm_py.kernels.registry import default_tuning, is_cpu_adapter

    given: dict[str, object] = {}
    if args.gemv:
        variant, *nums = args.gemv.split("/")
        wg, seg, rt = ([int(v) for v in nums] + [0, 0, 0])[:3]
        given.update(gemv_variant=variant, gemv_wg=wg)
        if seg:
            given["gemv_seg"] = seg
        if rt:
            given["gemv_rt"] = rt
    if args.gemm:
        variant, wg = args.gemm.split("/")
        given.update(gemm_variant=variant, gemm_wg=int(wg))
    if args.fuse:
        given["fuse_attention"] = args.fuse == "on"
    if args.q8_decode:
        given["q8_decode"] = args.q8_decode == "on"
    if args.gemm_f16:
        given["gemm_f16"] = args.gemm_f16 == "on"
    for flag, (key, _, _) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            given[key] = value
    if args.no_tune or args.gemv:
        tune: bool | None = False
    else:  # as the engine decides without flags: measured on GPUs, not on CPU adapters
        tune = None if not given else not is_cpu_adapter(device)
    return ({**default_tuning(device), **given} if given else None), tune


async def probed_kernels(dev):
    """(tier, Kernels, subgroup probe or None) for ``dev``, as the engine sets them up: the adapter's best tier, and
    GEMV_MR segments that sum by shuffles up to the smallest subgroup size the start-up probe measured."""
    from webllm_py.kernels.probe import probe_subgroups
    from webllm_py.kernels.registry import Kernels, Tier

    tier = Tier.for_device(dev)
    kern = Kernels(dev, tier)
    probe = await probe_subgroups(kern) if tier.subgroups else None
    if probe is not None and probe.ok:
        kern.subgroup_min = probe.min_size
    return tier, kern, probe


def pass_timer(dev, repeats: int):
    """``seconds(dispatches)``: the fastest of ``repeats`` compute passes over ``dispatches`` ((pipeline, bind group,
    x, y, z) tuples; one more pass first warms up), by the pass's own GPU timestamps (the native host's
    ``pass_seconds``), per dispatch. Needs an adapter with the ``timestamp-query`` feature."""
    if dev.pass_seconds([]) is None:
        raise SystemExit(f"{dev.info.summary()}: no timestamp-query feature, so no GPU times")

    def seconds(dispatches) -> float:
        return min(dev.pass_seconds(dispatches) for _ in range(repeats + 1)) / len(dispatches)

    return seconds
