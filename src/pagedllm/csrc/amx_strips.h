// Internal to the quantized tile kernels (int8_gemv_amx.cpp, quant_gemv_amx.cpp): quantized
// weights multiplied on the AMX tiles a strip of 32 output columns (two blocks of 16 rows of
// W) at a time. For each group of 32 values of k, a format's converter writes the strip's
// weight as two bf16 tiles (16 k pairs x 16 columns, 1 KB each, contiguous) into a per-thread
// buffer, and the first 32 rows of x multiply them at once, while they are in L1; further
// rows of x then read the strip's converted tiles from L1/L2.
//
// Why fused: converting a whole super-block first (72 KB of bf16 for K = 576, beyond L1) and
// multiplying it afterwards ran the conversion, the products and the weight's memory stream
// one after the other. Converting a tile's worth at a time lets the vector units convert while
// the tile unit multiplies. The alternative (dequantize the whole weight, then oneDNN) writes
// and reads the weight in bf16 in memory on every call.
//
// Tiles: 0-3 accumulate (0: rows 0-15 x the strip's first block, 1: rows 0-15 x its second,
// 2 and 3 the same for rows 16-31), 4 and 5 hold x, 6 and 7 the converted weight. The tile
// intrinsics take tile numbers as literals.

#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gemm_bf16_impl.h"
#include "vec.h"

#if defined(PAGEDLLM_HAVE_AMX_BF16)

