// The AVX512-BF16 kernels of the bf16 matmuls (vdpbf16ps): gemv_bf16's skinny loop on W as
// loaded and gemm_packed_bf16's register tiles on packed panels. Separate from gemm_bf16.cpp
// (the ops, checks and dispatch) and from the AVX2 kernels so that each file holds one
// instruction set; compiled only where the build has AVX512-BF16.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "gemm_bf16_impl.h"
#include "vec.h"

#if defined(__AVX512BF16__)

namespace pagedllm {
namespace detail {
namespace {

template <int kM>
void gemv_bf16_rows(const uint16_t* x, int64_t x_stride, const uint16_t* w, uint16_t* out, int64_t out_stride,
                    int64_t n_begin, int64_t n_end, int64_t k_len) {
  constexpr int kR = 4;  // weight rows per pass
  int64_t n = n_begin;
  for (; n + kR <= n_end; n += kR) {
    __m512 acc[kM][kR];
    for (int m = 0; m < kM; ++m)
      for (int r = 0; r < kR; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < k_len; k += 32) {
      __m512bh wv[kR];
      for (int r = 0; r < kR; ++r) wv[r] = (__m512bh)_mm512_loadu_si512(w + (n + r) * k_len + k);
      for (int m = 0; m < kM; ++m) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * x_stride + k);
        for (int r = 0; r < kR; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
      }
    }
    for (int m = 0; m < kM; ++m)
      for (int r = 0; r < kR; ++r) out[m * out_stride + n + r] = bf16_bits(_mm512_reduce_add_ps(acc[m][r]));
  }
  for (; n < n_end; ++n) {
    __m512 acc[kM];
    for (int m = 0; m < kM; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < k_len; k += 32) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + n * k_len + k);
      for (int m = 0; m < kM; ++m)
        acc[m] = _mm512_dpbf16_ps(acc[m], (__m512bh)_mm512_loadu_si512(x + m * x_stride + k), wv);
    }
    for (int m = 0; m < kM; ++m) out[m * out_stride + n] = bf16_bits(_mm512_reduce_add_ps(acc[m]));
  }
}

constexpr int kRowBlock = 6;       // rows per register tile: 6 x 4 accumulators + 4 weights + 1

// The next panel a thread will stream, fetched into L1/L2 a few k-pair rows at a time while the
// current panel's row tiles run from cache. Without it, the first row tile of every panel
// waits on DRAM and compute and memory take turns: at 16-64 rows that costs 15-20%. Below
// kPrefetchMinRows rows, one row included, the panels stream straight from memory, which the
// hardware prefetcher alone keeps up with, and the extra requests only compete with it
// (benchmarks/README.md, "No next-panel prefetch for few rows" and "One row without it on
// small panels too").
constexpr int64_t kPrefetchMinRows = 9;
struct NextPanel {
  const char* base = nullptr;  // nullptr: nothing to fetch
  int64_t row_bytes = 0;       // one k-pair row of the panel (width x 4 bytes)
  int64_t first_row = 0;       // the rows this tile fetches: first_row, first_row + 1, ...
  int64_t every = 1;           // one row per `every` k pairs of this tile
};

// A kMB x (kNV x 16) tile of outputs from rows x[0..kMB) and the columns [v0*16, (v0+kNV)*16)
// of a panel `width` columns wide.
template <int kMB, int kNV>
inline void tile(const uint16_t* x, int64_t x_stride, const uint32_t* panel, int64_t width, int64_t v0,
                 int64_t pairs, uint16_t* out, int64_t out_stride, const NextPanel& next) {
  __m512 acc[kMB][kNV];
  for (int m = 0; m < kMB; ++m)
    for (int v = 0; v < kNV; ++v) acc[m][v] = _mm512_setzero_ps();
  const uint32_t* w = panel + v0 * kVec;
  for (int64_t j = 0; j < pairs; ++j, w += width) {
    if (next.base != nullptr && j % next.every == 0) {
      const char* row = next.base + (next.first_row + j / next.every) * next.row_bytes;
      for (int64_t line = 0; line < next.row_bytes; line += 64) _mm_prefetch(row + line, _MM_HINT_T0);
    }
    __m512bh wv[kNV];
    for (int v = 0; v < kNV; ++v) wv[v] = (__m512bh)_mm512_loadu_si512(w + v * kVec);
    for (int m = 0; m < kMB; ++m) {
      const __m512bh xb =
          (__m512bh)_mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + m * x_stride + 2 * j));
      for (int v = 0; v < kNV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], xb, wv[v]);
    }
  }
  for (int m = 0; m < kMB; ++m)
    for (int v = 0; v < kNV; ++v)
      store_bf16x16(out + m * out_stride + v * kVec, acc[m][v]);
}

