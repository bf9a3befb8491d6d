// Token sampling on the GPU, one workgroup: logit bias, penalties, then greedy (argmax) or temperature + top-k +
// top-p; optionally the log-probabilities of what was sampled; then advance the step state.
//
// Writes the sampled id where the next step's embedding reads it (tokens[0]) and moves State on by the tokens just
// processed, so decode steps chain on the GPU with no host write in between; the host only copies tokens[0] out
// (or, when logprobs are asked for, the small `record` that starts with the same id).
//
// Order, as WebLLM (llm_chat.ts sampleTokenFromLogits) and MLC's logit processor:
//   1. logit bias: logits[id] += bias for each (id, bias) pair of the request (ids unique, checked by the host);
//   2. penalties, for each token sampled n > 0 times so far in this request (counts, kept here):
//        l -= presence + n * frequency;  then  l = l < 0 ? l * repetition : l / repetition;
//   3. greedy: argmax of the adjusted logits, ties to the lowest id (llama.cpp); with no bias, penalty or logprobs
//      (P.n_best > 0) the argmax of the LM head's per-workgroup partials instead (matmul.wgsl ARGMAX): the
//      same id, found from a few hundred entries rather than every logit by this one workgroup;
//      else weights w = exp((l - max) / T) in (0, 1]; top-k keeps the ids with w >= the k-th largest weight and
//      top-p then the smallest top set whose mass reaches top_p of the kept mass (both thresholds found by
//      bisection on the float bits of w, 30 passes each, no sort); one uniform random number from
//      pcg(seed ^ pcg(step)) picks an id by walking the kept weights in id order.
// Bias and penalties are applied to `logits` in place (the LM head rewrites it every step).
//
// Log-probabilities (P.logprobs = 1) are those of the distribution the token was drawn from: log(w_i / kept mass)
// for kept ids, LOGPROB_FLOOR for ids top-k/top-p removed. Greedy decoding draws from no distribution; there they
// are the log-softmax of the adjusted logits at temperature 1, what the argmax is the mode of.
// record = [token, logprob(token), (id, logprob) x n_top], the n_top most likely ids, most likely first; a
// log-probability is never below LOGPROB_FLOOR (so always finite JSON).
//
// Logits that are not numbers follow finite_logit (common.wgsl): NaN ranks below every number, +-inf become the
// largest / lowest finite floats, in every step above (bias and penalties read them so too). Whatever the logits
// hold, the id written is below P.vocab: with every logit NaN, greedy gives id 0 and sampling draws uniformly.
//
// Defines: WG (threads, a power of two).

#include "common.wgsl"

const LOGPROB_FLOOR: f32 = -9999.0;  // log-probability reported for ids the request's top-k / top-p excluded
const ONE_BITS: u32 = 0x3F800001u;   // just above the bits of 1.0: no weight reaches it

struct Params {
  vocab: u32,         // logits to sample from
  temperature: f32,   // <= 0: greedy
  top_p: f32,         // (0, 1]; 1: off
  seed: u32,          // random stream of this request
  top_k: u32,         // 0 (or >= vocab): off
  presence: f32,      // presence penalty, [-2, 2]
  frequency: f32,     // frequency penalty, [-2, 2]
  repetition: f32,    // repetition penalty, > 0; 1: off
  n_bias: u32,        // (id, bias) pairs in `bias`
  penalize: u32,      // 1: apply the penalties above from `counts`
  n_top: u32,         // most likely ids written to `record`, 0..20
  logprobs: u32,      // 1: write `record`
  n_best: u32,        // entries of `partials`; 0: greedy reads the logits
  _pad0: u32,
  _pad1: u32,
  _pad2: u32,
}

