// bf16 matmul with the weight prepacked for AVX512-BF16 dot products (vdpbf16ps).
//
// out[M, N] = x[M, K] @ W[N, K]^T. The skinny kernel in cpu_ops.cpp multiplies rows of W with
// rows of x and ends every output with a horizontal sum; that is fine for one row (memory
// bound) but leaves a third of the arithmetic unused at 8-128 rows, where oneDNN does not do
// better on these narrow shapes. Here W is stored so that one 64-byte load holds 16 output
// columns x 2 consecutive k: each instruction then adds x[m, k:k+2] (broadcast) times 16
// columns into 16 float32 accumulators, no reduction at the end.
//
// Packed layout (same shape and element count as W, contents opaque): output columns in
// panels of 64 (the last may be 16, 32 or 48 wide); panel p is stored contiguously, and in it
// for each k pair j the pairs of its columns:
//     packed[p][j][c][t] = W[64p + c][2j + t]
// A tile of up to kRowBlock x 64 outputs keeps its accumulators in registers while streaming
// the panel once; a panel (K x 64 x 2 bytes, 72-192 KB here) stays in L2 across row tiles.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "vec.h"

namespace pagedllm {
namespace {

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
#endif

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
#else
  TORCH_CHECK(false, "packed bf16 matmul needs AVX512-BF16");
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

}  // namespace
}  // namespace pagedllm

TORCH_LIBRARY_IMPL(pagedllm, CPU, m) {
  m.impl("pack_weight_bf16", &pagedllm::pack_weight_bf16);
  m.impl("gemm_packed_bf16", &pagedllm::gemm_packed_bf16);
  m.impl("embed_packed_bf16", &pagedllm::embed_packed_bf16);
}
