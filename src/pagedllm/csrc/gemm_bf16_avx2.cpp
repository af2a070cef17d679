// The AVX2 + FMA kernels of the bf16 matmuls, which widen bf16 to float32: gemv_bf16's skinny
// loop on W as loaded and gemm_packed_bf16's tiles on packed panels. Separate from
// gemm_bf16.cpp (the ops, checks and dispatch) and from the AVX-512 kernels so that each file
// holds one instruction set; compiled only in builds whose vector paths are AVX2.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "gemm_bf16_impl.h"
#include "vec.h"

#if defined(PAGEDLLM_ISA_AVX2)

namespace pagedllm {
namespace detail {
namespace {

// Rows widened to float32 once per call, reused by every weight row (and every thread). The
// buffer stays with the calling thread so that decode steps do not page-fault a fresh one.
float* widening_buffer(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

// x rows [rows, k_len] as float32 in the order a 32-byte load of W splits into: per 16
// elements, the 8 even ones (the low bf16 of each pair) then the 8 odd ones.
void widen_rows_as_pairs(const uint16_t* x, int64_t x_stride, int64_t rows, int64_t k_len, float* dst) {
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t k = 0; k < k_len; k += 16) {
      const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + m * x_stride + k));
      _mm256_storeu_ps(dst + m * k_len + k, low_bf16_to_float8(pairs));
      _mm256_storeu_ps(dst + m * k_len + k + 8, high_bf16_to_float8(pairs));
    }
}

// kM rows of x (widened, row stride k_len) against weight rows [n_begin, n_end), kR rows per
// pass. Each weight load is widened once (even and odd halves) and used by all kM rows. Every
// output has one accumulator, fed in the same order whatever kM and kR are, so a row's result
// does not depend on the other rows in the batch.
template <int kM, int kR>
void gemv_bf16_rows(const float* x, const uint16_t* w, uint16_t* out, int64_t out_stride, int64_t n_begin,
                    int64_t n_end, int64_t k_len) {
  int64_t n = n_begin;
  auto pass = [&](auto rows_in_pass) {
    constexpr int kRows = decltype(rows_in_pass)::value;
    __m256 acc[kM][kRows];
    for (int m = 0; m < kM; ++m)
      for (int r = 0; r < kRows; ++r) acc[m][r] = _mm256_setzero_ps();
    const uint16_t* wr = w + n * k_len;
    for (int64_t k = 0; k < k_len; k += 16) {
      if constexpr (kM == 1) {
        // One row of x: many weight rows at once (more streams in flight, more FMA chains),
        // each widened and consumed at once so that nothing stays live across the rows.
        const __m256 x_even = _mm256_loadu_ps(x + k), x_odd = _mm256_loadu_ps(x + k + 8);
        for (int r = 0; r < kRows; ++r) {
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + r * k_len + k));
          acc[0][r] = _mm256_fmadd_ps(low_bf16_to_float8(raw), x_even, acc[0][r]);
          acc[0][r] = _mm256_fmadd_ps(high_bf16_to_float8(raw), x_odd, acc[0][r]);
        }
      } else {
        __m256i raw[kRows];
        __m256 half[kRows];
        for (int r = 0; r < kRows; ++r)
          raw[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + r * k_len + k));
        for (int r = 0; r < kRows; ++r) half[r] = low_bf16_to_float8(raw[r]);
        for (int m = 0; m < kM; ++m) {
          const __m256 xv = _mm256_loadu_ps(x + m * k_len + k);
          for (int r = 0; r < kRows; ++r) acc[m][r] = _mm256_fmadd_ps(half[r], xv, acc[m][r]);
        }
        for (int r = 0; r < kRows; ++r) half[r] = high_bf16_to_float8(raw[r]);
        for (int m = 0; m < kM; ++m) {
          const __m256 xv = _mm256_loadu_ps(x + m * k_len + k + 8);
          for (int r = 0; r < kRows; ++r) acc[m][r] = _mm256_fmadd_ps(half[r], xv, acc[m][r]);
        }
      }
    }
    for (int m = 0; m < kM; ++m)
      for (int r = 0; r < kRows; ++r) out[m * out_stride + n + r] = bf16_bits(reduce_add8(acc[m][r]));
  };
  for (; n + kR <= n_end; n += kR) pass(std::integral_constant<int, kR>{});
  for (; n < n_end; ++n) pass(std::integral_constant<int, 1>{});
}

// The AVX2 kernel on the same panels. Without bf16 dot products each k pair of a 32-byte
// load (8 columns x 2 k) is widened into its two k halves, each multiplied by one broadcast
// element of x (x widened to float32 beforehand). 16 ymm registers limit a tile to 6 rows x
// 16 columns (12 accumulators, 2 weight halves, 1 broadcast), so a panel is walked in slices
// of 16 columns, each passed over by every row tile while it stays in L2; a single row walks
// the whole panel width at once (8 accumulators), streaming the panel in its stored order.
constexpr int kRowBlockAvx2 = 6;
constexpr int64_t kLanes = 8;  // float32 lanes per ymm vector

