// Token sampling on the GPU, one workgroup: greedy (argmax) or temperature + top-p, then advance the step state.
//
// Writes the sampled id where the next step's embedding reads it (tokens[0]) and moves State on by the tokens just
// processed, so decode steps chain on the GPU with no host write in between; the host only copies tokens[0] out.
// Top-p needs no sort: the probability threshold that keeps the smallest top set with mass >= top_p is found by
// bisection, then the kept tokens are walked in index order with one uniform random number.
// Defines: WG (threads, a power of two).

#include "common.wgsl"

struct Params {
  vocab: u32,         // logits to sample from
  temperature: f32,   // <= 0: greedy
  top_p: f32,         // (0, 1]
  seed: u32,          // random stream of this request
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> state: State;
@group(0) @binding(2) var<storage, read> logits: array<f32>;      // (vocab,) f32
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;  // tokens[0] <- the sampled id

var<workgroup> arg_sh: array<u32, WG>;
var<workgroup> chunk_sh: array<f32, WG>;
var<workgroup> chosen_sh: u32;

fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}

// Unnormalized probability of token i: exp((logit - max) / T), in (0, 1].
fn weight(i: u32, mx: f32, inv_t: f32) -> f32 {
  return exp((logits[i] - mx) * inv_t);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32 SG_ARGS) {
  SG_INIT
  let n = P.vocab;
  // Argmax, ties to the lowest index (as llama.cpp's greedy sampler).
  var best = -3.0e38;
  var best_i = 0u;
  for (var i = lid; i < n; i += WG) {
    let v = logits[i];
    if (v > best) {
      best = v;
      best_i = i;
    }
  }
  red_f32[lid] = best;
  arg_sh[lid] = best_i;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let a = red_f32[lid];
      let b = red_f32[lid + s];
      if (b > a || (b == a && arg_sh[lid + s] < arg_sh[lid])) {
        red_f32[lid] = b;
        arg_sh[lid] = arg_sh[lid + s];
      }
    }
    workgroupBarrier();
  }
  let mx = red_f32[0];
  var token = arg_sh[0];
  workgroupBarrier();

  if (P.temperature > 0.0) {
    let inv_t = 1.0 / P.temperature;
    var part = 0.0;
    for (var i = lid; i < n; i += WG) {
      part += weight(i, mx, inv_t);
    }
    var mass = wg_sum(part, lid);
    var thr = 0.0;
    if (P.top_p < 1.0) {
      // Largest threshold whose kept mass still reaches top_p of the total.
      let goal = P.top_p * mass;
      var lo = 0.0;
      var hi = 1.0;
      var lo_mass = mass;
      for (var it = 0u; it < 24u; it++) {
        let mid = 0.5 * (lo + hi);
        var pm = 0.0;
        for (var i = lid; i < n; i += WG) {
          let w = weight(i, mx, inv_t);
          if (w >= mid) {
            pm += w;
          }
        }
        let m_mid = wg_sum(pm, lid);
        if (m_mid >= goal) {
          lo = mid;
          lo_mass = m_mid;
        } else {
          hi = mid;
        }
      }
      thr = lo;
      mass = lo_mass;
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
      let u = f32(r >> 8u) * (1.0 / 16777216.0) * mass;
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

  if (lid == 0u) {
    tokens[0] = token;
    state.pos += state.n_tokens;
    state.n_tokens = 1u;
    state.step += 1u;
  }
}
