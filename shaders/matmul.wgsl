// Quantized matrix products out = W x with fused prologue and epilogues, for every linear layer of the model.
//
// Variants (defines):
//   GEMV      decode: one token (the last of the step; its result goes to row 0 of out), R = 4 rows per
//             workgroup, K split across WG invocations.
//   GEMV_SEG  decode without barriers: SEG invocations per row pair, subgroup shuffles (see below); KQ = K / 4.
//   GEMM      prefill: tiles of 32 rows x 32 tokens, 64 or 256 invocations (1 or 4 groups splitting K), 4 x 4 outputs each.
//   W_FMT     the weight format (weights.wgsl: a GGUF type name), with W_DOT / W_DQ / FMT_<name> (ops.weight_defines).
//   W_SEGS    a weight fused from matrices of different formats, one segment each (ops.Weight): RANGE = rows
//             [seg1_row, seg2_row) are in W_FMT1 at seg1_base, rows [seg2_row, N) in W_FMT2 at seg2_base (q/k/v);
//             PARITY = even rows 2i are row i of W_FMT at 0, odd rows row i of W_FMT1 at seg1_base (gate/up). Each
//             row reads its own format; rows of a workgroup share one where the boundaries allow (q/k/v: at head
//             boundaries; gate/up: a fixed format per accumulator), so the branch costs no divergence.
//   ATTN_IN   decode only: x is split attention output (attention.wgsl): per head, the partial sums of
//             P.n_splits key splits plus their (m, l); each element is merged from the splits as it is loaded.
//   NORM      RMSNorm folded in: x is multiplied by norm_w on load, sum(x^2) is gathered on the way, and the
//             result is scaled by 1 / sqrt(mean(x^2) + eps) at the end (the norm is linear in W x).
//   EPI       what happens to each result:
//               STORE  out[t, n] = y
//               ADD    out[t, n] += y (the residual stream; each element written by one invocation)
//               QKV    rows [0, n_q) are queries: RoPE, then out[t, n]; rows [n_q, n_q + n_kv) are keys: RoPE, then
//                      the K cache at position pos + t; the remaining n_kv rows are values: the V cache.
//                      With QK_OUT, rows [0, n_q + n_kv) go to out[t, n] unrotated (out_stride = n_q + n_kv): the
//                      per-head q/k RMSNorm kernel (qk_norm.wgsl) norms and rotates them and writes k to the cache.
//               SILU   rows come in (gate, up) pairs (interleaved at repack): out[t, n / 2] = silu(gate) * up
//               GELU   as SILU with GELU's tanh approximation: out[t, n / 2] = gelu_tanh(gate) * up (GeGLU)
//   BIAS      bias[n] is added to each result first (q/k/v biases: before RoPE). Not with ARGMAX.
//   SOFTCAP   each result y becomes P.softcap * tanh(y / P.softcap) (Gemma 2's final logit soft-capping; the
//             ARGMAX partials see the capped values, so they stay the stored logits' argmax).
//   ARGMAX    decode (GEMV, GEMV_SEG) with STORE, for the LM head: each workgroup also writes the largest of its
//             results and its row (the lowest row on ties) to best[workgroup], so greedy sampling reduces one partial
//             per workgroup instead of every logit (sample.wgsl).

#include "common.wgsl"
#include "weights.wgsl"