// The lines of the next slice (or panel) a thread will read, fetched a few k pairs at a time
// while the current one runs from cache (the first row tile would otherwise wait on DRAM).
struct NextSlice {
  const char* base = nullptr;  // nullptr: nothing to fetch
  int64_t stride = 0;          // bytes from one k pair's columns to the next
  int64_t bytes = 0;           // bytes fetched per k pair (whole cache lines)
  int64_t first_row = 0;       // the k pairs this tile fetches: first_row, first_row + 1, ...
  int64_t every = 1;           // one k pair per `every` k pairs of this tile
};

// A kMB x (kNV x 8) tile of outputs from widened rows x[0..kMB) (row stride k_len floats) and
// the 8-column vectors starting at `w` of a panel whose k pairs lie `width` words apart.
template <int kMB, int kNV>
inline void tile_avx2(const float* x, int64_t k_len, const uint32_t* w, int64_t width, int64_t pairs,
                      uint16_t* out, int64_t out_stride, const NextSlice& next) {
  __m256 acc[kMB][kNV];
  for (int m = 0; m < kMB; ++m)
    for (int v = 0; v < kNV; ++v) acc[m][v] = _mm256_setzero_ps();
  const char* fetch = next.base == nullptr ? nullptr : next.base + next.first_row * next.stride;
  int64_t until_fetch = 0;  // a countdown rather than j % every: no division in the k loop
  for (int64_t j = 0; j < pairs; ++j, w += width) {
    if (fetch != nullptr && until_fetch-- == 0) {
      for (int64_t line = 0; line < next.bytes; line += 64) _mm_prefetch(fetch + line, _MM_HINT_T0);
      fetch += next.stride;
      until_fetch = next.every - 1;
    }
    __m256i raw[kNV];
    __m256 half[kNV];
    for (int v = 0; v < kNV; ++v) raw[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v * kLanes));
    for (int v = 0; v < kNV; ++v) half[v] = low_bf16_to_float8(raw[v]);
    for (int m = 0; m < kMB; ++m) {
      const __m256 xb = _mm256_broadcast_ss(x + m * k_len + 2 * j);
      for (int v = 0; v < kNV; ++v) acc[m][v] = _mm256_fmadd_ps(half[v], xb, acc[m][v]);
    }
    for (int v = 0; v < kNV; ++v) half[v] = high_bf16_to_float8(raw[v]);
    for (int m = 0; m < kMB; ++m) {
      const __m256 xb = _mm256_broadcast_ss(x + m * k_len + 2 * j + 1);
      for (int v = 0; v < kNV; ++v) acc[m][v] = _mm256_fmadd_ps(half[v], xb, acc[m][v]);
    }
  }
  for (int m = 0; m < kMB; ++m)
    for (int v = 0; v < kNV; ++v) store_bf16x8(out + m * out_stride + v * kLanes, acc[m][v]);
}

// All `rows` rows against 16 columns of a panel: row tiles of kRowBlockAvx2, each fetching an
// equal share of the next slice.
void rows_of_slice(const float* x, int64_t k_len, int64_t rows, const uint32_t* w, int64_t width, int64_t pairs,
                   uint16_t* out, int64_t out_stride, NextSlice next) {
  const int64_t tiles = (rows + kRowBlockAvx2 - 1) / kRowBlockAvx2;
  next.every = tiles;
  int64_t m = 0;
  for (; m + kRowBlockAvx2 <= rows; m += kRowBlockAvx2) {
    next.first_row = (m / kRowBlockAvx2) * pairs / tiles;
    tile_avx2<kRowBlockAvx2, 2>(x + m * k_len, k_len, w, width, pairs, out + m * out_stride, out_stride, next);
  }
  next.first_row = (m / kRowBlockAvx2) * pairs / tiles;
  const float* xr = x + m * k_len;
  uint16_t* o = out + m * out_stride;
  switch (rows - m) {
    case 1: tile_avx2<1, 2>(xr, k_len, w, width, pairs, o, out_stride, next); break;
    case 2: tile_avx2<2, 2>(xr, k_len, w, width, pairs, o, out_stride, next); break;
    case 3: tile_avx2<3, 2>(xr, k_len, w, width, pairs, o, out_stride, next); break;
    case 4: tile_avx2<4, 2>(xr, k_len, w, width, pairs, o, out_stride, next); break;
    case 5: tile_avx2<5, 2>(xr, k_len, w, width, pairs, o, out_stride, next); break;
    default: break;
  }
}

