// The AVX2 path (x86-64-v3 build) of gemv_int4 and dequantize_int4_t: its 8-row tiles and
// loops, apart from quant_gemv.cpp (entry points, checks, AVX-512 path) so that each file holds
// one instruction set's code; the layout helpers both use are in quant_gemv_impl.h.
//
// The AVX2 path (x86-64-v3 build) has no bf16 dot products and 16 vector registers: it works
// on 8-row units (half a block) and float32 FMAs, with x widened to float32 once per call.
// Per 8 values of k and unit, the even and odd nibbles are masked into bytes (three ops for
// both), and each value of k then costs a byte shuffle, a conversion and one FMA per row of
// x: for one row it is bound by those three ops per 8 weights (in cache on one core of this
// Xeon about 18 G products/s, against 21 for the AVX-512 path).

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "quant_gemv_impl.h"
#include "vec.h"

#if defined(PAGEDLLM_ISA_AVX2)

namespace pagedllm {
namespace int4_detail {

namespace {

// AVX2 works on units of 8 output rows: half a block, the 32-byte half of each 64-byte line
// (rows 0-7, then 8-15) and of each group's (scale, zero) lanes.
constexpr int64_t kUnitRows = 8;
constexpr int64_t kUnitBytes = 32;
constexpr int kMaxUnits = 4;  // units per tile

// The units of one tile (consecutive, within one super-block, so one stride each): unit i's
// codes for group g at codes[i] + g * group_stride (line o at Int4Tile::line_offset(o) from
// there, through quad_stride), its (scale, zero) pairs at
// sz[i] + g * sz_group_stride; valid[i] of its rows exist (fewer in the padded last block).
struct Int4Units {
  const uint8_t* codes[kMaxUnits];
  const uint8_t* sz[kMaxUnits];
  int64_t group_stride, quad_stride, sz_group_stride;

  int64_t line_offset(int64_t o) const { return int4_line_offset(quad_stride, o); }
  int valid[kMaxUnits];
};

// One bf16 bit pattern as float32 (exact).
inline float bf16_bits_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  __builtin_memcpy(&f, &wide, sizeof(f));
  return f;
}

// vpshufb control that moves byte q of each 32-bit lane to the lane's low byte and clears
// the other three: with the nibbles masked beforehand, lane = one code, ready for cvtdq2ps.
template <int kQ>
inline __m256i byte_to_lane() {
  constexpr int32_t c = static_cast<int32_t>(0x80808000u) | kQ;
  return _mm256_setr_epi32(c, c + 4, c + 8, c + 12, c, c + 4, c + 8, c + 12);
}

template <int kQ>
inline __m256 code_of(__m256i nibbles) {
  return _mm256_cvtepi32_ps(_mm256_shuffle_epi8(nibbles, byte_to_lane<kQ>()));
}

// kM rows of x against kU units of 8 output rows, over all of K.
// Per line and unit: the even and the odd nibbles masked into bytes (two ops for 8 values of
// k), then per value of k one shuffle and one conversion give the 8 rows' codes as exact
// floats, shared by the kM rows of x (one FMA each). Codes 0..15 times bf16 x are exact in
// float32; per group, sum (code - 8) x = acc - 8 sum x, so the (scale, zero) term is
// acc * scale + (zero - 8 scale) * sum x, applied once per group.
//   x:    [K][kM] float32 (k-major, so that every broadcast is at a constant offset)
//   xsum: [groups][kM] float sums of x over each group
template <int kM, int kU>
void int4_tile8(const Int4Units& t, const Int4Groups& gr, const float* x, const float* xsum, uint16_t* out,
                int64_t out_stride) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256 minus8 = _mm256_set1_ps(-8.0f);
  const int64_t groups = gr.count;
  __m256 total[kM][kU];
  for (int m = 0; m < kM; ++m)
    for (int u = 0; u < kU; ++u) total[m][u] = _mm256_setzero_ps();

