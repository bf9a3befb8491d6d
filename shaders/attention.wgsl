// Causal self-attention with grouped-query heads, for decode (one token) and prefill (a chunk of tokens; or
// flash_attention.wgsl, see Kernels.flash_min_keys).
//
// One workgroup per (query head, token of the step) walks the keys 0 .. pos + t in tiles of TILE positions with an
// online softmax (running max m and normalizer l), so any context length runs in fixed workgroup memory:
//   scores   each invocation scores TILE / WG positions (vec4 loads of K rows), kept in workgroup memory
//   softmax  one workgroup max and one sum per tile
//   values   invocations form WG / (HD / 4) groups of HD / 4; group g sums the positions j = g (mod groups), invocation
//            d of the group owning output features 4d .. 4d + 3 (one vec4 load of a V row each, coalesced); the groups'
//            partials are added at the end (few positions per invocation: the loop is a chain of memory round trips).
// Defines: WG (threads, a power of two, at least HD), HD (head_dim, a multiple of 4; when WG is not a multiple of
// HD / 4, as for HD = 96, the invocations past GROUPS * HD / 4 do spare work nobody reads), TILE (positions per tile).
// SOFTCAP: scores become P.softcap * tanh(score / P.softcap) before the softmax (Gemma 2).
// P.window (sliding-window layers; 0: none): a query at position p sees the keys k with p - k < window.
//
// SPLIT (decode, "flash decoding"): the keys are cut into num_workgroups.z splits, one workgroup each, so a long
// context keeps many workgroups busy; each writes its unnormalized partial (acc, m, l) and the consumer (the output
// projection, matmul.wgsl ATTN_IN) merges the splits while it loads its input. Without SPLIT the workgroup writes the
// normalized output.
//
// QKV_IN (decode, with SPLIT): the QKV projection fused in front, so a layer's decode needs no separate QKV dispatch.
// Each workgroup computes what it needs from the residual stream x itself: RMSNorm(x) into workgroup memory, its
// head's query rows of [Wq; Wk; Wv] (4 invocations per row), RoPE; the one split holding the step's own position also
// computes its key/value head's k and v rows and uses them from workgroup memory for that position, and the first
// query head of each group writes them to the KV cache for later steps (no workgroup reads a cache slot another one
// writes in the same dispatch). Extra defines: W_FMT, W_DOT, FMT_<name> (weights.wgsl), XK4 (input features / 4).

#include "common.wgsl"