// One row against `count` 16-column vectors of a panel in one pass.
void row_of_panel(const float* x, int64_t k_len, const uint32_t* w, int64_t width, int64_t count, int64_t pairs,
                  uint16_t* out, const NextSlice& next) {
  switch (count) {
    case 4: tile_avx2<1, 8>(x, k_len, w, width, pairs, out, 0, next); break;
    case 3: tile_avx2<1, 6>(x, k_len, w, width, pairs, out, 0, next); break;
    case 2: tile_avx2<1, 4>(x, k_len, w, width, pairs, out, 0, next); break;
    default: tile_avx2<1, 2>(x, k_len, w, width, pairs, out, 0, next); break;
  }
}

}  // namespace

void gemv_bf16_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight) {
  const int64_t rows = x.size(0), n_len = weight.size(0), k_len = x.size(1);
  const auto* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t out_stride = out.stride(0);
  float* xf = widening_buffer(rows * k_len);
  widen_rows_as_pairs(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), x.stride(0), rows, k_len, xf);
  // Weight rows in blocks of at most kGemvBlockBytes, which stay in L2 while every group of
  // input rows passes over them (the 64-row blocks of the AVX-512 path overflow smaller L2s).
  constexpr int64_t kGemvBlockBytes = 256 * 1024;
  const int64_t block = std::clamp<int64_t>(kGemvBlockBytes / (2 * k_len) / 4 * 4, 4, 64);
  at::parallel_for(0, n_len, 64, [&](int64_t begin, int64_t end) {
    for (int64_t n0 = begin; n0 < end; n0 += block) {
      const int64_t n1 = std::min(end, n0 + block);
      int64_t m = 0;
      for (; m + 4 <= rows; m += 4)
        gemv_bf16_rows<4, 2>(xf + m * k_len, wp, op + m * out_stride, out_stride, n0, n1, k_len);
      switch (rows - m) {
        case 1: gemv_bf16_rows<1, 8>(xf + m * k_len, wp, op + m * out_stride, out_stride, n0, n1, k_len); break;
        case 2: gemv_bf16_rows<2, 4>(xf + m * k_len, wp, op + m * out_stride, out_stride, n0, n1, k_len); break;
        case 3: gemv_bf16_rows<3, 3>(xf + m * k_len, wp, op + m * out_stride, out_stride, n0, n1, k_len); break;
        default: break;
      }
    }
  });
}

void gemm_packed_bf16_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  const int64_t rows = x.size(0), n_len = packed.size(0), k_len = x.size(1), pairs = k_len / 2;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint32_t*>(packed.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t x_stride = x.stride(0), out_stride = out.stride(0);
  const int64_t vectors = n_len / kVec;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), vectors));
  const int64_t grain = (vectors + threads - 1) / threads;
  float* xf = widening_buffer(std::min(kRowChunk, rows) * k_len);
  for (int64_t m0 = 0; m0 < rows; m0 += kRowChunk) {
    const int64_t chunk = std::min(kRowChunk, rows - m0);
    at::parallel_for(0, chunk, 16, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const uint16_t* src = xp + (m0 + m) * x_stride;
        for (int64_t k = 0; k < k_len; k += kLanes) _mm256_storeu_ps(xf + m * k_len + k, load_bf16x8(src + k));
      }
    });
    // As in the AVX-512 path: each thread takes one contiguous run of 16-column vectors.
    at::parallel_for(0, vectors, grain, [&](int64_t begin, int64_t end) {
      for (int64_t v = begin; v < end;) {
        const int64_t c0 = v * kVec / kPanel * kPanel, width = std::min(kPanel, n_len - c0);
        const int64_t v_in = v - c0 / kVec;
        const int64_t count = std::min(end - v, width / kVec - v_in);
        const uint32_t* panel = wp + c0 * pairs;
        uint16_t* o = op + m0 * out_stride + v * kVec;
        if (chunk == 1) {
          // One row streams its panels straight from memory: the hardware prefetcher keeps up
          // with that one stream, and fetching the next panel besides made a 1B step's
          // matmuls 14% slower (benchmarks/README.md, "No next-panel prefetch for few rows").
          // With more rows the slices' prefetch below pays (35-39% at 2-16 rows).
          row_of_panel(xf, k_len, panel + v_in * kVec, width, count, pairs, o, NextSlice{});
        } else {
          for (int64_t s = 0; s < count; ++s) {
            NextSlice next;
            const int64_t nv = v + s + 1;
            if (nv < end) {  // the thread's next 16 columns: in this panel or the next one
              const int64_t next_c0 = nv * kVec / kPanel * kPanel;
              const int64_t next_width = std::min(kPanel, n_len - next_c0);
              next.base = reinterpret_cast<const char*>(wp + next_c0 * pairs + (nv * kVec - next_c0));
              next.stride = next_width * 4;
              next.bytes = kVec * 4;
            }
            rows_of_slice(xf, k_len, chunk, panel + (v_in + s) * kVec, width, pairs, o + s * kVec, out_stride,
                          next);
          }
        }
        v += count;
      }
    });
  }
}

}  // namespace detail
}  // namespace pagedllm

#endif  // PAGEDLLM_ISA_AVX2
