// Weight matrices in the repacked GPU layout (written once at load by repack.wgsl), dequantized in registers.
//
// A matrix W (N rows x K columns, K a multiple of 32) is a row-major sequence of 32-weight blocks: block
// blk = row * K/32 + b. Consecutive blocks are stored in groups of G blocks; a group is U vec4<u32> words of the
// one buffer `w_q` (array<vec4<u32>>): first the G blocks' quant units (nibbles, bytes or floats), then the group's
// bit planes, then its scales. Every load is an aligned word, a row is one contiguous stream, scales keep their raw
// GGUF bits (f16, 6-bit K-quant scales widened to bytes at repack, so no per-step bit gathering), and the layout
// holds the GGUF values exactly: the products below are those of the file.
//
// Bytes per weight (raw GGUF in brackets): Q4_0 4.5 (4.5), Q4_1 5 (5), Q5_0 5.5 (5.5), Q5_1 6 (6), Q8_0 8.5 (8.5),
// Q4_K 4.625 (4.5), Q5_K 5.625 (5.5), Q6_K 6.5625 (6.5625), F16 / BF16 16, F32 32 (bits per weight). The two-level
// K-quant scales cost 1/8 bit per weight over the file: their 6-bit fields become bytes.
//
//   fmt   G   U    per group, in vec4 words [offsets]                           weight of element e (q = quant)
//   Q4_0  8   9    nibbles [0, 8); d f16 x 8 [8]                                d (q - 8)
//   Q4_1  4   5    nibbles [0, 4); (d, m) f16 pairs x 4 [4]                     d q + m
//   Q5_0  8   11   nibbles [0, 8); high bits u32 x 8 [8, 10); d f16 x 8 [10]     d (q - 16)
//   Q5_1  4   6    nibbles [0, 4); high bits u32 x 4 [4]; (d, m) x 4 [5]         d q + m
//   Q8_0  8   17   int8 x 32 per block [0, 16); d f16 x 8 [16]                  d q
//   Q4_K  32  37   nibbles [0, 32); (sc, m) u8 pairs x 32 [32, 36);              d sc q - dmin m
//                  (d, dmin) f16 pairs per super-block (8 blocks) x 4 [36]
//   Q5_K  32  45   nibbles [0, 32); high bits u32 x 32 [32, 40); (sc, m) x 32 [40, 44); (d, dmin) x 4 [44]
//   Q6_K  64  105  nibbles [0, 64); 2-bit planes 2 u32 x 64 [64, 96);           d sc_h (q - 32), h = e / 16
//                  (sc_0, sc_1) int8 pairs x 64 [96, 104); d f16 per super-block x 8 [104]
//   F16   1   4    32 halves; BF16 1 4: 32 bfloat16 (an f32's upper half); F32 1 8: 32 floats
//
// Element e of a block: nibble e % 8 of word e / 8 of its nibble vec4 (low nibble first); high bit e of its u32;
// 2-bit field e % 16 of plane word e / 16; int8 byte e % 4 of word e / 4. Halves and byte pairs: block j of a group
// in the low (j even) or high (j odd) 16 bits of word j / 2.
//
// Functions per format F (compiled in with define FMT_F): dot_f(base, blk, &xb, xsum) = block blk . 32 activations
// xb whose sum is xsum; dq_f(base, blk, i) = weights 4i .. 4i+3 of block blk; oct_f(base, blk, o, x0, x1, xs) =
// weights 8o .. 8o+7 (octet o in 0..4: one nibble word, so four invocations read a block's words side by side) of
// block blk . activations x0 = x[8o .. 8o+3], x1 = x[8o+4 .. 8o+7] whose sum is xs, scale and min included;
// `base` is where the matrix (or its
// segment, matmul.wgsl) starts in w_q, in vec4 words. block_dot / dequant4 are those of W_FMT at base 0, through
// the function names W_DOT / W_DQ (ops.weight_defines builds all of these defines).
// With MR_Q8 (matmul.wgsl: x as integer planes), also q8_f(base, blk, &xp, xs) = block blk . X, the block of x as
// PLANES signed-byte planes xp (x ~ dx X; the caller multiplies by dx), xs = (sum of X, sum of X over elements 0-15):
// q as signed bytes laid out as the planes are (planes_dot), dot4I8Packed with each plane. The planes are in even /
// odd order (XQ_PACK), or in element order for weights of Q8_0 alone (XQ_CONTIGUOUS: registry.Q8_CONTIGUOUS).
//
// Expects the includer to declare `w_q`.

