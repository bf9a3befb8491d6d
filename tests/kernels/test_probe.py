"""The start-up subgroup probe on this adapter."""

from __future__ import annotations


def test_subgroup_probe(gpu_device):
    import asyncio

    from webllm_py.kernels.probe import probe_subgroups
    from webllm_py.kernels.registry import Kernels, Tier

    probe = asyncio.run(probe_subgroups(Kernels(gpu_device, Tier(f16=False, subgroups=True))))
    assert probe.ok, probe.detail
    assert probe.min_size >= 1 and probe.max_size >= probe.min_size
