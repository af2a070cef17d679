// Skinny matmuls on 8-bit weights with per-row scales (decode); see int8_gemv.h for the layout
// and the arithmetic.
//
// The loop is gemv_int4's (quant_gemv.cpp) with two nibble lines per 8 values of k instead of
// one and no per-group scales: each thread reads its blocks' bytes front to back once per 64
// rows of x, tiles of up to 8 rows of x share every line loaded, and the scales are applied once
// per output at the end. A tile of 4 blocks reads 512 consecutive bytes per 8 values of k (the
// layout puts the lines it needs together): with each block's lines 256 bytes apart instead,
// reading from memory ran 10-20% slower (2 threads, weights of 1-34 MB).
//
// The AVX2 path (x86-64-v3 build) is in int8_gemv_avx2.cpp, the layout helpers both paths
// use in int8_gemv_impl.h.

#include "int8_gemv.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <vector>

#include "int8_gemv_impl.h"
#include "vec.h"

namespace pagedllm {

using namespace int8_detail;

namespace {

#if defined(__AVX512BF16__)

// Rows m0..m0 + kM of x (and of x16 = 16 x) against kNB blocks of 16 output rows, all of K.
//   xsum: [kM] float sums of x over all of K
template <int kM, int kNB>
void int8_tile(const Int8Tile& t, const uint16_t* x, const uint16_t* x16, int64_t x_stride, const float* xsum,
               int64_t groups, uint16_t* out, int64_t out_stride, __mmask16 last_mask) {
  const __m512i mask = _mm512_set1_epi32(0x00780078);   // bits 3..6 of both halves
  const __m512i magic = _mm512_set1_epi32(0x41804180);  // bf16 16.0 in both halves
  // Two accumulators per output (low and high nibbles) hide the dot products' latency.
  __m512 lo[kM][kNB], hi[kM][kNB];
  for (int m = 0; m < kM; ++m)
    for (int b = 0; b < kNB; ++b) lo[m][b] = hi[m][b] = _mm512_setzero_ps();

  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* chunk = t.codes + g * t.group_stride;
    if (g + kPrefetchGroups < groups) {
      for (int b = 0; b < kNB; ++b) {
        const uint8_t* ahead = chunk + kPrefetchGroups * t.group_stride + b * kLinePairBytes;
        for (int o = 0; o < 4; ++o)
          for (int h = 0; h < 2; ++h)
            _mm_prefetch(reinterpret_cast<const char*>(ahead + o * t.line_stride + h * kLineBytes), _MM_HINT_T0);
      }
    }
    const int64_t k0 = g * kInt8GroupSize;
#pragma GCC unroll 4
    for (int o = 0; o < 4; ++o) {
      __m512i dl[kNB], dh[kNB];
      for (int b = 0; b < kNB; ++b) {
        dl[b] = _mm512_loadu_si512(chunk + o * t.line_stride + b * kLinePairBytes);
        dh[b] = _mm512_loadu_si512(chunk + o * t.line_stride + b * kLinePairBytes + kLineBytes);
      }
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        __m512bh wl[kNB], wh[kNB];
        for (int b = 0; b < kNB; ++b) {
          __m512i sl, sh;
          switch (j) {
            case 0: sl = _mm512_slli_epi32(dl[b], 3); sh = _mm512_slli_epi32(dh[b], 3); break;
            case 1: sl = _mm512_srli_epi32(dl[b], 1); sh = _mm512_srli_epi32(dh[b], 1); break;
            case 2: sl = _mm512_srli_epi32(dl[b], 5); sh = _mm512_srli_epi32(dh[b], 5); break;
            default: sl = _mm512_srli_epi32(dl[b], 9); sh = _mm512_srli_epi32(dh[b], 9); break;
          }
          wl[b] = (__m512bh)_mm512_ternarylogic_epi32(sl, mask, magic, 0xEA);  // (s & mask) | magic
          wh[b] = (__m512bh)_mm512_ternarylogic_epi32(sh, mask, magic, 0xEA);
        }
        const int64_t k = k0 + o * 8 + 2 * j;
        for (int m = 0; m < kM; ++m) {
          int32_t pair, pair16;
          __builtin_memcpy(&pair, x + m * x_stride + k, sizeof(pair));
          __builtin_memcpy(&pair16, x16 + m * x_stride + k, sizeof(pair16));
          const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
          const __m512bh xv16 = (__m512bh)_mm512_set1_epi32(pair16);
          for (int b = 0; b < kNB; ++b) {
            lo[m][b] = _mm512_dpbf16_ps(lo[m][b], xv, wl[b]);
            hi[m][b] = _mm512_dpbf16_ps(hi[m][b], xv16, wh[b]);
          }
        }
      }
    }
  }
  const __m512 minus400 = _mm512_set1_ps(-400.0f);
  for (int b = 0; b < kNB; ++b) {
    const __m512 scale = _mm512_loadu_ps(reinterpret_cast<const float*>(t.scales + b * kScaleBytes));
    for (int m = 0; m < kM; ++m) {
      // sum x code = (lo + hi) - 400 sum x; then the row's scale.
      const __m512 dot = _mm512_fmadd_ps(minus400, _mm512_set1_ps(xsum[m]), _mm512_add_ps(lo[m][b], hi[m][b]));
      const __m256i v = to_bf16x16(_mm512_mul_ps(dot, scale));
      uint16_t* dst = out + m * out_stride + b * kInt8BlockRows;
      if (b == kNB - 1)
        _mm256_mask_storeu_epi16(dst, last_mask, v);
      else
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), v);
    }
  }
}

