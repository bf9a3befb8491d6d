// Load-time repack of GGUF tensor blocks into the aligned GPU layout of weights.wgsl (runs once per weight).
//
// GGUF blocks are 18 (Q4_0), 20 (Q4_1) or 34 (Q8_0) bytes: not 4-byte aligned, so executing them in place would
// need byte addressing in every matrix product. Here each invocation reads one source block byte by byte and writes
// it as whole u32 words, with nibbles reordered so element e of a block sits in word e / 8 (Q4).
// Source row r goes to destination row dst_row0 + r * dst_row_step, which interleaves gate/up rows and stacks
// q/k/v rows into one matrix.
// Defines: WG, SRC (Q4_0 | Q4_1 | Q8_0 | F16 | F32).

struct Params {
  n_rows: u32,        // rows in this source chunk
  k_blocks: u32,      // 32-element blocks per row
  dst_row0: u32,      // destination row of source row 0
  dst_row_step: u32,  // destination rows between consecutive source rows
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;         // raw GGUF bytes of n_rows rows
@group(0) @binding(2) var<storage, read_write> dst_q: array<u32>;   // (rows, k_blocks, 4 * UNITS) words
#ifdef SCALES
@group(0) @binding(3) var<storage, read_write> dst_s: array<u32>;   // (rows, k_blocks) pack2x16float(d, m)
#endif

fn byte_at(off: u32) -> u32 {
  return (src[off / 4u] >> ((off % 4u) * 8u)) & 0xFFu;
}

fn u16_at(off: u32) -> u32 {
  return byte_at(off) | (byte_at(off + 1u) << 8u);
}

// Element e (0..32) of a Q4 block whose 16 nibble bytes start at q: GGUF puts e < 16 in the low nibble of byte e
// and e >= 16 in the high nibble of byte e - 16.
fn q4_elem(q: u32, e: u32) -> u32 {
  if (e < 16u) {
    return byte_at(q + e) & 15u;
  }
  return byte_at(q + e - 16u) >> 4u;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let idx = (wid.y * nwg.x + wid.x) * WG + lid;  // source block, row-major
  if (idx >= P.n_rows * P.k_blocks) {
    return;
  }
  let row = idx / P.k_blocks;
  let b = idx % P.k_blocks;
  let dst_blk = (P.dst_row0 + row * P.dst_row_step) * P.k_blocks + b;
#if SRC == Q4_0
  let off = idx * 18u;
  let d = unpack2x16float(u16_at(off)).x;
  dst_s[dst_blk] = pack2x16float(vec2<f32>(d, -8.0 * d));
  for (var w = 0u; w < 4u; w++) {
    var word = 0u;
    for (var i = 0u; i < 8u; i++) {
      word |= q4_elem(off + 2u, 8u * w + i) << (4u * i);
    }
    dst_q[dst_blk * 4u + w] = word;
  }
#endif
#if SRC == Q4_1
  let off = idx * 20u;
  dst_s[dst_blk] = u16_at(off) | (u16_at(off + 2u) << 16u);
  for (var w = 0u; w < 4u; w++) {
    var word = 0u;
    for (var i = 0u; i < 8u; i++) {
      word |= q4_elem(off + 4u, 8u * w + i) << (4u * i);
    }
    dst_q[dst_blk * 4u + w] = word;
  }
#endif
#if SRC == Q8_0
  let off = idx * 34u;
  dst_s[dst_blk] = u16_at(off);
  for (var w = 0u; w < 8u; w++) {
    let o = off + 2u + 4u * w;
    dst_q[dst_blk * 8u + w] = byte_at(o) | (byte_at(o + 1u) << 8u) | (byte_at(o + 2u) << 16u) | (byte_at(o + 3u) << 24u);
  }
#endif
#if SRC == F16
  for (var w = 0u; w < 16u; w++) {
    dst_q[dst_blk * 16u + w] = src[idx * 16u + w];
  }
#endif
#if SRC == F32
  for (var w = 0u; w < 32u; w++) {
    dst_q[dst_blk * 32u + w] = src[idx * 32u + w];
  }
#endif
}