struct Params {
  n_heads: u32,     // query heads
  n_kv_heads: u32,  // key/value heads (n_heads is a multiple)
  max_ctx: u32,     // KV cache capacity in positions
  q_stride: u32,    // elements between tokens in q and out (n_heads * HD)
  scale: f32,       // multiplies q . k (1 / sqrt(HD) for most models)
  window: u32,      // sliding window in positions (0: every earlier key)
  rope_dims: u32,   // QKV_IN: rotated features per head (even, <= HD)
  eps: f32,         // QKV_IN: RMSNorm epsilon
  softcap: f32,     // SOFTCAP: the cap c of c * tanh(score / c)
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: State;
#ifdef QKV_IN
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;           // (XK4,) f32 residual stream of the token
@group(0) @binding(3) var<storage, read_write> kv: array<vec4<KV_T>>;   // (2, n_kv_heads, max_ctx, HD): K then V
@group(0) @binding(6) var<storage, read> w_q: array<vec4<u32>>;         // [Wq; Wk; Wv] packed (weights.wgsl)
@group(0) @binding(8) var<storage, read> norm_w: array<vec4<f32>>;      // (XK4,) RMSNorm weight
@group(0) @binding(9) var<storage, read> rope_freq: array<f32>;         // (rope_dims / 2,) inverse frequencies
#else
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;     // (n_tokens, n_heads, HD) f32, RoPE applied
@group(0) @binding(3) var<storage, read> kv: array<vec4<KV_T>>;   // (2, n_kv_heads, max_ctx, HD): K then V
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;   // (n_tokens, n_heads, HD) f32; SPLIT: (n_heads, splits, HD) partial acc
#ifdef SPLIT
@group(0) @binding(5) var<storage, read_write> ml: array<f32>;    // SPLIT: (n_heads, splits, 2) max m and sum l
#endif

const HD4: u32 = HD / 4u;
const GROUPS: u32 = WG / HD4;

var<workgroup> q_sh: array<vec4<f32>, HD4>;   // this head's query, pre-scaled
var<workgroup> p_sh: array<f32, TILE>;        // this tile's scores, then softmax numerators

#ifdef QKV_IN
#include "weights.wgsl"

var<workgroup> x_sh: array<vec4<f32>, XK4>;   // x * norm_w (the 1 / rms factor is applied to the products)
var<workgroup> row_sh: array<f32, 3 * HD>;    // this head's q, k, v rows before RoPE
var<workgroup> k_sh: array<vec4<f32>, HD4>;   // the step's own key (RoPE applied)
var<workgroup> v_sh: array<vec4<f32>, HD4>;   // and value

const NB: u32 = XK4 / 8u;  // 32-weight blocks per row of [Wq; Wk; Wv]

const ITER: u32 = (NB + 3u) / 4u;  // blocks per invocation (a quarter of the row, rounded up)

// This head's q rows (and with kv, its key/value head's k and v rows) of [Wq; Wk; Wv] @ x_sh, times inv_rms, into
// row_sh (q at 0, k at HD, v at 2 HD). Four invocations per row, each taking every fourth block; the block loop has
// a fixed trip count with clamped indices (past-the-end blocks count zero), so every load of an invocation can be
// issued before the first one returns: the weights come from memory, and one round trip per block would dominate.
// The quarters are added through red_v4. Call from uniform control flow.
fn project(lid: u32, h: u32, kvh: u32, kv: bool, inv_rms: f32) {
  let k_row0 = P.n_heads * HD + kvh * HD;
  let v_row0 = k_row0 + P.n_kv_heads * HD;
  let part = lid % 4u;
  for (var r0 = 0u; r0 < HD; r0 += WG / 4u) {
    let r = r0 + lid / 4u;
    let rr = min(r, HD - 1u);  // rows past HD compute row HD - 1 again; their sums are not stored
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < ITER; j++) {
      let b = part + 4u * j;
      let bc = min(b, NB - 1u);
      let keep = select(0.0, 1.0, b < NB);
      var xb: array<vec4<f32>, 8>;
      var xsum = 0.0;
      for (var i = 0u; i < 8u; i++) {
        xb[i] = x_sh[bc * 8u + i];
        xsum += xb[i].x + xb[i].y + xb[i].z + xb[i].w;
      }
      acc.x += keep * block_dot((h * HD + rr) * NB + bc, &xb, xsum);
      if (kv) {
        acc.y += keep * block_dot((k_row0 + rr) * NB + bc, &xb, xsum);
        acc.z += keep * block_dot((v_row0 + rr) * NB + bc, &xb, xsum);
      }
    }
    red_v4[lid] = acc;
    workgroupBarrier();
    if (part == 0u && r < HD) {
      let sum = (red_v4[lid] + red_v4[lid + 1u] + red_v4[lid + 2u] + red_v4[lid + 3u]) * inv_rms;
      row_sh[r] = sum.x;
      row_sh[HD + r] = sum.y;
      row_sh[2u * HD + r] = sum.z;
    }
    workgroupBarrier();
  }
}

// RoPE of row_sh[src .. src + HD) at position pos, pairs (2i, 2i + 1) handled by invocation i.
fn rope_row(lid: u32, src: u32, pos: u32) -> vec2<f32> {
  let d = 2u * lid;
  let a = row_sh[src + d];
  let b = row_sh[src + d + 1u];
  if (d >= P.rope_dims) {
    return vec2<f32>(a, b);
  }
  return rope_rotate(a, b, rope_freq[d / 2u], pos);
}
#endif

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let h = wid.x;
  let t = wid.y;
  let kvh = h / (P.n_heads / P.n_kv_heads);
  let n_keys = S.pos + t + 1u;  // causal: token t sees positions 0 .. pos + t
  let first = select(0u, n_keys - min(P.window, n_keys), P.window > 0u);  // ... from here on (sliding window)
  // This workgroup's keys: all visible ones, or one of the used_splits equal splits of them (workgroups past those
  // get none). The split count follows n_keys, as the output projection's merge (matmul.wgsl ATTN_IN) counts them;
  // with a short window a split may be empty (it leaves m = -1e30, l = 0, which the merge weighs zero).
  let n_used = used_splits(n_keys, nwg.z);
  let split_len = (n_keys - first + n_used - 1u) / n_used;
  let k_lo = min(first + wid.z * split_len, n_keys);
  let k_hi = min(k_lo + split_len, n_keys);
  let k_base = kvh * P.max_ctx * HD4;                    // in vec4
  let v_base = (P.n_kv_heads + kvh) * P.max_ctx * HD;    // in elements
