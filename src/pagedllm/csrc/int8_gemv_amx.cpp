// gemv_int8 on the Intel AMX tiles, for batches (more than kInt8AmxMinRows rows of x). A
// super-block's 64 output rows are taken as two strips of 32 columns; for each group of 32
// values of k, a strip's codes are converted exactly to two bf16 tiles (16 k pairs x 16
// columns, 1 KB each, contiguous) in a per-thread buffer, and the first 32 rows of x multiply
// them at once, while they are in L1; further rows of x then stream the strip's converted
// tiles from L1/L2. Each output is scaled by its row's scale once at the end.
//
// Why fused: converting a whole super-block first (72 KB of bf16 for K = 576, beyond L1) and
// multiplying it afterwards ran the conversion, the products and the weight's memory stream
// one after the other, at about 8 GB/s of codes per call. Converting a tile's worth at a time
// lets the vector units convert while the tile unit multiplies and memory streams the next
// codes. The alternative (dequantize the whole weight, then oneDNN) writes and reads the
// weight in bf16 in memory on every call. The products are the vector kernel's: codes are
// exact in bf16 (|code| <= 127), products exact in float32, sums in float32 (in the tile
// unit's order), the scale applied once, one rounding to bf16.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemm_bf16_impl.h"
#include "int8_gemv_impl.h"
#include "vec.h"

#if defined(PAGEDLLM_HAVE_AMX_BF16)

