// Internal to gemv_int4 and dequantize_int4_t: the packed layout's byte geometry, the tiling
// constants and where a block's data starts, shared by quant_gemv.cpp (entry points, AVX-512
// path) and quant_gemv_avx2.cpp (AVX2 path); not part of the library's interface (quant_gemv.h).

#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "quant_gemv.h"
#include "vec.h"

namespace pagedllm {
namespace int4_detail {

constexpr int64_t kOctetBytes = 64;                                 // 8 values of k for 16 rows
constexpr int64_t kGroupBytes = kOctetBytes * kInt4GroupSize / 8;  // codes of a block and group
constexpr int64_t kScaleBytes = kInt4BlockRows * 4;                 // (scale, zero) of a block and group
constexpr int kMaxTileRows = 8;                                     // rows of x per pass
constexpr int64_t kRowChunk = 64;                                   // rows of x per sweep over W
// Groups ahead that a tile prefetches (5 KB for 4 blocks): measured 8-14% less time for one
// row of x than without (2 threads, cold weights); 2 groups gained half of that, 8 no more.
constexpr int64_t kPrefetchGroups = 4;

#if defined(__AVX512BF16__) || defined(PAGEDLLM_ISA_AVX2)

// Where a tile finds its blocks' data: block b's codes for group g at
// codes + g * group_stride + b * block_stride, its (scale, zero) lanes at
// sz + g * sz_group_stride + b * sz_block_stride (all in bytes).
struct Int4Tile {
  const uint8_t* codes;
  int64_t group_stride, block_stride;
  const uint8_t* sz;
  int64_t sz_group_stride, sz_block_stride;
};

// Where block `blk` (of `blocks`) of a packed weight with `groups` groups starts.
inline Int4Tile locate(const uint8_t* packed, int64_t blk, int64_t blocks, int64_t groups) {
  const int64_t first = blk / kInt4SuperBlocks * kInt4SuperBlocks, lane = blk - first;
  const int64_t nb = std::min(kInt4SuperBlocks, blocks - first), chunk = nb * (kGroupBytes + kScaleBytes);
  const uint8_t* base = packed + first * groups * (kGroupBytes + kScaleBytes);
  return {base + lane * kGroupBytes, chunk, kGroupBytes, base + nb * kGroupBytes + lane * kScaleBytes, chunk,
          kScaleBytes};
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
void gemv_int4_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed);
void dequantize_int4_t_avx2(const at::Tensor& out, const at::Tensor& packed, int64_t row_begin, int64_t k_len,
                            int64_t n_rows);

#endif

}  // namespace int4_detail
}  // namespace pagedllm
