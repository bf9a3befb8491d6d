// Per-head RMSNorm of the queries and keys, then RoPE: Qwen3's and Gemma 3's q_norm / k_norm, applied before the
// rotation.
//
// The QKV projection (matmul.wgsl EPI=QKV with QK_OUT) leaves each token's raw q and k rows in src (v went to the V
// cache). One workgroup per (head, token of the step): heads 0 .. n_heads - 1 are query heads, written normed and
// rotated to q; heads n_heads .. n_heads + n_kv_heads - 1 are key heads, written to the K cache at position pos + t.
// Invocation i owns the feature pair (2i, 2i + 1): RoPE pairs are adjacent here for every architecture, because the
// loader permuted NEOX models' q/k rows (and these norm weights with them).
// Defines: WG (threads, a power of two >= HD / 2), HD (head_dim, even).

#include "common.wgsl"

struct Params {
  n_heads: u32,     // query heads
  n_kv_heads: u32,  // key/value heads
  max_ctx: u32,     // KV cache capacity in positions
  rope_dims: u32,   // rotated features per head (even, <= HD)
  eps: f32,         // RMSNorm epsilon
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: State;
@group(0) @binding(2) var<storage, read> src: array<vec2<f32>>;         // (n_tokens, n_heads + n_kv_heads, HD) raw q | k
@group(0) @binding(3) var<storage, read_write> q: array<vec2<f32>>;     // (n_tokens, n_heads, HD) f32
@group(0) @binding(4) var<storage, read_write> kv: array<KV_T>;         // (2, n_kv_heads, max_ctx, HD): K then V
@group(0) @binding(5) var<storage, read> q_norm_w: array<vec2<f32>>;    // (HD,) f32
@group(0) @binding(6) var<storage, read> k_norm_w: array<vec2<f32>>;    // (HD,) f32
@group(0) @binding(7) var<storage, read> rope_freq: array<f32>;         // (rope_dims / 2,) inverse frequencies

const HD2: u32 = HD / 2u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let head = wid.x;
  let t = wid.y;
  let pos = S.pos + t;
  let i = lid;
  var v = vec2<f32>(0.0);
  if (i < HD2) {
    v = src[(t * (P.n_heads + P.n_kv_heads) + head) * HD2 + i];
  }
  let inv_rms = inverseSqrt(wg_sum(dot(v, v), lid) / f32(HD) + P.eps);
  if (i >= HD2) {
    return;
  }
  let is_key = head >= P.n_heads;
  var y = v * inv_rms * select(q_norm_w[i], k_norm_w[i], is_key);
  if (2u * i < P.rope_dims) {
    y = rope_rotate(y.x, y.y, rope_freq[i], pos);
  }
  if (is_key) {
    let o = ((head - P.n_heads) * P.max_ctx + pos) * HD + 2u * i;
    kv[o] = KV_T(y.x);
    kv[o + 1u] = KV_T(y.y);
  } else {
    q[(t * P.n_heads + head) * HD2 + i] = y;
  }
}
