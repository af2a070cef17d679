// The AVX2 path (x86-64-v3 build) of gemv_int8 and dequantize_int8_t: its 8-row tiles and
// loops, apart from int8_gemv.cpp (entry points, checks, AVX-512 path) so that each file holds
// one instruction set's code; the layout helpers both use are in int8_gemv_impl.h.
//
// Units of 8 output rows (half a block: bytes 0-15 or 16-31 of each pair), float32 x broadcast
// as pairs (x[k], x[k + 1]) and float32 FMAs on the signed codes.

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "int8_gemv_impl.h"
#include "vec.h"

#if defined(PAGEDLLM_ISA_AVX2)

namespace pagedllm {
namespace int8_detail {

namespace {

// AVX2 works on units of 8 output rows: half a block, 16 bytes of each 32-byte pair.
constexpr int64_t kUnitRows = 8;
constexpr int64_t kUnitCodeBytes = 16;
constexpr int64_t kUnitScaleBytes = kUnitRows * 4;
constexpr int kMaxUnits = 4;  // units per tile
constexpr int kTileRows = 4;  // rows of x per tile: 2 accumulators per unit and row of x

// The units of one tile (consecutive, within one super-block): unit i's line o of group g at
// codes[i] + g * group_stride + o * line_stride (its pair p kPairBytes * p on), its 8 float32
// scales at scales[i]; valid[i] of its rows exist (fewer in the padded last block).
struct Int8Units {
  const uint8_t* codes[kMaxUnits];
  const uint8_t* scales[kMaxUnits];
  int64_t group_stride, line_stride;
  int valid[kMaxUnits];
};

// One bf16 bit pattern as float32 (exact).
inline float bf16_bits_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  __builtin_memcpy(&f, &wide, sizeof(f));
  return f;
}

// 8 codes (4 rows, both values of k of a pair) as float32: lane 2i row i at k, lane 2i + 1 at k + 1.
inline __m256 codes8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Two registers of 4 rows' lane pairs (rows 0-3, rows 4-7) as the 8 rows' sums, in row order.
inline __m256 add_lane_pairs(__m256 rows0_3, __m256 rows4_7) {
  const __m256 sums = _mm256_hadd_ps(rows0_3, rows4_7);  // rows 0 1 4 5 | 2 3 6 7
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(sums), 0xD8));
}

// kM rows of x against kU units of 8 output rows, over all of K. Each unit and row of x has two
// accumulators (rows 0-3 and 4-7 of the unit), each lane pair summing one output row's values
// at even and odd k; code * x is exact in float32.
//   x: [K / 2][kM][2] float32 (pair-major, so that every broadcast is at a constant offset)
template <int kM, int kU>
void int8_tile8(const Int8Units& t, const float* x, int64_t groups, uint16_t* out, int64_t out_stride) {
  __m256 acc[kM][kU][2];
  for (int m = 0; m < kM; ++m)
    for (int u = 0; u < kU; ++u) acc[m][u][0] = acc[m][u][1] = _mm256_setzero_ps();

  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* chunk[kU];
    for (int u = 0; u < kU; ++u) chunk[u] = t.codes[u] + g * t.group_stride;
    if (g + kPrefetchGroups < groups) {
      for (int u = 0; u < kU; ++u) {
        if (u > 0 && t.codes[u] - t.codes[u - 1] == kUnitCodeBytes) continue;  // the same lines
        const uint8_t* ahead = chunk[u] + kPrefetchGroups * t.group_stride;
        for (int o = 0; o < 4; ++o)
          for (int h = 0; h < 2; ++h)
            _mm_prefetch(reinterpret_cast<const char*>(ahead + o * t.line_stride + h * 64), _MM_HINT_T0);
      }
    }
    const float* xg = x + g * kInt8GroupSize * kM;
#pragma GCC unroll 4
    for (int o = 0; o < 4; ++o) {
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const int pair = o * 4 + p;
        __m256 xb[kM];
        for (int m = 0; m < kM; ++m)
          xb[m] = _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(xg + (pair * kM + m) * 2)));
        for (int u = 0; u < kU; ++u) {
          const uint8_t* codes = chunk[u] + o * t.line_stride + p * kPairBytes;
          const __m256 w0 = codes8(codes), w1 = codes8(codes + 8);
          for (int m = 0; m < kM; ++m) {
            acc[m][u][0] = _mm256_fmadd_ps(xb[m], w0, acc[m][u][0]);
            acc[m][u][1] = _mm256_fmadd_ps(xb[m], w1, acc[m][u][1]);
          }
        }
      }
    }
  }
  for (int u = 0; u < kU; ++u) {
    const __m256 scale = _mm256_loadu_ps(reinterpret_cast<const float*>(t.scales[u]));
    for (int m = 0; m < kM; ++m) {
      const __m256 v = _mm256_mul_ps(add_lane_pairs(acc[m][u][0], acc[m][u][1]), scale);
      uint16_t* dst = out + m * out_stride + u * kUnitRows;
      if (t.valid[u] == kUnitRows) {
        store_bf16x8(dst, v);
      } else if (t.valid[u] > 0) {  // the padded last block: only the rows that exist
        uint16_t tmp[kUnitRows];
        store_bf16x8(tmp, v);
        std::copy(tmp, tmp + t.valid[u], dst);
      }
    }
  }
}

