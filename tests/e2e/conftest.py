"""Fixtures for tests that need the real model (SmolLM2-135M-Instruct Q4_1): one engine per tier per session."""

from __future__ import annotations

import asyncio

import pytest

from webllm_py.kernels.registry import Tier

from .model_path import smollm2_path

# Each e2e module runs against both kernel tiers on lavapipe: f32 (what a browser on SwiftShader gets) and f16.
E2E_TIERS = [Tier(f16=False, subgroups=True), Tier(f16=True, subgroups=True)]

_engines: dict[Tier, object] = {}


def engine_for(tier: Tier, gpu_device):
    """A loaded engine for ``tier``, shared by the whole session (loading takes a few seconds on lavapipe)."""
    if tier not in _engines:
        from webllm_py.engine import load_engine

        _engines[tier] = asyncio.run(
            load_engine(
                "SmolLM2-135M-Instruct-Q4_1",
                str(smollm2_path()),
                device=gpu_device,
                tier=tier,
                context_window_size=1024,
                # prefill steps of 256 (the default would take 1,024): the long goldens' 300-token prompt then runs
                # in two chunks, so chunked prefill stays covered on the real model
                prefill_chunk_size=256,
            )
        )
    return _engines[tier]


@pytest.fixture(params=E2E_TIERS, ids=lambda t: t.name)
def engine(request, gpu_device):
    return engine_for(request.param, gpu_device)


@pytest.fixture(scope="session")
def engine_f32(gpu_device):
    return engine_for(E2E_TIERS[0], gpu_device)


@pytest.fixture(scope="session")
def engine_f16(gpu_device):
    return engine_for(E2E_TIERS[1], gpu_device)
