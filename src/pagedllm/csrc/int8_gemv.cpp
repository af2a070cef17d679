// Skinny matmuls on 8-bit weights with per-row scales (decode); see int8_gemv.h for the layout
// and the arithmetic.
//
// Each thread reads its blocks' bytes front to back once per 64 rows of x; tiles of up to 8
// rows of x share every widened pair of codes, and the scales are applied once per output at
// the end. A tile of 4 blocks reads 512 consecutive bytes per 8 values of k (the layout puts
// the lines it needs together), one stream per thread.
//
// The AVX2 path (x86-64-v3 build) is in int8_gemv_avx2.cpp, the layout helpers both paths
// use in int8_gemv_impl.h.

#include "int8_gemv.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/string_view.h>
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

#if !defined(__AVX512VNNI__)
// Every CPU with AVX512-BF16 (Cooper Lake, Sapphire Rapids on, Zen 4 on) has AVX512-VNNI.
#error "the AVX-512 int8 kernel needs AVX512-VNNI beside AVX512-BF16"
#endif

// x as the integer products read it: each group of 32 values of k of a row as int16 codes
// times one power of two, the group's step. The step puts the group's largest |x| in
// [2^14, 2^15): every value within 2^7 of it keeps all 8 of its bf16 significant bits (exact),
// smaller ones keep their bits down to the step. Zero groups have step 0; a group with an
// infinity or NaN has a NaN step, so that it poisons its outputs as the float product would.
struct Int16Rows {
  const int16_t* codes;  // [rows, K]
  const float* steps;    // [rows, K / 32]
};

inline void quantize_group(const uint16_t* x, int16_t* codes, float* step) {
  const __m512 lo = load_bf16x16(x), hi = load_bf16x16(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
  uint32_t bits;
  __builtin_memcpy(&bits, &amax, sizeof(bits));
  const int exponent = static_cast<int>(bits >> 23);  // biased; amax >= 0
  // The max drops a NaN depending on operand order: classify every lane instead (QNaN,
  // SNaN, +inf, -inf).
  const bool non_finite = (_mm512_fpclass_ps_mask(lo, 0x99) | _mm512_fpclass_ps_mask(hi, 0x99)) != 0;
  float s, inverse;
  if (non_finite) {
    s = __builtin_nanf(""), inverse = 0.0f;
  } else if (amax == 0.0f) {
    s = 0.0f, inverse = 0.0f;
  } else {
    const uint32_t step_bits = static_cast<uint32_t>(std::max(exponent - 14, 1)) << 23;
    __builtin_memcpy(&s, &step_bits, sizeof(s));
    inverse = 1.0f / s;  // a power of two: exact
  }
  const __m512 inv = _mm512_set1_ps(inverse);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes), _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(lo, inv))));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + 16),
                      _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(hi, inv))));
  *step = s;
}