using Tile8Fn = void (*)(const Int8Units&, const float*, int64_t, uint16_t*, int64_t);

// Units per tile for kM rows of x: the 2 * kM * kU accumulators, kM broadcasts and two
// converted code registers within the 16 ymm registers.
constexpr int units_for(int m) { return m == 1 ? 4 : (m == 2 ? 2 : 1); }

template <int kM>
constexpr std::array<Tile8Fn, kMaxUnits> tiles8_for_rows() {
  return {&int8_tile8<kM, 1>, &int8_tile8<kM, std::min(2, units_for(kM))>,
          &int8_tile8<kM, std::min(3, units_for(kM))>, &int8_tile8<kM, std::min(4, units_for(kM))>};
}

const std::array<std::array<Tile8Fn, kMaxUnits>, kTileRows> kTiles8 = {tiles8_for_rows<1>(), tiles8_for_rows<2>(),
                                                                       tiles8_for_rows<3>(), tiles8_for_rows<4>()};

// Units first..first + count (8 rows each) of a packed weight of n_len rows.
Int8Units units_at(const uint8_t* packed, int64_t first, int count, int64_t blocks, int64_t groups, int64_t n_len) {
  Int8Units t{};
  for (int i = 0; i < count; ++i) {
    const int64_t unit = first + i, half = unit % 2;
    const Int8Tile b = locate(packed, unit / 2, blocks, groups);
    t.codes[i] = b.codes + half * kUnitCodeBytes;
    t.scales[i] = b.scales + half * kUnitScaleBytes;
    t.group_stride = b.group_stride;
    t.line_stride = b.line_stride;
    t.valid[i] = static_cast<int>(std::clamp<int64_t>(n_len - unit * kUnitRows, 0, kUnitRows));
  }
  return t;
}

}  // namespace

void gemv_int8_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  const int64_t rows = x.size(0), n_len = out.size(1), k_len = x.size(1);
  if (rows == 0) return;
  const int64_t groups = k_len / kInt8GroupSize, blocks = (n_len + kInt8BlockRows - 1) / kInt8BlockRows;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* codes = packed.data_ptr<uint8_t>();
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t x_stride = x.stride(0), out_stride = out.stride(0);
  // A chunk of rows of x widened to float32 once, pair-major within each tile of rows (the
  // tiles broadcast each pair straight from memory); one parallel sweep over W per chunk.
  const int64_t chunk_rows = std::min(rows, kRowChunk);
  std::vector<float> xf(chunk_rows * k_len);
  for (int64_t m0 = 0; m0 < rows; m0 += kRowChunk) {
    const int64_t mc = std::min(rows, m0 + kRowChunk) - m0;
    for (int64_t m = 0; m < mc; ++m) {
      const int64_t tile = m / kTileRows * kTileRows, mt = std::min<int64_t>(kTileRows, mc - tile);
      float* dst = xf.data() + tile * k_len + 2 * (m - tile);
      const uint16_t* src = xp + (m0 + m) * x_stride;
      for (int64_t k = 0; k < k_len; k += 2) {
        dst[k * mt] = bf16_bits_to_float(src[k]);
        dst[k * mt + 1] = bf16_bits_to_float(src[k + 1]);
      }
    }
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      const int64_t units_end = 2 * end, super_units = 2 * kInt8SuperBlocks;
      for (int64_t u = 2 * begin; u < units_end;) {
        // A pass stays within one super-block; its rows of x run in tiles over it.
        const int pass = static_cast<int>(
            std::min({static_cast<int64_t>(kMaxUnits), units_end - u, (u / super_units + 1) * super_units - u}));
        for (int64_t m = 0; m < mc; m += kTileRows) {
          const int mt = static_cast<int>(std::min<int64_t>(kTileRows, mc - m));
          const int nu = units_for(mt);
          for (int done = 0; done < pass; done += nu) {
            const int cnt = std::min(nu, pass - done);
            kTiles8[mt - 1][cnt - 1](units_at(codes, u + done, cnt, blocks, groups, n_len), xf.data() + m * k_len,
                                     groups, op + (m0 + m) * out_stride + (u + done) * kUnitRows, out_stride);
          }
        }
        u += pass;
      }
    });
  }
}