  for (int64_t g = 0; g < groups; ++g) {
    __m256 acc[kM][kU];
    for (int m = 0; m < kM; ++m)
      for (int u = 0; u < kU; ++u) acc[m][u] = _mm256_setzero_ps();
    const float* xg = x + g * gr.size * kM;
#pragma GCC unroll 4
    for (int64_t o = 0; o < gr.lines; ++o) {
      // As the AVX-512 path (prefetch_ahead): kPrefetchLines ahead, every 4 lines.
      int64_t ga, oa;
      if (o % 4 == 0 && int4_line_ahead(gr, g * gr.lines + o, &ga, &oa)) {
        for (int u = 0; u < kU; ++u) {
          if (u > 0 && t.codes[u] - t.codes[u - 1] == kUnitBytes) continue;  // the same lines
          const uint8_t* lines = t.codes[u] + ga * t.group_stride + t.line_offset(oa);
          for (int i = 0; i < 4; ++i) _mm_prefetch(reinterpret_cast<const char*>(lines + i * kOctetBytes), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(t.sz[u] + ga * t.sz_group_stride), _MM_HINT_T0);
        }
      }
#pragma GCC unroll 2
      for (int s = 0; s < 2; ++s) {
        // Nibble 2i + s of each lane into byte i: k = 8o + 2s + 4 (i % 2) + i / 2 (quant_gemv.h).
        __m256i nib[kU];
        for (int u = 0; u < kU; ++u) {
          const __m256i d =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.codes[u] + g * t.group_stride + t.line_offset(o)));
          nib[u] = _mm256_and_si256(s == 0 ? d : _mm256_srli_epi32(d, 4), low4);
        }
        auto step = [&](auto q_const) {
          constexpr int q = decltype(q_const)::value;
          const int kk = o * 8 + 2 * s + 4 * (q % 2) + q / 2;
          __m256 w[kU];
          for (int u = 0; u < kU; ++u) w[u] = code_of<q>(nib[u]);
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
    for (int u = 0; u < kU; ++u) {
      const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.sz[u] + g * t.sz_group_stride));
      const __m256 scale = low_bf16_to_float8(pairs);
      const __m256 offset = _mm256_fmadd_ps(scale, minus8, high_bf16_to_float8(pairs));
      for (int m = 0; m < kM; ++m) {
        total[m][u] = _mm256_fmadd_ps(acc[m][u], scale, total[m][u]);
        total[m][u] = _mm256_fmadd_ps(offset, _mm256_set1_ps(xsum[g * kM + m]), total[m][u]);
      }
    }
  }
  for (int m = 0; m < kM; ++m)
    for (int u = 0; u < kU; ++u) {
      uint16_t* dst = out + m * out_stride + u * kUnitRows;
      if (t.valid[u] == kUnitRows) {
        store_bf16x8(dst, total[m][u]);
      } else if (t.valid[u] > 0) {  // the padded last block: only the rows that exist
        uint16_t tmp[kUnitRows];
        store_bf16x8(tmp, total[m][u]);
        std::copy(tmp, tmp + t.valid[u], dst);
      }
    }
}

using Tile8Fn = void (*)(const Int4Units&, const Int4Groups&, const float*, const float*, uint16_t*, int64_t);

// Units per tile for kM rows of x: the kM * kU accumulators, kU masked lines, kU codes and
// the broadcast x within the 16 ymm registers (the per-group totals are touched once per 32
// values of k; they may live in memory).
// (In cache on one core, 4 units for one row ran 17.5 G products/s against 17.1 with 2 units
// and two accumulators each; 2 units for 2-4 rows, one beyond, were the fastest that do not
// spill.)
constexpr int units_for(int m) { return m == 1 ? 4 : (m <= 4 ? 2 : 1); }

template <int kM>
constexpr std::array<Tile8Fn, kMaxUnits> tiles8_for_rows() {
  return {&int4_tile8<kM, 1>, &int4_tile8<kM, std::min(2, units_for(kM))>,
          &int4_tile8<kM, std::min(3, units_for(kM))>, &int4_tile8<kM, std::min(4, units_for(kM))>};
}

const std::array<std::array<Tile8Fn, kMaxUnits>, kMaxTileRows> kTiles8 = {
    tiles8_for_rows<1>(), tiles8_for_rows<2>(), tiles8_for_rows<3>(), tiles8_for_rows<4>(),
    tiles8_for_rows<5>(), tiles8_for_rows<6>(), tiles8_for_rows<7>(), tiles8_for_rows<8>()};

// Units first..first + count (8 rows each) of a packed weight of n_len rows.
Int4Units units_at(const uint8_t* packed, int64_t first, int count, int64_t blocks, const Int4Groups& gr,
                   int64_t n_len) {
  Int4Units t{};
  for (int i = 0; i < count; ++i) {
    const int64_t unit = first + i, half = unit % 2;
    const Int4Tile b = locate(packed, unit / 2, blocks, gr);
    t.codes[i] = b.codes + half * kUnitBytes;
    t.sz[i] = b.sz + half * kUnitBytes;
    t.group_stride = b.group_stride;
    t.quad_stride = b.quad_stride;
    t.sz_group_stride = b.sz_group_stride;
    t.valid[i] = static_cast<int>(std::clamp<int64_t>(n_len - unit * kUnitRows, 0, kUnitRows));
  }
  return t;
}

}  // namespace

