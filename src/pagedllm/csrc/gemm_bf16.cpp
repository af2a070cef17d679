// bf16 matmuls: out[M, N] = x[M, K] @ W[N, K]^T, with AVX512-BF16 dot products (vdpbf16ps)
// or, in the AVX2 build, bf16 widened to float32 and FMA (products exact in float32 either way).
//
//   gemv_bf16         the skinny kernel, on W as loaded ([N, K], row major): decode steps.
//                     It does not depend on weight packing (ops/linear.py and decoder_stack.cpp
//                     use it for plain bf16 weights whether packing is on or off).
//   pack_weight_bf16, gemm_packed_bf16, embed_packed_bf16
//                     W prepacked for more rows (8-128 and beyond), and rows of a packed table
//                     read back out (embedding lookups tied to a packed LM head). On CPUs with
//                     AMX-BF16 the packed matmul runs on the tiles (gemm_bf16_amx.cpp).
//
// This file holds the ops: their argument checks, packing, the packed-table lookup and the
// dispatch to the build's kernels, which live one instruction set per file
// (gemm_bf16_avx512.cpp, gemm_bf16_avx2.cpp; shared constants in gemm_bf16_impl.h).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/util/BFloat16.h>
#include <c10/util/string_view.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "gemm_bf16_impl.h"
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

}  // namespace

void gemv_bf16(at::Tensor out, const at::Tensor& x, const at::Tensor& weight) {
  check_cpu(x, "x");
  TORCH_CHECK(gemv_supported(x, weight), "gemv_bf16 takes bf16 x [M <= 256, K % 32 == 0] and contiguous W [N, K]");
  TORCH_CHECK(weight.size(1) == x.size(1), "x and weight differ in K");
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.dim() == 2 && out.size(0) == x.size(0) &&
                  out.size(1) == weight.size(0) && out.stride(1) == 1,
              "out must be bf16 [M, N]");
#if defined(__AVX512BF16__)
  detail::gemv_bf16_avx512(out, x, weight);
#elif defined(PAGEDLLM_ISA_AVX2)
  detail::gemv_bf16_avx2(out, x, weight);
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
// panels of kPanel (64 for the vector kernels, the last may be 16, 32 or 48 wide; 16 in the
// AMX build, gemm_bf16_impl.h); panel p is stored contiguously, and in it for each k pair j
// the pairs of its columns:
//     packed[p][j][c][t] = W[kPanel p + c][2j + t]
// A tile of up to kRowBlock x 64 outputs keeps its accumulators in registers while streaming
// the panel once; a panel (K x 64 x 2 bytes, 72-192 KB here) stays in L2 across row tiles.
// ---------------------------------------------------------------------------------------

using detail::kPanel;
using detail::kVec;

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

void check_packed_matmul(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
  check_packable(packed);
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.stride(1) == 1 && x.size(1) == packed.size(1),
              "packed bf16 matmul: x must be bf16 [M, K] with unit column stride");
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.dim() == 2 && out.size(0) == x.size(0) &&
                  out.size(1) == packed.size(0) && out.stride(1) == 1,
              "packed bf16 matmul: out must be bf16 [M, N]");
}

void gemm_packed_bf16_vector(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed) {
#if defined(__AVX512BF16__)
  detail::gemm_packed_bf16_avx512(out, x, packed);
#elif defined(PAGEDLLM_ISA_AVX2)
  detail::gemm_packed_bf16_avx2(out, x, packed);
#else
  TORCH_CHECK(false, "packed bf16 matmul needs AVX512-BF16 or AVX2");
#endif
}

#if defined(__AVX512F__)
// r[i] lane j <- r[j] lane i: a 16 x 16 matrix of 32-bit values transposed in registers (pairs of
// lanes, then of 64-bit halves, then 128-bit and 256-bit quarters swapped across vectors).
inline void transpose_16x16_epi32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Now r[4q + s] holds rows 4q..4q+3, column s + 4 * (128-bit lane). Gather 128-bit lanes.
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);       // lanes 0, 2 of each
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);   // lanes 1, 3
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}
#endif

