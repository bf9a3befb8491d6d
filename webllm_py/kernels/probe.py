"""Start-up probe: measure subgroup sizes and check the layout our subgroup reductions assume.

common.wgsl's subgroup reductions put subgroup s's partial at index lid / subgroup_size, which is right only when
each subgroup is a contiguous run of local_invocation_index starting at a multiple of its size. Vulkan, Metal and
D3D12 drivers lay compute subgroups out that way in practice, but nothing guarantees it, so we check on every device
for each workgroup size we use and fall back to tree reductions where it fails.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..gpu.device import BufferUsage
from .registry import Kernels, Tier

PROBE_WG_SIZES = (16, 64, 256)


@dataclass(frozen=True)
class SubgroupProbe:
    ok: bool
    min_size: int
    max_size: int
    detail: str = ""


async def probe_subgroups(kern: Kernels) -> SubgroupProbe:
    dev = kern.device
    sub = Kernels(dev, Tier(f16=False, subgroups=True))
    sizes: set[int] = set()
    for wg in PROBE_WG_SIZES:
        buf = dev.create_buffer(wg * 8, BufferUsage.STORAGE | BufferUsage.COPY_SRC, "probe")
        try:
            pipe = sub.pipeline("probe.wgsl", WG=wg)
            bg = dev.create_bind_group(pipe, [(0, buf, 0, wg * 8)], "probe")
            dev.submit([(pipe, bg, 1, 1, 1)])
            data = struct.unpack(f"<{2 * wg}I", await dev.read_storage(buf, 0, wg * 8))
        finally:
            dev.destroy_buffer(buf)
        for lid in range(wg):
            size, lane = data[2 * lid], data[2 * lid + 1]
            sizes.add(size)
            if size == 0 or size & (size - 1) or lane != lid % size:
                return SubgroupProbe(
                    False, 0, 0, f"workgroup {wg}: invocation {lid} has lane {lane} of {size}"
                )
    return SubgroupProbe(True, min(sizes), max(sizes))
