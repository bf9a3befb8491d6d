// Quantized matrix products out = W x with fused prologue and epilogues, for every linear layer of the model.
//
// Variants (defines):
//   GEMV      decode: one token (the last of the step; its result goes to row 0 of out), R = 4 rows per
//             workgroup, K split across WG invocations.
//   GEMV_SEG  decode without barriers: SEG invocations per row pair, subgroup shuffles (see below); KQ = K / 4.
//   GEMV_MR   decode for bandwidth: RT rows per invocation, TK invocations along K per row group (see below);
//             KB = K / 32; MR_SHUFFLE: segments sum by subgroup shuffles.
//   XQ_PACK   decode: x (normed with NORM, merged from the attention splits with ATTN_IN) into integer planes for
//             GEMV_MR's MR_Q8 form (see there); a workgroup per 32 blocks, no weights.
//   GEMM      prefill: tiles of 32 rows x 32 tokens, 64 or 256 invocations (1 or 4 groups splitting K), 4 x 4 outputs each.
//   GEMM_RT   prefill, register-tiled: WG rows x 64 tokens, 8 x 8 outputs per invocation, register prefetch (below);
//             RT_HALF: f16 tiles and per-block f16 sums (f16 tier).
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
//   ARGMAX    decode (GEMV, GEMV_SEG, GEMV_MR) with STORE, for the LM head: each workgroup also writes the largest of its
//             results and its row (the lowest row on ties) to best[workgroup], so greedy sampling reduces one partial
//             per workgroup instead of every logit (sample.wgsl).
//   A product split by rows (ops.RowSplit: one binding cannot hold it) runs one launch per part: W is the part (its
//   own segments), P.n_rows its rows, and its row r is row P.row0 + r of the whole product for every epilogue (where
//   it goes, q/k/v, gate/up pairs, the bias) and in the argmax partials, which start at best[P.best0].

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
  row0: u32,        // the first row of a row part of a split product (ops.RowSplit; even), else 0
  best0: u32,       // ARGMAX: the part's first entry of best (the workgroups of the parts before it), else 0
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> S: State;
#ifdef MR_Q8
@group(0) @binding(2) var<storage, read> xq_in: array<vec4<u32>>;    // x as integer planes (XQ_PACK below)
#else
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;        // (n_tokens, x_stride) f32
#endif
@group(0) @binding(3) var<storage, read> w_q: array<vec4<u32>>;      // W (N, K) in groups of blocks (weights.wgsl)
#ifdef NORM
@group(0) @binding(5) var<storage, read> norm_w: array<vec4<f32>>;   // (K,) f32 RMSNorm weight
#endif
#ifdef XQ_PACK
@group(0) @binding(6) var<storage, read_write> xq_out: array<vec4<u32>>;  // x as integer planes (XQ_PACK below)
#else
@group(0) @binding(6) var<storage, read_write> out: array<f32>;      // (n_tokens, out_stride) f32
#endif
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

#ifndef XQ_PACK
// Where block b of row r of W is: (its segment, the segment's base in w_q in vec4 words, the block's index in the
// segment's own matrix). W_SEGS (see the top): RANGE rows [seg1_row, seg2_row) are segment 1 and [seg2_row, N)
// segment 2; PARITY odd rows are segment 1. Every reader of W below dispatches on it.
fn seg_block(r: u32, b: u32) -> vec3<u32> {
  let nb = P.k_blocks;
#if W_SEGS == PARITY
  return vec3<u32>(r & 1u, select(0u, P.seg1_base, (r & 1u) == 1u), (r / 2u) * nb + b);
#else
#ifdef W_FMT2
  if (r >= P.seg2_row) {
    return vec3<u32>(2u, P.seg2_base, (r - P.seg2_row) * nb + b);
  }
#endif
#ifdef W_FMT1
  if (r >= P.seg1_row) {
    return vec3<u32>(1u, P.seg1_base, (r - P.seg1_row) * nb + b);
  }
#endif
  return vec3<u32>(0u, 0u, r * nb + b);
#endif
}

// Block b of row r of W: its dot product with 32 activations xb (sum xsum), and its weights 4i .. 4i+3.
fn w_dot(r: u32, b: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  let s = seg_block(r, b);
#ifdef W_FMT2
  if (s.x == 2u) {
    return W_DOT2(s.y, s.z, xb, xsum);
  }
#endif
#ifdef W_FMT1
  if (s.x == 1u) {
    return W_DOT1(s.y, s.z, xb, xsum);
  }
#endif
  return W_DOT(s.y, s.z, xb, xsum);
}