using TileFn = void (*)(const Int8Tile&, const uint16_t*, const uint16_t*, int64_t, const float*, int64_t, uint16_t*,
                        int64_t, __mmask16);

// Blocks per pass for a tile of kM rows: 2 * kM * kNB accumulators plus 2 * kNB weight
// registers must stay within the 32 vector registers.
constexpr int blocks_for(int m) { return m == 1 ? 4 : (m <= 3 ? 2 : 1); }

template <int kM>
constexpr std::array<TileFn, 4> tiles_for_rows() {
  return {&int8_tile<kM, 1>, &int8_tile<kM, std::min(2, blocks_for(kM))>,
          &int8_tile<kM, std::min(3, blocks_for(kM))>, &int8_tile<kM, std::min(4, blocks_for(kM))>};
}

const std::array<std::array<TileFn, 4>, kMaxTileRows> kTiles = {
    tiles_for_rows<1>(), tiles_for_rows<2>(), tiles_for_rows<3>(), tiles_for_rows<4>(),
    tiles_for_rows<5>(), tiles_for_rows<6>(), tiles_for_rows<7>(), tiles_for_rows<8>()};

#endif  // __AVX512BF16__

}  // namespace

bool gemv_int8_supported(const at::Tensor& x, const at::Tensor& packed, int64_t n) {
#if defined(__AVX512BF16__) || defined(PAGEDLLM_ISA_AVX2)
  return x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.size(0) <= kInt8GemvMaxRows && x.stride(1) == 1 &&
         x.size(1) % kInt8GroupSize == 0 && x.size(1) > 0 && n > 0 && x.device().is_cpu() &&
         packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.device().is_cpu() &&
         packed.numel() == int8_packed_bytes(n, x.size(1));
#else
  (void)x, (void)packed, (void)n;
  return false;
#endif
}

void gemv_int8(at::Tensor out, const at::Tensor& x, const at::Tensor& packed) {
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.dim() == 2 && out.device().is_cpu() && out.stride(1) == 1 &&
                  x.dim() == 2 && out.size(0) == x.size(0),
              "gemv_int8: out must be a bf16 CPU tensor [M, N] with unit stride along N");
  TORCH_CHECK(gemv_int8_supported(x, packed, out.size(1)),
              "gemv_int8 takes bf16 x [M <= 65536, K % 32 == 0] and a weight packed for it (see int8_gemv.h)");
#if defined(__AVX512BF16__)
  const int64_t rows = x.size(0), n_len = out.size(1), k_len = x.size(1);
  if (rows == 0) return;
  const int64_t groups = k_len / kInt8GroupSize, blocks = (n_len + kInt8BlockRows - 1) / kInt8BlockRows;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* codes = packed.data_ptr<uint8_t>();
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t out_stride = out.stride(0);

  // 16 x (exact in bf16: a power of two) and the sums of x, once per call; rows contiguous.
  std::vector<uint16_t> x16(rows * k_len), xc(x.stride(0) == k_len ? 0 : rows * k_len);
  std::vector<float> xsum(rows);
  const __m512 sixteen = _mm512_set1_ps(16.0f);
  for (int64_t m = 0; m < rows; ++m) {
    const uint16_t* src = xp + m * x.stride(0);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t k = 0; k < k_len; k += 16) {
      const __m512 v = load_bf16x16(src + k);
      sum = _mm512_add_ps(sum, v);
      store_bf16x16(x16.data() + m * k_len + k, _mm512_mul_ps(v, sixteen));
    }
    xsum[m] = _mm512_reduce_add_ps(sum);
    if (!xc.empty()) std::copy(src, src + k_len, xc.data() + m * k_len);
  }
  const uint16_t* xrows = xc.empty() ? xp : xc.data();
  const int tail = static_cast<int>(n_len - (blocks - 1) * kInt8BlockRows);
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1);

  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t m0 = 0; m0 < rows; m0 += kRowChunk) {
      const int64_t m1 = std::min(rows, m0 + kRowChunk);
      const int nb_max = blocks_for(static_cast<int>(std::min<int64_t>(m1 - m0, kMaxTileRows)));
      for (int64_t b = begin; b < end;) {
        const int64_t super_end = (b / kInt8SuperBlocks + 1) * kInt8SuperBlocks;
        const int nb = static_cast<int>(std::min({static_cast<int64_t>(nb_max), end - b, super_end - b}));
        for (int64_t m = m0; m < m1; m += kMaxTileRows) {
          const int mt = static_cast<int>(std::min<int64_t>(kMaxTileRows, m1 - m));
          const int nbt = std::min(nb, blocks_for(mt));
          for (int done = 0; done < nb; done += nbt) {
            const int cnt = std::min(nbt, nb - done);
            const int64_t blk = b + done;
            kTiles[mt - 1][cnt - 1](locate(codes, blk, blocks, groups), xrows + m * k_len, x16.data() + m * k_len,
                                    k_len, xsum.data() + m, groups, op + m * out_stride + blk * kInt8BlockRows,
                                    out_stride, blk + cnt == blocks ? tail_mask : static_cast<__mmask16>(0xFFFF));
          }
        }
        b += nb;
      }
    }
  });
