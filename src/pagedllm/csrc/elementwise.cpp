// Element-wise kernels: rms_norm, fused_add_rms_norm, silu_and_mul and rotary_embedding, each
// one pass over the rows instead of 5-8 eager ops.
//
// They take float32, bfloat16 or float16 tensors and compute in float32, rounding intermediate
// results to the activation dtype at the same points as the eager torch code they replace, so
// they give the same bits.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ops.h"
#include "vec.h"

namespace pagedllm {
namespace {

// y = weight * T(x / rms(x)), statistics in float32 (as transformers' Llama RMSNorm).
template <typename T>
inline void rms_norm_row(const T* x, const T* weight, T* y, int64_t n, float eps) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float v = to_float(x[i]);
    sum += v * v;
  }
  const float inv = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(round_to<T>(to_float(x[i]) * inv) * to_float(weight[i]));
}

}  // namespace

void rms_norm(at::Tensor out, const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && out.is_contiguous() && weight.is_contiguous(),
              "rms_norm takes [T, hidden] rows");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() && out.scalar_type() == x.scalar_type(),
              "x, weight and out must share a dtype");
  const int64_t rows = x.size(0), n = x.size(1), stride = x.stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) rms_norm_row(xp + r * stride, w, o + r * n, n, static_cast<float>(eps));
    });
  });
}

// residual = T(x + residual); x = rms_norm(residual): both in place.
void fused_add_rms_norm(at::Tensor x, at::Tensor residual, const at::Tensor& weight, double eps) {
  check_cpu(x, "x");
  TORCH_CHECK(x.is_contiguous() && residual.is_contiguous() && weight.is_contiguous() && x.dim() == 2,
              "fused_add_rms_norm takes contiguous [T, hidden] rows");
  TORCH_CHECK(x.sizes() == residual.sizes(), "x and residual differ in shape");
  TORCH_CHECK(x.scalar_type() == residual.scalar_type() && x.scalar_type() == weight.scalar_type(),
              "x, residual and weight must share a dtype");
  const int64_t rows = x.size(0), n = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "fused_add_rms_norm", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* rp = residual.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* xr = xp + r * n;
        scalar_t* rr = rp + r * n;
        for (int64_t i = 0; i < n; ++i) rr[i] = static_cast<scalar_t>(to_float(xr[i]) + to_float(rr[i]));
        rms_norm_row(rr, w, xr, n, static_cast<float>(eps));
      }
    });
  });
}

namespace {

// out = T(silu(gate)) * up for x = [gate | up] rows.
template <typename T>
void silu_and_mul_kernel(at::Tensor& out, const at::Tensor& x) {
  const int64_t rows = x.size(0), d = out.size(1), stride = x.stride(0);
  const T* xp = x.data_ptr<T>();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* gate = xp + r * stride;
      const T* up = gate + d;
      T* dst = o + r * d;
      int64_t i = 0;
#if defined(__AVX512BF16__)
      if constexpr (std::is_same_v<T, at::BFloat16>) {
        const auto* g16 = reinterpret_cast<const uint16_t*>(gate);
        const auto* u16 = reinterpret_cast<const uint16_t*>(up);
        auto* d16 = reinterpret_cast<uint16_t*>(dst);
        const __m512 one = _mm512_set1_ps(1.0f);
        for (; i + 16 <= d; i += 16) {
          const __m512 g = load_bf16x16(g16 + i);
          const __m512 silu = round_bf16(_mm512_div_ps(g, _mm512_add_ps(one, fast_exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)))));
          store_bf16x16(d16 + i, _mm512_mul_ps(silu, load_bf16x16(u16 + i)));
        }
      }
#elif defined(PAGEDLLM_ISA_AVX2)
      if constexpr (std::is_same_v<T, at::BFloat16>) {
        const auto* g16 = reinterpret_cast<const uint16_t*>(gate);
        const auto* u16 = reinterpret_cast<const uint16_t*>(up);
        auto* d16 = reinterpret_cast<uint16_t*>(dst);
        const __m256 one = _mm256_set1_ps(1.0f);
        for (; i + 8 <= d; i += 8) {
          const __m256 g = load_bf16x8(g16 + i);
          const __m256 silu = round_bf16x8(_mm256_div_ps(g, _mm256_add_ps(one, fast_exp8(_mm256_sub_ps(_mm256_setzero_ps(), g)))));
          store_bf16x8(d16 + i, _mm256_mul_ps(silu, load_bf16x8(u16 + i)));
        }
      }
#endif
      for (; i < d; ++i) {
        const float g = to_float(gate[i]);
        const float s = round_to<T>(g / (1.0f + fast_exp(-g)));
        dst[i] = static_cast<T>(s * to_float(up[i]));
      }
    }
  });
}

}  // namespace

