// bf16 matmuls: out[M, N] = x[M, K] @ W[N, K]^T, with AVX512-BF16 dot products (vdpbf16ps)
// or, in the AVX2 build, bf16 widened to float32 and FMA (products exact in float32 either way).
//
//   gemv_bf16         the skinny kernel, on W as loaded ([N, K], row major): decode steps.
//                     It does not depend on weight packing (ops/linear.py and decoder_stack.cpp
//                     use it for plain bf16 weights whether packing is on or off).
//   pack_weight_bf16, gemm_packed_bf16, embed_packed_bf16
//                     W prepacked for more rows (8-128 and beyond), and rows of a packed table
//                     read back out (embedding lookups tied to a packed LM head).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "ops.h"
#include "vec.h"

namespace pagedllm {
namespace {

// ---------------------------------------------------------------------------------------
// Skinny matmul on plain weights (gemv_bf16), for decode: rows of x in groups of 4 (up to
// kGemvMaxRows in all) against W[N, K] as loaded.
//
// One decode token reads every weight once, so this is bound by memory bandwidth: each
// weight row is loaded once and used for all M rows with AVX512-BF16 dot products
// (products exact in float32, float32 accumulation). oneDNN's general path ran a
// 576x960 bf16 projection at about 48 GFLOP/s for one row here, a fraction of bandwidth.
// ---------------------------------------------------------------------------------------

constexpr int64_t kGemvMaxRows = 256;

bool gemv_supported(const at::Tensor& x, const at::Tensor& weight) {
#if defined(__AVX512BF16__) || defined(PAGEDLLM_ISA_AVX2)
  return x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16 && x.dim() == 2 &&
         x.size(0) <= kGemvMaxRows && x.size(1) % 32 == 0 && x.stride(1) == 1 && weight.is_contiguous();
#else
  return false;
#endif
}

#if defined(__AVX512BF16__)
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
#elif defined(PAGEDLLM_ISA_AVX2)
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
#endif

}  // namespace

void gemv_bf16(at::Tensor out, const at::Tensor& x, const at::Tensor& weight) {
  check_cpu(x, "x");
  TORCH_CHECK(gemv_supported(x, weight), "gemv_bf16 takes bf16 x [M <= 256, K % 32 == 0] and contiguous W [N, K]");
  TORCH_CHECK(weight.size(1) == x.size(1), "x and weight differ in K");
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.dim() == 2 && out.size(0) == x.size(0) &&
                  out.size(1) == weight.size(0) && out.stride(1) == 1,
              "out must be bf16 [M, N]");
#if defined(__AVX512BF16__)
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
#elif defined(PAGEDLLM_ISA_AVX2)
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
#endif
}

// The most rows of x gemv_bf16 takes (ops/cpu_kernels.py's GEMV_MAX_ROWS); 0 when the kernel
// is not compiled in (the scalar build: gemv_supported is always false).
int64_t gemv_bf16_max_rows() {
#if defined(__AVX512BF16__) || defined(PAGEDLLM_ISA_AVX2)
  return kGemvMaxRows;
#else
  return 0;
#endif
}

namespace {

// ---------------------------------------------------------------------------------------
// Packed weights (pack_weight_bf16, gemm_packed_bf16, embed_packed_bf16).
//
// The skinny kernel above multiplies rows of W with rows of x and ends every output with a
// horizontal sum; that is fine for one row (memory bound) but leaves a third of the arithmetic
// unused at 8-128 rows, where oneDNN does not do better on these narrow shapes. Here W is stored so that one 64-byte load holds 16 output
// columns x 2 consecutive k: each instruction then adds x[m, k:k+2] (broadcast) times 16
// columns into 16 float32 accumulators, no reduction at the end.
//
// Packed layout (same shape and element count as W, contents opaque): output columns in
// panels of 64 (the last may be 16, 32 or 48 wide); panel p is stored contiguously, and in it
// for each k pair j the pairs of its columns:
//     packed[p][j][c][t] = W[64p + c][2j + t]
// A tile of up to kRowBlock x 64 outputs keeps its accumulators in registers while streaming
// the panel once; a panel (K x 64 x 2 bytes, 72-192 KB here) stays in L2 across row tiles.
// ---------------------------------------------------------------------------------------

constexpr int64_t kPanel = 64;     // output columns per panel
constexpr int64_t kVec = 16;       // float32 lanes per vector
constexpr int kRowBlock = 6;       // rows per register tile: 6 x 4 accumulators + 4 weights + 1
constexpr int64_t kRowChunk = 192; // rows whose x stays in L2 while every panel passes

void check_packable(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.scalar_type() == at::kBFloat16,
              "packed bf16 matmul: weight must be contiguous bf16 [N, K]");
  TORCH_CHECK(w.size(0) % kVec == 0 && w.size(1) % 32 == 0,
              "packed bf16 matmul: N must be a multiple of 16 and K of 32, got ", w.sizes());
}

}  // namespace

