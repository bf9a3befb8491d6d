// Causal self-attention with grouped-query heads, for decode (one token) and prefill (a chunk of tokens).
//
// One workgroup per (query head, token of the step) walks the keys 0 .. pos + t in tiles of TILE positions with an
// online softmax (running max m and normalizer l), so any context length runs in fixed workgroup memory:
//   scores   each invocation scores TILE / WG positions (vec4 loads of K rows), kept in workgroup memory
//   softmax  one workgroup max and one sum per tile
//   values   invocations form WG / HD groups of HD; group g sums the positions j = g (mod groups), invocation d of the
//            group owning output feature d (coalesced V loads); the groups' partials are added at the end.
// Defines: WG (threads, a power of two, a multiple of HD), HD (head_dim, a multiple of 4), TILE (positions per tile).
//
// SPLIT (decode, "flash decoding"): the keys are cut into num_workgroups.z splits, one workgroup each, so a long
// context keeps many workgroups busy; each writes its unnormalized partial (acc, m, l) and the consumer (the output
// projection, matmul.wgsl ATTN_IN) merges the splits while it loads its input. Without SPLIT the workgroup writes the
// normalized output.

#include "common.wgsl"

struct Params {
  n_heads: u32,     // query heads
  n_kv_heads: u32,  // key/value heads (n_heads is a multiple)
  max_ctx: u32,     // KV cache capacity in positions
  q_stride: u32,    // elements between tokens in q and out (n_heads * HD)
  scale: f32,       // 1 / sqrt(HD)
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: State;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;     // (n_tokens, n_heads, HD) f32, RoPE applied
@group(0) @binding(3) var<storage, read> kv: array<vec4<KV_T>>;   // (2, n_kv_heads, max_ctx, HD): K then V
@group(0) @binding(4) var<storage, read_write> out: array<f32>;   // (n_tokens, n_heads, HD) f32; SPLIT: (n_heads, splits, HD) partial acc
#ifdef SPLIT
@group(0) @binding(5) var<storage, read_write> ml: array<f32>;    // SPLIT: (n_heads, splits, 2) max m and sum l
#endif

const HD4: u32 = HD / 4u;
const GROUPS: u32 = WG / HD;

var<workgroup> q_sh: array<vec4<f32>, HD4>;   // this head's query, pre-scaled
var<workgroup> p_sh: array<f32, TILE>;        // this tile's scores, then softmax numerators
var<workgroup> acc_sh: array<f32, WG>;        // the groups' partial outputs, added at the end

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let h = wid.x;
  let t = wid.y;
  let kvh = h / (P.n_heads / P.n_kv_heads);
  let n_keys = S.pos + t + 1u;  // causal: token t sees positions 0 .. pos + t
  // This workgroup's keys: all of them, or one of the used_splits equal splits (workgroups past those get none).
  let n_used = used_splits(n_keys, nwg.z);
  let split_len = (n_keys + n_used - 1u) / n_used;
  let k_lo = min(wid.z * split_len, n_keys);
  let k_hi = min(k_lo + split_len, n_keys);
  let k_base = kvh * P.max_ctx * HD4;                    // in vec4
  let v_base = (P.n_kv_heads + kvh) * P.max_ctx * HD;    // in elements
  for (var i = lid; i < HD4; i += WG) {
    q_sh[i] = q[(t * P.q_stride + h * HD) / 4u + i] * P.scale;
  }
  workgroupBarrier();

  let d = lid % HD;      // output feature of this invocation
  let grp = lid / HD;    // which positions (mod GROUPS) it sums
  var m = -1e30;         // running max of the scores
  var l = 0.0;           // running sum of exp(score - m)
  var acc = 0.0;         // this group's partial output feature d
  for (var p0 = k_lo; p0 < k_hi; p0 += TILE) {
    let n_in = min(TILE, k_hi - p0);
    var tile_max = -1e30;
    for (var j = lid; j < n_in; j += WG) {
      let k_row = k_base + (p0 + j) * HD4;
      var s = 0.0;
      for (var i = 0u; i < HD4; i++) {
        s += dot(q_sh[i], vec4<f32>(kv[k_row + i]));
      }
      p_sh[j] = s;
      tile_max = max(tile_max, s);
    }
    let m_new = max(m, wg_max(tile_max, lid));  // its barriers also publish p_sh
    var part = 0.0;
    for (var j = lid; j < n_in; j += WG) {
      let e = exp(p_sh[j] - m_new);
      p_sh[j] = e;
      part += e;
    }
    let corr = exp(m - m_new);
    l = l * corr + wg_sum(part, lid);            // its barriers also publish the numerators
    m = m_new;
    acc *= corr;
    for (var j = grp; j < n_in; j += GROUPS) {
      let vi = v_base + (p0 + j) * HD + d;
      acc += p_sh[j] * f32(kv[vi / 4u][vi % 4u]);
    }
    workgroupBarrier();  // every invocation is done with p_sh before the next tile overwrites it
  }
  acc_sh[lid] = acc;
  workgroupBarrier();
  if (lid < HD) {
    var total = 0.0;
    for (var g = 0u; g < GROUPS; g++) {
      total += acc_sh[g * HD + lid];
    }
#ifdef SPLIT
    let slot = h * nwg.z + wid.z;  // decode: one token
    out[slot * HD + lid] = total;
    if (lid == 0u) {
      ml[2u * slot] = m;
      ml[2u * slot + 1u] = l;
    }
#else
    out[t * P.q_stride + h * HD + lid] = total / l;
#endif
  }
}