// w [N, K] = the weight written back out of its packed layout (the inverse of pack_weight_bf16).
void unpack_into(at::Tensor& w, const at::Tensor& packed) {
  const int64_t n_len = packed.size(0), pairs = packed.size(1) / 2;
  const auto* src = reinterpret_cast<const uint32_t*>(packed.data_ptr<at::BFloat16>());
  auto* dst = reinterpret_cast<uint32_t*>(w.data_ptr<at::BFloat16>());
  // Blocks of 16 k pairs x 16 columns: 16 lines read, 16 lines written.
  constexpr int64_t kBlock = 16;
  const bool streaming = reinterpret_cast<uintptr_t>(dst) % 64 == 0 && pairs % kBlock == 0;
  at::parallel_for(0, n_len / kVec, 1, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const int64_t c0 = v * kVec / kPanel * kPanel, width = std::min(kPanel, n_len - c0);
      const uint32_t* panel = src + c0 * pairs + (v * kVec - c0);
      int64_t j0 = 0;
#if defined(__AVX512F__)
      // The block's 16 lines (a k pair of 16 columns each) transposed in registers into 16
      // lines of a column's 16 k pairs, then streaming stores: each alone, with a gather per
      // column for the other, was no faster than the gathers and plain stores; together they
      // shortened the copy (benchmarks/README.md, "Unpacking for oneDNN").
      for (; j0 + kBlock <= pairs; j0 += kBlock) {
        const uint32_t* block = panel + j0 * width;
        __m512i r[kBlock];
        for (int64_t j = 0; j < kBlock; ++j) r[j] = _mm512_loadu_si512(block + j * width);
        transpose_16x16_epi32(r);
        // Streaming stores where the lines are whole: the weight is written once and read by the
        // matmul after it, so fetching the destination lines first was a third of the traffic.
        if (streaming)
          for (int64_t c = 0; c < kVec; ++c) _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + (v * kVec + c) * pairs + j0), r[c]);
        else
          for (int64_t c = 0; c < kVec; ++c) _mm512_storeu_si512(dst + (v * kVec + c) * pairs + j0, r[c]);
      }
#endif
      for (; j0 < pairs; j0 += kBlock) {
        const int64_t j1 = std::min(pairs, j0 + kBlock);
        for (int64_t c = 0; c < kVec; ++c) {
          uint32_t* row = dst + (v * kVec + c) * pairs;
          for (int64_t j = j0; j < j1; ++j) row[j] = panel[j * width + c];
        }
      }
    }
#if defined(__AVX512F__)
    if (streaming) _mm_sfence();  // the streaming stores visible before the matmul reads them
#endif
  });
}

void mm_unpacked(at::Tensor out, const at::Tensor& x, const at::Tensor& packed) {
  // One buffer per thread, reused: a fresh allocation of this size would be new pages from
  // the OS on every call, and zeroing them cost more than the copy. It keeps the largest
  // weight a thread unpacked (the 1B shape's gate_up: 64 MiB) until the thread ends.
  thread_local at::Tensor scratch;
  if (!scratch.defined() || scratch.numel() < packed.numel())
    scratch = at::empty({packed.numel()}, packed.options());
  auto w = scratch.narrow(0, 0, packed.numel()).view(packed.sizes());
  unpack_into(w, packed);
  at::mm_out(out, x, w.t());
}

}  // namespace

at::Tensor unpack_weight_bf16(const at::Tensor& packed) {
  check_packable(packed);
  auto w = at::empty_like(packed);
  unpack_into(w, packed);
  return w;
}

void gemm_packed_bf16(at::Tensor out, const at::Tensor& x, const at::Tensor& packed) {
  check_packed_matmul(out, x, packed);
#if defined(PAGEDLLM_HAVE_AMX_BF16)
  if (detail::amx_tiles_granted()) {
    // From kAmxOneDnnMinRows rows on, oneDNN's tile kernels on W written back out run faster
    // than ours even with the copy (prefill), so the panels are unpacked for them.
    if (x.size(0) >= detail::kAmxOneDnnMinRows) return mm_unpacked(out, x, packed);
    if (detail::gemm_packed_bf16_amx(out, x, packed)) return;
  }
#endif
  gemm_packed_bf16_vector(out, x, packed);
}

// gemm_packed_bf16 through one kernel, whatever the row count: "vector" (vdpbf16ps, or AVX2 FMA),
// "amx" (the tiles; an error where the build or the OS does not have them) or "onednn" (W
// unpacked, then torch's matmul). For tests and benchmarks, which compare them on the same
// packed weight.
void gemm_packed_bf16_kernel(at::Tensor out, const at::Tensor& x, const at::Tensor& packed,
                             c10::string_view kernel) {
  check_packed_matmul(out, x, packed);
  if (kernel == "vector") return gemm_packed_bf16_vector(out, x, packed);
  if (kernel == "onednn") return mm_unpacked(out, x, packed);
  TORCH_CHECK(kernel == "amx", "gemm_packed_bf16_kernel: kernel must be 'vector', 'amx' or 'onednn', got '", kernel,
              "'");
#if defined(PAGEDLLM_HAVE_AMX_BF16)
  if (detail::gemm_packed_bf16_amx(out, x, packed)) return;
#endif
  TORCH_CHECK(false, "gemm_packed_bf16_kernel: no AMX kernel in this build or no tile state granted by the OS");
}

// Whether this build runs gemm_packed_bf16 and gemv_int8 on the AMX tiles: it was compiled for
// AMX-BF16 and Linux granted the process the tile state.
bool amx_tiles() {
#if defined(PAGEDLLM_HAVE_AMX_BF16)
  return detail::amx_tiles_granted();
#else
  return false;
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