void silu_and_mul(at::Tensor out, const at::Tensor& x) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && out.is_contiguous(), "silu_and_mul takes [T, 2d] rows");
  TORCH_CHECK(out.size(1) * 2 == x.size(1) && out.size(0) == x.size(0), "out must be [T, d]");
  TORCH_CHECK(x.scalar_type() == out.scalar_type(), "x and out must share a dtype");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_and_mul",
                                  [&] { silu_and_mul_kernel<scalar_t>(out, x); });
}

namespace {

// Rotate-half rotary embedding in place on x = [T, heads * head_dim] (row stride free),
// rotating the first `rotary_dim` dims of each head: with c, s = T(cos), T(sin),
// (x1, x2) -> (T(T(x1 c) - T(x2 s)), T(T(x2 c) + T(x1 s))).
template <typename T>
void rotary_embedding_kernel(at::Tensor& x, const int64_t* pos, const float* table, int64_t head_dim,
                             int64_t rotary_dim) {
  const int64_t rows = x.size(0), heads = x.size(1) / head_dim, stride = x.stride(0), half = rotary_dim / 2;
  T* xp = x.data_ptr<T>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* cos = table + pos[r] * rotary_dim;
      const float* sin = cos + half;
      for (int64_t h = 0; h < heads; ++h) {
        T* x1 = xp + r * stride + h * head_dim;
        T* x2 = x1 + half;
        int64_t i = 0;
#if defined(__AVX512BF16__)
        if constexpr (std::is_same_v<T, at::BFloat16>) {
          auto* a16 = reinterpret_cast<uint16_t*>(x1);
          auto* b16 = reinterpret_cast<uint16_t*>(x2);
          for (; i + 16 <= half; i += 16) {
            const __m512 c = round_bf16(_mm512_loadu_ps(cos + i)), s = round_bf16(_mm512_loadu_ps(sin + i));
            const __m512 a = load_bf16x16(a16 + i), b = load_bf16x16(b16 + i);
            const __m512 first = _mm512_sub_ps(round_bf16(_mm512_mul_ps(a, c)), round_bf16(_mm512_mul_ps(b, s)));
            const __m512 second = _mm512_add_ps(round_bf16(_mm512_mul_ps(b, c)), round_bf16(_mm512_mul_ps(a, s)));
            store_bf16x16(a16 + i, first);
            store_bf16x16(b16 + i, second);
          }
        }
#elif defined(PAGEDLLM_ISA_AVX2)
        if constexpr (std::is_same_v<T, at::BFloat16>) {
          auto* a16 = reinterpret_cast<uint16_t*>(x1);
          auto* b16 = reinterpret_cast<uint16_t*>(x2);
          for (; i + 8 <= half; i += 8) {
            const __m256 c = round_bf16x8(_mm256_loadu_ps(cos + i)), s = round_bf16x8(_mm256_loadu_ps(sin + i));
            const __m256 a = load_bf16x8(a16 + i), b = load_bf16x8(b16 + i);
            const __m256 first = _mm256_sub_ps(round_bf16x8(_mm256_mul_ps(a, c)), round_bf16x8(_mm256_mul_ps(b, s)));
            const __m256 second = _mm256_add_ps(round_bf16x8(_mm256_mul_ps(b, c)), round_bf16x8(_mm256_mul_ps(a, s)));
            store_bf16x8(a16 + i, first);
            store_bf16x8(b16 + i, second);
          }
        }
#endif
        for (; i < half; ++i) {
          const float c = round_to<T>(cos[i]), s = round_to<T>(sin[i]);
          const float a = to_float(x1[i]), b = to_float(x2[i]);
          x1[i] = static_cast<T>(round_to<T>(a * c) - round_to<T>(b * s));
          x2[i] = static_cast<T>(round_to<T>(b * c) + round_to<T>(a * s));
        }
      }
    }
  });
}

}  // namespace

void rotary_embedding(at::Tensor x, const at::Tensor& positions, const at::Tensor& cos_sin_cache,
                      int64_t head_dim, int64_t rotary_dim) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "rotary_embedding takes [T, heads * head_dim] rows");
  TORCH_CHECK(x.size(1) % head_dim == 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim, "bad rotary dims");
  TORCH_CHECK(cos_sin_cache.scalar_type() == at::kFloat && cos_sin_cache.is_contiguous() &&
                  cos_sin_cache.size(1) == rotary_dim,
              "cos_sin_cache must be float32 [max_position, rotary_dim]");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous(), "positions must be int64");
  TORCH_CHECK(positions.size(0) >= x.size(0), "fewer positions than rows");
  const int64_t max_position = cos_sin_cache.size(0);
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t r = 0; r < x.size(0); ++r) TORCH_CHECK(pos[r] >= 0 && pos[r] < max_position, "position out of range");
  const float* table = cos_sin_cache.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rotary_embedding",
                                  [&] { rotary_embedding_kernel<scalar_t>(x, pos, table, head_dim, rotary_dim); });
}

}  // namespace pagedllm