struct Bias {
  id: u32,
  value: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> state: State;
@group(0) @binding(2) var<storage, read_write> logits: array<vec4<f32>>;  // (vocab,) f32 padded to vec4s, adjusted in place
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;  // tokens[0] <- the sampled id
@group(0) @binding(4) var<storage, read_write> counts: array<u32>;  // (vocab,) u32 times sampled in this request
@group(0) @binding(5) var<storage, read> bias: array<Bias>;         // (n_bias,) pairs, up to 300
@group(0) @binding(6) var<storage, read_write> record: array<u32>;  // (2 + 2 * 20,) see above
@group(0) @binding(7) var<storage, read> partials: array<vec2<u32>>;  // (n_best,) LM head's (f32 bits, id)

var<workgroup> arg_sh: array<u32, WG>;
var<workgroup> chunk_sh: array<f32, WG>;
var<workgroup> chosen_sh: u32;

fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}

// Unnormalized probability of token i: exp((logit - mx) / T), in [0, 1].
fn weight(i: u32, mx: f32, inv_t: f32) -> f32 {
  return weight_of((logit(i) - mx) * inv_t);
}

// exp(d) for d <= 0, exactly 0 below e^-87 (the smallest normal f32): d may be -inf (the lowest logit minus the
// largest overflows), which is then never handed to exp.
fn weight_of(d: f32) -> f32 {
  return select(exp(max(d, -87.0)), 0.0, d < -87.0);
}

fn weight_of4(d: vec4<f32>) -> vec4<f32> {
  return select(exp(max(d, vec4<f32>(-87.0))), vec4<f32>(0.0), d < vec4<f32>(-87.0));
}

fn logit(i: u32) -> f32 {
  return finite_logit(logits[i / 4u][i % 4u]);
}

// Logits are read as vec4s, UNROLL per invocation at a time (vec4s q, q + WG, ..., each batch's loads issued before any
// is used): one workgroup reads the whole vocabulary, so the loops are bound by load latency, not bandwidth.
const UNROLL: u32 = 4u;

// The vec4s of logits base, base + WG, ..., base + (UNROLL - 1) WG (clamped to the last of the nq vec4s).
fn logit_batch(base: u32, nq: u32) -> array<vec4<f32>, UNROLL> {
  var vals: array<vec4<f32>, UNROLL>;
  for (var k = 0u; k < UNROLL; k++) {
    vals[k] = finite_logit4(logits[min(base + k * WG, nq - 1u)]);
  }
  return vals;
}

// The largest logit among ids ordered after (after_v, after_i) by (logit descending, id ascending), and its id:
// with after_i = n (none before) the argmax (ties to the lowest id); called again with the previous answer, the
// next one. Every invocation gets the result in arg_sh[0] / red_f32[0]. Call from workgroup-uniform control flow.
fn argmax_after(lid: u32, n: u32, after_v: f32, after_i: u32) -> f32 {
  var best = -3.4e38;
  var best_i = n;
  let nq = (n + 3u) / 4u;
  for (var base = lid; base < nq; base += UNROLL * WG) {
    let vals = logit_batch(base, nq);
    for (var k = 0u; k < UNROLL; k++) {
      for (var c = 0u; c < 4u; c++) {
        // ids ascend within an invocation: a strict > keeps the lowest id of equal logits
        let i = 4u * (base + k * WG) + c;
        let v = vals[k][c];
        let eligible = i < n && (after_i >= n || v < after_v || (v == after_v && i > after_i));
        if (eligible && (v > best || best_i == n)) {
          best = v;
          best_i = i;
        }
      }
    }
  }
  return wg_argmax(lid, n, best, best_i);
}

// Workgroup-wide best of each invocation's (value, id) (id == n: none), ties to the lowest id: returns the value and
// leaves the id in arg_sh[0]. Call from workgroup-uniform control flow.
fn wg_argmax(lid: u32, n: u32, value: f32, id: u32) -> f32 {
  red_f32[lid] = value;
  arg_sh[lid] = id;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let b = red_f32[lid + s];
      let bi = arg_sh[lid + s];
      if (beats(b, bi, red_f32[lid], arg_sh[lid], n)) {
        red_f32[lid] = b;
        arg_sh[lid] = bi;
      }
    }
    workgroupBarrier();
  }
  let v = red_f32[0];
  workgroupBarrier();
  return v;
}

