// Fused token sampling on the CPU, registered as torch.ops.pagedllm.sample_tokens: one token
// per row of logits [R, V] (float32, bfloat16 or float16, read in place), greedy or random.
//
// A random row with temperature T and uniform u draws from p_i ∝ exp((x_i - max) / T) by the
// inverse CDF, as pagedllm.sample.sampler.inverse_cdf_sample: the token is the first index
// whose cumulative mass exceeds u * total. Passes over a row (it stays in L2 after the first):
//   1. the max (and whether any NaN); a greedy row then takes the first index holding it,
//      which is torch.argmax's choice;
//   2. exp((x - max) / T), summed per block of kBlock tokens; only the sums are kept;
//   3. the block sums are walked to the block holding u * total, whose exps are computed again
//      to find the token inside it.
// So a random row costs about one exp per token, and no [R, V] intermediate is written.
//
// Special values never make it fail: NaN logits carry no mass in random rows (a greedy row
// returns the first NaN, as torch.argmax does); a random row whose max is not finite (only
// -inf or NaN, or some +inf) takes the first max (+inf) or token 0. Rounding can put u * total
// at or past the summed mass; the row's last token with mass is taken then, never one with none.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ops.h"
#include "vec.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define PAGEDLLM_SAMPLING_AVX512 1
#elif defined(PAGEDLLM_ISA_AVX2)
#define PAGEDLLM_SAMPLING_AVX2 1
#endif

namespace pagedllm {
namespace {

constexpr int64_t kBlock = 256;  // tokens per partial sum
constexpr float kGreedyTemperature = 1e-5f;  // temperatures below it mean greedy (as SamplingParams)
constexpr float kInf = std::numeric_limits<float>::infinity();

#if defined(PAGEDLLM_SAMPLING_AVX512)
inline __mmask16 lanes(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << remaining) - 1);
}

// 16 tokens as float32; lanes outside the mask read as 0.
inline __m512 load16(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
inline __m512 load16(const at::BFloat16* p, __mmask16 k) { return bf16x16_to_float(_mm256_maskz_loadu_epi16(k, p)); }
inline __m512 load16(const at::Half* p, __mmask16 k) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p)); }

// The unnormalised probabilities exp((x - max) * scale) of 16 tokens (0 outside `k`;
// exp_nonpositive16 in vec.h gives no mass to NaN or very negative lanes).
template <typename T>
inline __m512 weights16(const T* x, __mmask16 k, __m512 max, __m512 scale) {
  return exp_nonpositive16(_mm512_mul_ps(_mm512_sub_ps(load16(x, k), max), scale), k);
}
#elif defined(PAGEDLLM_SAMPLING_AVX2)
// 8 tokens as float32 from `remaining` (> 0) left in the row; lanes past the row read as 0.
inline __m256 load8_full(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8_full(const at::BFloat16* p) { return load_bf16x8(reinterpret_cast<const uint16_t*>(p)); }
inline __m256 load8_full(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <typename T>
inline __m256 load8(const T* p, int64_t remaining) {
  if (remaining >= 8) return load8_full(p);
  alignas(32) float tail[8] = {};  // AVX2 has no 16-bit masked load: copy the tail
  for (int64_t j = 0; j < remaining; ++j) tail[j] = static_cast<float>(p[j]);
  return _mm256_load_ps(tail);
}
// All-ones lanes for the tokens of the row among the next 8.
inline __m256 lanes8(int64_t remaining) {
  return remaining >= 8 ? _mm256_castsi256_ps(_mm256_set1_epi32(-1))
                        : _mm256_castsi256_ps(lane_mask8(static_cast<int>(remaining)));
}
inline float reduce_max8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
// The unnormalised probabilities of 8 tokens (0 outside `k`), as weights16.
template <typename T>
inline __m256 weights8(const T* x, int64_t remaining, __m256 k, __m256 max, __m256 scale) {
  return exp_nonpositive8(_mm256_mul_ps(_mm256_sub_ps(load8(x, remaining), max), scale), k);
}
#else
template <typename T>
inline float weight(T x, float max, float scale) {
  const float y = (static_cast<float>(x) - max) * scale;
  return y >= kExpLowest ? std::exp(y) : 0.0f;  // NaN compares false: no mass
}
#endif

struct RowMax {
  float value;  // the largest non-NaN logit (-inf when there is none)
  bool has_nan;
};

template <typename T>
RowMax row_max(const T* x, int64_t n) {
#if defined(PAGEDLLM_SAMPLING_AVX512)
  __m512 m0 = _mm512_set1_ps(-kInf), m1 = m0;
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = load16(x + i, 0xFFFF), b = load16(x + i + 16, 0xFFFF);
    nan |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q);  // unordered: either is NaN
    m0 = _mm512_max_ps(a, m0);  // a NaN in `a` keeps m0
    m1 = _mm512_max_ps(b, m1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = lanes(n - i);
    const __m512 a = load16(x + i, k);
    nan |= _mm512_mask_cmp_ps_mask(k, a, a, _CMP_UNORD_Q);
    m0 = _mm512_mask_max_ps(m0, k, a, m0);
  }
  return {_mm512_reduce_max_ps(_mm512_max_ps(m0, m1)), nan != 0};
#elif defined(PAGEDLLM_SAMPLING_AVX2)
  const __m256 minus_inf = _mm256_set1_ps(-kInf);
  __m256 m0 = minus_inf, m1 = m0, nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a = load8_full(x + i), b = load8_full(x + i + 8);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));  // unordered: either is NaN
    m0 = _mm256_max_ps(a, m0);  // a NaN in `a` keeps m0
    m1 = _mm256_max_ps(b, m1);
  }
  for (; i < n; i += 8) {
    const __m256 k = lanes8(n - i);
    const __m256 a = _mm256_blendv_ps(minus_inf, load8(x + i, n - i), k);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    m0 = _mm256_max_ps(a, m0);
  }
  return {reduce_max8(_mm256_max_ps(m0, m1)), _mm256_movemask_ps(nan) != 0};