// Small unsigned integers become floats without an integer-to-float conversion instruction (an eighth of the FMA
// rate on NVIDIA GPUs, which would cap a decode GEMV below half of the memory bandwidth): an integer below 2^23
// or-ed into the mantissa of 2^23 is the float 2^23 + integer, exactly. A field masked in place at bit s, not shifted
// down, reads 2^23 + q 2^s, and one fma(v, 2^-s, -2^(23-s)) leaves q: the product is exact, so the result is q
// exactly whether or not the compiler fuses it. Every value below equals the plain conversion bit for bit.
const F_MAGIC: u32 = 0x4B000000u;  // the bits of 2^23

fn u2f(v: u32) -> f32 {
  return bitcast<f32>(v | F_MAGIC) - 8388608.0;
}

fn u2f4(v: vec4<u32>) -> vec4<f32> {
  return bitcast<vec4<f32>>(v | vec4<u32>(F_MAGIC)) - vec4<f32>(8388608.0);
}

// The four 4-bit fields of the low 16 bits of w (low field first), as floats.
fn nibbles_lo(w: u32) -> vec4<f32> {
  let m = (vec4<u32>(w) & vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u)) | vec4<u32>(F_MAGIC);
  return fma(bitcast<vec4<f32>>(m), vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625),
             vec4<f32>(-8388608.0, -524288.0, -32768.0, -2048.0));
}

fn nibbles_hi(w: u32) -> vec4<f32> {
  return nibbles_lo(w >> 16u);
}

// Nibbles 4i .. 4i+3 (i in 0..8) of a block's nibble vec4, as floats.
fn nib4f(q: vec4<u32>, i: u32) -> vec4<f32> {
  return nibbles_lo(q[i / 2u] >> (16u * (i & 1u)));
}

// Bits 4i .. 4i+3 of a high-bit word, as the 16s of a 5-bit quant (0 or 16 each), as floats.
fn bit4f(h: u32, i: u32) -> vec4<f32> {
  let m = (vec4<u32>(h >> (4u * i)) & vec4<u32>(1u, 2u, 4u, 8u)) | vec4<u32>(F_MAGIC);
  return fma(bitcast<vec4<f32>>(m), vec4<f32>(16.0, 8.0, 4.0, 2.0),
             vec4<f32>(-134217728.0, -67108864.0, -33554432.0, -16777216.0));
}

// The four 2-bit fields of the low 8 bits of c, as the 16s and 32s of a 6-bit quant (0, 16, 32 or 48), as floats.
fn crumbs_f(c: u32) -> vec4<f32> {
  let m = (vec4<u32>(c) & vec4<u32>(0x3u, 0xCu, 0x30u, 0xC0u)) | vec4<u32>(F_MAGIC);
  return fma(bitcast<vec4<f32>>(m), vec4<f32>(16.0, 4.0, 1.0, 0.25),
             vec4<f32>(-134217728.0, -33554432.0, -8388608.0, -2097152.0));
}

// 2-bit fields 4i .. 4i+3 (i in 0..8) of a block's two plane words, as the 16s and 32s of a 6-bit quant, as floats.
fn crumb4f(p: vec2<u32>, i: u32) -> vec4<f32> {
  return crumbs_f(p[i / 4u] >> (8u * (i & 3u)));
}

// The four signed bytes of w (low byte first), as floats: flipped to offset binary (b + 128), then as above.
fn bytes_i8(w: u32) -> vec4<f32> {
  let u = w ^ 0x80808080u;
  let m = (vec4<u32>(u, u, u >> 16u, u >> 16u) & vec4<u32>(0xFFu, 0xFF00u, 0xFFu, 0xFF00u)) | vec4<u32>(F_MAGIC);
  return fma(bitcast<vec4<f32>>(m), vec4<f32>(1.0, 0.00390625, 1.0, 0.00390625),
             vec4<f32>(-8388736.0, -32896.0, -8388736.0, -32896.0));
}

fn halves(w0: u32, w1: u32) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(w0), unpack2x16float(w1));
}

fn bf16s(w0: u32, w1: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>(vec4<u32>(w0 << 16u, w0 & 0xFFFF0000u, w1 << 16u, w1 & 0xFFFF0000u));
}

// The f16 in half h (0 low, 1 high) of w.
fn half_at(w: u32, h: u32) -> f32 {
  return unpack2x16float(w >> (16u * h)).x;
}

