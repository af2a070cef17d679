// gemv_int4 on the Intel AMX tiles, for batches (more than kInt4AmxMinRows rows of x): strips
// of 32 output columns as amx_strips.h multiplies them. Each group's codes become the weight
// dequantize_int4_t writes, (code - 8) * scale + zero in float32 (one rounding, in the fused
// multiply-add) rounded once to bf16, laid out as tiles; the tiles then sum products in
// float32 and the output is rounded to bf16 once. So a batch gets what dequantize + a bf16
// matmul gives, up to the order of the float32 sums, without writing the bf16 weight to memory.
//
// Why not the vector kernel's trick (bf16 16 + code, its scale applied per group): the tiles
// sum over a whole group into accumulators shared by all groups, so per-group scales must be
// in the weight already.

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "amx_strips.h"
#include "gemm_bf16_impl.h"
#include "quant_gemv_impl.h"
#include "vec.h"

#if defined(PAGEDLLM_HAVE_AMX_BF16)

namespace pagedllm {
namespace int4_detail {
namespace {

// Per block and group, the lanes of the (scale, zero) pairs of rows 0-7 and 8-15, each
// duplicated into the two lanes of its k pair, as float32.
struct PairScales {
  __m512 scale_low, zero_low, scale_high, zero_high;
};

inline PairScales pair_scales(const uint8_t* sz) {
  // Lane i of `pairs`: row i's bf16 scale (low half) and zero (high half).
  const __m512i pairs = _mm512_loadu_si512(sz);
  const __m512i low = _mm512_permutexvar_epi32(_mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0), pairs);
  const __m512i high =
      _mm512_permutexvar_epi32(_mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8), pairs);
  const __m512i upper = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(low, 16)), _mm512_castsi512_ps(_mm512_and_si512(low, upper)),
          _mm512_castsi512_ps(_mm512_slli_epi32(high, 16)), _mm512_castsi512_ps(_mm512_and_si512(high, upper))};
}

// The tiles of one group of a strip: tile t (block `first_block` + t of the super-block) row
// 4 o + j = the bf16 pair (w[r][k], w[r][k + 1]), k = 32 g + 8 o + 2 j, for r = 0..15. In a
// line o (one uint32 per row) bits 4j.. and 16 + 4j.. hold that pair's codes, so a shift and
// a mask give the pair as two 16-bit lanes, already in the tile row's order (rows 0-7 in the
// lower half). `chunk` is the super-block's data for the group (nb blocks): nb * 256 bytes of
// codes, then nb * 64 of (scale, zero).
inline void convert_group(const uint8_t* chunk, int64_t nb, int64_t first_block, int64_t strip_blocks,
                          uint16_t* tiles) {
  const __m512i nibbles = _mm512_set1_epi32(0x000F000F);
  const __m512i eight = _mm512_set1_epi16(8);
  for (int64_t t = 0; t < strip_blocks; ++t) {
    const uint8_t* codes = chunk + (first_block + t) * kGroupBytes;
    const PairScales s = pair_scales(chunk + nb * kGroupBytes + (first_block + t) * kScaleBytes);
    uint16_t* tile = tiles + t * detail::amx_strips::kTileWords;
    for (int64_t o = 0; o < 4; ++o) {
      const __m512i line = _mm512_loadu_si512(codes + o * kOctetBytes);
      for (int j = 0; j < 4; ++j) {
        // code - 8 in 16-bit lanes (exact), widened for float32.
        const __m512i pair = _mm512_sub_epi16(_mm512_and_si512(_mm512_srli_epi32(line, 4 * j), nibbles), eight);
        const __m512 low = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(pair)));
        const __m512 high = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(pair, 1)));
        const __m512 w_low = _mm512_fmadd_ps(low, s.scale_low, s.zero_low);
        const __m512 w_high = _mm512_fmadd_ps(high, s.scale_high, s.zero_high);
        _mm512_store_si512(tile + (4 * o + j) * 32, (__m512i)_mm512_cvtne2ps_pbh(w_high, w_low));
      }
    }
  }
}

}  // namespace

bool gemv_int4_amx(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  namespace strips = detail::amx_strips;
  static_assert(kInt4BlockRows == strips::kBlockColumns && kInt4SuperBlocks == strips::kSuperBlockBlocks);
  const int64_t groups = x.size(1) / kInt4GroupSize;
  const auto* codes = packed.data_ptr<uint8_t>();
  return strips::for_each_strip(out, x, groups, [&](int64_t s, int64_t nb, int64_t b, int64_t strip_blocks,
                                                    const detail::AmxRowsOfX& rows, uint16_t* o, int64_t o_stride,
                                                    uint16_t* strip_tiles) {
    const uint8_t* super_block = codes + s * kInt4SuperBlocks * groups * (kGroupBytes + kScaleBytes);
    const int64_t chunk_bytes = nb * (kGroupBytes + kScaleBytes);
    const auto convert = [&](int64_t g, uint16_t* tiles) {
      strips::prefetch_group_ahead(super_block + g * chunk_bytes, chunk_bytes);
      convert_group(super_block + g * chunk_bytes, nb, b, strip_blocks, tiles);
    };
    strips::strip_product(rows, convert, strip_blocks, groups, nullptr, o, o_stride, strip_tiles);
  });
}

}  // namespace int4_detail
}  // namespace pagedllm

#endif  // PAGEDLLM_HAVE_AMX_BF16