#else
  RowMax m{-kInf, false};
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    if (std::isnan(v)) m.has_nan = true;
    else if (v > m.value) m.value = v;
  }
  return m;
#endif
}

// The first index holding `value` (the first NaN when `nan`); 0 when there is none.
template <typename T>
int64_t first_index(const T* x, int64_t n, float value, bool nan) {
#if defined(PAGEDLLM_SAMPLING_AVX512)
  const __m512 v = _mm512_set1_ps(value);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = lanes(n - i);
    const __m512 a = load16(x + i, k);
    const __mmask16 hit = nan ? _mm512_mask_cmp_ps_mask(k, a, a, _CMP_UNORD_Q) : _mm512_mask_cmp_ps_mask(k, a, v, _CMP_EQ_OQ);
    if (hit) return i + __builtin_ctz(hit);
  }
#elif defined(PAGEDLLM_SAMPLING_AVX2)
  const __m256 v = _mm256_set1_ps(value);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 a = load8(x + i, n - i);
    const __m256 same = nan ? _mm256_cmp_ps(a, a, _CMP_UNORD_Q) : _mm256_cmp_ps(a, v, _CMP_EQ_OQ);
    const int hit = _mm256_movemask_ps(_mm256_and_ps(same, lanes8(n - i)));
    if (hit) return i + __builtin_ctz(static_cast<unsigned>(hit));
  }
#else
  for (int64_t i = 0; i < n; ++i) {
    const float a = static_cast<float>(x[i]);
    if (nan ? std::isnan(a) : a == value) return i;
  }
#endif
  return 0;
}

// sums[b] = the mass of block b; returns the total (block sums added in double).
template <typename T>
double block_sums(const T* x, int64_t n, float max, float scale, float* sums) {
  double total = 0.0;
#if defined(PAGEDLLM_SAMPLING_AVX512)
  const __m512 vmax = _mm512_set1_ps(max), vscale = _mm512_set1_ps(scale);
#elif defined(PAGEDLLM_SAMPLING_AVX2)
  const __m256 vmax = _mm256_set1_ps(max), vscale = _mm256_set1_ps(scale), all = lanes8(8);
#endif
  for (int64_t lo = 0, b = 0; lo < n; lo += kBlock, ++b) {
    const int64_t hi = std::min(n, lo + kBlock);
    float sum;
#if defined(PAGEDLLM_SAMPLING_AVX512)
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = lo;
    for (; i + 32 <= hi; i += 32) {
      acc0 = _mm512_add_ps(acc0, weights16(x + i, 0xFFFF, vmax, vscale));
      acc1 = _mm512_add_ps(acc1, weights16(x + i + 16, 0xFFFF, vmax, vscale));
    }
    for (; i < hi; i += 16) acc0 = _mm512_add_ps(acc0, weights16(x + i, lanes(hi - i), vmax, vscale));
    sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(PAGEDLLM_SAMPLING_AVX2)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = lo;
    for (; i + 16 <= hi; i += 16) {
      acc0 = _mm256_add_ps(acc0, weights8(x + i, 8, all, vmax, vscale));
      acc1 = _mm256_add_ps(acc1, weights8(x + i + 8, 8, all, vmax, vscale));
    }
    for (; i < hi; i += 8) acc0 = _mm256_add_ps(acc0, weights8(x + i, hi - i, lanes8(hi - i), vmax, vscale));
    sum = reduce_add8(_mm256_add_ps(acc0, acc1));
#else
    sum = 0.0f;
    for (int64_t i = lo; i < hi; ++i) sum += weight(x[i], max, scale);
#endif
    sums[b] = sum;
    total += sum;
  }
  return total;
}

