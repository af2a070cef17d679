// Internal to gemv_int8 and dequantize_int8_t: the packed layout's byte geometry, the tiling
// constants and where a block's data starts, shared by int8_gemv.cpp (entry points, AVX-512
// path) and int8_gemv_avx2.cpp (AVX2 path); not part of the library's interface (int8_gemv.h).

#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "int8_gemv.h"
#include "vec.h"

namespace pagedllm {
namespace int8_detail {

constexpr int64_t kPairBytes = 32;                          // codes of 2 values of k, 16 rows
constexpr int64_t kLinePairBytes = 4 * kPairBytes;          // a block's line: 8 values of k
constexpr int64_t kBlockGroupBytes = 4 * kLinePairBytes;    // a block's bytes for one group
constexpr int64_t kScaleBytes = kInt8BlockRows * 4;         // a block's float32 scales
constexpr int kMaxTileRows = 8;
constexpr int64_t kRowChunk = 64;
constexpr int64_t kPrefetchGroups = 2;  // 2 KB a block ahead: as far as gemv_int4's 4 groups

#if defined(__AVX512BF16__) || defined(PAGEDLLM_ISA_AVX2)

// Where a tile finds its blocks: block b's line o of group g at
// codes + g * group_stride + o * line_stride + b * kLinePairBytes (its pair p kPairBytes * p
// on); its scales at scales + b * kScaleBytes.
struct Int8Tile {
  const uint8_t* codes;
  int64_t group_stride, line_stride;
  const uint8_t* scales;
};

// Where block `blk` (of `blocks`) of a packed weight with `groups` groups starts.
inline Int8Tile locate(const uint8_t* packed, int64_t blk, int64_t blocks, int64_t groups) {
  const int64_t first = blk / kInt8SuperBlocks * kInt8SuperBlocks, lane = blk - first;
  const int64_t nb = std::min(kInt8SuperBlocks, blocks - first);
  const uint8_t* base = packed + first * (kScaleBytes + groups * kBlockGroupBytes);
  return {base + nb * kScaleBytes + lane * kLinePairBytes, nb * kBlockGroupBytes, nb * kLinePairBytes,
          base + lane * kScaleBytes};
}

#endif

#if defined(PAGEDLLM_HAVE_AMX_BF16)

// More rows of x than this take gemv_int8_amx (int8_gemv_amx.cpp) where the tiles are granted:
// up to here the vector kernel's fused products are faster (benchmarks/README.md, "AMX tiles").
constexpr int64_t kInt8AmxMinRows = 8;
// gemv_int8 on the AMX tiles, a super-block dequantized into a bf16 panel at a time; false
// (nothing done) where the OS did not grant the tile state or N is not a multiple of 16.
bool gemv_int8_amx(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed);

#endif

#if defined(PAGEDLLM_ISA_AVX2)

// The AVX2 path's bodies of gemv_int8 and dequantize_int8_t (int8_gemv_avx2.cpp), called
// after their argument checks.
void gemv_int8_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed);
void dequantize_int8_t_avx2(const at::Tensor& out, const at::Tensor& packed, int64_t row_begin, int64_t k_len,
                            int64_t n_rows, int64_t block_bytes);

#endif

}  // namespace int8_detail
}  // namespace pagedllm