// The 16-bit field of block j (a byte pair or an f16) in the group's vec4 `v` of eight such fields.
fn field16(v: vec4<u32>, j: u32) -> u32 {
  return (v[(j / 2u) & 3u] >> (16u * (j & 1u))) & 0xFFFFu;
}

// Sum over the block of nibble . x.
fn dot_nibbles(q: vec4<u32>, xb: ptr<function, array<vec4<f32>, 8>>) -> f32 {
  var acc = dot(nibbles_lo(q.x), (*xb)[0]) + dot(nibbles_hi(q.x), (*xb)[1]);
  acc += dot(nibbles_lo(q.y), (*xb)[2]) + dot(nibbles_hi(q.y), (*xb)[3]);
  acc += dot(nibbles_lo(q.z), (*xb)[4]) + dot(nibbles_hi(q.z), (*xb)[5]);
  acc += dot(nibbles_lo(q.w), (*xb)[6]) + dot(nibbles_hi(q.w), (*xb)[7]);
  return acc;
}

// Sum over the block of q . x for 5-bit quants (nibbles + high bits h).
fn dot_q5(q: vec4<u32>, h: u32, xb: ptr<function, array<vec4<f32>, 8>>) -> f32 {
  var acc = 0.0;
  for (var i = 0u; i < 8u; i++) {
    acc += dot(nib4f(q, i) + bit4f(h, i), (*xb)[i]);
  }
  return acc;
}

// (d, dmin) of a K-quant block from its (sc, m) byte pair and its super-block's (d, dmin) f16 pair: the block's
// scale d * sc and its min term -dmin * m.
fn k_scale_min(sm: u32, dd: u32) -> vec2<f32> {
  let s = unpack2x16float(dd);
  return vec2<f32>(s.x * u2f(sm & 0xFFu), -s.y * u2f(sm >> 8u));
}

#ifdef MR_Q8
// Sum of w X over the elements 0-15 and 16-31 of a block: w its 32 signed bytes in eight words (wa: the four words of
// elements 0-15, wb: of 16-31) in the order of the planes xp (PLANES of them, most significant first; plane p's words
// xp[2p]: elements 0-15, xp[2p + 1]: 16-31). The plane sums combine in f32 by Horner, exact while |t| < 2^24.
fn planes_dot(wa: vec4<u32>, wb: vec4<u32>, xp: ptr<function, array<vec4<u32>, XW>>) -> vec2<f32> {
  var t = vec2<f32>(0.0);
  for (var p = 0u; p < PLANES; p++) {
    let xa = (*xp)[2u * p];
    let xc = (*xp)[2u * p + 1u];
    let lo = dot4I8Packed(wa.x, xa.x) + dot4I8Packed(wa.y, xa.y) + dot4I8Packed(wa.z, xa.z) + dot4I8Packed(wa.w, xa.w);
    let hi = dot4I8Packed(wb.x, xc.x) + dot4I8Packed(wb.y, xc.y) + dot4I8Packed(wb.z, xc.z) + dot4I8Packed(wb.w, xc.w);
    t = fma(t, vec2<f32>(256.0), vec2<f32>(f32(lo), f32(hi)));  // only the last plane's step rounds
  }
  return t;
}

// planes_dot of quants split by octet (u32 o of qe / qo: octet o's even elements 8o, 8o+2, 8o+4, 8o+6 / odd ones,
// a byte each), the even / odd plane layout of XQ_PACK.
fn octets_dot(qe: vec4<u32>, qo: vec4<u32>, xp: ptr<function, array<vec4<u32>, XW>>) -> vec2<f32> {
  return planes_dot(vec4<u32>(qe.x, qo.x, qe.y, qo.y), vec4<u32>(qe.z, qo.z, qe.w, qo.w), xp);
}

// A block's nibble vec4 q (nibble e % 8 of word e / 8 is element e) as even / odd bytes by octet.
fn nib_even(q: vec4<u32>) -> vec4<u32> {
  return q & vec4<u32>(0x0F0F0F0Fu);
}

fn nib_odd(q: vec4<u32>) -> vec4<u32> {
  return (q >> vec4<u32>(4u)) & vec4<u32>(0x0F0F0F0Fu);
}