// The first token whose cumulative mass exceeds `target`, from the block sums.
template <typename T>
int64_t locate(const T* x, int64_t n, float max, float scale, const float* sums, double target) {
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  double before = 0.0;
  int64_t b = 0;
  for (; b < num_blocks && before + sums[b] <= target; ++b) before += sums[b];
  if (b == num_blocks) {
    // Past the end by rounding: the last block with mass, searched for its last token with mass.
    for (b = num_blocks - 1; b > 0 && !(sums[b] > 0.0f); --b) {
    }
    target = std::numeric_limits<double>::infinity();
  }
  const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
  double cum = before;
  int64_t last = lo;  // the last token with mass seen: the answer if rounding runs off the block
#if defined(PAGEDLLM_SAMPLING_AVX512)
  const __m512 vmax = _mm512_set1_ps(max), vscale = _mm512_set1_ps(scale);
  alignas(64) float w[16];
  for (int64_t i = lo; i < hi; i += 16) {
    const __m512 v = weights16(x + i, lanes(hi - i), vmax, vscale);
    const __mmask16 positive = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
    if (positive) last = i + 31 - __builtin_clz(static_cast<unsigned>(positive));
    const float sum = _mm512_reduce_add_ps(v);
    if (cum + sum <= target) {
      cum += sum;
      continue;
    }
    _mm512_store_ps(w, v);
    for (int64_t j = 0; j < 16 && i + j < hi; ++j) {
      cum += w[j];
      if (cum > target) return i + j;  // w[j] > 0 here: cum did not exceed target before
    }
  }
#elif defined(PAGEDLLM_SAMPLING_AVX2)
  const __m256 vmax = _mm256_set1_ps(max), vscale = _mm256_set1_ps(scale);
  alignas(32) float w[8];
  for (int64_t i = lo; i < hi; i += 8) {
    const __m256 v = weights8(x + i, hi - i, lanes8(hi - i), vmax, vscale);
    const int positive = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ));
    if (positive) last = i + 31 - __builtin_clz(static_cast<unsigned>(positive));
    const float sum = reduce_add8(v);
    if (cum + sum <= target) {
      cum += sum;
      continue;
    }
    _mm256_store_ps(w, v);
    for (int64_t j = 0; j < 8 && i + j < hi; ++j) {
      cum += w[j];
      if (cum > target) return i + j;  // w[j] > 0 here: cum did not exceed target before
    }
  }
#else
  for (int64_t i = lo; i < hi; ++i) {
    const float w = weight(x[i], max, scale);
    if (w > 0.0f) last = i;
    cum += w;
    if (cum > target) return i;
  }
#endif
  return last;
}

template <typename T>
int64_t sample_row(const T* x, int64_t n, float temperature, float u, std::vector<float>& sums) {
  const RowMax m = row_max(x, n);
  const bool greedy = !(temperature >= kGreedyTemperature);  // NaN temperatures too
  if (greedy) return first_index(x, n, m.value, m.has_nan);
  if (!std::isfinite(m.value)) return first_index(x, n, m.value, false);
  const float scale = 1.0f / temperature;
  const double total = block_sums(x, n, m.value, scale, sums.data());  // >= 1: the max weighs exp(0)
  u = std::isnan(u) ? 0.0f : std::clamp(u, 0.0f, 1.0f);
  return locate(x, n, m.value, scale, sums.data(), static_cast<double>(u) * total);
}

template <typename T>
void sample_tokens_kernel(at::Tensor& out, const at::Tensor& logits, const float* temperature, const float* uniform) {
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  const T* base = logits.data_ptr<T>();
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sums((vocab + kBlock - 1) / kBlock);
    for (int64_t r = begin; r < end; ++r) o[r] = sample_row(base + r * stride, vocab, temperature[r], uniform[r], sums);
  });
}

void check_rows(const at::Tensor& t, int64_t rows, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == rows, name,
              " must be a contiguous float32 CPU tensor with one value per row");
}

}  // namespace

void sample_tokens(at::Tensor out, const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& uniform) {
  TORCH_CHECK(logits.device().is_cpu(), "logits must be a CPU tensor");
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1, "logits must be [R, V] with contiguous rows");
  const int64_t rows = logits.size(0);
  TORCH_CHECK(logits.size(1) > 0 || rows == 0, "logits must have at least one column");
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kLong && out.is_contiguous() && out.numel() == rows,
              "out must be a contiguous int64 CPU tensor with one value per row");
  check_rows(temperature, rows, "temperature");
  check_rows(uniform, rows, "uniform");
  if (rows == 0) return;
  const float* t = temperature.data_ptr<float>();
  const float* u = uniform.data_ptr<float>();
  switch (logits.scalar_type()) {
    case at::kFloat: sample_tokens_kernel<float>(out, logits, t, u); break;
    case at::kBFloat16: sample_tokens_kernel<at::BFloat16>(out, logits, t, u); break;
    case at::kHalf: sample_tokens_kernel<at::Half>(out, logits, t, u); break;
    default: TORCH_CHECK(false, "sample_tokens takes float32, bfloat16 or float16 logits, not ", logits.scalar_type());
  }
}

}  // namespace pagedllm