#ifdef QKV_IN
  if (wid.z >= n_used) {
    return;  // a split this context does not use (the output projection merges only the used ones)
  }
  let pos = n_keys - 1u;  // the step's own position
  let own = k_lo <= pos && pos < k_hi;  // this split holds it: compute k and v here
  var ssq = 0.0;
  for (var i = lid; i < XK4; i += WG) {
    let v = x[i];
    ssq += dot(v, v);
    x_sh[i] = v * norm_w[i];
  }
  let inv_rms = inverseSqrt(wg_sum(ssq, lid) / f32(4u * XK4) + P.eps);  // its barriers publish x_sh
  project(lid, h, kvh, own, inv_rms);
  if (lid < HD / 2u) {
    let qr = rope_row(lid, 0u, pos) * P.scale;
    q_sh[lid / 2u][(2u * lid) % 4u] = qr.x;
    q_sh[lid / 2u][(2u * lid) % 4u + 1u] = qr.y;
    if (own) {
      let kr = rope_row(lid, HD, pos);
      k_sh[lid / 2u][(2u * lid) % 4u] = kr.x;
      k_sh[lid / 2u][(2u * lid) % 4u + 1u] = kr.y;
    }
  }
  if (own && lid < HD4) {
    let v0 = 2u * HD + 4u * lid;
    v_sh[lid] = vec4<f32>(row_sh[v0], row_sh[v0 + 1u], row_sh[v0 + 2u], row_sh[v0 + 3u]);
  }
  workgroupBarrier();
  let cur = select(0xFFFFFFFFu, pos, own);  // the key read from k_sh / v_sh instead of the cache
  if (own && h % (P.n_heads / P.n_kv_heads) == 0u && lid < HD4) {
    kv[k_base + pos * HD4 + lid] = vec4<KV_T>(k_sh[lid]);
    kv[v_base / 4u + pos * HD4 + lid] = vec4<KV_T>(v_sh[lid]);
  }
#else
  for (var i = lid; i < HD4; i += WG) {
    q_sh[i] = q[(t * P.q_stride + h * HD) / 4u + i] * P.scale;
  }
  workgroupBarrier();
#endif

  let d = lid % HD4;     // output features 4d .. 4d + 3 of this invocation
  let grp = lid / HD4;   // which positions (mod GROUPS) it sums
  var m = -1e30;         // running max of the scores
  var l = 0.0;           // running sum of exp(score - m)
  var acc = vec4<f32>(0.0);  // this group's partial output features 4d .. 4d + 3
  for (var p0 = k_lo; p0 < k_hi; p0 += TILE) {
    let n_in = min(TILE, k_hi - p0);
    var tile_max = -1e30;
    for (var j = lid; j < n_in; j += WG) {
      let k_row = k_base + (p0 + j) * HD4;
      var s = 0.0;
#ifdef QKV_IN
      if (p0 + j == cur) {
        for (var i = 0u; i < HD4; i++) {
          s += dot(q_sh[i], k_sh[i]);
        }
      } else {
        for (var i = 0u; i < HD4; i++) {
          s += dot(q_sh[i], vec4<f32>(kv[k_row + i]));
        }
      }
#else
      for (var i = 0u; i < HD4; i++) {
        s += dot(q_sh[i], vec4<f32>(kv[k_row + i]));
      }
#endif
#ifdef SOFTCAP
      s = softcap(s, P.softcap);
#endif
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
#ifdef QKV_IN
    for (var j = grp; j < n_in; j += GROUPS) {
      let vi = v_base / 4u + (p0 + j) * HD4 + d;
      if (p0 + j == cur) {
        acc += p_sh[j] * v_sh[d];
      } else {
        acc += p_sh[j] * vec4<f32>(kv[vi]);
      }
    }
#else
    // Four positions per iteration, their loads issued before any is used: each is a memory round trip, and one
    // at a time they made this loop a chain of them.
    let vrow = v_base / 4u + p0 * HD4 + d;
    var j = grp;
    for (; j + 3u * GROUPS < n_in; j += 4u * GROUPS) {
      let v0 = vec4<f32>(kv[vrow + j * HD4]);
      let v1 = vec4<f32>(kv[vrow + (j + GROUPS) * HD4]);
      let v2 = vec4<f32>(kv[vrow + (j + 2u * GROUPS) * HD4]);
      let v3 = vec4<f32>(kv[vrow + (j + 3u * GROUPS) * HD4]);
      acc += p_sh[j] * v0 + p_sh[j + GROUPS] * v1 + p_sh[j + 2u * GROUPS] * v2 + p_sh[j + 3u * GROUPS] * v3;
    }
    for (; j < n_in; j += GROUPS) {
      acc += p_sh[j] * vec4<f32>(kv[vrow + j * HD4]);
    }
#endif
    workgroupBarrier();  // every invocation is done with p_sh before the next tile overwrites it
  }
  red_v4[lid] = acc;
  workgroupBarrier();
  if (lid < HD4) {
    var total = vec4<f32>(0.0);
    for (var g = 0u; g < GROUPS; g++) {
      total += red_v4[g * HD4 + lid];
    }
#ifdef SPLIT
    let slot = h * nwg.z + wid.z;  // decode: one token
    let o = slot * HD + 4u * lid;
    if (lid == 0u) {
      ml[2u * slot] = m;
      ml[2u * slot + 1u] = l;
    }
#else
    let o = t * P.q_stride + h * HD + 4u * lid;
    total /= l;
#endif
    out[o] = total.x;
    out[o + 1u] = total.y;
    out[o + 2u] = total.z;
    out[o + 3u] = total.w;
  }
}
