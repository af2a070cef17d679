// gemv_int8 on the Intel AMX tiles, for batches (more than kInt8AmxMinRows rows of x): strips
// of 32 output columns as amx_strips.h multiplies them, each group's codes converted exactly
// into bf16 tiles; each output is scaled by its row's scale once at the end. The products are
// the vector kernel's: codes are exact in bf16 (|code| <= 127), products exact in float32,
// sums in float32 (in the tile unit's order), the scale applied once, one rounding to bf16.

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "amx_strips.h"
#include "gemm_bf16_impl.h"
#include "int8_gemv_impl.h"
#include "vec.h"

#if defined(PAGEDLLM_HAVE_AMX_BF16)

namespace pagedllm {
namespace int8_detail {
namespace {

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
  static_assert(kInt8BlockRows == strips::kBlockColumns && kInt8SuperBlocks == strips::kSuperBlockBlocks);
  const int64_t groups = x.size(1) / kInt8GroupSize, blocks = out.size(1) / kInt8BlockRows;
  const auto* codes = packed.data_ptr<uint8_t>();
  return strips::for_each_strip(out, x, groups, [&](int64_t s, int64_t nb, int64_t b, int64_t strip_blocks,
                                                    const detail::AmxRowsOfX& rows, uint16_t* o, int64_t o_stride,
                                                    uint16_t* strip_tiles) {
    const Int8Tile t = locate(codes, s * kInt8SuperBlocks, blocks, groups);
    const int64_t group_bytes = nb * kBlockGroupBytes;
    const auto convert = [&](int64_t g, uint16_t* tiles) {
      strips::prefetch_group_ahead(t.codes + g * group_bytes, group_bytes);
      convert_group(t.codes + g * group_bytes, nb, b, strip_blocks, tiles);
    };
    const float* scales = reinterpret_cast<const float*>(t.scales) + b * kInt8BlockRows;
    strips::strip_product(rows, convert, strip_blocks, groups, scales, o, o_stride, strip_tiles);
  });
}

}  // namespace int8_detail
}  // namespace pagedllm

#endif  // PAGEDLLM_HAVE_AMX_BF16