template <int kNV>
void rows_of_panel(const uint16_t* x, int64_t x_stride, int64_t rows, const uint32_t* panel, int64_t width,
                   int64_t v0, int64_t pairs, uint16_t* out, int64_t out_stride, NextPanel next) {
  // Every row tile fetches an equal share of the next panel, spread over its k loop.
  if (rows < kPrefetchMinRows) next.base = nullptr;
  const int64_t tiles = (rows + kRowBlock - 1) / kRowBlock;
  next.every = tiles;
  int64_t m = 0;
  for (; m + kRowBlock <= rows; m += kRowBlock) {
    next.first_row = (m / kRowBlock) * pairs / tiles;
    tile<kRowBlock, kNV>(x + m * x_stride, x_stride, panel, width, v0, pairs, out + m * out_stride, out_stride,
                         next);
  }
  next.first_row = (m / kRowBlock) * pairs / tiles;
  const uint16_t* xr = x + m * x_stride;
  uint16_t* o = out + m * out_stride;
  switch (rows - m) {
    case 1: tile<1, kNV>(xr, x_stride, panel, width, v0, pairs, o, out_stride, next); break;
    case 2: tile<2, kNV>(xr, x_stride, panel, width, v0, pairs, o, out_stride, next); break;
    case 3: tile<3, kNV>(xr, x_stride, panel, width, v0, pairs, o, out_stride, next); break;
    case 4: tile<4, kNV>(xr, x_stride, panel, width, v0, pairs, o, out_stride, next); break;
    case 5: tile<5, kNV>(xr, x_stride, panel, width, v0, pairs, o, out_stride, next); break;
    default: break;
  }
}

}  // namespace

void gemv_bf16_avx512(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight) {
  const int64_t rows = x.size(0), n_len = weight.size(0), k_len = x.size(1);
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t x_stride = x.stride(0), out_stride = out.stride(0);
  // Chunks of 64 output rows: enough work per thread to cover the parallel region's cost.
  at::parallel_for(0, n_len, 64, [&](int64_t begin, int64_t end) {
    // Blocks of 64 weight rows stay in L1/L2 while every group of 4 input rows passes over them.
    for (int64_t n0 = begin; n0 < end; n0 += 64) {
      const int64_t n1 = std::min(end, n0 + 64);
      int64_t m = 0;
      for (; m + 4 <= rows; m += 4)
        gemv_bf16_rows<4>(xp + m * x_stride, x_stride, wp, op + m * out_stride, out_stride, n0, n1, k_len);
      switch (rows - m) {
        case 1: gemv_bf16_rows<1>(xp + m * x_stride, x_stride, wp, op + m * out_stride, out_stride, n0, n1, k_len); break;
        case 2: gemv_bf16_rows<2>(xp + m * x_stride, x_stride, wp, op + m * out_stride, out_stride, n0, n1, k_len); break;
        case 3: gemv_bf16_rows<3>(xp + m * x_stride, x_stride, wp, op + m * out_stride, out_stride, n0, n1, k_len); break;
        default: break;
      }
    }
  });
}

void gemm_packed_bf16_avx512(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  const int64_t rows = x.size(0), n_len = packed.size(0), pairs = x.size(1) / 2;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint32_t*>(packed.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t x_stride = x.stride(0), out_stride = out.stride(0);
  const int64_t vectors = n_len / kVec;
  // Each thread takes one contiguous run of 16-column vectors (whole panels where possible).
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), vectors));
  const int64_t grain = (vectors + threads - 1) / threads;
  at::parallel_for(0, vectors, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m0 = 0; m0 < rows; m0 += kRowChunk) {
      const int64_t chunk = std::min(kRowChunk, rows - m0);
      for (int64_t v = begin; v < end;) {
        const int64_t p = v * kVec / kPanel;
        const int64_t c0 = p * kPanel, width = std::min(kPanel, n_len - c0);
        const int64_t v_in = v - c0 / kVec;  // first vector inside the panel
        const int64_t count = std::min(end - v, width / kVec - v_in);
        const uint32_t* panel = wp + c0 * pairs;
        const uint16_t* xr = xp + m0 * x_stride;
        uint16_t* o = op + m0 * out_stride + v * kVec;
        NextPanel next;
        if (v + count < end) {  // the thread's next panel (another thread's range is not fetched)
          const int64_t next_c0 = c0 + kPanel;
          next.base = reinterpret_cast<const char*>(wp + next_c0 * pairs);
          next.row_bytes = std::min(kPanel, n_len - next_c0) * 4;
        }
        switch (count) {
          case 4: rows_of_panel<4>(xr, x_stride, chunk, panel, width, v_in, pairs, o, out_stride, next); break;
          case 3: rows_of_panel<3>(xr, x_stride, chunk, panel, width, v_in, pairs, o, out_stride, next); break;
          case 2: rows_of_panel<2>(xr, x_stride, chunk, panel, width, v_in, pairs, o, out_stride, next); break;
          default: rows_of_panel<1>(xr, x_stride, chunk, panel, width, v_in, pairs, o, out_stride, next); break;
        }
        v += count;
      }
    }
  });
}

}  // namespace detail
}  // namespace pagedllm

#endif  // __AVX512BF16__