namespace pagedllm {
namespace detail {
namespace amx_strips {

constexpr int64_t kStripBlocks = 2;          // blocks (16 columns each) per strip
constexpr int64_t kTileWords = 512;          // a converted tile: 16 rows of 64 bytes
constexpr int64_t kGroupWords = kStripBlocks * kTileWords;  // a strip's tiles for one group

// Group g's tiles in a strip's buffer.
template <typename T>
inline T* group_tiles(T* strip_tiles, int64_t g) {
  return strip_tiles + g * kGroupWords;
}

// A per-thread buffer for one strip's converted tiles over all of K (64 bytes per k: 36 KB
// for K = 576), 64-byte aligned; kept by the thread at its largest K.
inline uint16_t* strip_buffer(int64_t groups) {
  thread_local std::vector<uint16_t> buffer;
  buffer.resize(groups * kGroupWords + 32);
  const auto address = (reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t{63};
  return reinterpret_cast<uint16_t*>(address);
}

template <bool kTwoRowTiles, bool kTwoColTiles>
inline void group_product(const char* x0, int64_t x_row_bytes, const uint16_t* tiles) {
  _tile_loadd(6, tiles, 64);
  if constexpr (kTwoColTiles) _tile_loadd(7, tiles + kTileWords, 64);
  _tile_loadd(4, x0, x_row_bytes);
  _tile_dpbf16ps(0, 4, 6);
  if constexpr (kTwoColTiles) _tile_dpbf16ps(1, 4, 7);
  if constexpr (kTwoRowTiles) {
    _tile_loadd(5, x0 + 16 * x_row_bytes, x_row_bytes);
    _tile_dpbf16ps(2, 5, 6);
    if constexpr (kTwoColTiles) _tile_dpbf16ps(3, 5, 7);
  }
}

// out[r, c] = bf16(acc[r][c] (* scales[c] where scales is not null)) for r < rows,
// c < 16 * col_tiles.
inline void store_accumulators(int64_t rows, int64_t col_tiles, const float* scales, uint16_t* out,
                               int64_t out_stride) {
  alignas(64) float acc[32 * 32];
  _tile_stored(0, acc, 128);
  _tile_stored(1, acc + 16, 128);
  _tile_stored(2, acc + 16 * 32, 128);
  _tile_stored(3, acc + 16 * 32 + 16, 128);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < col_tiles; ++c) {
      __m512 v = _mm512_load_ps(acc + r * 32 + c * 16);
      if (scales != nullptr) v = _mm512_mul_ps(v, _mm512_loadu_ps(scales + c * 16));
      store_bf16x16(out + r * out_stride + c * 16, v);
    }
}

// The first 32 rows of x: convert(g, tiles) writes group g's tiles (and prefetches what it
// reads further on), which are multiplied straight away.
template <bool kTwoRowTiles, bool kTwoColTiles, typename Convert>
void strip_first_rows(const Convert& convert, int64_t groups, const char* x0, int64_t x_row_bytes,
                      uint16_t* strip_tiles) {
  for (int64_t g = 0; g < groups; ++g) {
    uint16_t* tiles = group_tiles(strip_tiles, g);
    convert(g, tiles);
    group_product<kTwoRowTiles, kTwoColTiles>(x0 + g * 64, x_row_bytes, tiles);
  }
}

// Further rows of x against the strip's converted tiles.
template <bool kTwoRowTiles, bool kTwoColTiles>
void strip_more_rows(int64_t groups, const char* x0, int64_t x_row_bytes, const uint16_t* strip_tiles) {
  for (int64_t g = 0; g < groups; ++g)
    group_product<kTwoRowTiles, kTwoColTiles>(x0 + g * 64, x_row_bytes, group_tiles(strip_tiles, g));
}

template <bool kTwoRowTiles, bool kTwoColTiles, typename Convert>
void strip_rows(const Convert& convert, bool first, int64_t groups, const char* x0, int64_t x_row_bytes,
                uint16_t* strip_tiles) {
  if (first)
    strip_first_rows<kTwoRowTiles, kTwoColTiles>(convert, groups, x0, x_row_bytes, strip_tiles);
  else
    strip_more_rows<kTwoRowTiles, kTwoColTiles>(groups, x0, x_row_bytes, strip_tiles);
}

// out[:, 0 : 16 * strip_blocks] = every row of x @ the strip's columns (times col_scales where
// not null), the strip's weight given group by group by convert(g, tiles). The thread has
// configured the tiles (amx_begin_thread).
template <typename Convert>
void strip_product(const AmxRowsOfX& x, const Convert& convert, int64_t strip_blocks, int64_t groups,
                   const float* col_scales, uint16_t* out, int64_t out_stride, uint16_t* strip_tiles) {
  const bool two_cols = strip_blocks == 2;
  for (int64_t m = 0; m < x.rows; m += 32) {
    const bool full = m < x.full_rows;
    const char* x0 = reinterpret_cast<const char*>(full ? x.data + m * x.stride : x.tail);
    const int64_t x_row_bytes = (full ? x.stride : x.k_len) * 2;
    const int64_t valid = std::min<int64_t>(32, x.rows - m);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    if (valid > 16 && two_cols)
      strip_rows<true, true>(convert, m == 0, groups, x0, x_row_bytes, strip_tiles);
    else if (valid > 16)
      strip_rows<true, false>(convert, m == 0, groups, x0, x_row_bytes, strip_tiles);
    else if (two_cols)
      strip_rows<false, true>(convert, m == 0, groups, x0, x_row_bytes, strip_tiles);
    else
      strip_rows<false, false>(convert, m == 0, groups, x0, x_row_bytes, strip_tiles);
    store_accumulators(valid, strip_blocks, col_scales, out + m * out_stride, out_stride);
  }
}

// A quantized weight's rows in blocks of 16 and super-blocks of 4 blocks (both formats'
// layouts): every strip of it against all of x, in parallel over super-blocks. For super-block
// s of nb blocks and each of its strips (first block b, strip_blocks blocks), the format's
// strip(s, nb, b, strip_blocks, rows_of_x, out, out_stride, strip_tiles) converts and
// multiplies it, out at the strip's first column. False (nothing done) where the OS did not
// grant the tile state or N is not a multiple of 16.
constexpr int64_t kBlockColumns = 16;
constexpr int64_t kSuperBlockBlocks = 4;

template <typename Strip>
bool for_each_strip(const at::Tensor& out, const at::Tensor& x, int64_t groups, const Strip& strip) {
  const int64_t n_len = out.size(1);
  if (n_len % kBlockColumns != 0 || !amx_tiles_granted()) return false;
  const AmxRowsOfX rows_of_x(x);
  const int64_t blocks = n_len / kBlockColumns;
  const int64_t super_blocks = (blocks + kSuperBlockBlocks - 1) / kSuperBlockBlocks;
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t out_stride = out.stride(0);
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), super_blocks));
  at::parallel_for(0, super_blocks, (super_blocks + threads - 1) / threads, [&](int64_t begin, int64_t end) {
    uint16_t* strip_tiles = strip_buffer(groups);
    amx_begin_thread();
    for (int64_t s = begin; s < end; ++s) {
      const int64_t first = s * kSuperBlockBlocks, nb = std::min(kSuperBlockBlocks, blocks - first);
      for (int64_t b = 0; b < nb; b += kStripBlocks)
        strip(s, nb, b, std::min(kStripBlocks, nb - b), rows_of_x, op + (first + b) * kBlockColumns, out_stride,
              strip_tiles);
    }
    amx_end_thread();
  });
  return true;
}

// Prefetch into L2 the `bytes` of the group kAheadGroups after the one at `group` (groups of
// a super-block lie `bytes` apart): with the vector units busy converting, the weight's stream
// ran measurably slower on the hardware prefetchers alone. The whole group, both strips'
// halves, so that the second strip of a super-block finds them in L2.
constexpr int64_t kAheadGroups = 4;

inline void prefetch_group_ahead(const uint8_t* group, int64_t bytes) {
  const char* c = reinterpret_cast<const char*>(group + kAheadGroups * bytes);
  for (int64_t line = 0; line < bytes; line += 64) _mm_prefetch(c + line, _MM_HINT_T1);
}

}  // namespace amx_strips
}  // namespace detail
}  // namespace pagedllm

#endif  // PAGEDLLM_HAVE_AMX_BF16