// planes_dot of a 4-bit block (nibble vec4 q).
fn q4_planes(q: vec4<u32>, xp: ptr<function, array<vec4<u32>, XW>>) -> vec2<f32> {
  return octets_dot(nib_even(q), nib_odd(q), xp);
}

// planes_dot of a 5-bit block: nibble vec4 q and high-bit word h (bit e: the 16 of element e). Octet o's 8 high bits
// spread two to a byte (bits 2i, 2i + 1 to bits 0, 1 of byte i of u32 o), then to bit 4 of the even / odd bytes.
fn q5_planes(q: vec4<u32>, h: u32, xp: ptr<function, array<vec4<u32>, XW>>) -> vec2<f32> {
  var x = (vec4<u32>(h) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFFu);
  x = (x | (x << vec4<u32>(12u))) & vec4<u32>(0x000F000Fu);
  x = (x | (x << vec4<u32>(6u))) & vec4<u32>(0x03030303u);
  let m = vec4<u32>(0x10101010u);
  return octets_dot(nib_even(q) | ((x << vec4<u32>(4u)) & m), nib_odd(q) | ((x << vec4<u32>(3u)) & m), xp);
}
#endif

#ifdef FMT_Q4_0
fn dot_q4_0(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  let g = base + (blk / 8u) * 9u;
  let j = blk % 8u;
  let d = half_at(w_q[g + 8u][j / 2u], j & 1u);
  return d * (dot_nibbles(w_q[g + j], xb) - 8.0 * xsum);
}

fn dq_q4_0(base: u32, blk: u32, i: u32) -> vec4<f32> {
  let g = base + (blk / 8u) * 9u;
  let j = blk % 8u;
  let d = half_at(w_q[g + 8u][j / 2u], j & 1u);
  return (nib4f(w_q[g + j], i) - 8.0) * d;
}

fn oct_q4_0(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let g = base + (blk / 8u) * 9u;
  let j = blk % 8u;
  let q = w_q[g + j][o];
  let d = half_at(w_q[g + 8u][j / 2u], j & 1u);
  return d * (dot(nibbles_lo(q), x0) + dot(nibbles_hi(q), x1) - 8.0 * xs);
}

#ifdef MR_Q8
fn q8_q4_0(base: u32, blk: u32, xp: ptr<function, array<vec4<u32>, XW>>, xs: vec2<f32>) -> f32 {
  let g = base + (blk / 8u) * 9u;
  let j = blk % 8u;
  let d = half_at(w_q[g + 8u][j / 2u], j & 1u);
  return d * (dot(q4_planes(w_q[g + j], xp), vec2<f32>(1.0)) - 8.0 * xs.x);
}
#endif
#endif

#ifdef FMT_Q4_1
fn dot_q4_1(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  let g = base + (blk / 4u) * 5u;
  let j = blk % 4u;
  let dm = unpack2x16float(w_q[g + 4u][j]);
  return dm.x * dot_nibbles(w_q[g + j], xb) + dm.y * xsum;
}

fn dq_q4_1(base: u32, blk: u32, i: u32) -> vec4<f32> {
  let g = base + (blk / 4u) * 5u;
  let j = blk % 4u;
  let dm = unpack2x16float(w_q[g + 4u][j]);
  return nib4f(w_q[g + j], i) * dm.x + dm.y;
}

fn oct_q4_1(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let g = base + (blk / 4u) * 5u;
  let j = blk % 4u;
  let q = w_q[g + j][o];
  let dm = unpack2x16float(w_q[g + 4u][j]);
  return dm.x * (dot(nibbles_lo(q), x0) + dot(nibbles_hi(q), x1)) + dm.y * xs;
}

#ifdef MR_Q8
fn q8_q4_1(base: u32, blk: u32, xp: ptr<function, array<vec4<u32>, XW>>, xs: vec2<f32>) -> f32 {
  let g = base + (blk / 4u) * 5u;
  let j = blk % 4u;
  let dm = unpack2x16float(w_q[g + 4u][j]);
  return dm.x * dot(q4_planes(w_q[g + j], xp), vec2<f32>(1.0)) + dm.y * xs.x;
}
#endif
#endif

#ifdef FMT_Q5_0
fn dot_q5_0(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  let g = base + (blk / 8u) * 11u;
  let j = blk % 8u;
  let d = half_at(w_q[g + 10u][j / 2u], j & 1u);
  return d * (dot_q5(w_q[g + j], w_q[g + 8u + j / 4u][j % 4u], xb) - 16.0 * xsum);
}