namespace pagedllm {
namespace int8_detail {
namespace {

constexpr int64_t kStripBlocks = 2;               // blocks (16 columns each) per strip
constexpr int64_t kTileBytes = 1024;              // 16 rows of 64 bytes
constexpr int64_t kGroupTiles = kStripBlocks;     // converted tiles per group of a strip
constexpr int64_t kAheadGroups = 4;               // codes prefetched this many groups ahead

// The tiles of one group of a strip: tile t (block `first_block` + t of the super-block) row j
// = the bf16 pair (code[r][k0 + 2j], code[r][k0 + 2j + 1]) for r = 0..15, k0 = 32 g. The pair's
// 32 bytes of codes (rows 0-7 then 8-15, the two values of each side by side) become the 64
// bytes of that row. `group_codes` is the super-block's chunk for the group (nb blocks).
inline void convert_group(const uint8_t* group_codes, int64_t nb, int64_t first_block, int64_t strip_blocks,
                          uint16_t* tiles) {
  for (int64_t o = 0; o < 4; ++o)
    for (int64_t t = 0; t < strip_blocks; ++t) {
      const uint8_t* line = group_codes + o * nb * kLinePairBytes + (first_block + t) * kLinePairBytes;
      uint16_t* dst = tiles + t * (kTileBytes / 2) + o * 4 * 32;
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

// Accumulator tiles: 0 (rows 0-15, tile 0 of the strip), 1 (rows 0-15, tile 1), 2 and 3 the
// same for rows 16-31; 4 and 5 hold x, 6 and 7 the converted weight. Tile numbers are literals.
template <bool kTwoRowTiles, bool kTwoColTiles>
inline void group_product(const char* x0, int64_t x_row_bytes, const uint16_t* tiles) {
  _tile_loadd(6, tiles, 64);
  if constexpr (kTwoColTiles) _tile_loadd(7, tiles + kTileBytes / 2, 64);
  _tile_loadd(4, x0, x_row_bytes);
  _tile_dpbf16ps(0, 4, 6);
  if constexpr (kTwoColTiles) _tile_dpbf16ps(1, 4, 7);
  if constexpr (kTwoRowTiles) {
    _tile_loadd(5, x0 + 16 * x_row_bytes, x_row_bytes);
    _tile_dpbf16ps(2, 5, 6);
    if constexpr (kTwoColTiles) _tile_dpbf16ps(3, 5, 7);
  }
}

inline void zero_accumulators() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

// out[r, c] = bf16(acc[r][c] * scale[c]) for r < rows, c < 16 * col_tiles; acc is 32 x 32 floats.
inline void store_accumulators(int64_t rows, int64_t col_tiles, const float* scales, uint16_t* out,
                               int64_t out_stride) {
  alignas(64) float acc[32 * 32];
  _tile_stored(0, acc, 128);
  _tile_stored(1, acc + 16, 128);
  _tile_stored(2, acc + 16 * 32, 128);
  _tile_stored(3, acc + 16 * 32 + 16, 128);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < col_tiles; ++c) {
      const __m512 v = _mm512_mul_ps(_mm512_load_ps(acc + r * 32 + c * 16), _mm512_loadu_ps(scales + c * 16));
      store_bf16x16(out + r * out_stride + c * 16, v);
    }
}

// Group g's tiles in a strip's buffer.
template <typename T>
inline T* group_tiles(T* strip_tiles, int64_t g) {
  return strip_tiles + g * kGroupTiles * (kTileBytes / 2);
}

// The first 32 rows of x: each group's codes converted into the strip's tiles, then multiplied
// while they are in L1. The codes are prefetched into L2 a few groups ahead, the whole group
// (both strips' halves, so that the second strip of the super-block finds them there): with
// the vector units busy converting, the stream ran measurably slower on the hardware
// prefetchers alone.
template <bool kTwoRowTiles, bool kTwoColTiles>
void strip_first_rows(const uint8_t* codes, int64_t nb, int64_t first_block, int64_t groups, const char* x0,
                      int64_t x_row_bytes, uint16_t* strip_tiles) {
  const int64_t group_bytes = nb * kBlockGroupBytes;
  for (int64_t g = 0; g < groups; ++g) {
    const char* ahead = reinterpret_cast<const char*>(codes + (g + kAheadGroups) * group_bytes);
    for (int64_t line = 0; line < group_bytes; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T1);
    uint16_t* tiles = group_tiles(strip_tiles, g);
    convert_group(codes + g * group_bytes, nb, first_block, kTwoColTiles ? 2 : 1, tiles);
    group_product<kTwoRowTiles, kTwoColTiles>(x0 + g * 64, x_row_bytes, tiles);
  }
}

// Further rows of x against the strip's converted tiles (from L1 or L2).
template <bool kTwoRowTiles, bool kTwoColTiles>
void strip_more_rows(int64_t groups, const char* x0, int64_t x_row_bytes, const uint16_t* strip_tiles) {
  for (int64_t g = 0; g < groups; ++g)
    group_product<kTwoRowTiles, kTwoColTiles>(x0 + g * 64, x_row_bytes, group_tiles(strip_tiles, g));
}

// x rows [m, m + 32) as the tiles read them, and how many of them are real.
struct RowBlock {
  const char* data;
  int64_t row_bytes, valid;
};

RowBlock row_block(const detail::AmxRowsOfX& x, int64_t m) {
  const bool full = m < x.full_rows;
  return {reinterpret_cast<const char*>(full ? x.data + m * x.stride : x.tail.data()),
          (full ? x.stride : x.k_len) * 2, std::min<int64_t>(32, x.rows - m)};
}

// One strip (1 or 2 blocks of a super-block) against every row of x.
void strip_product(const detail::AmxRowsOfX& x, const uint8_t* super_codes, int64_t nb, int64_t first_block,
                   int64_t strip_blocks, int64_t groups, const float* scales, uint16_t* out, int64_t out_stride,
                   uint16_t* strip_tiles) {
  const bool two_cols = strip_blocks == 2;
  for (int64_t m = 0; m < x.rows; m += 32) {
    const RowBlock b = row_block(x, m);
    const bool two_rows = b.valid > 16;
    zero_accumulators();
    if (m == 0) {
      const auto first = two_rows ? (two_cols ? strip_first_rows<true, true> : strip_first_rows<true, false>)
                                  : (two_cols ? strip_first_rows<false, true> : strip_first_rows<false, false>);
      first(super_codes, nb, first_block, groups, b.data, b.row_bytes, strip_tiles);
    } else {
      const auto more = two_rows ? (two_cols ? strip_more_rows<true, true> : strip_more_rows<true, false>)
                                 : (two_cols ? strip_more_rows<false, true> : strip_more_rows<false, false>);
      more(groups, b.data, b.row_bytes, strip_tiles);
    }
    store_accumulators(b.valid, strip_blocks, scales, out + m * out_stride, out_stride);
  }
}

}  // namespace

bool gemv_int8_amx(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
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
    // A strip's converted tiles, kept for the rows of x past the first 32: 64 bytes per k
    // (36 KB for K = 576); retained by the thread at its largest K.
    thread_local std::vector<uint16_t> strip_buffer;
    strip_buffer.resize(groups * kGroupTiles * (kTileBytes / 2) + 32);
    const auto address = (reinterpret_cast<uintptr_t>(strip_buffer.data()) + 63) & ~uintptr_t{63};
    uint16_t* strip_tiles = reinterpret_cast<uint16_t*>(address);
    detail::amx_begin_thread();
    for (int64_t s = begin; s < end; ++s) {
      const int64_t first = s * kInt8SuperBlocks, nb = std::min(kInt8SuperBlocks, blocks - first);
      const Int8Tile t = locate(codes, first, blocks, groups);
      const uint8_t* super_codes = t.codes;
      const float* scales = reinterpret_cast<const float*>(t.scales);
      for (int64_t b = 0; b < nb; b += kStripBlocks)
        strip_product(rows_of_x, super_codes, nb, b, std::min(kStripBlocks, nb - b), groups,
                      scales + b * kInt8BlockRows, op + (first + b) * kInt8BlockRows, out_stride, strip_tiles);
    }
    detail::amx_end_thread();
  });
  return true;
}

}  // namespace int8_detail
}  // namespace pagedllm

#endif  // PAGEDLLM_HAVE_AMX_BF16
