// Causal self-attention with grouped-query heads, for decode (one token) and prefill (a chunk of tokens).
//
// One workgroup per (query head, token of the step). It walks the keys 0 .. pos + t in tiles of WG positions with
// an online softmax (running max m and normalizer l), so any context length runs in fixed workgroup memory.
// Defines: WG (threads, a power of two), HD (head_dim), HDT = ceil(HD / WG) output features per invocation.

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
@group(0) @binding(2) var<storage, read> q: array<f32>;          // (n_tokens, n_heads, HD) f32, RoPE applied
@group(0) @binding(3) var<storage, read> kv: array<KV_T>;        // (2, n_kv_heads, max_ctx, HD): K then V
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // (n_tokens, n_heads, HD) f32

var<workgroup> q_sh: array<f32, HD>;     // this head's query, pre-scaled
var<workgroup> p_sh: array<f32, WG>;     // this tile's softmax numerators

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let h = wid.x;
  let t = wid.y;
  let kvh = h / (P.n_heads / P.n_kv_heads);
  let n_keys = S.pos + t + 1u;  // causal: token t sees positions 0 .. pos + t
  let k_base = kvh * P.max_ctx * HD;
  let v_base = (P.n_kv_heads + kvh) * P.max_ctx * HD;
  for (var d = lid; d < HD; d += WG) {
    q_sh[d] = q[t * P.q_stride + h * HD + d] * P.scale;
  }
  workgroupBarrier();

  var m = -1e30;  // running max of the scores
  var l = 0.0;    // running sum of exp(score - m)
  var acc: array<f32, HDT>;
  for (var p0 = 0u; p0 < n_keys; p0 += WG) {
    let p = p0 + lid;
    var s = -1e30;
    if (p < n_keys) {
      s = 0.0;
      let k_row = k_base + p * HD;
      for (var d = 0u; d < HD; d++) {
        s += q_sh[d] * f32(kv[k_row + d]);
      }
    }
    let m_new = max(m, wg_max(s, lid));
    var e = 0.0;
    if (p < n_keys) {
      e = exp(s - m_new);
    }
    p_sh[lid] = e;
    let l_tile = wg_sum(e, lid);  // its barriers also publish p_sh
    let corr = exp(m - m_new);
    l = l * corr + l_tile;
    m = m_new;
    let n_in = min(WG, n_keys - p0);
    for (var i = 0u; i < HDT; i++) {
      let d = lid + i * WG;
      var a = acc[i] * corr;
      if (d < HD) {
        for (var j = 0u; j < n_in; j++) {
          a += p_sh[j] * f32(kv[v_base + (p0 + j) * HD + d]);
        }
      }
      acc[i] = a;
    }
    workgroupBarrier();  // every invocation is done with p_sh before the next tile overwrites it
  }
  for (var i = 0u; i < HDT; i++) {
    let d = lid + i * WG;
    if (d < HD) {
      out[t * P.q_stride + h * HD + d] = acc[i] / l;
    }
  }
}