// Greedy from the LM head's partials: the best of P.n_best (value, id) entries, id in arg_sh[0].
fn argmax_partials(lid: u32, n: u32) -> f32 {
  var bv = -3.4e38;
  var bi = n;
  for (var j = lid; j < P.n_best; j += WG) {
    let e = partials[j];
    let v = bitcast<f32>(e.x);
    if (beats(v, e.y, bv, bi, n)) {
      bv = v;
      bi = e.y;
    }
  }
  return wg_argmax(lid, n, bv, bi);
}

// Kept mass above a weight threshold (and the count of such ids, in .y), summed over the workgroup.
fn mass_above(lid: u32, n: u32, mx: f32, inv_t: f32, thr: f32) -> vec2<f32> {
  var m = 0.0;
  var c = 0.0;
  let nq = (n + 3u) / 4u;
  for (var base = lid; base < nq; base += UNROLL * WG) {
    let vals = logit_batch(base, nq);
    for (var k = 0u; k < UNROLL; k++) {
      let w = weight_of4((vals[k] - mx) * inv_t);
      let i = 4u * (base + k * WG);
      let kept = vec4<bool>(i < n, i + 1u < n, i + 2u < n, i + 3u < n) & (w >= vec4<f32>(thr));
      // selected, not multiplied by a 0/1 mask: the padded lanes past n may weigh inf (0 * inf is NaN)
      let sel = select(vec4<f32>(0.0), vec4<f32>(1.0), kept);
      m += dot(select(vec4<f32>(0.0), w, kept), vec4<f32>(1.0));
      c += sel.x + sel.y + sel.z + sel.w;
    }
  }
  return vec2<f32>(wg_sum(m, lid), wg_sum(c, lid));
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let n = P.vocab;

  // 1. Logit bias: a few sparse adds, then make them visible to every invocation.
  if (P.n_bias > 0u) {
    for (var j = lid; j < P.n_bias; j += WG) {
      let b = bias[j];
      logits[b.id / 4u][b.id % 4u] += b.value;
    }
    storageBarrier();
  }

  // 2. Presence, frequency and repetition penalties on the ids sampled so far in this request.
  if (P.penalize != 0u) {
    for (var i = lid; i < n; i += WG) {
      let c = counts[i];
      if (c > 0u) {
        var l = logit(i) - (P.presence + f32(c) * P.frequency);
        l = select(l / P.repetition, l * P.repetition, l < 0.0);
        logits[i / 4u][i % 4u] = l;
      }
    }
    storageBarrier();
  }

  // 3. Argmax: the greedy token, and the maximum every weight is relative to.
  let sampling = P.temperature > 0.0;
  var mx: f32;
  if (P.n_best > 0u && !sampling && P.n_bias == 0u && P.penalize == 0u && P.logprobs == 0u) {
    mx = argmax_partials(lid, n);
  } else {
    mx = argmax_after(lid, n, 0.0, n);
  }
  var token = arg_sh[0];
  workgroupBarrier();

  let inv_t = select(1.0, min(1.0 / P.temperature, 1e30), sampling);  // a tiny T must not give 0 * inf
  var thr = 0.0;  // kept ids: weight >= thr
  var kept = 0.0;  // their mass
  if (sampling || P.logprobs != 0u) {
    kept = mass_above(lid, n, mx, inv_t, 0.0).x;
  }

  if (sampling) {
    // Top-k: the largest threshold (as float bits, which order like the floats for w >= 0) keeping >= k ids.
    if (P.top_k > 0u && P.top_k < n) {
      var lo = 0u;
      var hi = ONE_BITS;
      for (var it = 0u; it < 30u; it++) {
        let mid = lo + (hi - lo) / 2u;
        let c = mass_above(lid, n, mx, inv_t, bitcast<f32>(mid)).y;
        let ok = c >= f32(P.top_k);
        lo = select(lo, mid, ok);
        hi = select(mid, hi, ok);
      }
      thr = bitcast<f32>(lo);
      kept = mass_above(lid, n, mx, inv_t, thr).x;
    }
    // Top-p within what top-k kept: the largest threshold whose mass still reaches top_p of the kept mass.
    if (P.top_p < 1.0) {
      let goal = P.top_p * kept;
      var lo = bitcast<u32>(thr);
      var hi = ONE_BITS;
      var lo_mass = kept;
      for (var it = 0u; it < 30u; it++) {
        let mid = lo + (hi - lo) / 2u;
        let m = mass_above(lid, n, mx, inv_t, bitcast<f32>(mid)).x;
        let ok = m >= goal;
        lo = select(lo, mid, ok);
        hi = select(mid, hi, ok);
        lo_mass = select(lo_mass, m, ok);
      }
      thr = bitcast<f32>(lo);
      kept = lo_mass;
    }
    // Each invocation owns a contiguous chunk of ids; invocation 0 finds the chunk and the id inside it.
    let chunk = (n + WG - 1u) / WG;
    let c0 = lid * chunk;
    let c1 = min(c0 + chunk, n);
    var cs = 0.0;
    for (var i = c0; i < c1; i++) {
      let w = weight(i, mx, inv_t);
      if (w >= thr) {
        cs += w;
      }
    }
    chunk_sh[lid] = cs;
    workgroupBarrier();
    if (lid == 0u) {
      let r = pcg(P.seed ^ pcg(state.step + 0x9E3779B9u));
      let u = f32(r >> 8u) * (1.0 / 16777216.0) * kept;
      var acc = 0.0;
      var pick = token;  // fallback when rounding leaves u past the end: the most likely token
      var c = 0u;
      for (; c < WG; c++) {
        if (acc + chunk_sh[c] > u) {
          break;
        }
        acc += chunk_sh[c];
      }
      if (c < WG) {
        let e1 = min((c + 1u) * chunk, n);
        for (var i = c * chunk; i < e1; i++) {
          let w = weight(i, mx, inv_t);
          if (w >= thr) {
            pick = i;
            acc += w;
            if (acc > u) {
              break;
            }
          }
        }
      }
      chosen_sh = pick;
    }
    workgroupBarrier();
    token = chosen_sh;
  }

  // 4. Log-probabilities of the chosen id and of the n_top most likely ones.
  if (P.logprobs != 0u) {
    let log_kept = log(kept);
    var prev_v = 0.0;
    var prev_i = n;  // none yet: the first pass finds the argmax
    for (var j = 0u; j < P.n_top; j++) {
      let v = argmax_after(lid, n, prev_v, prev_i);
      let i = arg_sh[0];
      workgroupBarrier();
      if (lid == 0u) {
        let keep = weight(i, mx, inv_t) >= thr;
        record[2u + 2u * j] = i;
        record[3u + 2u * j] = bitcast<u32>(select(LOGPROB_FLOOR, max((v - mx) * inv_t - log_kept, LOGPROB_FLOOR), keep));
      }
      prev_v = v;
      prev_i = i;
    }
    if (lid == 0u) {
      record[0] = token;
      record[1] = bitcast<u32>(max((logit(token) - mx) * inv_t - log_kept, LOGPROB_FLOOR));
    }
  }

  if (lid == 0u) {
    token = min(token, n - 1u);  // cannot be needed by the rule above; kept so no buffer can ever make it otherwise
    tokens[0] = token;
    counts[token] += 1u;
    state.pos += state.n_tokens;
    state.n_tokens = 1u;
    state.step += 1u;
  }
}