fn dq_q5_0(base: u32, blk: u32, i: u32) -> vec4<f32> {
  let g = base + (blk / 8u) * 11u;
  let j = blk % 8u;
  let d = half_at(w_q[g + 10u][j / 2u], j & 1u);
  return (nib4f(w_q[g + j], i) + bit4f(w_q[g + 8u + j / 4u][j % 4u], i) - 16.0) * d;
}

fn oct_q5_0(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let g = base + (blk / 8u) * 11u;
  let j = blk % 8u;
  let q = w_q[g + j][o];
  let h = w_q[g + 8u + j / 4u][j % 4u];
  let d = half_at(w_q[g + 10u][j / 2u], j & 1u);
  let v = dot(nibbles_lo(q) + bit4f(h, 2u * o), x0) + dot(nibbles_hi(q) + bit4f(h, 2u * o + 1u), x1);
  return d * (v - 16.0 * xs);
}

#ifdef MR_Q8
fn q8_q5_0(base: u32, blk: u32, xp: ptr<function, array<vec4<u32>, XW>>, xs: vec2<f32>) -> f32 {
  let g = base + (blk / 8u) * 11u;
  let j = blk % 8u;
  let d = half_at(w_q[g + 10u][j / 2u], j & 1u);
  return d * (dot(q5_planes(w_q[g + j], w_q[g + 8u + j / 4u][j % 4u], xp), vec2<f32>(1.0)) - 16.0 * xs.x);
}
#endif
#endif

#ifdef FMT_Q5_1
fn dot_q5_1(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  let g = base + (blk / 4u) * 6u;
  let j = blk % 4u;
  let dm = unpack2x16float(w_q[g + 5u][j]);
  return dm.x * dot_q5(w_q[g + j], w_q[g + 4u][j], xb) + dm.y * xsum;
}

fn dq_q5_1(base: u32, blk: u32, i: u32) -> vec4<f32> {
  let g = base + (blk / 4u) * 6u;
  let j = blk % 4u;
  let dm = unpack2x16float(w_q[g + 5u][j]);
  return (nib4f(w_q[g + j], i) + bit4f(w_q[g + 4u][j], i)) * dm.x + dm.y;
}

fn oct_q5_1(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let g = base + (blk / 4u) * 6u;
  let j = blk % 4u;
  let q = w_q[g + j][o];
  let h = w_q[g + 4u][j];
  let dm = unpack2x16float(w_q[g + 5u][j]);
  let v = dot(nibbles_lo(q) + bit4f(h, 2u * o), x0) + dot(nibbles_hi(q) + bit4f(h, 2u * o + 1u), x1);
  return dm.x * v + dm.y * xs;
}

#ifdef MR_Q8
fn q8_q5_1(base: u32, blk: u32, xp: ptr<function, array<vec4<u32>, XW>>, xs: vec2<f32>) -> f32 {
  let g = base + (blk / 4u) * 6u;
  let j = blk % 4u;
  let dm = unpack2x16float(w_q[g + 5u][j]);
  return dm.x * dot(q5_planes(w_q[g + j], w_q[g + 4u][j], xp), vec2<f32>(1.0)) + dm.y * xs.x;
}
#endif
#endif

#ifdef FMT_Q8_0
fn dot_q8_0(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  let g = base + (blk / 8u) * 17u;
  let j = blk % 8u;
  let d = half_at(w_q[g + 16u][j / 2u], j & 1u);
  let q0 = w_q[g + 2u * j];
  let q1 = w_q[g + 2u * j + 1u];
  var acc = dot(bytes_i8(q0.x), (*xb)[0]) + dot(bytes_i8(q0.y), (*xb)[1]);
  acc += dot(bytes_i8(q0.z), (*xb)[2]) + dot(bytes_i8(q0.w), (*xb)[3]);
  acc += dot(bytes_i8(q1.x), (*xb)[4]) + dot(bytes_i8(q1.y), (*xb)[5]);
  acc += dot(bytes_i8(q1.z), (*xb)[6]) + dot(bytes_i8(q1.w), (*xb)[7]);
  return d * acc;
}

fn dq_q8_0(base: u32, blk: u32, i: u32) -> vec4<f32> {
  let g = base + (blk / 8u) * 17u;
  let j = blk % 8u;
  let d = half_at(w_q[g + 16u][j / 2u], j & 1u);
  return bytes_i8(w_q[g + 2u * j + i / 4u][i % 4u]) * d;
}