struct Params {
  n_rows: u32,      // N: output rows of W
  k_blocks: u32,    // K / 32: blocks per row of W (K = input features)
  x_stride: u32,    // elements between consecutive tokens of x
  out_stride: u32,  // elements between consecutive tokens of out
  eps: f32,         // RMSNorm epsilon (NORM)
  n_q: u32,         // QKV: query rows (n_heads * head_dim)
  n_kv: u32,        // QKV: key rows = value rows (n_kv_heads * head_dim)
  head_dim: u32,    // QKV: features per head
  max_ctx: u32,     // QKV: KV cache capacity in positions
  rope_dims: u32,   // QKV: rotated features per head (even, <= head_dim)
  n_splits: u32,    // ATTN_IN: key splits of the attention partials (head_dim gives the head size)
  softcap: f32,     // SOFTCAP: the cap c of c * tanh(y / c)
  seg1_row: u32,    // W_SEGS == RANGE: first row of segment 1 (N when absent)
  seg2_row: u32,    // W_SEGS == RANGE: first row of segment 2 (N when absent)
  seg1_base: u32,   // W_SEGS: where segment 1 starts in w_q, in vec4<u32> words
  seg2_base: u32,   // W_SEGS == RANGE: where segment 2 starts in w_q, in vec4<u32> words
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: State;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;        // (n_tokens, x_stride) f32
@group(0) @binding(3) var<storage, read> w_q: array<vec4<u32>>;      // W (N, K) in groups of blocks (weights.wgsl)
#ifdef NORM
@group(0) @binding(5) var<storage, read> norm_w: array<vec4<f32>>;   // (K,) f32 RMSNorm weight
#endif
@group(0) @binding(6) var<storage, read_write> out: array<f32>;      // (n_tokens, out_stride) f32
#ifdef BIAS
@group(0) @binding(11) var<storage, read> bias: array<f32>;          // (N,) f32
#endif

// A result y as the epilogue and the argmax partials see it: soft-capped with SOFTCAP.
fn finish(y: f32) -> f32 {
#ifdef SOFTCAP
  return softcap(y, P.softcap);
#else
  return y;
#endif
}
#ifdef ATTN_IN
@group(0) @binding(9) var<storage, read> ml: array<f32>;             // (n_heads, n_splits, 2) max m, sum l
var<workgroup> coef: array<f32, 1024>;                                // (n_heads, n_splits) merge weights

// Merge weights of each head's splits: exp(m_s - M) / sum_s exp(m_s - M) l_s. Call from uniform control flow.
fn attn_coefficients(lid: u32) {
  let ns = P.n_splits;
  let n_used = used_splits(S.pos + S.n_tokens, ns);  // the splits attention filled (decode: one token)
  let n_heads = P.k_blocks * 32u / P.head_dim;
  for (var h = lid; h < n_heads; h += WG) {
    var m_max = -1e30;
    for (var s = 0u; s < n_used; s++) {
      m_max = max(m_max, ml[2u * (h * ns + s)]);
    }
    var total = 0.0;
    for (var s = 0u; s < n_used; s++) {
      total += exp(ml[2u * (h * ns + s)] - m_max) * ml[2u * (h * ns + s) + 1u];
    }
    for (var s = 0u; s < n_used; s++) {
      coef[h * ns + s] = exp(ml[2u * (h * ns + s)] - m_max) / total;
    }
  }
  workgroupBarrier();
}
#endif

// Block b of row r of W: its dot product with 32 activations xb (sum xsum), and its weights 4i .. 4i+3.
fn w_dot(r: u32, b: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  let nb = P.k_blocks;
#if W_SEGS == PARITY
  if ((r & 1u) == 1u) {
    return W_DOT1(P.seg1_base, (r / 2u) * nb + b, xb, xsum);
  }
  return W_DOT(0u, (r / 2u) * nb + b, xb, xsum);
#else
#ifdef W_FMT2
  if (r >= P.seg2_row) {
    return W_DOT2(P.seg2_base, (r - P.seg2_row) * nb + b, xb, xsum);
  }
#endif
#ifdef W_FMT1
  if (r >= P.seg1_row) {
    return W_DOT1(P.seg1_base, (r - P.seg1_row) * nb + b, xb, xsum);
  }
#endif
  return W_DOT(0u, r * nb + b, xb, xsum);
#endif
}

fn w_dequant4(r: u32, b: u32, i: u32) -> vec4<f32> {
  let nb = P.k_blocks;
#if W_SEGS == PARITY
  if ((r & 1u) == 1u) {
    return W_DQ1(P.seg1_base, (r / 2u) * nb + b, i);
  }
  return W_DQ(0u, (r / 2u) * nb + b, i);
#else
#ifdef W_FMT2
  if (r >= P.seg2_row) {
    return W_DQ2(P.seg2_base, (r - P.seg2_row) * nb + b, i);
  }
#endif
#ifdef W_FMT1
  if (r >= P.seg1_row) {
    return W_DQ1(P.seg1_base, (r - P.seg1_row) * nb + b, i);
  }
#endif
  return W_DQ(0u, r * nb + b, i);
#endif
}

// Activations i*4 .. i*4+3 of the token whose row starts at vec4 index xbase.
fn load_x(xbase: u32, i: u32) -> vec4<f32> {
#ifdef ATTN_IN
  let ns = P.n_splits;
  let n_used = used_splits(S.pos + S.n_tokens, ns);
  let hd = P.head_dim;
  let k0 = 4u * i;
  let h = k0 / hd;
  // Splits four at a time, their loads issued together (one at a time, each was a memory round trip).
  let c0 = h * ns;
  let x0 = (c0 * hd + k0 % hd) / 4u;
  let step = hd / 4u;  // vec4s between one split's partial and the next
  var v = vec4<f32>(0.0);
  var s = 0u;
  for (; s + 3u < n_used; s += 4u) {
    let a = x[x0 + s * step];
    let b = x[x0 + (s + 1u) * step];
    let c = x[x0 + (s + 2u) * step];
    let d = x[x0 + (s + 3u) * step];
    v += coef[c0 + s] * a + coef[c0 + s + 1u] * b + coef[c0 + s + 2u] * c + coef[c0 + s + 3u] * d;
  }
  for (; s < n_used; s++) {
    v += coef[c0 + s] * x[x0 + s * step];
  }
  return v;
#else
  return x[xbase + i];
#endif
}

#ifdef ARGMAX
@group(0) @binding(10) var<storage, read_write> best: array<vec2<u32>>;  // (row workgroups,) (f32 bits, row)
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_r: array<u32, WG>;

// The best of the first n entries of best_v / best_r (a power of two, <= WG) into best[wg]. Call from uniform
// control flow after the entries are written.
fn write_best(lid: u32, wg: u32, n: u32) {
  workgroupBarrier();
  for (var s = n / 2u; s > 0u; s >>= 1u) {
    if (lid < s && beats(best_v[lid + s], best_r[lid + s], best_v[lid], best_r[lid], P.n_rows)) {
      best_v[lid] = best_v[lid + s];
      best_r[lid] = best_r[lid + s];
    }
    workgroupBarrier();
  }
  if (lid == 0u && best_r[0] < P.n_rows) {
    best[wg] = vec2<u32>(bitcast<u32>(best_v[0]), best_r[0]);
  }
}
#endif

#if EPI == QKV
@group(0) @binding(7) var<storage, read_write> kv: array<KV_T>;      // (2, n_kv_heads, max_ctx, head_dim): K then V
#ifndef QK_OUT
@group(0) @binding(8) var<storage, read> rope_freq: array<f32>;      // (rope_dims / 2,) inverse frequencies
#endif
#endif

#if EPI == QKV
#ifndef QK_OUT
// RoPE of the feature pair (a, b) at even feature index d of a head (GGML's "normal" RoPE: adjacent pairs); features
// past rope_dims are not rotated.
fn rope(a: f32, b: f32, d: u32, pos: u32) -> vec2<f32> {
  if (d >= P.rope_dims) {
    return vec2<f32>(a, b);
  }
  return rope_rotate(a, b, rope_freq[d / 2u], pos);
}
#endif
#endif

// Results for rows r and r + 1 (r even), stored at token row t of out; pos is the token's sequence position.
fn epilogue_pair(r: u32, t: u32, pos: u32, a_in: f32, b_in: f32) {
  var a = a_in;
  var b = b_in;
#ifdef BIAS
  a += bias[min(r, P.n_rows - 1u)];
  b += bias[min(r + 1u, P.n_rows - 1u)];
#endif
  a = finish(a);
  b = finish(b);
#if EPI == STORE
  if (r < P.n_rows) { out[t * P.out_stride + r] = a; }
  if (r + 1u < P.n_rows) { out[t * P.out_stride + r + 1u] = b; }
#endif
#if EPI == ADD
  if (r < P.n_rows) { out[t * P.out_stride + r] += a; }
  if (r + 1u < P.n_rows) { out[t * P.out_stride + r + 1u] += b; }
#endif
#if EPI == SILU
  if (r + 1u < P.n_rows) { out[t * P.out_stride + r / 2u] = silu(a) * b; }
#endif
#if EPI == GELU
  if (r + 1u < P.n_rows) { out[t * P.out_stride + r / 2u] = gelu_tanh(a) * b; }
#endif
#if EPI == QKV
  if (r + 1u >= P.n_rows) {
    return;
  }
  let hd = P.head_dim;
#ifdef QK_OUT
  if (r < P.n_q + P.n_kv) {
    out[t * P.out_stride + r] = a;
    out[t * P.out_stride + r + 1u] = b;
  } else {
#else
  if (r < P.n_q) {
    let v = rope(a, b, r % hd, pos);
    out[t * P.out_stride + r] = v.x;
    out[t * P.out_stride + r + 1u] = v.y;
  } else if (r < P.n_q + P.n_kv) {
    let kr = r - P.n_q;
    let v = rope(a, b, kr % hd, pos);
    let i = ((kr / hd) * P.max_ctx + pos) * hd + kr % hd;
    kv[i] = KV_T(v.x);
    kv[i + 1u] = KV_T(v.y);
  } else {
#endif
    let vr = r - P.n_q - P.n_kv;
    let i = P.n_kv * P.max_ctx + ((vr / hd) * P.max_ctx + pos) * hd + vr % hd;
    kv[i] = KV_T(a);
    kv[i + 1u] = KV_T(b);
  }
#endif
}

#ifdef GEMV
const R: u32 = 4u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let row0 = (wid.y * nwg.x + wid.x) * R;
  // Decoding: the only token; after a prefill chunk: its last one (for the LM head). Its result goes to row 0 of
  // out, so the LM head's logits buffer holds one row whatever the chunk length.
  let t = S.n_tokens - 1u;
  let pos = S.pos + t;
  let nb = P.k_blocks;
  let xbase = t * (P.x_stride / 4u);
#ifdef ATTN_IN
  attn_coefficients(lid);
#endif
  var acc = vec4<f32>(0.0);
  var ssq = 0.0;
  for (var b = lid; b < nb; b += WG) {
    var xb: array<vec4<f32>, 8>;
    var xsum = 0.0;
    for (var i = 0u; i < 8u; i++) {
      var v = load_x(xbase, b * 8u + i);
#ifdef NORM
      ssq += dot(v, v);
      v *= norm_w[b * 8u + i];
#endif
      xb[i] = v;
      xsum += v.x + v.y + v.z + v.w;
    }
    if (row0 < P.n_rows) { acc.x += w_dot(row0, b, &xb, xsum); }
    if (row0 + 1u < P.n_rows) { acc.y += w_dot(row0 + 1u, b, &xb, xsum); }
    if (row0 + 2u < P.n_rows) { acc.z += w_dot(row0 + 2u, b, &xb, xsum); }
    if (row0 + 3u < P.n_rows) { acc.w += w_dot(row0 + 3u, b, &xb, xsum); }
  }
  acc = wg_sum4(acc, lid);
#ifdef NORM
  acc *= inverseSqrt(wg_sum(ssq, lid) / f32(nb * 32u) + P.eps);
#endif
  if (lid == 0u) {
    epilogue_pair(row0, 0u, pos, acc.x, acc.y);
    epilogue_pair(row0 + 2u, 0u, pos, acc.z, acc.w);
#ifdef ARGMAX
    var bv = finish(acc.x);
    var br = row0;
    for (var i = 1u; i < R; i++) {
      if (beats(finish(acc[i]), row0 + i, bv, br, P.n_rows)) {
        bv = finish(acc[i]);
        br = row0 + i;
      }
    }
    if (br < P.n_rows) {
      best[wid.y * nwg.x + wid.x] = vec2<u32>(bitcast<u32>(bv), br);
    }
#endif
  }
}
#endif

#ifdef GEMV_SEG
// Decode variant without workgroup barriers (in subgroup tiers): a segment of SEG consecutive invocations computes a
// row pair (r, r + 1), each invocation taking every SEG-th group of 4 weights of both rows, and the segment adds its
// partials with subgroupShuffleXor. SEG is at most the device's smallest subgroup size (measured by the start-up
// probe), so a segment never straddles two subgroups. WG / SEG row pairs per workgroup.
// Without subgroups, the segment sums through workgroup memory (a tree of log2(SEG) barrier steps).
const PAIRS: u32 = WG / SEG;
const QPL: u32 = (KQ + SEG - 1u) / SEG;  // quads (4 weights) of a row per invocation

fn seg_sum3(v: vec3<f32>, lid: u32) -> vec3<f32> {
#ifdef SUBGROUPS
  var s = v;
  for (var m = 1u; m < SEG; m <<= 1u) {
    s += subgroupShuffleXor(s, m);
  }
  return s;
#else
  red_v4[lid] = vec4<f32>(v, 0.0);
  workgroupBarrier();
  for (var m = SEG / 2u; m > 0u; m >>= 1u) {
    if (lid % SEG < m) {
      red_v4[lid] += red_v4[lid + m];
    }
    workgroupBarrier();
  }
  return red_v4[lid - lid % SEG].xyz;
#endif
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let r0 = 2u * ((wid.y * nwg.x + wid.x) * PAIRS + lid / SEG);
  let lane = lid % SEG;
  let t = S.n_tokens - 1u;  // as in GEMV: the step's last token, result to row 0 of out
  let pos = S.pos + t;
  let nb = P.k_blocks;
  let xbase = t * (P.x_stride / 4u);
#ifdef ATTN_IN
  attn_coefficients(lid);
#endif
  var acc = vec3<f32>(0.0);  // row r0, row r0 + 1, sum(x^2)
  // A fixed trip count (KQ, the row's quads, is compiled in) with clamped indices, so the compiler can unroll the
  // loop and issue its weight loads together instead of one memory round trip per iteration.
  let ra = min(r0, P.n_rows - 1u);       // rows past the end compute a valid row; the epilogue drops them
  let rb = min(r0 + 1u, P.n_rows - 1u);
  for (var j = 0u; j < QPL; j++) {
    let i = lane + j * SEG;
    let ic = min(i, KQ - 1u);
    var xv = load_x(xbase, ic) * select(0.0, 1.0, i < KQ);
#ifdef NORM
    acc.z += dot(xv, xv);
    xv *= norm_w[ic];
#endif
    let b = ic / 8u;
    let quad = ic % 8u;
    acc.x += dot(w_dequant4(ra, b, quad), xv);
    acc.y += dot(w_dequant4(rb, b, quad), xv);
  }
  acc = seg_sum3(acc, lid);
  var scale = 1.0;
#ifdef NORM
  scale = inverseSqrt(acc.z / f32(nb * 32u) + P.eps);
#endif
  if (lane == 0u) {
    epilogue_pair(r0, 0u, pos, acc.x * scale, acc.y * scale);
  }
#ifdef ARGMAX
  if (lane == 0u) {
    let ya = finish(acc.x * scale);
    let yb = finish(acc.y * scale);
    let b = beats(yb, r0 + 1u, ya, r0, P.n_rows);
    best_v[lid / SEG] = select(ya, yb, b);
    best_r[lid / SEG] = select(r0, r0 + 1u, b);
  }
  write_best(lid, wid.y * nwg.x + wid.x, PAIRS);
#endif
}
#endif

#ifdef GEMM
// 32 rows x 32 tokens per workgroup of WG = 64 or 256 invocations, in GROUPS = WG / 64 groups that split each
// 32-column block of K between them (group g takes columns g * 32 / GROUPS ..); their partial tiles are added at the
// end. Invocation (ty, tx) of its group = (lid % 64 / 8, lid % 8) owns rows 4 ty .. 4 ty + 3 (so RoPE and SiLU
// pairs stay in one invocation) of tokens 4 tx .. 4 tx + 3: per column, a 4 x 4 outer product.
// 256 on GPUs: eight warps a workgroup hide the memory and barrier latency (a prefill of a few hundred tokens has
// about one workgroup per SM). 64 on CPU adapters, which run every invocation of a workgroup through each barrier.
// The loaders are the 256 (row, column quad) slots e = (lr, q) = (e / 8, e % 8) of a block, WG at a time: slot e
// dequantizes weights 4 q .. 4 q + 3 of row lr of the tile and loads the same four activations of token lr.
const TILE: u32 = 32u;
const GROUPS: u32 = WG / 64u;
const KG: u32 = TILE / GROUPS;  // columns of each block per group
var<workgroup> w_tile: array<vec4<f32>, 256>;  // (32 k, 8): rows 4i .. 4i+3 of column k, dequantized
var<workgroup> x_tile: array<vec4<f32>, 256>;  // (32 k, 8): tokens 4j .. 4j+3 of column k
var<workgroup> ssq_tile: array<f32, 256>;      // (32 tokens, 8 column quads): partial sum(x^2) of each slot

// Loader slot (lr, q)'s four weights w and activations v, stored by column.
fn store_columns(lr: u32, q: u32, w: vec4<f32>, v: vec4<f32>) {
  for (var c = 0u; c < 4u; c++) {
    let k = 4u * q + c;
    w_tile[k * 8u + lr / 4u][lr % 4u] = w[c];
    x_tile[k * 8u + lr / 4u][lr % 4u] = v[c];
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let row0 = wid.x * TILE;
  let t0 = wid.y * TILE;
  let n_tokens = S.n_tokens;
  let nb = P.k_blocks;
  let grp = lid / 64u;
  let ty = (lid % 64u) / 8u;
  let tx = lid % 8u;
  // a<i>[j]: row 4 ty + i, token 4 tx + j, this group's columns (four variables, not an array: every index is
  // then a constant and the accumulators stay in registers)
  var a0 = vec4<f32>(0.0);
  var a1 = vec4<f32>(0.0);
  var a2 = vec4<f32>(0.0);
  var a3 = vec4<f32>(0.0);
#if WG == 256
  // One loader slot per invocation: e = lid.
  let lr = lid / 8u;
  let q = lid % 8u;
  let r = row0 + lr;
  let t = t0 + lr;
  var ssq = 0.0;  // sum(x^2) of this slot
  for (var b = 0u; b < nb; b++) {
    var w = vec4<f32>(0.0);
    if (r < P.n_rows) {
      w = w_dequant4(r, b, q);
    }
    var v = vec4<f32>(0.0);
    if (t < n_tokens) {
      v = x[t * (P.x_stride / 4u) + b * 8u + q];
#ifdef NORM
      ssq += dot(v, v);
      v *= norm_w[b * 8u + q];
#endif
    }
    store_columns(lr, q, w, v);
#else
  // Four loader slots per invocation: e = lid + j WG (a loop the GPU path does without: measured 6 % slower there).
  var ssq4 = vec4<f32>(0.0);  // component j: slot lid + j WG's sum(x^2)
  for (var b = 0u; b < nb; b++) {
    for (var j = 0u; j < 4u; j++) {
      let e = lid + j * WG;
      let lr = e / 8u;
      let q = e % 8u;
      var w = vec4<f32>(0.0);
      if (row0 + lr < P.n_rows) {
        w = w_dequant4(row0 + lr, b, q);
      }
      var v = vec4<f32>(0.0);
      let t = t0 + lr;
      if (t < n_tokens) {
        v = x[t * (P.x_stride / 4u) + b * 8u + q];
#ifdef NORM
        ssq4[j] += dot(v, v);
        v *= norm_w[b * 8u + q];
#endif
      }
      store_columns(lr, q, w, v);
    }
#endif
    workgroupBarrier();
    for (var kk = 0u; kk < KG; kk++) {
      let k = KG * grp + kk;
      let wk = w_tile[k * 8u + ty];
      let xk = x_tile[k * 8u + tx];
      a0 += wk.x * xk;
      a1 += wk.y * xk;
      a2 += wk.z * xk;
      a3 += wk.w * xk;
    }
    workgroupBarrier();
  }
  // Four groups: add their partial tiles in the two tiles' memory (2 and 3 hand theirs to 0 and 1, then 1 to 0).
  let slot = (lid % 64u) * 4u;
  if (GROUPS == 4u) {
    if (grp == 2u) {
      w_tile[slot] = a0;
      w_tile[slot + 1u] = a1;
      w_tile[slot + 2u] = a2;
      w_tile[slot + 3u] = a3;
    }
    if (grp == 3u) {
      x_tile[slot] = a0;
      x_tile[slot + 1u] = a1;
      x_tile[slot + 2u] = a2;
      x_tile[slot + 3u] = a3;
    }
    workgroupBarrier();
    if (grp == 0u) {
      a0 += w_tile[slot];
      a1 += w_tile[slot + 1u];
      a2 += w_tile[slot + 2u];
      a3 += w_tile[slot + 3u];
    }
    if (grp == 1u) {
      a0 += x_tile[slot];
      a1 += x_tile[slot + 1u];
      a2 += x_tile[slot + 2u];
      a3 += x_tile[slot + 3u];
    }
    workgroupBarrier();
    if (grp == 1u) {
      w_tile[slot] = a0;
      w_tile[slot + 1u] = a1;
      w_tile[slot + 2u] = a2;
      w_tile[slot + 3u] = a3;
    }
  }
#if WG == 256
  ssq_tile[lid] = ssq;
#else
  for (var j = 0u; j < 4u; j++) {
    ssq_tile[lid + j * WG] = ssq4[j];
  }
#endif
  workgroupBarrier();  // also: every slot's sum(x^2) is in ssq_tile
  if (grp != 0u) {
    return;
  }
  if (GROUPS == 4u) {
    a0 += w_tile[slot];
    a1 += w_tile[slot + 1u];
    a2 += w_tile[slot + 2u];
    a3 += w_tile[slot + 3u];
  }
  var scale = vec4<f32>(1.0);
#ifdef NORM
  var total = vec4<f32>(0.0);
  for (var j = 0u; j < 8u; j++) {
    total += vec4<f32>(ssq_tile[(4u * tx) * 8u + j], ssq_tile[(4u * tx + 1u) * 8u + j],
                       ssq_tile[(4u * tx + 2u) * 8u + j], ssq_tile[(4u * tx + 3u) * 8u + j]);
  }
  scale = inverseSqrt(total / f32(nb * 32u) + P.eps);
#endif
  for (var j = 0u; j < 4u; j++) {
    let tt = t0 + 4u * tx + j;
    if (tt < n_tokens) {
      let rr = row0 + 4u * ty;
      epilogue_pair(rr, tt, S.pos + tt, a0[j] * scale[j], a1[j] * scale[j]);
      epilogue_pair(rr + 2u, tt, S.pos + tt, a2[j] * scale[j], a3[j] * scale[j]);
    }
  }
}
#endif