at::Tensor pack_weight_bf16(const at::Tensor& w) {
  check_packable(w);
  const int64_t n_len = w.size(0), k_len = w.size(1), pairs = k_len / 2;
  auto packed = at::empty_like(w);
  const auto* src = reinterpret_cast<const uint32_t*>(w.data_ptr<at::BFloat16>());  // k pairs
  auto* dst = reinterpret_cast<uint32_t*>(packed.data_ptr<at::BFloat16>());
  at::parallel_for(0, (n_len + kPanel - 1) / kPanel, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c0 = p * kPanel, width = std::min(kPanel, n_len - c0);
      uint32_t* panel = dst + c0 * pairs;
      for (int64_t j = 0; j < pairs; ++j)
        for (int64_t c = 0; c < width; ++c) panel[j * width + c] = src[(c0 + c) * pairs + j];
    }
  });
  return packed;
}

namespace {

#if defined(__AVX512BF16__)
// The next panel a thread will stream, fetched into L1/L2 a few k-pair rows at a time while the
// current panel's row tiles run from cache. Without it, the first row tile of every panel
// waits on DRAM and compute and memory take turns: at 16-64 rows that costs 15-20%.
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
#elif defined(PAGEDLLM_ISA_AVX2)
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
#endif

}  // namespace

void gemm_packed_bf16(at::Tensor out, const at::Tensor& x, const at::Tensor& packed) {
  check_packable(packed);
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.stride(1) == 1 && x.size(1) == packed.size(1),
              "packed bf16 matmul: x must be bf16 [M, K] with unit column stride");
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.dim() == 2 && out.size(0) == x.size(0) &&
                  out.size(1) == packed.size(0) && out.stride(1) == 1,
              "packed bf16 matmul: out must be bf16 [M, N]");
#if defined(__AVX512BF16__)
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
#elif defined(PAGEDLLM_ISA_AVX2)
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
          NextSlice next;
          if (v + count < end) {  // the thread's next panel
            const int64_t next_c0 = c0 + kPanel, next_width = std::min(kPanel, n_len - next_c0);
            next.base = reinterpret_cast<const char*>(wp + next_c0 * pairs);
            next.stride = next.bytes = next_width * 4;
          }
          row_of_panel(xf, k_len, panel + v_in * kVec, width, count, pairs, o, next);
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
#else
  TORCH_CHECK(false, "packed bf16 matmul needs AVX512-BF16 or AVX2");
#endif
}

// out[t] = W[ids[t]]: rows of the weight read back out of its packed layout (an embedding
// lookup in a table tied to a packed LM head). Row n's k pair j is one 32-bit word of its panel.
void embed_packed_bf16(at::Tensor out, const at::Tensor& packed, const at::Tensor& ids) {
  check_packable(packed);
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 1 && ids.is_contiguous(),
              "packed embedding: ids must be a contiguous int64 vector");
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.is_contiguous() && out.dim() == 2 &&
                  out.size(0) == ids.size(0) && out.size(1) == packed.size(1),
              "packed embedding: out must be contiguous bf16 [len(ids), K]");
  const int64_t n_len = packed.size(0), pairs = packed.size(1) / 2, tokens = ids.size(0);
  const int64_t* id = ids.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(id[t] >= 0 && id[t] < n_len, "packed embedding: id ", id[t], " is outside [0, ", n_len, ")");
  const auto* wp = reinterpret_cast<const uint32_t*>(packed.data_ptr<at::BFloat16>());
  auto* op = reinterpret_cast<uint32_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = id[t] / kPanel * kPanel, width = std::min(kPanel, n_len - c0);
      const uint32_t* column = wp + c0 * pairs + (id[t] - c0);
      uint32_t* row = op + t * pairs;
      for (int64_t j = 0; j < pairs; ++j) row[j] = column[j * width];
    }
  });
}

}  // namespace pagedllm