// Octet o (weights 8o .. 8o+7) of block b of row r of W, dotted with x0, x1 (sum xs): weights.wgsl oct_f.
fn w_oct(r: u32, b: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let s = seg_block(r, b);
#ifdef W_FMT2
  if (s.x == 2u) {
    return W_OCT2(s.y, s.z, o, x0, x1, xs);
  }
#endif
#ifdef W_FMT1
  if (s.x == 1u) {
    return W_OCT1(s.y, s.z, o, x0, x1, xs);
  }
#endif
  return W_OCT(s.y, s.z, o, x0, x1, xs);
}

fn w_dequant4(r: u32, b: u32, i: u32) -> vec4<f32> {
  let s = seg_block(r, b);
#ifdef W_FMT2
  if (s.x == 2u) {
    return W_DQ2(s.y, s.z, i);
  }
#endif
#ifdef W_FMT1
  if (s.x == 1u) {
    return W_DQ1(s.y, s.z, i);
  }
#endif
  return W_DQ(s.y, s.z, i);
}

#endif

#ifndef MR_Q8
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
#endif

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
    best[P.best0 + wg] = vec2<u32>(bitcast<u32>(best_v[0]), P.row0 + best_r[0]);
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

// Results for rows r and r + 1 (r even) of W, stored at token row t of out; pos is the token's sequence position. Row
// r of W is row g = P.row0 + r of the whole product (a row part's launch, ops.RowSplit).
fn epilogue_pair(r: u32, t: u32, pos: u32, a_in: f32, b_in: f32) {
  var a = a_in;
  var b = b_in;
  let g = P.row0 + r;
#ifdef BIAS
  a += bias[P.row0 + min(r, P.n_rows - 1u)];
  b += bias[P.row0 + min(r + 1u, P.n_rows - 1u)];
#endif
  a = finish(a);
  b = finish(b);
#if EPI == STORE
  if (r < P.n_rows) { out[t * P.out_stride + g] = a; }
  if (r + 1u < P.n_rows) { out[t * P.out_stride + g + 1u] = b; }
#endif
#if EPI == ADD
  if (r < P.n_rows) { out[t * P.out_stride + g] += a; }
  if (r + 1u < P.n_rows) { out[t * P.out_stride + g + 1u] += b; }
#endif
#if EPI == SILU
  if (r + 1u < P.n_rows) { out[t * P.out_stride + g / 2u] = silu(a) * b; }
#endif
#if EPI == GELU
  if (r + 1u < P.n_rows) { out[t * P.out_stride + g / 2u] = gelu_tanh(a) * b; }
#endif
#if EPI == QKV
  if (r + 1u >= P.n_rows) {
    return;
  }
  let hd = P.head_dim;
#ifdef QK_OUT
  if (g < P.n_q + P.n_kv) {
    out[t * P.out_stride + g] = a;
    out[t * P.out_stride + g + 1u] = b;
  } else {
#else
  if (g < P.n_q) {
    let v = rope(a, b, g % hd, pos);
    out[t * P.out_stride + g] = v.x;
    out[t * P.out_stride + g + 1u] = v.y;
  } else if (g < P.n_q + P.n_kv) {
    let kr = g - P.n_q;
    let v = rope(a, b, kr % hd, pos);
    let i = ((kr / hd) * P.max_ctx + pos) * hd + kr % hd;
    kv[i] = KV_T(v.x);
    kv[i + 1u] = KV_T(v.y);
  } else {
#endif
    let vr = g - P.n_q - P.n_kv;
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
      best[P.best0 + wid.y * nwg.x + wid.x] = vec2<u32>(bitcast<u32>(bv), P.row0 + br);
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

#ifdef GEMV_MR
// Decode for bandwidth: RT rows per invocation and TK invocations along K per row group (a "segment" of consecutive
// invocations), so a workgroup covers ROWS = RT * WG / TK rows. A row is cut in octets (8 weights: one nibble word;
// weights.wgsl oct_f), and lane l of a segment takes octets l, l + TK, ...: four lanes read a block's words side by
// side, so a subgroup's weight and activation loads are both contiguous. The trip count is fixed at compile time
// (KB, the blocks of a row, is compiled in) with a clamped index, so the loads of several steps and of all RT rows
// can be in flight together. Each octet of x is loaded (and normed, or merged from the attention splits) once for
// the RT rows. The segment adds its partials with subgroup shuffles (MR_SHUFFLE: TK is at most the smallest subgroup
// size, which the start-up probe measured) or through workgroup memory (a tree of log2(TK) barrier steps).
// MR_RUNTIME: the same with the trip count read at run time (the compiler does not unroll the row: fewer registers,
// one step's loads in flight). MR_BLOCK: lanes take whole blocks (a 16-byte nibble word per row and step, the block's
// 32 activations in registers), trip count at run time.
// MR_Q8 (the formats of registry.Q8_FORMATS, every segment of a W_SEGS weight): integer activations, as llama.cpp's
// int8 trick for decode but exact on request. x comes as integer planes (XQ_PACK, one launch before: normed, or merged
// from the attention splits there): each 32-block of x is X * dx with X integers of PLANES signed bytes (PLANES = 1:
// |X| <= 127, llama.cpp's int8 rounding; PLANES = 3: |X| < 2^22, X = 65536 h + 256 m + l with digits h, m, l in [-128,
// 127]: the rounding of x is then below 2^-23 of the block's largest activation, as fine as f32 itself, so the products
// stay those of the f32 tier). Lanes take whole blocks as in MR_BLOCK; a block of a row is dot4I8Packed of its quants
// as signed bytes with each plane's words, laid out to match (weights.wgsl q8_f: nibble formats take their nibble
// words' even and odd nibbles, w & 0x0F0F0F0F and (w >> 4) & 0x0F0F0F0F, with the high bits or crumbs of 5- and 6-bit
// quants or-ed in; Q8_0 its bytes, as stored against planes in element order (XQ_CONTIGUOUS) or sorted into even and
// odd ones in a weight fused with nibble formats), the plane sums combined in f32 (exact until the last rounding). Four
// weights an instruction per plane instead of three instructions a weight: on the H200 a Q4_0 product streamed at
// 3.6-4.1 TB/s with one plane against 1.6-1.9 TB/s with f32 dequantization (bench/gemv_probe.py), at 2.2x the f32 form
// with three.
const SEGS: u32 = WG / TK;
const ROWS: u32 = SEGS * RT;
const NO: u32 = KB * 4u;               // octets in a row
const OPL: u32 = (NO + TK - 1u) / TK;  // octets per lane
const NV: u32 = RT + 1u;               // values a segment sums: RT row partials, then sum(x^2)

#ifndef MR_SHUFFLE
var<workgroup> red_mr: array<f32, NV * WG>;  // (NV, WG): each invocation's partials
#endif
#ifdef MR_Q8
const XW: u32 = 2u * PLANES;  // plane words of a block (vec4<u32>), then one word: XQ_PACK's sums

// Block b of row r . block b of x as planes (dx its scale, xs = (sum of X, sum over elements 0-15)): weights.wgsl
// q8_f of the row's segment, times dx.
fn q8_dot(r: u32, b: u32, xp: ptr<function, array<vec4<u32>, XW>>, xs: vec2<f32>, dx: f32) -> f32 {
  let s = seg_block(r, b);
#ifdef W_FMT2
  if (s.x == 2u) {
    return dx * W_Q82(s.y, s.z, xp, xs);
  }
#endif
#ifdef W_FMT1
  if (s.x == 1u) {
    return dx * W_Q81(s.y, s.z, xp, xs);
  }
#endif
  return dx * W_Q8(s.y, s.z, xp, xs);
}
#endif

// Sum each of the NV values over the segment; lane 0 of the segment gets the sums. Call from uniform control flow.
fn mr_reduce(v: ptr<function, array<f32, NV>>, lid: u32) {
#ifdef MR_SHUFFLE
  for (var r = 0u; r < NV; r++) {
    var s = (*v)[r];
    for (var m = 1u; m < TK; m <<= 1u) {
      s += subgroupShuffleXor(s, m);
    }
    (*v)[r] = s;
  }
#else
  for (var r = 0u; r < NV; r++) {
    red_mr[r * WG + lid] = (*v)[r];
  }
  workgroupBarrier();
  for (var m = TK / 2u; m > 0u; m >>= 1u) {
    if (lid % TK < m) {
      for (var r = 0u; r < NV; r++) {
        red_mr[r * WG + lid] += red_mr[r * WG + lid + m];
      }
    }
    workgroupBarrier();
  }
  for (var r = 0u; r < NV; r++) {
    (*v)[r] = red_mr[r * WG + lid];
  }
#endif
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let wg = wid.y * nwg.x + wid.x;
  let row0 = wg * ROWS + (lid / TK) * RT;
  let lane = lid % TK;
  let t = S.n_tokens - 1u;  // as in GEMV: the step's last token, result to row 0 of out
  let pos = S.pos + t;
  let xbase = t * (P.x_stride / 4u);
#ifdef ATTN_IN
  attn_coefficients(lid);
#endif
  var acc: array<f32, NV>;  // RT row partials, then sum(x^2)
#ifdef MR_Q8
  for (var b = lane; b < P.k_blocks; b += TK) {
    var xp: array<vec4<u32>, XW>;
    for (var i = 0u; i < XW; i++) {
      xp[i] = xq_in[b * (XW + 1u) + i];
    }
    let xm = bitcast<vec4<f32>>(xq_in[b * (XW + 1u) + XW]);  // (dx, sum of X, sum over elements 0-15, 0)
    for (var r = 0u; r < RT; r++) {  // rows past the end: dropped below
      acc[r] += q8_dot(min(row0 + r, P.n_rows - 1u), b, &xp, xm.yz, xm.x);
    }
  }
#else
#ifdef MR_BLOCK
  // Lanes take whole blocks (one 16-byte nibble word per row and step), a loop bound read at run time.
  for (var b = lane; b < P.k_blocks; b += TK) {
    var xb: array<vec4<f32>, 8>;
    var xsum = 0.0;
    for (var i = 0u; i < 8u; i++) {
      var v = load_x(xbase, b * 8u + i);
#ifdef NORM
      acc[RT] += dot(v, v);
      v *= norm_w[b * 8u + i];
#endif
      xb[i] = v;
      xsum += v.x + v.y + v.z + v.w;
    }
    for (var r = 0u; r < RT; r++) {
      acc[r] += w_dot(min(row0 + r, P.n_rows - 1u), b, &xb, xsum);  // rows past the end: dropped below
    }
  }
#else
#ifdef MR_RUNTIME
  // A loop bound read at run time: the compiler keeps one step's loads in flight and no more.
  for (var oc = lane; oc < P.k_blocks * 4u; oc += TK) {
    let live = 1.0;
#else
  for (var j = 0u; j < OPL; j++) {
    let o = lane + j * TK;
    let oc = min(o, NO - 1u);  // lanes past the row's end compute on a valid octet with x = 0
    let live = select(0.0, 1.0, o < NO);
#endif
    var x0 = load_x(xbase, 2u * oc) * live;
    var x1 = load_x(xbase, 2u * oc + 1u) * live;
#ifdef NORM
    acc[RT] += dot(x0, x0) + dot(x1, x1);
    x0 *= norm_w[2u * oc];
    x1 *= norm_w[2u * oc + 1u];
#endif
    let xs = dot(x0 + x1, vec4<f32>(1.0));
    for (var r = 0u; r < RT; r++) {
      acc[r] += w_oct(min(row0 + r, P.n_rows - 1u), oc / 4u, oc % 4u, x0, x1, xs);  // rows past the end: dropped
    }
  }
#endif
#endif
  mr_reduce(&acc, lid);
  var scale = 1.0;
#ifdef NORM
  scale = inverseSqrt(acc[RT] / f32(P.k_blocks * 32u) + P.eps);
#endif
  if (lane == 0u) {
    for (var r = 0u; r < RT; r += 2u) {
      epilogue_pair(row0 + r, 0u, pos, acc[r] * scale, acc[r + 1u] * scale);
    }
  }
#ifdef ARGMAX
  if (lane == 0u) {
    var bv = finish(acc[0] * scale);
    var br = row0;
    for (var r = 1u; r < RT; r++) {
      if (beats(finish(acc[r] * scale), row0 + r, bv, br, P.n_rows)) {
        bv = finish(acc[r] * scale);
        br = row0 + r;
      }
    }
    best_v[lid / TK] = bv;
    best_r[lid / TK] = br;
  }
  write_best(lid, wg, SEGS);
#endif
}
#endif

#ifdef XQ_PACK
// x of the step's last token as the integer planes GEMV_MR's MR_Q8 form reads: workgroup g packs blocks 32g .. 32g+31
// (an invocation loads a vec4 of x into workgroup memory, then one invocation per block quantizes it). Block b: words b
// * (2 PLANES + 1) + 2p, + 2p + 1 hold plane p (most significant first) as two words of four signed bytes, the block's
// even elements (8j, 8j+2, 8j+4, 8j+6) in word 2j and its odd ones in 2j + 1 (j in 0..4) of the pair (XQ_CONTIGUOUS,
// for weights of Q8_0 alone, the GEMV_MRQ launch compiled with it too: elements 8j .. 8j+3 in word 2j, 8j+4 .. 8j+7 in
// 2j + 1, as Q8_0's bytes are stored); then (dx, sum of X, sum of X over elements 0-15, 0) as f32 bits: x ~ dx X. With
// NORM, x is multiplied by norm_w and dx carries RMSNorm's 1 / sqrt(mean(x^2) + eps) (each workgroup sums x^2 over all
// of x); with ATTN_IN, x is merged from the splits.
const XQ_BLOCKS: u32 = WG / 8u;  // blocks per workgroup: a vec4 an invocation
const XQ_MAX: f32 = select(4194303.0, 127.0, PLANES == 1u);  // the largest |X|: 2^22 - 1 or 127
var<workgroup> xq_x: array<vec4<f32>, WG>;
var<workgroup> xq_red: array<f32, WG>;

fn signed_byte(v: i32, shift: u32) -> u32 {
  return (bitcast<u32>(v) & 0xFFu) << shift;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let t = S.n_tokens - 1u;
  let xbase = t * (P.x_stride / 4u);
  let n4 = P.k_blocks * 8u;  // vec4s of x
#ifdef ATTN_IN
  attn_coefficients(lid);
#endif
  var rms = 1.0;
#ifdef NORM
  var ssq = 0.0;
  for (var i = lid; i < n4; i += WG) {
    let v = load_x(xbase, i);
    ssq += dot(v, v);
  }
  xq_red[lid] = ssq;
  workgroupBarrier();
  for (var m = WG / 2u; m > 0u; m >>= 1u) {
    if (lid < m) {
      xq_red[lid] += xq_red[lid + m];
    }
    workgroupBarrier();
  }
  rms = inverseSqrt(xq_red[0] / f32(n4 * 4u) + P.eps);
#endif
  let i = wid.x * WG + lid;
  var v = vec4<f32>(0.0);
  if (i < n4) {
    v = load_x(xbase, i);
#ifdef NORM
    v *= norm_w[i];
#endif
  }
  xq_x[lid] = v;
  workgroupBarrier();
  let b = wid.x * XQ_BLOCKS + lid;
  if (lid < XQ_BLOCKS && b < P.k_blocks) {
    var amax = 0.0;
    for (var k = 0u; k < 8u; k++) {
      let a = abs(xq_x[8u * lid + k]);
      amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    }
    let inv = select(0.0, XQ_MAX / amax, amax > 0.0);
    var words: array<u32, 24>;  // (plane, word): plane words of the block, most significant plane first
    var xsum = 0;
    var xsum_lo = 0;  // over elements 0-15 (Q6_K's first scale)
    for (var j = 0u; j < 4u; j++) {
      let lo = vec4<i32>(round(xq_x[8u * lid + 2u * j] * inv));       // X of elements 8j .. 8j+3
      let hi = vec4<i32>(round(xq_x[8u * lid + 2u * j + 1u] * inv));  // 8j+4 .. 8j+7
      xsum += lo.x + lo.y + lo.z + lo.w + hi.x + hi.y + hi.z + hi.w;
      if (j == 1u) {
        xsum_lo = xsum;
      }
#ifdef XQ_CONTIGUOUS
      var ev = lo;  // words 2j, 2j + 1: elements 8j .. 8j+7 in order
      var od = hi;
#else
      var ev = vec4<i32>(lo.x, lo.z, hi.x, hi.z);
      var od = vec4<i32>(lo.y, lo.w, hi.y, hi.w);
#endif
      for (var p = PLANES; p > 0u; p--) {  // least significant digit first: plane p - 1
        var de = ev;
        var dd = od;
        if (p > 1u) {  // balanced base-256 digits in [-128, 127]
          de = ((ev + vec4<i32>(128)) & vec4<i32>(255)) - vec4<i32>(128);
          dd = ((od + vec4<i32>(128)) & vec4<i32>(255)) - vec4<i32>(128);
          ev = (ev - de) >> vec4<u32>(8u);
          od = (od - dd) >> vec4<u32>(8u);
        }
        words[8u * (p - 1u) + 2u * j] =
          signed_byte(de.x, 0u) | signed_byte(de.y, 8u) | signed_byte(de.z, 16u) | signed_byte(de.w, 24u);
        words[8u * (p - 1u) + 2u * j + 1u] =
          signed_byte(dd.x, 0u) | signed_byte(dd.y, 8u) | signed_byte(dd.z, 16u) | signed_byte(dd.w, 24u);
      }
    }
    let base = b * (2u * PLANES + 1u);
    for (var p = 0u; p < PLANES; p++) {
      xq_out[base + 2u * p] = vec4<u32>(words[8u * p], words[8u * p + 1u], words[8u * p + 2u], words[8u * p + 3u]);
      xq_out[base + 2u * p + 1u] =
        vec4<u32>(words[8u * p + 4u], words[8u * p + 5u], words[8u * p + 6u], words[8u * p + 7u]);
    }
    let dx = amax / XQ_MAX * rms;
    xq_out[base + 2u * PLANES] = bitcast<vec4<u32>>(vec4<f32>(dx, f32(xsum), f32(xsum_lo), 0.0));
  }
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

#ifdef GEMM_RT
// Prefill, register-tiled: a tile of BM = WG rows x BN = 64 tokens per workgroup; invocation (ty, tx) = (lid / 8,
// lid % 8) owns 8 rows (4 ty .. 4 ty + 3 and BM/2 + 4 ty ..) x 8 tokens (4 tx .. and 32 + 4 tx ..): per column of K a
// 8 x 8 outer product from two vec4 reads of each tile (rows and tokens of a thread in two halves, so the reads of
// neighbouring invocations are neighbouring words: no bank conflicts). K goes in steps of one 32-column block:
// invocation t dequantizes block b of row t of the tile and loads token t's 32 activations (normed on the way; its
// own sum(x^2), no reduction needed), the next step's while the current step's products run (register prefetch: one
// tile in workgroup memory, 16 KiB at BM = 64, within WebGPU's default limit). f32 products and sums. Every private
// value has a name (no private arrays: an array indexed in a loop the compiler does not unroll lives in memory).
// RT_HALF (f16 tier): the tiles hold f16 (weights and activations rounded to f16: 2^-11 relative) and each 32-column
// block's products are summed in packed f16 (twice the FMA rate of f32 on NVIDIA GPUs), then added to f32
// accumulators, so a sum over K rounds in f16 only within a block.
#ifdef RT_HALF
alias RT_S = f16;
#else
alias RT_S = f32;
#endif
const BM: u32 = WG;
const BN: u32 = 64u;
var<workgroup> wt: array<vec4<RT_S>, 8u * BM>;  // (32 k, BM / 4): rows 4i .. 4i+3 of column k, dequantized
var<workgroup> xt: array<vec4<RT_S>, 512>;      // (32 k, 16): tokens 4j .. 4j+3 of column k
var<workgroup> rt_inv: array<vec4<f32>, 16>;    // (64 tokens / 4): each token's 1 / rms (NORM)

// Columns 4i .. 4i+3 of row (or token) slot `lane`: the four components of v, into tile memory.
fn put_w(i: u32, lane: u32, v: vec4<f32>) {
  let c = (4u * i) * (BM / 4u) + lane / 4u;
  wt[c][lane % 4u] = RT_S(v.x);
  wt[c + BM / 4u][lane % 4u] = RT_S(v.y);
  wt[c + BM / 2u][lane % 4u] = RT_S(v.z);
  wt[c + 3u * BM / 4u][lane % 4u] = RT_S(v.w);
}

fn put_x(i: u32, lane: u32, v: vec4<f32>) {
  let c = (4u * i) * 16u + lane / 4u;
  xt[c][lane % 4u] = RT_S(v.x);
  xt[c + 16u][lane % 4u] = RT_S(v.y);
  xt[c + 32u][lane % 4u] = RT_S(v.z);
  xt[c + 48u][lane % 4u] = RT_S(v.w);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let row0 = wid.x * BM;
  let t0 = wid.y * BN;
  let n_tokens = S.n_tokens;
  let nb = P.k_blocks;
  let ty = lid / 8u;
  let tx = lid % 8u;
  let rc = min(row0 + lid, P.n_rows - 1u);  // the row this invocation dequantizes (past the end: a valid one, zeroed)
  let rlive = select(0.0, 1.0, row0 + lid < P.n_rows);
  let loads_x = lid < BN;
  let tlive = select(0.0, 1.0, loads_x && t0 + lid < n_tokens);
  let xrow = min(t0 + lid, n_tokens - 1u) * (P.x_stride / 4u);  // the token this invocation loads
  var ssq = 0.0;  // sum(x^2) of that token
  // a<i>_<c>: row i of this invocation's 8 (0-3: 4 ty + i, 4-7: BM/2 + 4 ty + i - 4), tokens of half c
  var a0_0 = vec4<f32>(0.0); var a0_1 = vec4<f32>(0.0); var a1_0 = vec4<f32>(0.0); var a1_1 = vec4<f32>(0.0);
  var a2_0 = vec4<f32>(0.0); var a2_1 = vec4<f32>(0.0); var a3_0 = vec4<f32>(0.0); var a3_1 = vec4<f32>(0.0);
  var a4_0 = vec4<f32>(0.0); var a4_1 = vec4<f32>(0.0); var a5_0 = vec4<f32>(0.0); var a5_1 = vec4<f32>(0.0);
  var a6_0 = vec4<f32>(0.0); var a6_1 = vec4<f32>(0.0); var a7_0 = vec4<f32>(0.0); var a7_1 = vec4<f32>(0.0);
  // The next step's block of this invocation's row (w<i>: weights 4i .. 4i+3) and token (x<i>), in registers.
  var w0 = w_dequant4(rc, 0u, 0u); var w1 = w_dequant4(rc, 0u, 1u);
  var w2 = w_dequant4(rc, 0u, 2u); var w3 = w_dequant4(rc, 0u, 3u);
  var w4 = w_dequant4(rc, 0u, 4u); var w5 = w_dequant4(rc, 0u, 5u);
  var w6 = w_dequant4(rc, 0u, 6u); var w7 = w_dequant4(rc, 0u, 7u);
  var x0 = x[xrow]; var x1 = x[xrow + 1u]; var x2 = x[xrow + 2u]; var x3 = x[xrow + 3u];
  var x4 = x[xrow + 4u]; var x5 = x[xrow + 5u]; var x6 = x[xrow + 6u]; var x7 = x[xrow + 7u];
  for (var b = 0u; b < nb; b++) {
    // Registers -> the tile.
    put_w(0u, lid, w0 * rlive); put_w(1u, lid, w1 * rlive); put_w(2u, lid, w2 * rlive); put_w(3u, lid, w3 * rlive);
    put_w(4u, lid, w4 * rlive); put_w(5u, lid, w5 * rlive); put_w(6u, lid, w6 * rlive); put_w(7u, lid, w7 * rlive);
    if (loads_x) {
#ifdef NORM
      ssq += dot(x0, x0) + dot(x1, x1) + dot(x2, x2) + dot(x3, x3) + dot(x4, x4) + dot(x5, x5) + dot(x6, x6)
           + dot(x7, x7);
      let nw = b * 8u;
      x0 *= norm_w[nw]; x1 *= norm_w[nw + 1u]; x2 *= norm_w[nw + 2u]; x3 *= norm_w[nw + 3u];
      x4 *= norm_w[nw + 4u]; x5 *= norm_w[nw + 5u]; x6 *= norm_w[nw + 6u]; x7 *= norm_w[nw + 7u];
#endif
      put_x(0u, lid, x0 * tlive); put_x(1u, lid, x1 * tlive); put_x(2u, lid, x2 * tlive); put_x(3u, lid, x3 * tlive);
      put_x(4u, lid, x4 * tlive); put_x(5u, lid, x5 * tlive); put_x(6u, lid, x6 * tlive); put_x(7u, lid, x7 * tlive);
    }
    workgroupBarrier();
    // The next step's block, loading while this one's products run (no branch, so the loads and the products can be
    // scheduled together: the last step loads its own block again).
    let bn = min(b + 1u, nb - 1u);
    w0 = w_dequant4(rc, bn, 0u); w1 = w_dequant4(rc, bn, 1u); w2 = w_dequant4(rc, bn, 2u); w3 = w_dequant4(rc, bn, 3u);
    w4 = w_dequant4(rc, bn, 4u); w5 = w_dequant4(rc, bn, 5u); w6 = w_dequant4(rc, bn, 6u); w7 = w_dequant4(rc, bn, 7u);
    let xn = xrow + bn * 8u;
    x0 = x[xn]; x1 = x[xn + 1u]; x2 = x[xn + 2u]; x3 = x[xn + 3u];
    x4 = x[xn + 4u]; x5 = x[xn + 5u]; x6 = x[xn + 6u]; x7 = x[xn + 7u];
#ifdef RT_HALF
    // this block's sums, in f16
    var h0_0 = vec4<f16>(0.0); var h0_1 = vec4<f16>(0.0); var h1_0 = vec4<f16>(0.0); var h1_1 = vec4<f16>(0.0);
    var h2_0 = vec4<f16>(0.0); var h2_1 = vec4<f16>(0.0); var h3_0 = vec4<f16>(0.0); var h3_1 = vec4<f16>(0.0);
    var h4_0 = vec4<f16>(0.0); var h4_1 = vec4<f16>(0.0); var h5_0 = vec4<f16>(0.0); var h5_1 = vec4<f16>(0.0);
    var h6_0 = vec4<f16>(0.0); var h6_1 = vec4<f16>(0.0); var h7_0 = vec4<f16>(0.0); var h7_1 = vec4<f16>(0.0);
    for (var k = 0u; k < 32u; k++) {
      let wa = wt[k * (BM / 4u) + ty];
      let wb = wt[k * (BM / 4u) + BM / 8u + ty];
      let xa = xt[k * 16u + tx];
      let xb = xt[k * 16u + 8u + tx];
      h0_0 += wa.x * xa; h0_1 += wa.x * xb; h1_0 += wa.y * xa; h1_1 += wa.y * xb;
      h2_0 += wa.z * xa; h2_1 += wa.z * xb; h3_0 += wa.w * xa; h3_1 += wa.w * xb;
      h4_0 += wb.x * xa; h4_1 += wb.x * xb; h5_0 += wb.y * xa; h5_1 += wb.y * xb;
      h6_0 += wb.z * xa; h6_1 += wb.z * xb; h7_0 += wb.w * xa; h7_1 += wb.w * xb;
    }
    a0_0 += vec4<f32>(h0_0); a0_1 += vec4<f32>(h0_1); a1_0 += vec4<f32>(h1_0); a1_1 += vec4<f32>(h1_1);
    a2_0 += vec4<f32>(h2_0); a2_1 += vec4<f32>(h2_1); a3_0 += vec4<f32>(h3_0); a3_1 += vec4<f32>(h3_1);
    a4_0 += vec4<f32>(h4_0); a4_1 += vec4<f32>(h4_1); a5_0 += vec4<f32>(h5_0); a5_1 += vec4<f32>(h5_1);
    a6_0 += vec4<f32>(h6_0); a6_1 += vec4<f32>(h6_1); a7_0 += vec4<f32>(h7_0); a7_1 += vec4<f32>(h7_1);
#else
    for (var k = 0u; k < 32u; k++) {
      let wa = wt[k * (BM / 4u) + ty];
      let wb = wt[k * (BM / 4u) + BM / 8u + ty];
      let xa = xt[k * 16u + tx];
      let xb = xt[k * 16u + 8u + tx];
      a0_0 += wa.x * xa; a0_1 += wa.x * xb; a1_0 += wa.y * xa; a1_1 += wa.y * xb;
      a2_0 += wa.z * xa; a2_1 += wa.z * xb; a3_0 += wa.w * xa; a3_1 += wa.w * xb;
      a4_0 += wb.x * xa; a4_1 += wb.x * xb; a5_0 += wb.y * xa; a5_1 += wb.y * xb;
      a6_0 += wb.z * xa; a6_1 += wb.z * xb; a7_0 += wb.w * xa; a7_1 += wb.w * xb;
    }
#endif
    workgroupBarrier();
  }
  // Each token's 1 / rms through workgroup memory.
  var inv0 = vec4<f32>(1.0);
  var inv1 = vec4<f32>(1.0);
#ifdef NORM
  if (loads_x) {
    rt_inv[lid / 4u][lid % 4u] = inverseSqrt(ssq / f32(nb * 32u) + P.eps);
  }
  workgroupBarrier();
  inv0 = rt_inv[tx];
  inv1 = rt_inv[8u + tx];
#endif
  let ra = row0 + 4u * ty;
  let rb = row0 + BM / 2u + 4u * ty;
  let ta = t0 + 4u * tx;
  let tb = t0 + 32u + 4u * tx;
  rt_out(ra, rb, ta, inv0.x, a0_0.x, a1_0.x, a2_0.x, a3_0.x, a4_0.x, a5_0.x, a6_0.x, a7_0.x);
  rt_out(ra, rb, ta + 1u, inv0.y, a0_0.y, a1_0.y, a2_0.y, a3_0.y, a4_0.y, a5_0.y, a6_0.y, a7_0.y);
  rt_out(ra, rb, ta + 2u, inv0.z, a0_0.z, a1_0.z, a2_0.z, a3_0.z, a4_0.z, a5_0.z, a6_0.z, a7_0.z);
  rt_out(ra, rb, ta + 3u, inv0.w, a0_0.w, a1_0.w, a2_0.w, a3_0.w, a4_0.w, a5_0.w, a6_0.w, a7_0.w);
  rt_out(ra, rb, tb, inv1.x, a0_1.x, a1_1.x, a2_1.x, a3_1.x, a4_1.x, a5_1.x, a6_1.x, a7_1.x);
  rt_out(ra, rb, tb + 1u, inv1.y, a0_1.y, a1_1.y, a2_1.y, a3_1.y, a4_1.y, a5_1.y, a6_1.y, a7_1.y);
  rt_out(ra, rb, tb + 2u, inv1.z, a0_1.z, a1_1.z, a2_1.z, a3_1.z, a4_1.z, a5_1.z, a6_1.z, a7_1.z);
  rt_out(ra, rb, tb + 3u, inv1.w, a0_1.w, a1_1.w, a2_1.w, a3_1.w, a4_1.w, a5_1.w, a6_1.w, a7_1.w);
}

// One token's 8 results (rows ra .. ra + 3, rb .. rb + 3), scaled by s, through the epilogue.
fn rt_out(ra: u32, rb: u32, t: u32, s: f32, a0: f32, a1: f32, a2: f32, a3: f32, a4: f32, a5: f32, a6: f32, a7: f32) {
  if (t < S.n_tokens) {
    epilogue_pair(ra, t, S.pos + t, a0 * s, a1 * s);
    epilogue_pair(ra + 2u, t, S.pos + t, a2 * s, a3 * s);
    epilogue_pair(rb, t, S.pos + t, a4 * s, a5 * s);
    epilogue_pair(rb + 2u, t, S.pos + t, a6 * s, a7 * s);
  }
}
#endif
