// The AVX2 path (x86-64-v3 build) of gemv_int8 and dequantize_int8_t: its 8-row tiles and
// loops, apart from int8_gemv.cpp (entry points, checks, AVX-512 path) so that each file holds
// one instruction set's code; the layout helpers both use are in int8_gemv_impl.h.
//
// The AVX2 path (x86-64-v3 build) follows gemv_int4's AVX2 path (8-row units, float32 x and
// FMAs); its codes are signed (see int8_gemv.h), so no sum of x is needed.

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

// AVX2 works on units of 8 output rows: half a block, the 32-byte half of each 64-byte line.
constexpr int64_t kUnitRows = 8;
constexpr int64_t kUnitBytes = 32;
constexpr int kMaxUnits = 4;  // units per tile

// The units of one tile (consecutive, within one super-block): unit i's low-nibble line o of
// group g at codes[i] + g * group_stride + o * line_stride (its high nibbles kLineBytes on), its
// 8 float32 scales at scales[i]; valid[i] of its rows exist (fewer in the padded last block).
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

// vpshufb control that moves byte q of each 32-bit lane to the lane's top byte and clears the
// other three: a signed byte c becomes the int32 c * 2^24, which converts to float exactly.
template <int kQ>
inline __m256i byte_to_top() {
  constexpr int32_t c = static_cast<int32_t>((static_cast<uint32_t>(kQ) << 24) | 0x00808080u);
  constexpr int32_t step = 4 << 24;
  return _mm256_setr_epi32(c, c + step, c + 2 * step, c + 3 * step, c, c + step, c + 2 * step, c + 3 * step);
}

// kM rows of x against kU units of 8 output rows, over all of K.
// Per line pair and unit the two nibble planes are merged into the signed codes (u ^ 0x80 =
// u - 128 as a byte), the even and odd values of k in turn; per value of k one shuffle and
// one conversion give the 8 rows' codes times 2^24 as exact floats, shared by the kM rows of
// x (one FMA each). code * 2^24 * x is exact in float32, so the float32 sum is
// 2^24 sum code x up to accumulation; the power of two goes before the row's scale.
//   x: [K][kM] float32 (k-major, so that every broadcast is at a constant offset)
template <int kM, int kU>
void int8_tile8(const Int8Units& t, const float* x, int64_t groups, uint16_t* out, int64_t out_stride) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), high4 = _mm256_set1_epi8(static_cast<char>(0xF0));
  const __m256i sign = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256 acc[kM][kU];
  for (int m = 0; m < kM; ++m)
    for (int u = 0; u < kU; ++u) acc[m][u] = _mm256_setzero_ps();

  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* chunk[kU];
    for (int u = 0; u < kU; ++u) chunk[u] = t.codes[u] + g * t.group_stride;
    if (g + kPrefetchGroups < groups) {
      for (int u = 0; u < kU; ++u) {
        if (u > 0 && t.codes[u] - t.codes[u - 1] == kUnitBytes) continue;  // the same lines
        const uint8_t* ahead = chunk[u] + kPrefetchGroups * t.group_stride;
        for (int o = 0; o < 4; ++o)
          for (int h = 0; h < 2; ++h)
            _mm_prefetch(reinterpret_cast<const char*>(ahead + o * t.line_stride + h * kLineBytes), _MM_HINT_T0);
      }
    }
    const float* xg = x + g * kInt8GroupSize * kM;
