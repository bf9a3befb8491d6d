// Quantized weight matrices in the repacked GPU layout (see repack.wgsl), and dequantization in registers.
//
// A matrix W (N rows x K columns, K a multiple of 32) is stored row-major in blocks of 32 weights:
//   w_q: array<vec4<u32>>, (N, K/32, UNITS) with UNITS vec4 words per block:
//     W_FMT == Q4:  1 (32 nibbles; element e of the block is nibble e % 8 of word e / 8, low nibble first)
//     W_FMT == Q8:  2 (32 signed bytes; element e is byte e % 4 of word e / 4)
//     W_FMT == F16: 4 (32 halves; element e is half e % 2 of word e / 2)
//     W_FMT == F32: 8 (32 floats)
//   w_s: array<u32>, (N, K/32): one word per block = pack2x16float(d, m); weight = q * d + m.
//     Q4 holds both GGUF Q4_0 (m = -8 d) and Q4_1; Q8 is GGUF Q8_0 (m = 0). Float formats have no w_s.
// Scales stay packed f16 in both tiers and are read with unpack2x16float (core WGSL, no shader-f16 needed).
//
// Expects the includer to declare `w_q` and, for Q4/Q8, `w_s`.

#if W_FMT == Q4
const UNITS: u32 = 1u;
#endif
#if W_FMT == Q8
const UNITS: u32 = 2u;
#endif
#if W_FMT == F16
const UNITS: u32 = 4u;
#endif
#if W_FMT == F32
const UNITS: u32 = 8u;
#endif

fn nibbles_lo(w: u32) -> vec4<f32> {
  return vec4<f32>(f32(w & 15u), f32((w >> 4u) & 15u), f32((w >> 8u) & 15u), f32((w >> 12u) & 15u));
}

fn nibbles_hi(w: u32) -> vec4<f32> {
  return vec4<f32>(f32((w >> 16u) & 15u), f32((w >> 20u) & 15u), f32((w >> 24u) & 15u), f32(w >> 28u));
}

fn bytes_i8(w: u32) -> vec4<f32> {
  return vec4<f32>(vec4<i32>(bitcast<i32>(w << 24u), bitcast<i32>(w << 16u), bitcast<i32>(w << 8u), bitcast<i32>(w)) >> vec4<u32>(24u));
}

fn halves(w0: u32, w1: u32) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(w0), unpack2x16float(w1));
}

// Dot product of block `blk` (= row * K/32 + block index) with 32 activations xb, whose sum is xsum.
fn block_dot(blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
#if W_FMT == Q4
  let dm = unpack2x16float(w_s[blk]);
  let q = w_q[blk];
  var acc = dot(nibbles_lo(q.x), (*xb)[0]) + dot(nibbles_hi(q.x), (*xb)[1]);
  acc += dot(nibbles_lo(q.y), (*xb)[2]) + dot(nibbles_hi(q.y), (*xb)[3]);
  acc += dot(nibbles_lo(q.z), (*xb)[4]) + dot(nibbles_hi(q.z), (*xb)[5]);
  acc += dot(nibbles_lo(q.w), (*xb)[6]) + dot(nibbles_hi(q.w), (*xb)[7]);
  return dm.x * acc + dm.y * xsum;
#endif
#if W_FMT == Q8
  let d = unpack2x16float(w_s[blk]).x;
  let q0 = w_q[2u * blk];
  let q1 = w_q[2u * blk + 1u];
  var acc = dot(bytes_i8(q0.x), (*xb)[0]) + dot(bytes_i8(q0.y), (*xb)[1]);
  acc += dot(bytes_i8(q0.z), (*xb)[2]) + dot(bytes_i8(q0.w), (*xb)[3]);
  acc += dot(bytes_i8(q1.x), (*xb)[4]) + dot(bytes_i8(q1.y), (*xb)[5]);
  acc += dot(bytes_i8(q1.z), (*xb)[6]) + dot(bytes_i8(q1.w), (*xb)[7]);
  return d * acc;
#endif
#if W_FMT == F16
  var acc = 0.0;
  for (var u = 0u; u < 4u; u++) {
    let q = w_q[4u * blk + u];
    acc += dot(halves(q.x, q.y), (*xb)[2u * u]) + dot(halves(q.z, q.w), (*xb)[2u * u + 1u]);
  }
  return acc;
#endif
#if W_FMT == F32
  var acc = 0.0;
  for (var u = 0u; u < 8u; u++) {
    acc += dot(bitcast<vec4<f32>>(w_q[8u * blk + u]), (*xb)[u]);
  }
  return acc;
#endif
}

// Weights 4i .. 4i+3 (i in 0..8) of block `blk`, dequantized.
fn dequant4(blk: u32, i: u32) -> vec4<f32> {
#if W_FMT == Q4
  let dm = unpack2x16float(w_s[blk]);
  let w = w_q[blk][i / 2u];
  var q = nibbles_lo(w);
  if ((i & 1u) == 1u) {
    q = nibbles_hi(w);
  }
  return q * dm.x + dm.y;
#endif
#if W_FMT == Q8
  let d = unpack2x16float(w_s[blk]).x;
  return bytes_i8(w_q[2u * blk + i / 4u][i % 4u]) * d;
#endif
#if W_FMT == F16
  let q = w_q[4u * blk + i / 2u];
  if ((i & 1u) == 1u) {
    return halves(q.z, q.w);
  }
  return halves(q.x, q.y);
#endif
#if W_FMT == F32
  return bitcast<vec4<f32>>(w_q[8u * blk + i]);
#endif
}
