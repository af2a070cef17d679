// Internal to the bf16 matmul files: the packed layout's constants, shared by gemm_bf16.cpp
// (packing, lookups) and the per-instruction-set kernels, and the kernel entry points
// gemm_bf16.cpp dispatches to (gemm_bf16_avx512.cpp, gemm_bf16_avx2.cpp). Not part of ops.h.

#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "vec.h"

namespace pagedllm {
namespace detail {

// Packed layout: panels of kPanel output columns (see gemm_bf16.cpp). A packed tensor is only
// read by the build that packed it (one build per process; ops/cpu_kernels.py), so the width is
// the build's choice: 16 columns where the tile kernel runs (a weight tile is then one
// contiguous KB and a block streams four panels side by side: gemm_bf16_amx.cpp), 64 for the
// vector kernels, whose register tiles take a whole 64-column panel row per k pair.
#if defined(PAGEDLLM_HAVE_AMX_BF16)
constexpr int64_t kPanel = 16;  // output columns per panel
#else
constexpr int64_t kPanel = 64;  // output columns per panel
#endif
constexpr int64_t kVec = 16;       // float32 lanes per vector
constexpr int64_t kRowChunk = 192; // rows whose x stays in L2 while every panel passes

#if defined(__AVX512BF16__)
// gemm_bf16_avx512.cpp: the bodies of gemv_bf16 and gemm_packed_bf16 (arguments checked).
void gemv_bf16_avx512(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight);
void gemm_packed_bf16_avx512(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed);
#endif

#if defined(PAGEDLLM_HAVE_AMX_BF16)
// gemm_bf16_amx.cpp: gemm_packed_bf16 on the AMX tiles, for every row count below
// kAmxOneDnnMinRows (at one row they stream the panels as fast as the vdpbf16ps kernel).
// gemm_packed_bf16_amx returns false, doing nothing, where Linux did not grant the tile state.
// From this many rows on (prefill), gemm_packed_bf16 on AMX unpacks W for torch's (oneDNN's)
// matmul instead: see benchmarks/README.md, "AMX tiles".
constexpr int64_t kAmxOneDnnMinRows = 1024;
bool gemm_packed_bf16_amx(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed);

// The pieces of that kernel the quantized tile kernels reuse (amx_strips.h).
constexpr int64_t kBlockRows = 32;  // rows of x per block; one x tile where 16 or fewer are left

// x [M, K] as the tile kernels read it: the last block's rows beyond M are zeros in a copy (to
// 16 rows where one x tile covers them, else 32), so that every x tile has 16 rows and the
// tile configuration never changes. The copy lives in a
// buffer of the constructing thread, valid until that thread builds the next AmxRowsOfX.
struct AmxRowsOfX {
  explicit AmxRowsOfX(const at::Tensor& x);  // bf16, unit stride along K
  const uint16_t* data;
  int64_t stride, rows, k_len, full_rows;
  const uint16_t* tail = nullptr;  // the last block's rows (k_len apart), zero-padded
};
// The LDTILECFG operand (palette 1), for each tile kernel's configuration. Keep it a constant
// in memory: built on the stack, GCC 12 dropped the stores into it as dead where the function
// was not inlined (the intrinsic's read is not seen), and LDTILECFG faulted on the garbage.
struct alignas(64) AmxTileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};
bool amx_tiles_granted();  // Linux gave this process the tile state (asked once, on first call)
void amx_begin_thread();   // the tile configuration, in each thread before its products
void amx_end_thread();     // the tiles released at its end
#endif

#if defined(PAGEDLLM_ISA_AVX2)
// gemm_bf16_avx2.cpp: the same, for the AVX2 build.
void gemv_bf16_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight);
void gemm_packed_bf16_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed);
#endif

}  // namespace detail
}  // namespace pagedllm
