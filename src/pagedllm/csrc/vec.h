// Helpers shared by the CPU kernels: float conversions (scalar and 16 lanes), the vectorised
// exp approximations, row loads and the CPU-tensor argument check.
//
// Every source of one build is compiled with the same flags (ops/cpu_kernels.py: -march=native
// for this CPU, or x86-64-v3 for the AVX2 build), so the inline functions here are one
// definition across a library. The vector parts are guarded by the instruction sets they need;
// callers guard their own uses the same way.

#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// Which vector paths a build compiles. AVX512-BF16 (with BW and VL) runs the bf16 dot-product
// kernels; AVX2 with FMA runs their 8-lane ports, which widen bf16 to float32 and use FMA
// (CPUs without AVX-512, or with AVX-512 but no BF16); neither leaves the scalar paths only.
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define PAGEDLLM_ISA_AVX512_BF16 1
#elif defined(__AVX2__) && defined(__FMA__)
#define PAGEDLLM_ISA_AVX2 1
#endif
// AMX-BF16 tiles beside AVX512-BF16 (the native build on Xeons since Sapphire Rapids): the tile
// kernels of gemm_bf16_amx.cpp and int8_gemv_amx.cpp, used once the OS grants the tile state.
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(PAGEDLLM_ISA_AVX512_BF16)
#define PAGEDLLM_HAVE_AMX_BF16 1
#endif

namespace pagedllm {

// ---------------------------------------------------------------------------------------
// Scalar conversions
// ---------------------------------------------------------------------------------------

template <typename T>
inline float to_float(T x) {
  return static_cast<float>(x);
}

// Round a float to T's precision and back (what storing an intermediate in T does).
template <typename T>
inline float round_to(float x) {
  return static_cast<float>(static_cast<T>(x));
}

template <typename T>
inline void load_row(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

// A float rounded to bf16 (RNE), as its 16 bits.
inline uint16_t bf16_bits(float x) { return c10::BFloat16(x).x; }

// The float a bf16 bit pattern holds (exact).
inline float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// ---------------------------------------------------------------------------------------
// exp
//
// Two approximations, each kept for the results it gives bit for bit:
//   fast_exp / fast_exp16 / exp_shifted_sum: attention's softmax and silu. Clamped to float's
//     range, so any finite input gives a finite, nonzero result.
//   exp_nonpositive16: the sampler's token weights. Gives exactly 0 below kExpLowest and for
//     -inf or NaN lanes (no probability mass), which the inverse-CDF walk relies on.
// They round differently (floor vs nearest range reduction, minimax vs Taylor polynomial);
// merging them would change the bits of one of the two callers.
// ---------------------------------------------------------------------------------------

constexpr float kExpLowest = -87.0f;  // float's normal range ends at exp(-87.3)

// exp(x) as 2^(x log2 e): range reduction to [0, 1) and a degree-6 polynomial (relative
// error ~2e-7), clamped to float's range. Plain arithmetic, so loops over it vectorise;
// libm's expf does not.
inline float fast_exp(float x) {
  x = std::min(std::max(x, kExpLowest), 88.0f);
  const float t = x * 1.4426950408889634f;
  const float whole = std::floor(t);
  const float f = t - whole;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<int32_t>(whole) << 23;
  std::memcpy(&p, &bits, sizeof(bits));
  return p;
}

#if defined(__AVX512F__)
// fast_exp on 16 lanes (the compiler does not vectorise the scalar version's bit casts).
inline __m512 fast_exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpLowest)), _mm512_set1_ps(88.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 whole = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, whole);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512i exponent = _mm512_slli_epi32(_mm512_cvtps_epi32(whole), 23);
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), exponent));
}

// exp(y) on the lanes of `k` (0 elsewhere), for y <= 0: y = n ln2 + r with |r| <= ln2 / 2,
// exp(r) by its degree-6 Taylor polynomial (relative error below 2e-7), scaled by 2^n.
// Lanes below kExpLowest, -inf and NaN included, give exactly 0.
inline __m512 exp_nonpositive16(__m512 y, __mmask16 k) {
  const __m512 lowest = _mm512_set1_ps(kExpLowest);
  const __mmask16 live = _mm512_mask_cmp_ps_mask(k, y, lowest, _CMP_GE_OQ);
  y = _mm512_max_ps(y, lowest);  // NaN lanes become `lowest` (max returns its second operand)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(1.4426950408889634f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln2 in two parts: n * the first is exact, so r keeps its low bits.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), y);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.4286068203094172e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(live, p, n);
}
#endif

// s[i] = exp(s[i] - shift) for i < n; returns their sum.
inline float exp_shifted_sum(float* s, int64_t n, float shift) {
  int64_t i = 0;
  float sum = 0.0f;
#if defined(__AVX512F__)
  __m512 total = _mm512_setzero_ps();
  const __m512 m = _mm512_set1_ps(shift);
  for (; i + 16 <= n; i += 16) {
    const __m512 e = fast_exp16(_mm512_sub_ps(_mm512_loadu_ps(s + i), m));
    _mm512_storeu_ps(s + i, e);
    total = _mm512_add_ps(total, e);
  }
  sum = _mm512_reduce_add_ps(total);
#endif
  for (; i < n; ++i) {
    s[i] = fast_exp(s[i] - shift);
    sum += s[i];
  }
  return sum;
}