#pragma GCC unroll 4
    for (int o = 0; o < 4; ++o) {
#pragma GCC unroll 2
      for (int s = 0; s < 2; ++s) {
        // Nibble 2i + s of each lane's low and high planes into byte i (k = 8o + 2s + 4 (i % 2)
        // + i / 2, as in gemv_int4), then the sign bit flipped: the code as a signed byte.
        __m256i codes[kU];
        for (int u = 0; u < kU; ++u) {
          const auto* line = reinterpret_cast<const __m256i*>(chunk[u] + o * t.line_stride);
          const __m256i lo = _mm256_loadu_si256(line), hi = _mm256_loadu_si256(line + 2);
          const __m256i merged =
              s == 0 ? _mm256_or_si256(_mm256_and_si256(lo, low4), _mm256_and_si256(_mm256_slli_epi32(hi, 4), high4))
                     : _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(lo, 4), low4), _mm256_and_si256(hi, high4));
          codes[u] = _mm256_xor_si256(merged, sign);
        }
        auto step = [&](auto q_const) {
          constexpr int q = decltype(q_const)::value;
          const int kk = o * 8 + 2 * s + 4 * (q % 2) + q / 2;
          __m256 w[kU];
          for (int u = 0; u < kU; ++u) w[u] = _mm256_cvtepi32_ps(_mm256_shuffle_epi8(codes[u], byte_to_top<q>()));
          for (int m = 0; m < kM; ++m) {
            const __m256 xb = _mm256_broadcast_ss(xg + kk * kM + m);
            for (int u = 0; u < kU; ++u) acc[m][u] = _mm256_fmadd_ps(xb, w[u], acc[m][u]);
          }
        };
        step(std::integral_constant<int, 0>{});
        step(std::integral_constant<int, 1>{});
        step(std::integral_constant<int, 2>{});
        step(std::integral_constant<int, 3>{});
      }
    }
  }
  const __m256 unscale = _mm256_set1_ps(1.0f / (1 << 24));
  for (int u = 0; u < kU; ++u) {
    const __m256 scale = _mm256_loadu_ps(reinterpret_cast<const float*>(t.scales[u]));
    for (int m = 0; m < kM; ++m) {
      const __m256 v = _mm256_mul_ps(_mm256_mul_ps(acc[m][u], unscale), scale);  // the first exact
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

// Units per tile for kM rows of x: the kM * kU accumulators, kU merged code registers, kU
// converted codes and the broadcast x within the 16 ymm registers. (In cache on one core, 4
// units ran one row 20% faster than 2, and 2 units two rows 25% faster than 4.)
constexpr int units_for(int m) { return m == 1 ? 4 : (m <= 4 ? 2 : 1); }

template <int kM>
constexpr std::array<Tile8Fn, kMaxUnits> tiles8_for_rows() {
  return {&int8_tile8<kM, 1>, &int8_tile8<kM, std::min(2, units_for(kM))>,
          &int8_tile8<kM, std::min(3, units_for(kM))>, &int8_tile8<kM, std::min(4, units_for(kM))>};
}

const std::array<std::array<Tile8Fn, kMaxUnits>, kMaxTileRows> kTiles8 = {
    tiles8_for_rows<1>(), tiles8_for_rows<2>(), tiles8_for_rows<3>(), tiles8_for_rows<4>(),
    tiles8_for_rows<5>(), tiles8_for_rows<6>(), tiles8_for_rows<7>(), tiles8_for_rows<8>()};

// Units first..first + count (8 rows each) of a packed weight of n_len rows.
Int8Units units_at(const uint8_t* packed, int64_t first, int count, int64_t blocks, int64_t groups, int64_t n_len) {
  Int8Units t{};
  for (int i = 0; i < count; ++i) {
    const int64_t unit = first + i, half = unit % 2;
    const Int8Tile b = locate(packed, unit / 2, blocks, groups);
    t.codes[i] = b.codes + half * kUnitBytes;
    t.scales[i] = b.scales + half * kUnitBytes;
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
  // A chunk of rows of x widened to float32 once, k-major within each tile of rows (the
  // tiles broadcast it straight from memory); one parallel sweep over W per chunk.
  const int64_t chunk_rows = std::min(rows, kRowChunk);
  std::vector<float> xf(chunk_rows * k_len);
  for (int64_t m0 = 0; m0 < rows; m0 += kRowChunk) {
    const int64_t mc = std::min(rows, m0 + kRowChunk) - m0;
    for (int64_t m = 0; m < mc; ++m) {
      const int64_t tile = m / kMaxTileRows * kMaxTileRows, mt = std::min<int64_t>(kMaxTileRows, mc - tile);
      float* dst = xf.data() + tile * k_len + (m - tile);
      const uint16_t* src = xp + (m0 + m) * x_stride;
      for (int64_t k = 0; k < k_len; ++k) dst[k * mt] = bf16_bits_to_float(src[k]);
    }
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      const int64_t units_end = 2 * end, super_units = 2 * kInt8SuperBlocks;
      for (int64_t u = 2 * begin; u < units_end;) {
        // A pass stays within one super-block; its rows of x run in tiles over it.
        const int pass = static_cast<int>(
            std::min({static_cast<int64_t>(kMaxUnits), units_end - u, (u / super_units + 1) * super_units - u}));
        for (int64_t m = 0; m < mc; m += kMaxTileRows) {
          const int mt = static_cast<int>(std::min<int64_t>(kMaxTileRows, mc - m));
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
  at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
    const __m256i nibble = _mm256_set1_epi32(15);
    const __m256 offset = _mm256_set1_ps(128.0f);
    for (int64_t b = begin; b < end; ++b) {
      const int valid = static_cast<int>(std::min<int64_t>(kInt8BlockRows, n_rows - b * kInt8BlockRows));
      const Int8Tile t = locate(codes, first + b, all_blocks, groups);
      const auto* scales = reinterpret_cast<const float*>(t.scales);
      const __m256 scale[2] = {_mm256_loadu_ps(scales), _mm256_loadu_ps(scales + kUnitRows)};
      for (int64_t g = 0; g < groups; ++g) {
        for (int o = 0; o < 4; ++o) {
          // Both halves of the block (rows 0-7, 8-15) at once: one 32-byte store per value of k.
          const auto* line = reinterpret_cast<const __m256i*>(t.codes + g * t.group_stride + o * t.line_stride);
          const __m256i dl[2] = {_mm256_loadu_si256(line), _mm256_loadu_si256(line + 1)};
          const __m256i dh[2] = {_mm256_loadu_si256(line + 2), _mm256_loadu_si256(line + 3)};
          for (int r = 0; r < 8; ++r) {  // k = 32g + 8o + r: bits 4 * (r / 2) + 16 * (r % 2)
            const int shift = 4 * (r / 2) + 16 * (r % 2);
            __m256 w[2];
            for (int h = 0; h < 2; ++h) {
              const __m256i u =
                  _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(dl[h], shift), nibble),
                                  _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(dh[h], shift), nibble), 4));
              // The AVX-512 path's arithmetic, so both builds give the same bits.
              w[h] = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(u), offset), scale[h]);
            }
            store_block_row(base + ((g * 4 + o) * 8 + r) * row_bytes, b * kInt8BlockRows, bf16, w, valid);
          }
        }
      }
    }
  });
}

}  // namespace int8_detail
}  // namespace pagedllm

#endif  // PAGEDLLM_ISA_AVX2