#elif defined(PAGEDLLM_ISA_AVX2)
  gemv_int8_avx2(out, x, packed);
#endif
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n) {
  const at::Tensor xc = x.dim() == 2 && x.stride(1) != 1 ? x.contiguous() : x;
  at::Tensor out = at::empty({xc.size(0), n}, xc.options());
  gemv_int8(out, xc, packed);
  return out;
}

void dequantize_int8_t(at::Tensor out, const at::Tensor& packed, int64_t row_begin) {
  TORCH_CHECK(out.dim() == 2 && out.device().is_cpu() && out.stride(1) == 1 &&
                  (out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kFloat),
              "dequantize_int8_t: out must be a bf16 or float32 CPU tensor [K, rows] with unit stride along rows");
  TORCH_CHECK(row_begin >= 0 && row_begin % kInt8BlockRows == 0,
              "dequantize_int8_t: row_begin must be a multiple of 16");
  const int64_t k_len = out.size(0), n_rows = out.size(1);
  const int64_t block_bytes = kInt8BlockRows * (k_len + 4);
  TORCH_CHECK(k_len > 0 && k_len % kInt8GroupSize == 0 && packed.scalar_type() == at::kByte &&
                  packed.is_contiguous() && packed.numel() % block_bytes == 0 &&
                  row_begin + n_rows <= packed.numel() / block_bytes * kInt8BlockRows,
              "dequantize_int8_t: packed is not gemv_int8's layout for these rows (see int8_gemv.h)");
#if defined(__AVX512BF16__)
  if (n_rows == 0) return;
  const int64_t groups = k_len / kInt8GroupSize, all_blocks = packed.numel() / block_bytes;
  const int64_t first = row_begin / kInt8BlockRows, blocks = (n_rows + kInt8BlockRows - 1) / kInt8BlockRows;
  const auto* codes = packed.data_ptr<uint8_t>();
  const bool bf16 = out.scalar_type() == at::kBFloat16;
  char* base = static_cast<char*>(out.data_ptr());
  const int64_t row_bytes = out.stride(0) * (bf16 ? 2 : 4);
  at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
    const __m512i nibble = _mm512_set1_epi32(15);
    const __m512 offset = _mm512_set1_ps(128.0f);
    for (int64_t b = begin; b < end; ++b) {
      const int valid = static_cast<int>(std::min<int64_t>(kInt8BlockRows, n_rows - b * kInt8BlockRows));
      const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
      const Int8Tile t = locate(codes, first + b, all_blocks, groups);
      const __m512 scale = _mm512_loadu_ps(reinterpret_cast<const float*>(t.scales));
      for (int64_t g = 0; g < groups; ++g) {
        for (int o = 0; o < 4; ++o) {
          const uint8_t* line = t.codes + g * t.group_stride + o * t.line_stride;
          const __m512i dl = _mm512_loadu_si512(line), dh = _mm512_loadu_si512(line + kLineBytes);
          for (int r = 0; r < 8; ++r) {  // k = 32g + 8o + r: bits 4 * (r / 2) + 16 * (r % 2)
            const int shift = 4 * (r / 2) + 16 * (r % 2);
            const __m512i u = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(dl, shift), nibble),
                                              _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(dh, shift), nibble), 4));
            const __m512 w = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(u), offset), scale);
            char* dst = base + ((g * 4 + o) * 8 + r) * row_bytes;
            if (bf16) {
              auto* p = reinterpret_cast<uint16_t*>(dst) + b * kInt8BlockRows;
              _mm256_mask_storeu_epi16(p, mask, to_bf16x16(w));
            } else {
              _mm512_mask_storeu_ps(reinterpret_cast<float*>(dst) + b * kInt8BlockRows, mask, w);
            }
          }
        }
      }
    }
  });
#elif defined(PAGEDLLM_ISA_AVX2)
  dequantize_int8_t_avx2(out, packed, row_begin, k_len, n_rows, block_bytes);
#else
  (void)packed, (void)row_begin;
  TORCH_CHECK(false, "dequantize_int8_t: built without AVX512-BF16 or AVX2");
#endif
}

}  // namespace pagedllm