fn oct_q8_0(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let g = base + (blk / 8u) * 17u;
  let j = blk % 8u;
  let q = w_q[g + 2u * j + o / 2u];
  let c = 2u * (o & 1u);
  let d = half_at(w_q[g + 16u][j / 2u], j & 1u);
  return d * (dot(bytes_i8(q[c]), x0) + dot(bytes_i8(q[c + 1u]), x1));
}

#ifdef MR_Q8
// Planes in element order (XQ_CONTIGUOUS: a Q8_0 weight) take the bytes as stored; in even / odd order (a weight
// fused with nibble formats), octet o's words a (elements 8o .. 8o+3) and b (8o+4 .. 8o+7) give (e0, e4, e2, e6) and
// (e1, e5, e3, e7) by masks, then bytes 1 and 2 swap.
fn q8_q8_0(base: u32, blk: u32, xp: ptr<function, array<vec4<u32>, XW>>, xs: vec2<f32>) -> f32 {
  let g = base + (blk / 8u) * 17u;
  let j = blk % 8u;
  let d = half_at(w_q[g + 16u][j / 2u], j & 1u);
  let qa = w_q[g + 2u * j];
  let qb = w_q[g + 2u * j + 1u];
#ifdef XQ_CONTIGUOUS
  return d * dot(planes_dot(qa, qb, xp), vec2<f32>(1.0));
#else
  let a = vec4<u32>(qa.x, qa.z, qb.x, qb.z);
  let b = vec4<u32>(qa.y, qa.w, qb.y, qb.w);
  let m = vec4<u32>(0x00FF00FFu);
  let qe = swap_bytes12((a & m) | ((b & m) << vec4<u32>(8u)));
  let qo = swap_bytes12(((a >> vec4<u32>(8u)) & m) | (b & ~m));
  return d * dot(octets_dot(qe, qo, xp), vec2<f32>(1.0));
#endif
}

fn swap_bytes12(w: vec4<u32>) -> vec4<u32> {
  let t = (w ^ (w >> vec4<u32>(8u))) & vec4<u32>(0x0000FF00u);
  return w ^ t ^ (t << vec4<u32>(8u));
}
#endif
#endif

#ifdef FMT_Q4_K
fn dot_q4_k(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  let g = base + (blk / 32u) * 37u;
  let j = blk % 32u;
  let dm = k_scale_min(field16(w_q[g + 32u + j / 8u], j), w_q[g + 36u][j / 8u]);
  return dm.x * dot_nibbles(w_q[g + j], xb) + dm.y * xsum;
}

fn dq_q4_k(base: u32, blk: u32, i: u32) -> vec4<f32> {
  let g = base + (blk / 32u) * 37u;
  let j = blk % 32u;
  let dm = k_scale_min(field16(w_q[g + 32u + j / 8u], j), w_q[g + 36u][j / 8u]);
  return nib4f(w_q[g + j], i) * dm.x + dm.y;
}

fn oct_q4_k(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let g = base + (blk / 32u) * 37u;
  let j = blk % 32u;
  let q = w_q[g + j][o];
  let dm = k_scale_min(field16(w_q[g + 32u + j / 8u], j), w_q[g + 36u][j / 8u]);
  return dm.x * (dot(nibbles_lo(q), x0) + dot(nibbles_hi(q), x1)) + dm.y * xs;
}

#ifdef MR_Q8
fn q8_q4_k(base: u32, blk: u32, xp: ptr<function, array<vec4<u32>, XW>>, xs: vec2<f32>) -> f32 {
  let g = base + (blk / 32u) * 37u;
  let j = blk % 32u;
  let dm = k_scale_min(field16(w_q[g + 32u + j / 8u], j), w_q[g + 36u][j / 8u]);
  return dm.x * dot(q4_planes(w_q[g + j], xp), vec2<f32>(1.0)) + dm.y * xs.x;
}
#endif
#endif

#ifdef FMT_Q5_K
fn dot_q5_k(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  let g = base + (blk / 32u) * 45u;
  let j = blk % 32u;
  let dm = k_scale_min(field16(w_q[g + 40u + j / 8u], j), w_q[g + 44u][j / 8u]);
  return dm.x * dot_q5(w_q[g + j], w_q[g + 32u + j / 4u][j % 4u], xb) + dm.y * xsum;
}