void dequantize_int8_t_avx2(const at::Tensor& out, const at::Tensor& packed, int64_t row_begin, int64_t k_len,
                            int64_t n_rows, int64_t block_bytes) {
  if (n_rows == 0) return;
  const int64_t groups = k_len / kInt8GroupSize, all_blocks = packed.numel() / block_bytes;
  const int64_t first = row_begin / kInt8BlockRows, blocks = (n_rows + kInt8BlockRows - 1) / kInt8BlockRows;
  const auto* codes = packed.data_ptr<uint8_t>();
  const bool bf16 = out.scalar_type() == at::kBFloat16;
  char* base = static_cast<char*>(out.data_ptr());
  const int64_t row_bytes = out.stride(0) * (bf16 ? 2 : 4);
  // Parallel over lines (8 values of k), each line's blocks in turn, as on the AVX-512 path.
  at::parallel_for(0, groups * 4, 1, [&](int64_t begin, int64_t end) {
    for (int64_t line_index = begin; line_index < end; ++line_index) {
      const int64_t g = line_index / 4, o = line_index % 4;
      for (int64_t b = 0; b < blocks; ++b) {
        const int valid = static_cast<int>(std::min<int64_t>(kInt8BlockRows, n_rows - b * kInt8BlockRows));
        const Int8Tile t = locate(codes, first + b, all_blocks, groups);
        const auto* scales = reinterpret_cast<const float*>(t.scales);
        const __m256 scale[2] = {_mm256_loadu_ps(scales), _mm256_loadu_ps(scales + kUnitRows)};
        const uint8_t* line = t.codes + g * t.group_stride + o * t.line_stride;
        for (int p = 0; p < 4; ++p) {
          const uint8_t* pair = line + p * kPairBytes;
          __m256 even[2], odd[2];  // values k and k + 1 of rows 0-7 and 8-15, in row order
          for (int h = 0; h < 2; ++h) {
            const __m256 a = codes8(pair + h * kUnitCodeBytes), b4 = codes8(pair + h * kUnitCodeBytes + 8);
            // Per 128-bit lane: rows 0 1 4 5 | 2 3 6 7, then the 64-bit pairs in row order.
            const __m256 ev = _mm256_shuffle_ps(a, b4, _MM_SHUFFLE(2, 0, 2, 0));
            const __m256 od = _mm256_shuffle_ps(a, b4, _MM_SHUFFLE(3, 1, 3, 1));
            // The AVX-512 path's arithmetic (code * scale, rounded once), so both builds give the same bits.
            even[h] = _mm256_mul_ps(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), 0xD8)), scale[h]);
            odd[h] = _mm256_mul_ps(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), 0xD8)), scale[h]);
          }
          const int64_t k = line_index * 8 + 2 * p;
          store_block_row(base + k * row_bytes, b * kInt8BlockRows, bf16, even, valid);
          store_block_row(base + (k + 1) * row_bytes, b * kInt8BlockRows, bf16, odd, valid);
        }
      }
    }
  });
}

}  // namespace int8_detail
}  // namespace pagedllm

#endif  // PAGEDLLM_ISA_AVX2
