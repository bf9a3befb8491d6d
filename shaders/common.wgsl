// Shared definitions for every kernel.
//
// Defines every includer sets: WG (threads per workgroup, a power of two).
// The registry also sets SG_ARGS (extra entry-point parameters) and SG_INIT (a statement copying them to the
// private sg_* variables): write `fn main(..., lid: u32 SG_ARGS) { SG_INIT ... }` in every kernel.
// Optional: SUBGROUPS (use subgroupAdd/subgroupMax for reductions), F16 (the f16 tier: KV cache stored as f16).
//
// Subgroup code never assumes a subgroup size: a reduction adds within each subgroup, then combines one partial per
// subgroup through workgroup memory. It relies on subgroups being contiguous runs of local_invocation_index, which
// the device probe checks at start-up (the engine falls back to the tree reductions where it fails).

// Per-step scalars, written by the host before each prefill chunk and advanced on the GPU by the sampler, so that a
// decode step needs no host write at all.
struct State {
  pos: u32,       // sequence position of this step's first token
  n_tokens: u32,  // tokens in this step: the prefill chunk length, 1 when decoding
  step: u32,      // sampled tokens so far in this request (the random stream's position)
  _pad: u32,
}

// Decode attention split over key ranges (flash decoding): each split gets at least SPLIT_MIN (a define of the
// attention kernel and of the output projection that merges its splits) keys, so a short context uses few of the
// splits the dispatch has and the output projection merges only those.
#ifdef SPLIT_MIN
fn used_splits(n_keys: u32, max_splits: u32) -> u32 {
  return clamp((n_keys + SPLIT_MIN - 1u) / SPLIT_MIN, 1u, max_splits);
}
#endif

#ifdef F16
alias KV_T = f16;
#else
alias KV_T = f32;
#endif

var<workgroup> red_f32: array<f32, WG>;
var<private> sg_size_p: u32 = 1u;   // subgroup size, copied from the entry point's builtin
var<private> sg_lane_p: u32 = 0u;   // this invocation's index in its subgroup

// Sum of v over the whole workgroup, returned to every invocation. Call from workgroup-uniform control flow.
fn wg_sum(v: f32, lid: u32) -> f32 {
#ifdef SUBGROUPS
  let s = subgroupAdd(v);
  if (sg_lane_p == 0u) {
    red_f32[lid / sg_size_p] = s;
  }
  workgroupBarrier();
  var total = 0.0;
  let n = WG / sg_size_p;
  for (var i = 0u; i < n; i++) {
    total += red_f32[i];
  }
  workgroupBarrier();
  return total;
#else
  red_f32[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      red_f32[lid] += red_f32[lid + s];
    }
    workgroupBarrier();
  }
  let total = red_f32[0];
  workgroupBarrier();
  return total;
#endif
}

// Maximum of v over the whole workgroup, returned to every invocation.
fn wg_max(v: f32, lid: u32) -> f32 {
#ifdef SUBGROUPS
  let s = subgroupMax(v);
  if (sg_lane_p == 0u) {
    red_f32[lid / sg_size_p] = s;
  }
  workgroupBarrier();
  var m = red_f32[0];
  let n = WG / sg_size_p;
  for (var i = 1u; i < n; i++) {
    m = max(m, red_f32[i]);
  }
  workgroupBarrier();
  return m;
#else
  red_f32[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      red_f32[lid] = max(red_f32[lid], red_f32[lid + s]);
    }
    workgroupBarrier();
  }
  let m = red_f32[0];
  workgroupBarrier();
  return m;
#endif
}

// Sum of a vec4 over the workgroup (four row partials of a matrix-vector product at once), to every invocation.
var<workgroup> red_v4: array<vec4<f32>, WG>;