fn dq_q5_k(base: u32, blk: u32, i: u32) -> vec4<f32> {
  let g = base + (blk / 32u) * 45u;
  let j = blk % 32u;
  let dm = k_scale_min(field16(w_q[g + 40u + j / 8u], j), w_q[g + 44u][j / 8u]);
  return (nib4f(w_q[g + j], i) + bit4f(w_q[g + 32u + j / 4u][j % 4u], i)) * dm.x + dm.y;
}

fn oct_q5_k(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let g = base + (blk / 32u) * 45u;
  let j = blk % 32u;
  let q = w_q[g + j][o];
  let h = w_q[g + 32u + j / 4u][j % 4u];
  let dm = k_scale_min(field16(w_q[g + 40u + j / 8u], j), w_q[g + 44u][j / 8u]);
  let v = dot(nibbles_lo(q) + bit4f(h, 2u * o), x0) + dot(nibbles_hi(q) + bit4f(h, 2u * o + 1u), x1);
  return dm.x * v + dm.y * xs;
}

#ifdef MR_Q8
fn q8_q5_k(base: u32, blk: u32, xp: ptr<function, array<vec4<u32>, XW>>, xs: vec2<f32>) -> f32 {
  let g = base + (blk / 32u) * 45u;
  let j = blk % 32u;
  let dm = k_scale_min(field16(w_q[g + 40u + j / 8u], j), w_q[g + 44u][j / 8u]);
  return dm.x * dot(q5_planes(w_q[g + j], w_q[g + 32u + j / 4u][j % 4u], xp), vec2<f32>(1.0)) + dm.y * xs.x;
}
#endif
#endif

#ifdef FMT_Q6_K
// Block j of a Q6_K group at g: its 2-bit plane words and the scales of its two halves (d * sc_0, d * sc_1).
fn q6_planes(g: u32, j: u32) -> vec2<u32> {
  let p = w_q[g + 64u + j / 2u];
  return select(p.xy, p.zw, (j & 1u) == 1u);
}

fn q6_scales(g: u32, j: u32) -> vec2<f32> {
  let d = half_at(w_q[g + 104u][j / 16u], (j / 8u) & 1u);
  let s = field16(w_q[g + 96u + j / 8u], j);
  return d * (vec2<f32>(u2f((s & 0xFFu) ^ 0x80u), u2f((s >> 8u) ^ 0x80u)) - 128.0);
}

fn dot_q6_k(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  let g = base + (blk / 64u) * 105u;
  let j = blk % 64u;
  let q = w_q[g + j];
  let p = q6_planes(g, j);
  var lo = 0.0;  // weights 0-15 (first scale), q - 32 folded in below
  var hi = 0.0;
  for (var i = 0u; i < 4u; i++) {
    lo += dot(nib4f(q, i) + crumb4f(p, i), (*xb)[i]);
    hi += dot(nib4f(q, i + 4u) + crumb4f(p, i + 4u), (*xb)[i + 4u]);
  }
  let x_lo = dot((*xb)[0] + (*xb)[1] + (*xb)[2] + (*xb)[3], vec4<f32>(1.0));
  let s = q6_scales(g, j);
  return s.x * (lo - 32.0 * x_lo) + s.y * (hi - 32.0 * (xsum - x_lo));
}

fn dq_q6_k(base: u32, blk: u32, i: u32) -> vec4<f32> {
  let g = base + (blk / 64u) * 105u;
  let j = blk % 64u;
  let s = q6_scales(g, j);
  return (nib4f(w_q[g + j], i) + crumb4f(q6_planes(g, j), i) - 32.0) * select(s.x, s.y, i >= 4u);
}

fn oct_q6_k(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let g = base + (blk / 64u) * 105u;
  let j = blk % 64u;
  let q = w_q[g + j][o];
  // crumbs of elements 8o .. 8o+7: 16 bits of the block's plane word o / 2 (fields 0-15, then 16-31)
  let c = w_q[g + 64u + j / 2u][2u * (j & 1u) + o / 2u] >> (16u * (o & 1u));
  let s = q6_scales(g, j);
  let v = dot(nibbles_lo(q) + crumbs_f(c), x0) + dot(nibbles_hi(q) + crumbs_f(c >> 8u), x1);
  return select(s.x, s.y, o >= 2u) * (v - 32.0 * xs);
}

