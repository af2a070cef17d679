// Internal to the bf16 matmul files: the packed layout's constants, shared by gemm_bf16.cpp
// (packing, lookups) and the per-instruction-set kernels, and the kernel entry points
// gemm_bf16.cpp dispatches to (gemm_bf16_avx512.cpp, gemm_bf16_avx2.cpp). Not part of ops.h.

#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "vec.h"

namespace pagedllm {
namespace detail {

// Packed layout: panels of kPanel output columns (see gemm_bf16.cpp).
constexpr int64_t kPanel = 64;     // output columns per panel
constexpr int64_t kVec = 16;       // float32 lanes per vector
constexpr int64_t kRowChunk = 192; // rows whose x stays in L2 while every panel passes

#if defined(__AVX512BF16__)
// gemm_bf16_avx512.cpp: the bodies of gemv_bf16 and gemm_packed_bf16 (arguments checked).
void gemv_bf16_avx512(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight);
void gemm_packed_bf16_avx512(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed);
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#define PAGEDLLM_HAVE_AMX_BF16 1
// gemm_bf16_amx.cpp: gemm_packed_bf16 on the AMX tiles, from kAmxMinRows rows of x on (below,
// the vdpbf16ps kernel streams the panels at least as fast). gemm_packed_bf16_amx returns false,
// doing nothing, where Linux did not grant the tile state; gemm_packed_bf16_amx_min_rows() is
// then -1.
constexpr int64_t kAmxMinRows = 1;
// From this many rows on (prefill), gemm_packed_bf16 on AMX unpacks W for torch's (oneDNN's)
// matmul instead: see benchmarks/README.md, "AMX tiles".
constexpr int64_t kAmxOneDnnMinRows = 2048;
bool gemm_packed_bf16_amx(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed);
int64_t gemm_packed_bf16_amx_min_rows();
#endif

#if defined(PAGEDLLM_ISA_AVX2)
// gemm_bf16_avx2.cpp: the same, for the AVX2 build.
void gemv_bf16_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight);
void gemm_packed_bf16_avx2(const at::Tensor& out, const at::Tensor& x, const at::Tensor& packed);
#endif

}  // namespace detail
}  // namespace pagedllm
