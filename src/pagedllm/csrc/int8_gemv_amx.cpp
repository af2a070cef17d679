// gemv_int8 on the Intel AMX tiles, for batches (more than kInt8AmxMinRows rows of x): strips
// of 32 output columns as amx_strips.h multiplies them, each group's codes converted exactly
// into bf16 tiles; each output is scaled by its row's scale once at the end. The products are
// the vector kernel's: codes are exact in bf16 (|code| <= 127), products exact in float32,
// sums in float32 (in the tile unit's order), the scale applied once, one rounding to bf16.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx_strips.h"
#include "gemm_bf16_impl.h"
#include "int8_gemv_impl.h"
#include "vec.h"

#if defined(PAGEDLLM_HAVE_AMX_BF16)

namespace pagedllm {
namespace int8_detail {
namespace {

constexpr int64_t kAheadGroups = 4;  // codes prefetched this many groups ahead

// The tiles of one group of a strip: tile t (block `first_block` + t of the super-block) row j
// = the bf16 pair (code[r][k0 + 2j], code[r][k0 + 2j + 1]) for r = 0..15, k0 = 32 g. The pair's
// 32 bytes of codes (rows 0-7 then 8-15, the two values of each side by side) become the 64
// bytes of that row. `group_codes` is the super-block's chunk for the group (nb blocks).
inline void convert_group(const uint8_t* group_codes, int64_t nb, int64_t first_block, int64_t strip_blocks,
                          uint16_t* tiles) {
  for (int64_t o = 0; o < 4; ++o)
    for (int64_t t = 0; t < strip_blocks; ++t) {
      const uint8_t* line = group_codes + o * nb * kLinePairBytes + (first_block + t) * kLinePairBytes;
      uint16_t* dst = tiles + t * detail::amx_strips::kTileWords + o * 4 * 32;
      for (int64_t p = 0; p < 4; ++p) {
        const uint8_t* pair = line + p * kPairBytes;
        const __m512 low =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pair))));
        const __m512 high =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pair + 16))));
        _mm512_store_si512(dst + p * 32, (__m512i)_mm512_cvtne2ps_pbh(high, low));
      }
    }
}

}  // namespace

bool gemv_int8_amx(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  namespace strips = detail::amx_strips;
  const int64_t n_len = out.size(1), k_len = x.size(1);
  if (n_len % kInt8BlockRows != 0 || !detail::amx_tiles_granted()) return false;
  const detail::AmxRowsOfX rows_of_x(x);
  const int64_t groups = k_len / kInt8GroupSize;
  const int64_t blocks = n_len / kInt8BlockRows;
  const int64_t super_blocks = (blocks + kInt8SuperBlocks - 1) / kInt8SuperBlocks;
  const auto* codes = packed.data_ptr<uint8_t>();
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t out_stride = out.stride(0);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), super_blocks));
  at::parallel_for(0, super_blocks, (super_blocks + threads - 1) / threads, [&](int64_t begin, int64_t end) {
    uint16_t* strip_tiles = strips::strip_buffer(groups);
    detail::amx_begin_thread();
    for (int64_t s = begin; s < end; ++s) {
      const int64_t first = s * kInt8SuperBlocks, nb = std::min(kInt8SuperBlocks, blocks - first);
      const Int8Tile t = locate(codes, first, blocks, groups);
      const int64_t group_bytes = nb * kBlockGroupBytes;
      const float* scales = reinterpret_cast<const float*>(t.scales);
      for (int64_t b = 0; b < nb; b += strips::kStripBlocks) {
        const int64_t strip_blocks = std::min(strips::kStripBlocks, nb - b);
        const auto convert = [&](int64_t g, uint16_t* tiles) {
          // The whole group, both strips' halves: the second strip finds them in L2.
          strips::prefetch_group(t.codes + (g + kAheadGroups) * group_bytes, group_bytes);
          convert_group(t.codes + g * group_bytes, nb, b, strip_blocks, tiles);
        };
        strips::strip_product(rows_of_x, convert, strip_blocks, groups, scales + b * kInt8BlockRows,
                              op + (first + b) * kInt8BlockRows, out_stride, strip_tiles);
      }
    }
    detail::amx_end_thread();
  });
  return true;
}

}  // namespace int8_detail
}  // namespace pagedllm

#endif  // PAGEDLLM_HAVE_AMX_BF16