// ---------------------------------------------------------------------------------------
// bf16 <-> float32 on 16 lanes
// ---------------------------------------------------------------------------------------

#if defined(__AVX512F__)
// 16 bf16 bit patterns widened to float32 (exact).
inline __m512 bf16x16_to_float(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m512 load_bf16x16(const uint16_t* p) {
  return bf16x16_to_float(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Each 32-bit lane holding a pair of bf16 values: the low (first) or high (second) one as float32.
inline __m512 low_bf16_to_float(__m512i pairs) { return _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16)); }
inline __m512 high_bf16_to_float(__m512i pairs) {
  return _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
}
#endif

#if defined(__AVX512BF16__)
// float32 -> bf16 (RNE); `round_bf16` is what storing a float32 result in bf16 and reading it
// back does.
inline __m256i to_bf16x16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }
inline __m512 round_bf16(__m512 x) { return bf16x16_to_float(to_bf16x16(x)); }
inline void store_bf16x16(uint16_t* p, __m512 x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16x16(x));
}
#endif

#if defined(PAGEDLLM_ISA_AVX2)
// ---------------------------------------------------------------------------------------
// 8 lanes (AVX2 + FMA)
// ---------------------------------------------------------------------------------------

// 8 bf16 bit patterns widened to float32 (exact).
inline __m256 bf16x8_to_float(__m128i bits) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
inline __m256 load_bf16x8(const uint16_t* p) {
  return bf16x8_to_float(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Each 32-bit lane holding a pair of bf16 values: the low (first) or high (second) one as float32.
inline __m256 low_bf16_to_float8(__m256i pairs) { return _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16)); }
inline __m256 high_bf16_to_float8(__m256i pairs) {
  return _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
}

// float32 -> bf16 rounded to nearest even, NaN kept quiet (c10::BFloat16's rounding, which
// AVX512-BF16's conversion also gives for normal numbers).
inline __m128i to_bf16x8(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  // Pack the 32-bit lanes to 16 bits (per 128-bit half), then take each half's low 64 bits.
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08));
}
inline __m256 round_bf16x8(__m256 x) { return bf16x8_to_float(to_bf16x8(x)); }
inline void store_bf16x8(uint16_t* p, __m256 x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_bf16x8(x));
}

inline float reduce_add8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// fast_exp on 8 lanes.
inline __m256 fast_exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpLowest)), _mm256_set1_ps(88.0f));
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f));
  const __m256 whole = _mm256_floor_ps(t);
  const __m256 f = _mm256_sub_ps(t, whole);
  __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i exponent = _mm256_slli_epi32(_mm256_cvtps_epi32(whole), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), exponent));
}

// exp_nonpositive16 on 8 lanes: exp(y) on the lanes set in `k` (all-ones lanes), 0 elsewhere,
// for y <= 0; lanes below kExpLowest, -inf and NaN give exactly 0. The same reduction and
// polynomial; 2^n is built from its exponent bits (n >= -126 on live lanes, a normal float).
inline __m256 exp_nonpositive8(__m256 y, __m256 k) {
  const __m256 lowest = _mm256_set1_ps(kExpLowest);
  const __m256 live = _mm256_and_ps(k, _mm256_cmp_ps(y, lowest, _CMP_GE_OQ));
  y = _mm256_max_ps(y, lowest);  // NaN lanes become `lowest` (max returns its second operand)
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(1.4426950408889634f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), y);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.4286068203094172e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), live);
}

// Lanes 0..n-1 set (n <= 8), for maskload / maskstore of a row's tail.
inline __m256i lane_mask8(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The 4-bit and int8 dequantize kernels' store: one value of k of a block's 16 rows (w[0]: rows
// 0-7, w[1]: 8-15) into row `dst` of a dequantized weight, from column col: bf16 or float32,
// only the first `valid` rows.
inline void store_block_row(char* dst, int64_t col, bool bf16, const __m256 w[2], int valid) {
  if (bf16) {
    const __m256i v = _mm256_set_m128i(to_bf16x8(w[1]), to_bf16x8(w[0]));
    auto* p = reinterpret_cast<uint16_t*>(dst) + col;
    if (valid == 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
    } else {
      uint16_t tmp[16];
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(tmp), v);
      std::copy(tmp, tmp + valid, p);
    }
  } else {
    float* p = reinterpret_cast<float*>(dst) + col;
    if (valid == 16) {
      _mm256_storeu_ps(p, w[0]);
      _mm256_storeu_ps(p + 8, w[1]);
    } else {
      _mm256_maskstore_ps(p, lane_mask8(std::min(valid, 8)), w[0]);
      _mm256_maskstore_ps(p + 8, lane_mask8(std::max(valid - 8, 0)), w[1]);
    }
  }
}
#endif  // PAGEDLLM_ISA_AVX2

// ---------------------------------------------------------------------------------------
// Argument checks
// ---------------------------------------------------------------------------------------

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
}

}  // namespace pagedllm