void gemv_int4_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed, const Int4Groups& gr) {
  const int64_t rows = x.size(0), n_len = out.size(1), k_len = x.size(1);
  if (rows == 0) return;
  const int64_t groups = gr.count, blocks = (n_len + kInt4BlockRows - 1) / kInt4BlockRows;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* codes = packed.data_ptr<uint8_t>();
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t x_stride = x.stride(0), out_stride = out.stride(0);
  // A chunk of rows of x widened to float32 once, k-major within each tile of rows (the
  // tiles broadcast it straight from memory), with its sums over each group; one parallel
  // sweep over W per chunk.
  const int64_t chunk_rows = std::min(rows, kRowChunk);
  std::vector<float> xf(chunk_rows * k_len), xs(chunk_rows * groups);
  for (int64_t m0 = 0; m0 < rows; m0 += kRowChunk) {
    const int64_t mc = std::min(rows, m0 + kRowChunk) - m0;
    for (int64_t m = 0; m < mc; ++m) {
      const int64_t tile = m / kMaxTileRows * kMaxTileRows, mt = std::min<int64_t>(kMaxTileRows, mc - tile);
      float* dst = xf.data() + tile * k_len + (m - tile);
      float* sums = xs.data() + tile * groups + (m - tile);
      for (int64_t g = 0; g < groups; ++g) {
        const uint16_t* src = xp + (m0 + m) * x_stride + g * gr.size;
        float sum = 0.0f;
        for (int64_t i = 0; i < gr.size; ++i) {
          const float v = bf16_bits_to_float(src[i]);
          dst[(g * gr.size + i) * mt] = v;
          sum += v;
        }
        sums[g * mt] = sum;
      }
    }
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      const int64_t units_end = 2 * end, super_units = 2 * kInt4SuperBlocks;
      for (int64_t u = 2 * begin; u < units_end;) {
        // A pass stays within one super-block; its rows of x run in tiles over it.
        const int pass = static_cast<int>(
            std::min({static_cast<int64_t>(kMaxUnits), units_end - u, (u / super_units + 1) * super_units - u}));
        for (int64_t m = 0; m < mc; m += kMaxTileRows) {
          const int mt = static_cast<int>(std::min<int64_t>(kMaxTileRows, mc - m));
          const int nu = units_for(mt);
          for (int done = 0; done < pass; done += nu) {
            const int cnt = std::min(nu, pass - done);
            kTiles8[mt - 1][cnt - 1](units_at(codes, u + done, cnt, blocks, gr, n_len), gr, xf.data() + m * k_len,
                                     xs.data() + m * groups, op + (m0 + m) * out_stride + (u + done) * kUnitRows,
                                     out_stride);
          }
        }
        u += pass;
      }
    });
  }
}

void dequantize_int4_t_avx2(const at::Tensor& out, const at::Tensor& packed, int64_t row_begin, int64_t all_blocks,
                            const Int4Groups& gr) {
  const int64_t n_rows = out.size(1);
  if (n_rows == 0) return;
  const int64_t first = row_begin / kInt4BlockRows, blocks = (n_rows + kInt4BlockRows - 1) / kInt4BlockRows;
  const auto* codes = packed.data_ptr<uint8_t>();
  const bool bf16 = out.scalar_type() == at::kBFloat16;
  char* base = static_cast<char*>(out.data_ptr());
  const int64_t row_bytes = out.stride(0) * (bf16 ? 2 : 4);
  // Parallel over lines (8 values of k), each line's blocks in turn, as on the AVX-512 path.
  at::parallel_for(0, gr.count * gr.lines, 1, [&](int64_t begin, int64_t end) {
    const __m256i nibble = _mm256_set1_epi32(15);
    const __m256 eight = _mm256_set1_ps(8.0f);
    for (int64_t line_index = begin; line_index < end; ++line_index) {
      const int64_t g = line_index / gr.lines, o = line_index % gr.lines;
      for (int64_t b = 0; b < blocks; ++b) {
        const int valid = static_cast<int>(std::min<int64_t>(kInt4BlockRows, n_rows - b * kInt4BlockRows));
        const Int4Tile t = locate(codes, first + b, all_blocks, gr);
        // Both halves of the block (rows 0-7, 8-15) at once: one 32-byte store per value of k.
        const auto* sz = reinterpret_cast<const __m256i*>(t.sz + g * t.sz_group_stride);
        const __m256i pairs[2] = {_mm256_loadu_si256(sz), _mm256_loadu_si256(sz + 1)};
        const __m256 scale[2] = {low_bf16_to_float8(pairs[0]), low_bf16_to_float8(pairs[1])};
        const __m256 zero[2] = {high_bf16_to_float8(pairs[0]), high_bf16_to_float8(pairs[1])};
        const auto* line = reinterpret_cast<const __m256i*>(t.codes + g * t.group_stride + t.line_offset(o));
        const __m256i d[2] = {_mm256_loadu_si256(line), _mm256_loadu_si256(line + 1)};
        for (int r = 0; r < 8; ++r) {  // k = G g + 8o + r: bits 4 * (r / 2) + 16 * (r % 2)
          __m256 w[2];
          for (int h = 0; h < 2; ++h) {
            const __m256i c = _mm256_and_si256(_mm256_srli_epi32(d[h], 4 * (r / 2) + 16 * (r % 2)), nibble);
            // The AVX-512 path's arithmetic, so both builds give the same bits.
            w[h] = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(c), eight), scale[h], zero[h]);
          }
          store_block_row(base + (line_index * 8 + r) * row_bytes, b * kInt4BlockRows, bf16, w, valid);
        }
      }
    }
  });
}

}  // namespace int4_detail
}  // namespace pagedllm

#endif  // PAGEDLLM_ISA_AVX2
