// Causal self-attention for prefill: tiled flash attention with grouped-query heads.
//
// One workgroup per (query head, tile of BR consecutive query tokens of the step) walks the keys 0 .. pos + t in
// tiles of BC positions. Each key tile is loaded into workgroup memory once and used by all BR queries (the per-query
// kernel read every key once per query), then the value tile into the same memory:
//   scores   S = Q K^T for the BR x BC tile (Q pre-scaled, kept in workgroup memory for the whole walk), causal mask
//   softmax  per query row, online: running max m and normalizer l, the tile's numerators P = exp(S - m) in place
//   values   invocation (r, d) owns output features 4d .. 4d + 3 of query r: O = O * exp(m_old - m) + P V
// so any context length runs in fixed workgroup memory and every query's output is normalized once at the end.
// Defines: WG (threads, a power of two, >= HD / 4), HD (head_dim, a multiple of 4), BR (queries per tile,
// <= WG / (HD / 4)), BC (keys per tile). The host (ops.attention) picks BR and BC to fit 16 KiB of workgroup memory.
// SOFTCAP: scores become P.softcap * tanh(score / P.softcap) (Gemma 2). P.window (0: none): a query at position p
// sees the keys k with p - k < window; the walk starts at the first key the tile's first query sees.

#include "common.wgsl"

struct Params {
  n_heads: u32,     // query heads
  n_kv_heads: u32,  // key/value heads (n_heads is a multiple)
  max_ctx: u32,     // KV cache capacity in positions
  q_stride: u32,    // elements between tokens in q and out (n_heads * HD)
  scale: f32,       // multiplies q . k (1 / sqrt(HD) for most models)
  window: u32,      // sliding window in positions (0: every earlier key)
  softcap: f32,     // SOFTCAP: the cap c of c * tanh(score / c)
  _pad0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: State;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;     // (n_tokens, n_heads, HD) f32, RoPE applied
@group(0) @binding(3) var<storage, read> kv: array<vec4<KV_T>>;   // (2, n_kv_heads, max_ctx, HD): K then V
@group(0) @binding(4) var<storage, read_write> out: array<f32>;   // (n_tokens, n_heads, HD) f32

const HD4: u32 = HD / 4u;
const MASKED: f32 = -1e30;

var<workgroup> q_sh: array<vec4<f32>, BR * HD4>;   // (BR, HD) the tile's queries, pre-scaled
var<workgroup> kv_sh: array<vec4<f32>, BC * HD4>;  // (BC, HD) the key tile, then the value tile
var<workgroup> s_sh: array<f32, BR * BC>;          // (BR, BC) scores, then numerators
var<workgroup> m_sh: array<f32, BR>;               // running max per query
var<workgroup> l_sh: array<f32, BR>;               // running normalizer per query
var<workgroup> corr_sh: array<f32, BR>;            // this tile's rescale of earlier sums, exp(m_old - m_new)

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let h = wid.x;
  let t0 = wid.y * BR;                            // first query token of the tile
  let rows = min(BR, S.n_tokens - t0);            // queries in this tile
  let kvh = h / (P.n_heads / P.n_kv_heads);
  let k_base = kvh * P.max_ctx * HD4;             // vec4 index of this head's K rows
  let v_base = (P.n_kv_heads + kvh) * P.max_ctx * HD4;
  let n_keys = S.pos + t0 + rows;                 // the tile's last query sees keys 0 .. n_keys - 1
  let p_first = S.pos + t0;                        // the tile's first query's position
  let k_first = select(0u, p_first + 1u - min(P.window, p_first + 1u), P.window > 0u);  // the first key it sees

  for (var i = lid; i < BR * HD4; i += WG) {
    let r = i / HD4;
    var v = vec4<f32>(0.0);
    if (r < rows) {
      v = q[((t0 + r) * P.q_stride) / 4u + h * HD4 + i % HD4] * P.scale;
    }
    q_sh[i] = v;
  }
  if (lid < BR) {
    m_sh[lid] = MASKED;
    l_sh[lid] = 0.0;
  }
  let r_own = lid / HD4;  // the query and features this invocation accumulates (if r_own < BR)
  let d_own = lid % HD4;
  var o = vec4<f32>(0.0);

  for (var k0 = k_first; k0 < n_keys; k0 += BC) {
    workgroupBarrier();  // the previous tile's values are consumed (and, the first time, q_sh / m_sh are written)
    for (var i = lid; i < BC * HD4; i += WG) {
      let key = k0 + i / HD4;
      var v = vec4<f32>(0.0);
      if (key < n_keys) {
        v = vec4<f32>(kv[k_base + key * HD4 + i % HD4]);
      }
      kv_sh[i] = v;
    }
    workgroupBarrier();
    for (var e = lid; e < BR * BC; e += WG) {
      let r = e / BC;
      let key = k0 + e % BC;
      var s = MASKED;
      let p = S.pos + t0 + r;
      // causal: query t sees positions 0 .. pos + t; with a window only the last `window` of them
      if (r < rows && key <= p && (P.window == 0u || p - key < P.window)) {
        s = 0.0;
        for (var i = 0u; i < HD4; i++) {
          s += dot(q_sh[r * HD4 + i], kv_sh[(e % BC) * HD4 + i]);
        }
#ifdef SOFTCAP
        s = softcap(s, P.softcap);
#endif
      }
      s_sh[e] = s;
    }
    workgroupBarrier();
    if (lid < BR) {
      var mx = MASKED;
      for (var j = 0u; j < BC; j++) {
        mx = max(mx, s_sh[lid * BC + j]);
      }
      let m_old = m_sh[lid];
      let m_new = max(m_old, mx);
      var sum = 0.0;
      for (var j = 0u; j < BC; j++) {
        let s = s_sh[lid * BC + j];
        let p = select(exp(s - m_new), 0.0, s <= MASKED);
        s_sh[lid * BC + j] = p;
        sum += p;
      }
      let corr = exp(m_old - m_new);
      corr_sh[lid] = corr;
      l_sh[lid] = l_sh[lid] * corr + sum;
      m_sh[lid] = m_new;
    }
    workgroupBarrier();  // the key tile is consumed: load the value tile over it
    for (var i = lid; i < BC * HD4; i += WG) {
      let key = k0 + i / HD4;
      var v = vec4<f32>(0.0);
      if (key < n_keys) {
        v = vec4<f32>(kv[v_base + key * HD4 + i % HD4]);
      }
      kv_sh[i] = v;
    }
    workgroupBarrier();
    if (r_own < BR) {
      var acc = o * corr_sh[r_own];
      for (var j = 0u; j < BC; j++) {
        acc += s_sh[r_own * BC + j] * kv_sh[j * HD4 + d_own];
      }
      o = acc;
    }
  }
  if (r_own < rows) {
    let base = (t0 + r_own) * P.q_stride + h * HD + 4u * d_own;
    let v = o / l_sh[r_own];
    out[base] = v.x;
    out[base + 1u] = v.y;
    out[base + 2u] = v.z;
    out[base + 3u] = v.w;
  }
}