#ifdef MR_Q8
// q = nibble + 16 * crumb in 0..63, a positive signed byte: octet o's 16 crumb bits spread a nibble to a byte (crumbs
// 2i, 2i + 1 to bits 0-1, 2-3 of byte i of u32 o), then to bits 4-5 of the even / odd bytes; q - 32 by the sums of X
// over each half (one scale each).
fn q8_q6_k(base: u32, blk: u32, xp: ptr<function, array<vec4<u32>, XW>>, xs: vec2<f32>) -> f32 {
  let g = base + (blk / 64u) * 105u;
  let j = blk % 64u;
  let q = w_q[g + j];
  let c = q6_planes(g, j);
  var x = vec4<u32>(c.x, c.x >> 16u, c.y, c.y >> 16u) & vec4<u32>(0xFFFFu);
  x = (x | (x << vec4<u32>(8u))) & vec4<u32>(0x00FF00FFu);
  x = (x | (x << vec4<u32>(4u))) & vec4<u32>(0x0F0F0F0Fu);
  let m = vec4<u32>(0x30303030u);
  let t = octets_dot(nib_even(q) | ((x << vec4<u32>(4u)) & m), nib_odd(q) | ((x << vec4<u32>(2u)) & m), xp);
  let s = q6_scales(g, j);
  return s.x * (t.x - 32.0 * xs.y) + s.y * (t.y - 32.0 * (xs.x - xs.y));
}
#endif
#endif

#ifdef FMT_F16
fn dot_f16(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  var acc = 0.0;
  for (var u = 0u; u < 4u; u++) {
    let q = w_q[base + 4u * blk + u];
    acc += dot(halves(q.x, q.y), (*xb)[2u * u]) + dot(halves(q.z, q.w), (*xb)[2u * u + 1u]);
  }
  return acc;
}

fn dq_f16(base: u32, blk: u32, i: u32) -> vec4<f32> {
  let q = w_q[base + 4u * blk + i / 2u];
  if ((i & 1u) == 1u) {
    return halves(q.z, q.w);
  }
  return halves(q.x, q.y);
}

fn oct_f16(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let q = w_q[base + 4u * blk + o];
  return dot(halves(q.x, q.y), x0) + dot(halves(q.z, q.w), x1);
}
#endif

#ifdef FMT_BF16
fn dot_bf16(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  var acc = 0.0;
  for (var u = 0u; u < 4u; u++) {
    let q = w_q[base + 4u * blk + u];
    acc += dot(bf16s(q.x, q.y), (*xb)[2u * u]) + dot(bf16s(q.z, q.w), (*xb)[2u * u + 1u]);
  }
  return acc;
}

fn dq_bf16(base: u32, blk: u32, i: u32) -> vec4<f32> {
  let q = w_q[base + 4u * blk + i / 2u];
  if ((i & 1u) == 1u) {
    return bf16s(q.z, q.w);
  }
  return bf16s(q.x, q.y);
}

fn oct_bf16(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  let q = w_q[base + 4u * blk + o];
  return dot(bf16s(q.x, q.y), x0) + dot(bf16s(q.z, q.w), x1);
}
#endif

#ifdef FMT_F32
fn dot_f32(base: u32, blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  var acc = 0.0;
  for (var u = 0u; u < 8u; u++) {
    acc += dot(bitcast<vec4<f32>>(w_q[base + 8u * blk + u]), (*xb)[u]);
  }
  return acc;
}

fn dq_f32(base: u32, blk: u32, i: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>(w_q[base + 8u * blk + i]);
}

fn oct_f32(base: u32, blk: u32, o: u32, x0: vec4<f32>, x1: vec4<f32>, xs: f32) -> f32 {
  return dot(bitcast<vec4<f32>>(w_q[base + 8u * blk + 2u * o]), x0)
       + dot(bitcast<vec4<f32>>(w_q[base + 8u * blk + 2u * o + 1u]), x1);
}
#endif

#ifdef W_DOT
// Dot product of block `blk` (= row * K/32 + block index) of a W_FMT matrix with 32 activations xb, whose sum is xsum.
fn block_dot(blk: u32, xb: ptr<function, array<vec4<f32>, 8>>, xsum: f32) -> f32 {
  return W_DOT(0u, blk, xb, xsum);
}

// Weights 4i .. 4i+3 (i in 0..8) of block `blk`, dequantized.
fn dequant4(blk: u32, i: u32) -> vec4<f32> {
  return W_DQ(0u, blk, i);
}
#endif  // W_DOT: an includer that reads no weights (matmul.wgsl XQ_PACK) names no format
