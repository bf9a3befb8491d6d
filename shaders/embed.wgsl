// Token embedding gather: out[t, :] = dequantized row tokens[t] of the embedding matrix times P.scale (1, or
// sqrt(H) for Gemma), for t < n_tokens.
// One invocation per 4 features; grid (ceil(H / 4 / WG), n_tokens).

#include "common.wgsl"
#include "weights.wgsl"

struct Params {
  k_blocks: u32,    // H / 32: blocks per embedding row
  out_stride: u32,  // elements between tokens in out (H)
  scale: f32,       // multiplies every embedding
  _pad0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: State;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;        // (n_tokens,) token ids of this step
@group(0) @binding(3) var<storage, read> w_q: array<vec4<u32>>;     // (vocab, H) embedding in groups of blocks (weights.wgsl)
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;  // (n_tokens, H) f32

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let t = wid.y;
  let i = wid.x * WG + lid;  // which group of 4 features
  if (t >= S.n_tokens || i >= P.k_blocks * 8u) {
    return;
  }
  let row = tokens[t];
  out[t * (P.out_stride / 4u) + i] = dequant4(row * P.k_blocks + i / 8u, i % 8u) * P.scale;
}
