// Internal to gemv_int4 and dequantize_int4_t: the packed layout's byte geometry, the tiling
// constants and where a block's data starts, shared by quant_gemv.cpp (entry points, AVX-512
// path) and quant_gemv_avx2.cpp (AVX2 path); not part of the library's interface (quant_gemv.h).

#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <immintrin.h>

#include "quant_gemv.h"
#include "vec.h"

namespace pagedllm {
namespace int4_detail {

constexpr int64_t kOctetBytes = 64;                  // a line: 8 values of k for 16 rows
constexpr int64_t kScaleBytes = kInt4BlockRows * 4;  // (scale, zero) of a block and group
// Codes of a block for 32 values of k: a quad of lines, and a whole group of 32 (the only group
// size the AMX kernel takes).
constexpr int64_t kGroupBytes = kOctetBytes * kInt4GroupSize / 8;
constexpr int kMaxTileRows = 8;                                     // rows of x per pass
constexpr int64_t kRowChunk = 64;                                   // rows of x per sweep over W
// Lines ahead (of each block's stream of lines, 8 values of k each) that a tile prefetches:
// 16 lines, 5 KB for 4 blocks, measured 8-14% less time for one row of x than without (2
// threads, cold weights, an earlier session's CPU); half as far gained half of that, twice as far
// no more.
// On the AMD EPYC (Zen 4), switched per pass in one process over a 1B step's 4-bit matmuls,
// 8, 16, 32 lines or none were within 1-4% of each other at 1 and 4 rows.
constexpr int64_t kPrefetchLines = 16;

// A packed weight's group geometry: G values of k per (scale, zero), G / 8 lines per block and
// group.
struct Int4Groups {
  int64_t size, count, lines, code_bytes;  // G, K / G, G / 8, a block's code bytes per group
};

inline Int4Groups int4_groups(int64_t k_len, int64_t group_size) {
  const int64_t lines = group_size / 8;
  return {group_size, k_len / group_size, lines, lines * kOctetBytes};
}

// Bytes from the start of a block's codes for a group to its line o: a group's lines come in
// quads (32 values of k), each quad of all the super-block's blocks in turn (so that a tile
// reads a dense window whatever the group size), quad_stride apart.
inline int64_t int4_line_offset(int64_t quad_stride, int64_t o) {
  return (o >> 2) * quad_stride + (o & 3) * kOctetBytes;
}

// The (group, line) kPrefetchLines after line `line` of a block's stream of lines, for the
// tiles' software prefetch; false past the end.
inline bool int4_line_ahead(const Int4Groups& gr, int64_t line, int64_t* group, int64_t* line_in_group) {
  const int64_t ahead = line + kPrefetchLines;
  if (ahead >= gr.count * gr.lines) return false;
  *group = ahead / gr.lines;
  *line_in_group = ahead - *group * gr.lines;
  return true;
}

#if defined(__AVX512BF16__) || defined(PAGEDLLM_ISA_AVX2)

// Where a tile finds its blocks' data: line o (8 values of k) of block b's codes for group g at
// codes + g * group_stride + b * block_stride + line_offset(o), its (scale, zero) lanes at
// sz + g * sz_group_stride + b * sz_block_stride (all in bytes).
struct Int4Tile {
  const uint8_t* codes;
  int64_t group_stride, block_stride, quad_stride;  // quad_stride: between a group's quads of lines
  const uint8_t* sz;
  int64_t sz_group_stride, sz_block_stride;

  int64_t line_offset(int64_t o) const { return int4_line_offset(quad_stride, o); }
};

// Where block `blk` (of `blocks`) of a packed weight with groups `gr` starts.
inline Int4Tile locate(const uint8_t* packed, int64_t blk, int64_t blocks, const Int4Groups& gr) {
  const int64_t first = blk / kInt4SuperBlocks * kInt4SuperBlocks, lane = blk - first;
  const int64_t group_bytes = gr.code_bytes + kScaleBytes;
  const int64_t nb = std::min(kInt4SuperBlocks, blocks - first), chunk = nb * group_bytes;
  const uint8_t* base = packed + first * gr.count * group_bytes;
  return {base + lane * kGroupBytes, chunk,          kGroupBytes, nb * kGroupBytes,
          base + nb * gr.code_bytes + lane * kScaleBytes, chunk, kScaleBytes};
}

// Prefetches, for `blocks` blocks of a tile from `t` on, the 4 lines kPrefetchLines after line
// `line` (of the K / 8 lines of each block) and their group's (scale, zero): the hardware
// prefetcher alone ramps up too late. Called once per 4 lines, so the distance is the same for
// every group size.
inline void prefetch_ahead(const Int4Tile& t, const Int4Groups& gr, int64_t line, int blocks) {
  int64_t g, o;
  if (!int4_line_ahead(gr, line, &g, &o)) return;
  for (int b = 0; b < blocks; ++b) {
    const uint8_t* codes = t.codes + g * t.group_stride + b * t.block_stride + t.line_offset(o);
    for (int i = 0; i < 4; ++i) _mm_prefetch(reinterpret_cast<const char*>(codes + i * kOctetBytes), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(t.sz + g * t.sz_group_stride + b * t.sz_block_stride), _MM_HINT_T0);
  }
}

#endif

#if defined(PAGEDLLM_HAVE_AMX_BF16)

// More rows of x than this take gemv_int4_amx (quant_gemv_amx.cpp) where the tiles are granted:
// up to here the vector kernel is faster (benchmarks/README.md, "AMX tiles").
constexpr int64_t kInt4AmxMinRows = 5;
// gemv_int4 on the AMX tiles, each group of codes converted into bf16 tiles (the weight
// dequantize_int4_t gives, rounded once to bf16); false (nothing done) where the OS did not
// grant the tile state or N is not a multiple of 16.
bool gemv_int4_amx(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed);

#endif

#if defined(PAGEDLLM_ISA_AVX2)

// The AVX2 path's bodies of gemv_int4 and dequantize_int4_t (quant_gemv_avx2.cpp), called
// after their argument checks.
void gemv_int4_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed, const Int4Groups& gr);
void dequantize_int4_t_avx2(const at::Tensor& out, const at::Tensor& packed, int64_t row_begin, int64_t all_blocks,
                            const Int4Groups& gr);

#endif

}  // namespace int4_detail
}  // namespace pagedllm
