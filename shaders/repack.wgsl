// Load-time repack of GGUF tensor bytes into the aligned layout of weights.wgsl (runs once per weight), and a scan
// of what it reads: a NaN or infinite scale (or float weight) marks the tensor in `bad`.
//
// GGUF blocks are 18 (Q4_0), 20 (Q4_1), 22 (Q5_0), 24 (Q5_1), 34 (Q8_0), 144 (Q4_K), 176 (Q5_K) or 210 (Q6_K) bytes,
// mostly not 4-byte aligned: read here byte by byte, once, so that no matrix product ever needs byte addressing.
// One invocation per source block (legacy and float types: 32 weights) or super-block (K-quants: 256 weights = 8
// destination blocks). Source row r goes to destination row dst_row0 + r * dst_row_step of the matrix (or segment)
// at dst_base, which interleaves gate/up rows and stacks q/k/v rows.
// Destination words shared by two blocks (16-bit scales; a row of one tensor may end inside a group that the next
// upload fills) are OR-ed in atomically; the buffer starts zeroed (WebGPU zero-fills new buffers) and every bit is
// written once.
// Defines: WG, SRC (a GGUF type name: Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K | F16 | BF16 | F32).

struct Params {
  n_rows: u32,        // rows in this source chunk
  k_blocks: u32,      // 32-weight blocks per row
  dst_row0: u32,      // destination row of source row 0
  dst_row_step: u32,  // destination rows between consecutive source rows
  dst_base: u32,      // where the destination matrix (segment) starts in dst, in vec4<u32> words (16 bytes)
  tensor_id: u32,     // this tensor's number in the load (1, 2, ...), reported through bad
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;                // raw GGUF bytes of n_rows rows
@group(0) @binding(2) var<storage, read_write> dst: array<atomic<u32>>;  // the weight's w_q (weights.wgsl), u32 words
// (1,) min over bad findings of tensor_id * 4 + problem (1: scale d, 2: min m / dmin, 3: a float weight) is NaN or
// infinite; starts at 0xFFFFFFFF (nothing found). The first tensor of the load with a problem wins.
@group(0) @binding(3) var<storage, read_write> bad: array<atomic<u32>>;

fn byte_at(off: u32) -> u32 {
  return (src[off / 4u] >> ((off % 4u) * 8u)) & 0xFFu;
}

fn u16_at(off: u32) -> u32 {
  return byte_at(off) | (byte_at(off + 1u) << 8u);
}

fn u32_at(off: u32) -> u32 {
  return u16_at(off) | (u16_at(off + 2u) << 16u);
}

fn report(problem: u32) {
  atomicMin(&bad[0], P.tensor_id * 4u + problem);
}

// Scan an f16 scale (the low 16 bits of h): an all-ones exponent is an infinity or a NaN.
fn check_f16(h: u32, problem: u32) {
  if ((h & 0x7C00u) == 0x7C00u) {
    report(problem);
  }
}

// Word c (0..3) of vec4 word v of the destination group at vec4 offset g.
fn put(g: u32, v: u32, c: u32, value: u32) {
  atomicStore(&dst[4u * (g + v) + c], value);
}

// The 16-bit field of block j (j even: low half) in the group's vec4 word v of eight 16-bit fields.
fn put16(g: u32, v: u32, j: u32, value: u32) {
  atomicOr(&dst[4u * (g + v) + (j / 2u) % 4u], value << (16u * (j & 1u)));
}

// Element e (0..32) of a legacy block whose 16 nibble bytes start at q: GGUF puts e < 16 in the low nibble of byte e
// and e >= 16 in the high nibble of byte e - 16.
fn q4_elem(q: u32, e: u32) -> u32 {
  if (e < 16u) {
    return byte_at(q + e) & 15u;
  }
  return byte_at(q + e - 16u) >> 4u;
}

// The nibble vec4 (element e at nibble e % 8 of word e / 8) of a legacy block whose nibble bytes start at q.
fn put_legacy_nibbles(g: u32, v: u32, q: u32) {
  for (var w = 0u; w < 4u; w++) {
    var word = 0u;
    for (var i = 0u; i < 8u; i++) {
      word |= q4_elem(q, 8u * w + i) << (4u * i);
    }
    put(g, v, w, word);
  }
}

// K-quant super-blocks: the 6-bit (scale, min) of sub-block j from the 12 scale bytes at s, as the byte pair
// sc | m << 8 of weights.wgsl.
fn k_scale_min(s: u32, j: u32) -> u32 {
  if (j < 4u) {
    return (byte_at(s + j) & 63u) | ((byte_at(s + j + 4u) & 63u) << 8u);
  }
  let sc = (byte_at(s + j + 4u) & 15u) | ((byte_at(s + j - 4u) >> 6u) << 4u);
  let m = (byte_at(s + j + 4u) >> 4u) | ((byte_at(s + j) >> 6u) << 4u);
  return sc | (m << 8u);
}

// The nibble vec4s of the 8 blocks of a Q4_K / Q5_K super-block whose 128 nibble bytes start at q: sub-blocks 2p and
// 2p + 1 are the low and high nibbles of bytes 32p .. 32p + 31.
fn put_k_nibbles(g: u32, v0: u32, q: u32) {
  for (var jj = 0u; jj < 8u; jj++) {
    for (var w = 0u; w < 4u; w++) {
      var word = 0u;
      for (var i = 0u; i < 8u; i++) {
        word |= ((byte_at(q + 32u * (jj / 2u) + 8u * w + i) >> (4u * (jj & 1u))) & 15u) << (4u * i);
      }
      put(g, v0 + jj, w, word);
    }
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let idx = (wid.y * nwg.x + wid.x) * WG + lid;  // source block or super-block, row-major
#if SRC == Q4_K || SRC == Q5_K || SRC == Q6_K
  let units = P.k_blocks / 8u;  // super-blocks per row
#else
  let units = P.k_blocks;
#endif
  if (idx >= P.n_rows * units) {
    return;
  }
  let row = idx / units;
  let dst_row = P.dst_row0 + row * P.dst_row_step;
#if SRC == Q4_K || SRC == Q5_K || SRC == Q6_K
  let blk = dst_row * P.k_blocks + 8u * (idx % units);  // the super-block's first destination block
#else
  let blk = dst_row * P.k_blocks + idx % units;  // destination block
#endif
#if SRC == Q4_0
  let off = idx * 18u;
  let g = P.dst_base + (blk / 8u) * 9u;
  let j = blk % 8u;
  let d = u16_at(off);
  check_f16(d, 1u);
  put_legacy_nibbles(g, j, off + 2u);
  put16(g, 8u, j, d);
#endif
#if SRC == Q4_1
  let off = idx * 20u;
  let g = P.dst_base + (blk / 4u) * 5u;
  let j = blk % 4u;
  check_f16(u16_at(off), 1u);
  check_f16(u16_at(off + 2u), 2u);
  put_legacy_nibbles(g, j, off + 4u);
  put(g, 4u, j, u32_at(off));
#endif
#if SRC == Q5_0
  let off = idx * 22u;
  let g = P.dst_base + (blk / 8u) * 11u;
  let j = blk % 8u;
  let d = u16_at(off);
  check_f16(d, 1u);
  put(g, 8u + j / 4u, j % 4u, u32_at(off + 2u));  // qh: bit e is the 5th bit of element e, as GGUF has it
  put_legacy_nibbles(g, j, off + 6u);
  put16(g, 10u, j, d);
#endif
#if SRC == Q5_1
  let off = idx * 24u;
  let g = P.dst_base + (blk / 4u) * 6u;
  let j = blk % 4u;
  check_f16(u16_at(off), 1u);
  check_f16(u16_at(off + 2u), 2u);
  put(g, 4u, j, u32_at(off + 4u));
  put_legacy_nibbles(g, j, off + 8u);
  put(g, 5u, j, u32_at(off));
#endif
#if SRC == Q8_0
  let off = idx * 34u;
  let g = P.dst_base + (blk / 8u) * 17u;
  let j = blk % 8u;
  let d = u16_at(off);
  check_f16(d, 1u);
  for (var w = 0u; w < 8u; w++) {
    put(g, 2u * j + w / 4u, w % 4u, u32_at(off + 2u + 4u * w));
  }
  put16(g, 16u, j, d);
#endif
#if SRC == Q4_K || SRC == Q5_K
#if SRC == Q4_K
  let off = idx * 144u;
  let q_off = off + 16u;  // nibbles
  let v_scales = 32u;     // vec4 offsets in the group: (sc, m) pairs, (d, dmin) pairs
  let v_dd = 36u;
  let g = P.dst_base + (blk / 32u) * 37u;
#else
  let off = idx * 176u;
  let q_off = off + 48u;
  let v_scales = 40u;
  let v_dd = 44u;
  let g = P.dst_base + (blk / 32u) * 45u;
#endif
  let j0 = blk % 32u;  // a multiple of 8: the super-block's first block in the group
  check_f16(u16_at(off), 1u);
  check_f16(u16_at(off + 2u), 2u);
  put_k_nibbles(g, j0, q_off);
  for (var jj = 0u; jj < 8u; jj += 2u) {
    put(g, v_scales + j0 / 8u, jj / 2u, k_scale_min(off + 4u, jj) | (k_scale_min(off + 4u, jj + 1u) << 16u));
  }
  put(g, v_dd, j0 / 8u, u32_at(off));
#if SRC == Q5_K
  for (var jj = 0u; jj < 8u; jj++) {  // the 5th bit of lane l of sub-block jj is bit jj of qh[l]
    var h = 0u;
    for (var l = 0u; l < 32u; l++) {
      h |= ((byte_at(off + 16u + l) >> jj) & 1u) << l;
    }
    put(g, 32u + (j0 + jj) / 4u, (j0 + jj) % 4u, h);
  }
#endif
#endif
#if SRC == Q6_K
  let off = idx * 210u;
  let g = P.dst_base + (blk / 64u) * 105u;
  let j0 = blk % 64u;
  let d = u16_at(off + 208u);
  check_f16(d, 1u);
  // Block jj = element i / 32 of the super-block: half n = jj / 4, quarter t = jj % 4. Lane l's low nibble is in
  // ql[64 n + 32 (t & 1) + l] (high nibble for t >= 2), its top two bits are bits 2t of qh[32 n + l].
  for (var jj = 0u; jj < 8u; jj++) {
    let n = jj / 4u;
    let t = jj % 4u;
    for (var w = 0u; w < 4u; w++) {
      var word = 0u;
      for (var i = 0u; i < 8u; i++) {
        word |= ((byte_at(off + 64u * n + 32u * (t & 1u) + 8u * w + i) >> (4u * (t / 2u))) & 15u) << (4u * i);
      }
      put(g, j0 + jj, w, word);
    }
    for (var w = 0u; w < 2u; w++) {
      var word = 0u;
      for (var i = 0u; i < 16u; i++) {
        word |= ((byte_at(off + 128u + 32u * n + 16u * w + i) >> (2u * t)) & 3u) << (2u * i);
      }
      put(g, 64u + (j0 + jj) / 2u, 2u * ((j0 + jj) & 1u) + w, word);
    }
  }
  for (var jj = 0u; jj < 8u; jj += 2u) {  // int8 scales of weights 16 s .. 16 s + 15, four per word
    put(g, 96u + j0 / 8u, jj / 2u, u32_at(off + 192u + 2u * jj));
  }
  put16(g, 104u, j0 / 8u, d);
#endif
#if SRC == F16 || SRC == BF16
  for (var w = 0u; w < 16u; w++) {
    let v = src[idx * 16u + w];
#if SRC == F16
    let exp_mask = 0x7C007C00u;
#else
    let exp_mask = 0x7F807F80u;
#endif
    if ((v & exp_mask & 0xFFFFu) == (exp_mask & 0xFFFFu) || (v & exp_mask & 0xFFFF0000u) == (exp_mask & 0xFFFF0000u)) {
      report(3u);
    }
    put(P.dst_base + 4u * blk, w / 4u, w % 4u, v);
  }
#endif
#if SRC == F32
  for (var w = 0u; w < 32u; w++) {
    let v = src[idx * 32u + w];
    if ((v & 0x7F800000u) == 0x7F800000u) {
      report(3u);
    }
    put(P.dst_base + 8u * blk, w / 4u, w % 4u, v);
  }
#endif
}