// Rows m0..m0 + kM of x (as Int16Rows) against kNB blocks of 16 output rows, all of K: per
// pair, the 32 codes sign-extended to int16 (row r's k and k + 1 in 32-bit lane r) times the
// broadcast int16 pair of x, summed exactly in int32 over a group (|sum| < 2^27), then scaled
// by the group's step into float32 accumulators. Two instructions per 32 codes and row where
// converting the codes to bf16 took five: on CPUs that run AVX-512 on 256-bit units that
// conversion, not memory, bounded one row.
template <int kM, int kNB>
void int8_tile(const Int8Tile& t, const Int16Rows& x, int64_t groups, uint16_t* out, int64_t out_stride,
               __mmask16 last_mask) {
  __m512 acc[kM][kNB];
  for (int m = 0; m < kM; ++m)
    for (int b = 0; b < kNB; ++b) acc[m][b] = _mm512_setzero_ps();
  const int64_t k_len = groups * kInt8GroupSize;

  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* chunk = t.codes + g * t.group_stride;
    if (g + kPrefetchGroups < groups) {
      for (int b = 0; b < kNB; ++b) {
        const uint8_t* ahead = chunk + kPrefetchGroups * t.group_stride + b * kLinePairBytes;
        for (int o = 0; o < 4; ++o)
          for (int h = 0; h < 2; ++h)
            _mm_prefetch(reinterpret_cast<const char*>(ahead + o * t.line_stride + h * 64), _MM_HINT_T0);
      }
    }
    __m512i sum[kM][kNB];
    for (int m = 0; m < kM; ++m)
      for (int b = 0; b < kNB; ++b) sum[m][b] = _mm512_setzero_si512();
    const int64_t k0 = g * kInt8GroupSize;
#pragma GCC unroll 4
    for (int o = 0; o < 4; ++o) {
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        __m512i w[kNB];
        for (int b = 0; b < kNB; ++b)
          w[b] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(chunk + o * t.line_stride + b * kLinePairBytes + p * kPairBytes)));
        const int64_t k = k0 + o * 8 + 2 * p;
        for (int m = 0; m < kM; ++m) {
          int32_t pair;
          __builtin_memcpy(&pair, x.codes + m * k_len + k, sizeof(pair));
          const __m512i xv = _mm512_set1_epi32(pair);
          for (int b = 0; b < kNB; ++b) sum[m][b] = _mm512_dpwssd_epi32(sum[m][b], w[b], xv);
        }
      }
    }
    for (int m = 0; m < kM; ++m) {
      const __m512 step = _mm512_set1_ps(x.steps[m * groups + g]);
      for (int b = 0; b < kNB; ++b) acc[m][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[m][b]), step, acc[m][b]);
    }
  }
  for (int b = 0; b < kNB; ++b) {
    const __m512 scale = _mm512_loadu_ps(reinterpret_cast<const float*>(t.scales + b * kScaleBytes));
    for (int m = 0; m < kM; ++m) {
      const __m256i v = to_bf16x16(_mm512_mul_ps(acc[m][b], scale));
      uint16_t* dst = out + m * out_stride + b * kInt8BlockRows;
      if (b == kNB - 1)
        _mm256_mask_storeu_epi16(dst, last_mask, v);
      else
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), v);
    }
  }
}

using TileFn = void (*)(const Int8Tile&, const Int16Rows&, int64_t, uint16_t*, int64_t, __mmask16);

// Blocks per pass for a tile of kM rows: up to 3 rows, a whole super-block (its 4 blocks' sums,
// accumulators and widened pairs fit the 32 vector registers); from 4 rows, 2 blocks, since
// 4 spilled in the group loop and ran behind 2 (benchmarks/int8_kernels.py, 1B shapes, Zen 4).
constexpr int blocks_for(int m) { return m <= 3 ? 4 : 2; }

template <int kM>
constexpr std::array<TileFn, 4> tiles_for_rows() {
  return {&int8_tile<kM, 1>, &int8_tile<kM, std::min(2, blocks_for(kM))>,
          &int8_tile<kM, std::min(3, blocks_for(kM))>, &int8_tile<kM, std::min(4, blocks_for(kM))>};
}

const std::array<std::array<TileFn, 4>, kMaxTileRows> kTiles = {
    tiles_for_rows<1>(), tiles_for_rows<2>(), tiles_for_rows<3>(), tiles_for_rows<4>(),
    tiles_for_rows<5>(), tiles_for_rows<6>(), tiles_for_rows<7>(), tiles_for_rows<8>()};

// The AVX-512 body of gemv_int8 (arguments checked): register tiles of fused int8 products.
void gemv_int8_vector(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  const int64_t rows = x.size(0), n_len = out.size(1), k_len = x.size(1);
  const int64_t groups = k_len / kInt8GroupSize, blocks = (n_len + kInt8BlockRows - 1) / kInt8BlockRows;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* codes = packed.data_ptr<uint8_t>();
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t out_stride = out.stride(0);

  const int64_t x_stride = x.stride(0);
  const int tail = static_cast<int>(n_len - (blocks - 1) * kInt8BlockRows);
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1);

  const at::Tensor codes16 = at::empty({rows, k_len}, x.options().dtype(at::kShort));
  const at::Tensor steps = at::empty({rows, groups}, x.options().dtype(at::kFloat));
  auto* q = codes16.data_ptr<int16_t>();
  auto* s = steps.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / k_len), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m)
      for (int64_t g = 0; g < groups; ++g)
        quantize_group(xp + m * x_stride + g * kInt8GroupSize, q + m * k_len + g * kInt8GroupSize, s + m * groups + g);
  });

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
            kTiles[mt - 1][cnt - 1](locate(codes, blk, blocks, groups), Int16Rows{q + m * k_len, s + m * groups},
                                    groups, op + m * out_stride + blk * kInt8BlockRows, out_stride,
                                    blk + cnt == blocks ? tail_mask : static_cast<__mmask16>(0xFFFF));
          }
        }
        b += nb;
      }
    }
  });
}

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

