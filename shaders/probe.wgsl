// Subgroup probe, run once per device: every invocation records its subgroup size and lane, so the host can check
// that subgroups are contiguous runs of local_invocation_index (what common.wgsl's reductions rely on).
// Defines: WG; always compiled with SUBGROUPS.

@group(0) @binding(0) var<storage, read_write> out: array<u32>;  // (WG, 2): subgroup size, lane

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32 SG_ARGS) {
  out[2u * lid] = sg_size;
  out[2u * lid + 1u] = sg_lane;
}
