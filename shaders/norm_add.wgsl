// Norm, then residual add: x[t, :] += RMSNorm(y[t, :]) * w, Gemma's post-attention and post-FFN norms (the output
// projection and the FFN's down projection store y instead of adding it to x). One workgroup per token of the step.
// Defines: WG (threads, a power of two).

#include "common.wgsl"

struct Params {
  n: u32,     // features per token (H, a multiple of 4)
  eps: f32,   // RMSNorm epsilon
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(2) var<storage, read> y: array<vec4<f32>>;         // (n_tokens, H) f32
@group(0) @binding(3) var<storage, read_write> x: array<vec4<f32>>;   // (n_tokens, H) f32 residual stream
@group(0) @binding(4) var<storage, read> w: array<vec4<f32>>;         // (H,) f32 norm weight

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let n4 = P.n / 4u;
  let base = wid.x * n4;
  var ssq = 0.0;
  for (var i = lid; i < n4; i += WG) {
    let v = y[base + i];
    ssq += dot(v, v);
  }
  let inv_rms = inverseSqrt(wg_sum(ssq, lid) / f32(P.n) + P.eps);
  for (var i = lid; i < n4; i += WG) {
    x[base + i] += y[base + i] * inv_rms * w[i];
  }
}