namespace {

void check_gemv_int8(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.dim() == 2 && out.device().is_cpu() && out.stride(1) == 1 &&
                  x.dim() == 2 && out.size(0) == x.size(0),
              "gemv_int8: out must be a bf16 CPU tensor [M, N] with unit stride along N");
  TORCH_CHECK(gemv_int8_supported(x, packed, out.size(1)),
              "gemv_int8 takes bf16 x [M <= 65536, K % 32 == 0] and a weight packed for it (see int8_gemv.h)");
}

}  // namespace

void gemv_int8(at::Tensor out, const at::Tensor& x, const at::Tensor& packed) {
  check_gemv_int8(out, x, packed);
#if defined(__AVX512BF16__)
  const int64_t rows = x.size(0);
  if (rows == 0) return;
#if defined(PAGEDLLM_HAVE_AMX_BF16)
  if (rows > kInt8AmxMinRows && gemv_int8_amx(out, x, packed)) return;
#endif
  gemv_int8_vector(out, x, packed);
#elif defined(PAGEDLLM_ISA_AVX2)
  gemv_int8_avx2(out, x, packed);
#endif
}

// gemv_int8 through one kernel whatever the row count: "vector" (vdpbf16ps or AVX2 FMA on the
// codes) or "amx" (a super-block dequantized into a bf16 panel for the tiles; an error where the
// build or the OS does not have them). For tests and benchmarks.
void gemv_int8_kernel(at::Tensor out, const at::Tensor& x, const at::Tensor& packed, c10::string_view kernel) {
  TORCH_CHECK(kernel == "vector" || kernel == "amx", "gemv_int8_kernel: kernel must be 'vector' or 'amx', got '",
              kernel, "'");
  check_gemv_int8(out, x, packed);
  if (x.size(0) == 0) return;
  if (kernel == "amx") {
#if defined(PAGEDLLM_HAVE_AMX_BF16)
    if (gemv_int8_amx(out, x, packed)) return;
#endif
    TORCH_CHECK(false,
                "gemv_int8_kernel: no AMX tile kernel in this build, no tile state granted by the OS, or N % 16 != 0");
  }
#if defined(__AVX512BF16__)
  gemv_int8_vector(out, x, packed);
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
  // Parallel over lines (8 values of k), each line's blocks in turn: every thread writes its
  // own rows of `out` front to back. (Block by block instead, each store landed in another row
  // of out, rows a power-of-two-ish stride apart: 4x slower, from L1 set conflicts.)
  at::parallel_for(0, groups * 4, 1, [&](int64_t begin, int64_t end) {
    // A pair's lanes hold (row r, k), (row r, k + 1) side by side: the even lanes of both
    // halves are value k of the 16 rows, the odd ones value k + 1.
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int64_t line_index = begin; line_index < end; ++line_index) {
      const int64_t g = line_index / 4, o = line_index % 4;
      for (int64_t b = 0; b < blocks; ++b) {
        const int valid = static_cast<int>(std::min<int64_t>(kInt8BlockRows, n_rows - b * kInt8BlockRows));
        const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
        const Int8Tile t = locate(codes, first + b, all_blocks, groups);
        const __m512 scale = _mm512_loadu_ps(reinterpret_cast<const float*>(t.scales));
        const uint8_t* line = t.codes + g * t.group_stride + o * t.line_stride;
        for (int p = 0; p < 4; ++p) {
          const uint8_t* pair = line + p * kPairBytes;
          const __m512i rows0_7 = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pair)));
          const __m512i rows8_15 = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pair + 16)));
          for (int h = 0; h < 2; ++h) {  // k = 32g + 8o + 2p + h
            const __m512i c = _mm512_permutex2var_epi32(rows0_7, h == 0 ? even : odd, rows8_15);
            const __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(c), scale);
            char* dst = base + (line_index * 8 + 2 * p + h) * row_bytes;
            if (bf16) {
              auto* q = reinterpret_cast<uint16_t*>(dst) + b * kInt8BlockRows;
              _mm256_mask_storeu_epi16(q, mask, to_bf16x16(w));
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