fn wg_sum4(v: vec4<f32>, lid: u32) -> vec4<f32> {
#ifdef SUBGROUPS
  let s = subgroupAdd(v);
  if (sg_lane_p == 0u) {
    red_v4[lid / sg_size_p] = s;
  }
  workgroupBarrier();
  var total = vec4<f32>(0.0);
  let n = WG / sg_size_p;
  for (var i = 0u; i < n; i++) {
    total += red_v4[i];
  }
  workgroupBarrier();
  return total;
#else
  red_v4[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      red_v4[lid] += red_v4[lid + s];
    }
    workgroupBarrier();
  }
  let total = red_v4[0];
  workgroupBarrier();
  return total;
#endif
}

// Rotate the feature pair (a, b) by the angle pos * inv_freq (RoPE). The angle is reduced to [-pi, pi) before
// sin/cos, which are only accurate there on many GPUs.
fn rope_rotate(a: f32, b: f32, inv_freq: f32, pos: u32) -> vec2<f32> {
  let turns = f32(pos) * (inv_freq * 0.15915494309189535);
  let angle = (fract(turns + 0.5) - 0.5) * 6.283185307179586;
  let c = cos(angle);
  let s = sin(angle);
  return vec2<f32>(a * c - b * s, a * s + b * c);
}

fn silu(x: f32) -> f32 {
  return x / (1.0 + exp(-x));
}

// tanh with its argument clamped: WGSL defines tanh's accuracy through sinh / cosh, which overflow for large
// arguments on some implementations; |x| <= 10 loses nothing (tanh(10) rounds to 1 in f32).
fn tanh_clamped(x: f32) -> f32 {
  return tanh(clamp(x, -10.0, 10.0));
}

// GELU, tanh approximation (ggml's GELU and PyTorch's gelu(approximate="tanh"), the GeGLU of Gemma).
fn gelu_tanh(x: f32) -> f32 {
  return 0.5 * x * (1.0 + tanh_clamped(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)));
}

// Soft-capping: c * tanh(y / c) (Gemma 2's attention scores and final logits).
fn softcap(y: f32, c: f32) -> f32 {
  return c * tanh_clamped(y / c);
}

// The sampler's rule for logits that are not numbers (webllm_py decides it; a corrupt model or an f16 overflow can
// produce them): NaN ranks below every number (never chosen while any number is there), +inf is the largest finite
// float and -inf the lowest one, so every reduction, weight and log-probability stays finite and every id chosen is
// a real one. Decided from the bits: WGSL lets a compiler assume NaN and infinities away in float comparisons.
const MAX_F32: f32 = 3.4028234663852886e38;  // exactly the largest f32 (Tint refuses a literal above it)

fn finite_logit(v: f32) -> f32 {
  let bits = bitcast<u32>(v);
  if ((bits & 0x7F800000u) != 0x7F800000u) {
    return v;
  }
  let nan = (bits & 0x007FFFFFu) != 0u;
  return select(select(MAX_F32, -MAX_F32, (bits & 0x80000000u) != 0u), -MAX_F32, nan);
}

fn finite_logit4(v: vec4<f32>) -> vec4<f32> {
  let bits = bitcast<vec4<u32>>(v);
  let special = (bits & vec4<u32>(0x7F800000u)) == vec4<u32>(0x7F800000u);
  let nan = (bits & vec4<u32>(0x007FFFFFu)) != vec4<u32>(0u);
  let negative = (bits & vec4<u32>(0x80000000u)) != vec4<u32>(0u);
  let inf = select(vec4<f32>(MAX_F32), vec4<f32>(-MAX_F32), negative);
  return select(v, select(inf, vec4<f32>(-MAX_F32), nan), special);
}

// Greedy's order (llama.cpp's): whether value v of id i beats (bv, bi): larger, or equal with a lower id, values
// read by the rule above. Ids >= n are "none": never a candidate, beaten by any candidate. The LM head's argmax
// partials (matmul.wgsl ARGMAX) and the sampler's reductions (sample.wgsl) both use it, so the partials pick the id
// the full argmax would.
fn beats(v: f32, i: u32, bv: f32, bi: u32, n: u32) -> bool {
  let a = finite_logit(v);
  let b = finite_logit(bv);
  return i < n && (bi >= n || a > b || (a == b && i < bi));
}
